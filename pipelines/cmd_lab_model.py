"""CLI glue for ``copyguard lab-model``: train the from-scratch lab SD model and measure its memorization."""

from __future__ import annotations

import argparse
import json
import logging

from copyguard.curation.config import load_config

__all__ = ["register", "run"]

log = logging.getLogger(__name__)

EPILOG = """\
Trains every component (CLIP tokenizer from the real BPE vocabulary, text encoder, VAE, UNet) from scratch
on WebDataset shards, writes a diffusers StableDiffusionPipeline folder to --out (loadable with
StableDiffusionPipeline.from_pretrained(OUT)), then measures memorization of the planted duplicated pairs
and writes OUT/memorization.json, OUT/memorization.png and the model card OUT/README.md.
Presets: tiny (tests, minutes), small (the demo, ~20 CPU minutes), gpu (64 px, for a GPU machine).
Checkpoints go to OUT/checkpoints; --resume continues from them. --eval-only re-measures a trained model.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from copyguard.pipelines.cli import add_config_args

    parser = subparsers.add_parser(
        "lab-model",
        help="train a small Stable Diffusion from scratch that memorizes its duplicated pairs",
        description="Train the copyguard lab model (a small SD in diffusers format) and measure how much "
        "it memorizes its duplicated training pairs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, metavar="GLOB", help="training shards, e.g. 'DIR/*.tar'")
    parser.add_argument("--out", required=True, metavar="MODEL_DIR", help="output model folder")
    parser.add_argument("--preset", choices=("tiny", "small", "gpu"), default=None, help="default: small")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the config's, 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="default: auto")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--eval-only", action="store_true", help="only measure the model already in OUT")
    mode.add_argument("--no-eval", action="store_true", help="train and save, skip the measurement")
    add_config_args(parser, "lab")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from copyguard.train.lab_config import LabConfig
    from copyguard.train.lab_run import run_lab_model

    overrides = list(args.overrides)
    for name in ("preset", "seed", "device"):
        value = getattr(args, name)
        if value is not None:
            overrides.append(f"lab.{name}={value}")
    cfg = load_config(LabConfig, "lab", args.config, overrides)
    result = run_lab_model(
        cfg, args.data, args.out, resume=args.resume, eval_only=args.eval_only, evaluate=not args.no_eval
    )
    mem = result["memorization"]
    print(f"lab model ({cfg.preset}) in {args.out}")
    if mem is not None:
        thr = f"pct_gt_{mem['threshold']:g}"
        for name, bucket in mem["by_copies"].items():
            own = bucket.get("sscd_own", {})
            print(
                f"  copies {name:>6}: SSCD mean {own.get('mean', float('nan')):.3f}, "
                f"{own.get(thr, float('nan')):5.1f}% > {mem['threshold']:g}"
            )
        print(f"  first-step magnitude AUC: {json.dumps(mem['magnitude'].get('auc'))}")
        print(f"  FID: {json.dumps(mem['fid'].get('fid'))}")
    return 0
