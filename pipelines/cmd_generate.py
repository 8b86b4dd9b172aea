"""CLI glue for ``copyguard generate``: sample images with or without a memorization mitigation."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from tqdm import tqdm

from copyguard.curation.config import load_config
from copyguard.curation.errors import UsageError
from copyguard.curation.fileops import atomic_write

__all__ = ["register"]

log = logging.getLogger(__name__)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise UsageError("--seeds is empty")
    return seeds


def _run(args: argparse.Namespace) -> int:
    from copyguard.curation.index import TrainingIndex
    from copyguard.mitigation.amg_config import AMGConfig
    from copyguard.mitigation.detect import DetectConfig, Detector
    from copyguard.mitigation.generate import GenerateConfig, generate_images
    from copyguard.mitigation.models import load_sd_pipeline
    from copyguard.mitigation.pipeline_amg import StableDiffusionAMGPipeline
    from copyguard.mitigation.prompt_opt import calibrate_l_target
    from copyguard.mitigation.prompts import read_prompt_file

    if bool(args.prompt) == bool(args.prompts):
        raise UsageError("give --prompt TEXT (repeatable) or --prompts FILE")
    overrides = list(args.overrides)
    if args.mitigation:
        overrides.append(f"generate.mitigation={args.mitigation}")
    cfg = load_config(GenerateConfig, "generate", args.config, overrides)
    if args.seeds:
        cfg.seeds = _seeds(args.seeds)
    if args.amg_preset:
        keep = {
            k: getattr(cfg.amg, k)
            for k in ("gated", "gate_threshold", "check_every", "recheck_sigma", "max_batch")
        }
        cfg.amg = AMGConfig.preset(args.amg_preset, cfg.amg.sigma_mode, **keep)
    prompts = args.prompt or [r.prompt for r in read_prompt_file(args.prompts)]
    index = TrainingIndex.load(args.index) if args.index else None
    pipe = load_sd_pipeline(args.model, args.device, pipeline_cls=StableDiffusionAMGPipeline)
    if args.calibrate_on:
        refs = [r.prompt for r in read_prompt_file(args.calibrate_on)]
        detect_cfg = DetectConfig(
            num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale
        )
        if cfg.mitigation == "prompt-opt" and cfg.prompt_opt.l_target is None:
            cfg.prompt_opt.l_target = calibrate_l_target(
                pipe, refs, quantile=cfg.prompt_opt.calibration_quantile, detect_config=detect_cfg
            )
            log.info("prompt-opt l_target %.4f from %d reference prompts", cfg.prompt_opt.l_target, len(refs))
        if cfg.mitigation == "amg" and cfg.amg.gated and cfg.amg.gate_threshold is None:
            cfg.amg.gate_threshold = Detector(pipe, detect_cfg, progress=False).calibrate(refs)
            log.info("AMG gate threshold %.4f from %d reference prompts", cfg.amg.gate_threshold, len(refs))
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    total = len(prompts) * len(cfg.seeds)
    for item in tqdm(
        generate_images(pipe, prompts, cfg, index=index), total=total, desc="generate", unit="img"
    ):
        name = f"images/p{item.prompt_index:05d}_s{item.seed}.png"
        item.image.save(out / name)
        lines.append(json.dumps({**item.record, "image": name}, ensure_ascii=False))
    atomic_write(str(out / "generations.jsonl"), "\n".join(lines) + "\n")
    atomic_write(str(out / "config.json"), json.dumps(cfg.model_dump(mode="json"), indent=2))
    print(f"wrote {len(lines)} images ({cfg.mitigation}) to {out}")
    return 0


# Listed here so that `copyguard --help` does not import torch; a test keeps it equal to generate.MITIGATIONS.
CHOICES = ("none", "prompt-opt", "amg", "gni", "rt", "cwr", "rna")


def register(sub: argparse._SubParsersAction) -> None:
    from copyguard.pipelines.cli import add_config_args

    p = sub.add_parser(
        "generate",
        help="generate images, optionally with a memorization mitigation (AMG, prompt-opt, baselines)",
        description="Generate images with plain CFG sampling or a mitigation: prompt-embedding optimization "
        "(algorithms.md §4), Anti-Memorization Guidance against the training-set index (§6), or the GNI, RT, "
        "CWR, RNA baselines (§8). Writes OUT/images/*.png and OUT/generations.jsonl (one record per image: "
        "prompt, seed, mitigation, and the AMG sigma trace and which guidance fired).",
    )
    p.add_argument("--model", required=True, help="a diffusers Stable Diffusion folder")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", default=None, help="prompt file (.txt, .jsonl or .csv)")
    p.add_argument("--mitigation", choices=CHOICES, default=None, help="default: none")
    p.add_argument(
        "--amg-preset", choices=("paper", "strong"), default=None, help="AMG constants (default paper)"
    )
    p.add_argument("--index", default=None, help="training-set index from `copyguard curate` (OUT/index)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2 (default 0)")
    p.add_argument(
        "--calibrate-on",
        default=None,
        metavar="FILE",
        help="non-memorized prompts: calibrate prompt-opt's l_target and AMG's gate threshold",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_config_args(p, "generate")
    p.set_defaults(func=_run)
