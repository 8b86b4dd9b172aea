"""CLI glue for ``copyguard audit``: a pre-release memorization audit with an HTML report and a CI gate.

Exit codes: 0 the gate passed, 1 the gate failed (the failing conditions are printed), 2 usage or input
errors (one line). Run on several processes/GPUs with ``accelerate launch -m copyguard.pipelines audit ...``.
"""

from __future__ import annotations

import argparse

from copyguard.common.cli_args import add_config_args, add_option, examples
from copyguard.common.config import load_config

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from copyguard.mitigation.audit import run_audit
    from copyguard.mitigation.config import AuditConfig

    config = load_config(AuditConfig, "audit", args.config, list(args.overrides))
    if args.fail_on:
        config.fail_on = list(args.fail_on)
    result = run_audit(
        config,
        args.model,
        args.index,
        args.prompts,
        args.output,
        reference_prompts=args.reference_prompts,
        real_images=args.real_images,
        lora=args.lora,
        device=args.device,
    )
    if result.report:  # the main process reports
        print(result.summary())
    return result.exit_code


def register(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser(
        "audit",
        help="pre-release memorization audit: detect, explain, generate, measure, report, gate",
        description="Audit a model for memorization (Wen et al., ICLR 2024; Chen et al., CVPR 2024; Somepalli et al., NeurIPS 2023): score every prompt, "
        "explain the flagged ones, generate without and with each mitigation, find each image's nearest "
        "training image through the index, compute Top5% / Top1 / share above 0.5 and 0.4 (and FID, CLIP, detection AUC), "
        "write AUDIT_DIR/report.json and a self-contained report.html, and gate the release. "
        "Exit 0: passed; 1: the gate failed; 2: usage or input error. Re-running with the same --output resumes.",
        epilog=examples(
            "copyguard audit --model sd-folder --index curated/index --prompts prompts.txt --output audit/",
            "copyguard audit --model sd-folder --index curated/index --prompts prompts.jsonl "
            "--reference-prompts coco.txt --fail-on 'share_above_0.5>0' --output audit/",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="a diffusers Stable Diffusion folder")
    p.add_argument("--lora", default=None, metavar="RUN_DIR", help="LoRA weights to load onto the model")
    p.add_argument("--index", required=True, help="training-set index from `copyguard curate` (OUT/index)")
    p.add_argument(
        "--prompts", required=True, help="prompt file (.txt, .jsonl or .csv; labels/groups optional)"
    )
    add_option(
        p,
        "--reference-prompts",
        old=["--calibrate-on"],
        metavar="FILE",
        help="non-memorized prompts: calibrate the detection threshold at audit.detect.target_fpr",
    )
    p.add_argument("--real-images", default=None, metavar="GLOB", help="real image shards for FID (quote it)")
    p.add_argument(
        "--fail-on",
        action="append",
        default=[],
        metavar="COND",
        help="gate condition, e.g. 'share_above_0.5>0' or 'flagged>10' (repeatable; replaces audit.fail_on)",
    )
    add_option(
        p,
        "--output",
        old=["--out"],
        required=True,
        metavar="AUDIT_DIR",
        help="results, images, report.json, report.html",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: Accelerate's device)")
    add_config_args(p, "audit", example="num_inference_steps=30")
    p.set_defaults(func=_run)
