"""CLI glue for ``copyguard lab-model``: train the from-scratch lab SD model and measure its memorization."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from copyguard.common.cli_args import add_config_args, add_option, examples
from copyguard.common.config import load_config

__all__ = ["register", "run"]

log = logging.getLogger(__name__)

EPILOG = """\
Trains every component (CLIP tokenizer from the real BPE vocabulary, text encoder, VAE, UNet) from scratch
on WebDataset shards, writes a diffusers StableDiffusionPipeline folder to --output (loadable with
StableDiffusionPipeline.from_pretrained(OUT)), then measures memorization of the planted duplicated pairs
and writes OUT/memorization.json, OUT/memorization.png and the model card OUT/README.md.
Presets: tiny (tests, minutes), small (the demo, ~20 CPU minutes), gpu (64 px, for a GPU machine).
Checkpoints go to OUT/checkpoints; --resume continues from them. --eval-only re-measures a trained model.
Any shards work: duplicated pairs and their copy counts come from ground_truth.jsonl next to the shards
(image_group/caption_group) or, without it, from identical image bytes + identical normalized captions.
The model and lab_training.json are saved before the measurement: if it (or the card) fails, the model is
kept, the error is one line (exit 2 for a data problem, else 1) and --eval-only reruns the measurement.

""" + examples(
    "copyguard lab-model --input 'sample/*.tar' --output lab_model --preset tiny",
    "copyguard lab-model --input 'sample/*.tar' --output lab_model --eval-only",
)


def register(subparsers: argparse._SubParsersAction) -> None:

    parser = subparsers.add_parser(
        "lab-model",
        help="train a small Stable Diffusion from scratch that memorizes its duplicated pairs",
        description="Train the copyguard lab model (a small SD in diffusers format) and measure how much "
        "it memorizes its duplicated training pairs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_option(
        parser,
        "--input",
        old=["--data"],
        required=True,
        metavar="GLOB",
        help="training shards, e.g. 'DIR/*.tar'",
    )
    add_option(
        parser, "--output", old=["--out"], required=True, metavar="MODEL_DIR", help="output model folder"
    )
    parser.add_argument("--preset", choices=("tiny", "small", "gpu"), default=None, help="default: small")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the config's, 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="default: auto")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--eval-only", action="store_true", help="only measure the model already in OUT")
    mode.add_argument("--no-eval", action="store_true", help="train and save, skip the measurement")
    add_config_args(parser, "lab", example="threads=2")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from copyguard.pipelines.lab.config import LabConfig
    from copyguard.pipelines.lab.run import EvaluationFailed, run_lab_model

    overrides = list(args.overrides)
    for name in ("preset", "seed", "device"):
        value = getattr(args, name)
        if value is not None:
            overrides.append(f"lab.{name}={value}")
    cfg = load_config(LabConfig, "lab", args.config, overrides)
    try:
        result = run_lab_model(
            cfg,
            args.input,
            args.output,
            resume=args.resume,
            eval_only=args.eval_only,
            evaluate=not args.no_eval,
        )
    except EvaluationFailed as exc:  # the model is saved; one line, exit 1 (a UsageError exits 2)
        print(f"copyguard lab-model: error: {exc}", file=sys.stderr)
        return 1
    print(f"lab model ({cfg.preset}) in {args.output}")
    if result["memorization"] is not None:
        _print_summary(result["memorization"])
    return 0


def _print_summary(mem: dict) -> None:
    """Per duplication count: mean SSCD and share over the threshold; then AUC and FID (or why not)."""
    threshold = float(mem.get("threshold", 0.5))
    thr = f"pct_gt_{threshold:g}"
    for name, bucket in (mem.get("by_copies") or {}).items():
        own = bucket.get("sscd_own", {})
        print(
            f"  copies {name:>6}: SSCD mean {own.get('mean', float('nan')):.3f}, "
            f"{own.get(thr, float('nan')):5.1f}% > {threshold:g}"
        )
    dup = mem.get("duplicated") or {}
    if dup.get("measured") is False:
        print(f"  {dup.get('reason')}")
    print(f"  first-step magnitude AUC: {json.dumps((mem.get('magnitude') or {}).get('auc'))}")
    print(f"  FID: {json.dumps((mem.get('fid') or {}).get('fid'))}")
