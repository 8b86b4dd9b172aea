"""CLI glue for ``copyguard detect``: score prompts for memorization by text-conditional magnitude."""

from __future__ import annotations

import argparse

from copyguard.common.cli_args import add_config_args, add_option, examples
from copyguard.common.config import load_config

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from copyguard.mitigation.config import DetectConfig
    from copyguard.mitigation.detect_job import run_detect

    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"detect.end={args.steps}")
    if args.generations is not None:
        overrides.append(f"detect.generations={args.generations}")
    cfg = load_config(DetectConfig, "detect", args.config, overrides)
    result = run_detect(
        cfg,
        args.model,
        args.prompts,
        args.output,
        reference_prompts=args.reference_prompts,
        threshold=args.threshold,
        explain=args.explain,
        explain_top=args.explain_top,
        device=args.device,
    )
    print(result.summary())
    return 0


def register(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser(
        "detect",
        help="score prompts for memorization (text-conditional noise magnitude)",
        description="Score prompts by the magnitude of the text-conditional noise prediction "
        "(Wen et al., ICLR 2024). The first step with one generation costs one CFG UNet evaluation per prompt. "
        "Prompt files: .txt (one per line), .jsonl (a 'prompt' or 'caption' field, optional 'label'), "
        ".csv (a 'Caption' or 'prompt' column, ';' or ',' separated).",
        epilog=examples(
            "copyguard detect --model sd-folder --prompts prompts.txt --reference-prompts coco.txt --output scores.jsonl",
            "copyguard detect --model sd-folder --prompts prompts.txt --threshold 3.5 --explain --output scores.jsonl",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="a diffusers Stable Diffusion folder")
    p.add_argument("--prompts", required=True, help="prompt file (.txt, .jsonl or .csv)")
    add_option(
        p,
        "--output",
        old=["--out"],
        required=True,
        metavar="FILE",
        help="output JSON lines: prompt, score, flagged, threshold",
    )
    p.add_argument("--steps", type=int, default=None, help="score the first N sampling steps (default 1)")
    p.add_argument("--generations", type=int, default=None, help="seeds averaged per prompt (default 1)")
    add_option(
        p,
        "--reference-prompts",
        old=["--calibrate-on"],
        metavar="FILE",
        help="non-memorized prompts: calibrate the threshold at detect.target_fpr",
    )
    p.add_argument("--threshold", type=float, default=None, help="a fixed threshold instead of calibration")
    p.add_argument("--explain", action="store_true", help="add token attributions for flagged prompts")
    p.add_argument("--explain-top", type=int, default=5, help="tokens listed per prompt with --explain")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_config_args(p, "detect", example="generations=4")
    p.set_defaults(func=_run)
