"""CLI glue for ``copyguard generate``: sample images with or without a memorization mitigation."""

from __future__ import annotations

import argparse

from copyguard.common.cli_args import add_config_args, add_option, examples
from copyguard.common.config import load_config
from copyguard.common.errors import UsageError
from copyguard.mitigation.config import AMG_PRESETS, MITIGATIONS

__all__ = ["register"]


def _seeds(values: list[str]) -> list[int]:
    """``--seed 0 1 2`` or ``--seed 0,1,2`` (the old ``--seeds 0,1,2``) as integers."""
    try:
        seeds = [int(s) for text in values for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seed takes integers, got {' '.join(values)!r}") from None
    if not seeds:
        raise UsageError("--seed is empty")
    return seeds


def _run(args: argparse.Namespace) -> int:
    from copyguard.mitigation.config import AMGConfig, GenerateConfig
    from copyguard.mitigation.generate_job import run_generate

    if bool(args.prompt) == bool(args.prompts):
        raise UsageError("give --prompt TEXT (repeatable) or --prompts FILE")
    overrides = list(args.overrides)
    if args.mitigation:
        overrides.append(f"generate.mitigation={args.mitigation}")
    cfg = load_config(GenerateConfig, "generate", args.config, overrides)
    if args.seed:
        cfg.seeds = _seeds(args.seed)
    if args.amg_preset:
        keep = {
            k: getattr(cfg.amg, k)
            for k in ("gated", "gate_threshold", "check_every", "recheck_sigma", "max_batch")
        }
        cfg.amg = AMGConfig.preset(args.amg_preset, cfg.amg.sigma_mode, **keep)
    result = run_generate(
        cfg,
        args.model,
        args.prompt or args.prompts,
        args.output,
        index=args.index,
        reference_prompts=args.reference_prompts,
        device=args.device,
        overwrite=args.overwrite,
    )
    print(result.summary())
    return 0


def register(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser(
        "generate",
        help="generate images, optionally with a memorization mitigation (AMG, prompt-opt, baselines)",
        description="Generate images with plain CFG sampling or a mitigation: prompt-embedding optimization "
        "(Wen et al., ICLR 2024), Anti-Memorization Guidance against the training-set index (Chen et al., CVPR 2024), or the GNI, RT, "
        "CWR, RNA baselines (Somepalli et al., NeurIPS 2023). Writes OUT/images/*.png and OUT/generations.jsonl (one record per image: "
        "prompt, seed, mitigation, and the AMG sigma trace and which guidance fired).",
        epilog=examples(
            "copyguard generate --model sd-folder --prompt 'a photo of a red car' --seed 0 1 2 --output gen/",
            "copyguard generate --model sd-folder --prompts flagged.txt --mitigation amg --index curated/index "
            "--output gen_amg/",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="a diffusers Stable Diffusion folder")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", default=None, help="prompt file (.txt, .jsonl or .csv)")
    p.add_argument("--mitigation", choices=MITIGATIONS, default=None, help="default: none")
    p.add_argument("--amg-preset", choices=AMG_PRESETS, default=None, help="AMG constants (default paper)")
    p.add_argument("--index", default=None, help="training-set index from `copyguard curate` (OUT/index)")
    add_option(
        p,
        "--seed",
        old=["--seeds"],
        nargs="+",
        metavar="SEED",
        help="one image per seed, e.g. --seed 0 1 2 (default 0)",
    )
    add_option(
        p,
        "--reference-prompts",
        old=["--calibrate-on"],
        metavar="FILE",
        help="non-memorized prompts: calibrate prompt-opt's l_target and AMG's gate threshold",
    )
    add_option(p, "--output", old=["--out"], required=True, metavar="DIR", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's outputs in OUT")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_config_args(p, "generate", example="num_inference_steps=30")
    p.set_defaults(func=_run)
