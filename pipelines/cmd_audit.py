"""CLI glue for ``copyguard audit``: a pre-release memorization audit with an HTML report and a CI gate.

Exit codes: 0 the gate passed, 1 the gate failed (the failing conditions are printed), 2 usage or input
errors (one line). Run on several processes/GPUs with ``accelerate launch -m copyguard.pipelines audit ...``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from copyguard.curation.config import load_config
from copyguard.curation.errors import UsageError

__all__ = ["register"]

log = logging.getLogger(__name__)


def _lora_dir(path: str) -> Path:
    """The folder holding the LoRA weights: RUN_DIR itself, or its ``lora``/``final`` subfolder."""
    root = Path(path)
    if not root.is_dir():
        raise UsageError(f"--lora {path}: folder not found")
    for folder in (root, root / "lora", root / "final"):
        if folder.is_dir() and (any(folder.glob("*lora*.safetensors")) or any(folder.glob("*lora*.bin"))):
            return folder
    raise UsageError(f"--lora {path}: no LoRA weights (*lora*.safetensors) in it or its lora/ subfolder")


def load_lora(pipe: Any, path: str) -> None:
    """``pipe.load_lora_weights``; a LoRA that does not fit the model is a one-line UsageError."""
    folder = _lora_dir(path)
    quiet = logging.getLogger("diffusers.loaders")  # it logs the failure at length; we report one line
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        pipe.load_lora_weights(str(folder))
    except Exception as exc:  # diffusers/peft raise ValueError, RuntimeError (size mismatch), KeyError...
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
        detail = next((ln for ln in lines if "mismatch" in ln), lines[0])[:300]
        raise UsageError(f"the LoRA in {folder} does not fit the model: {detail}") from None
    finally:
        quiet.setLevel(level)
    adapters = pipe.get_list_adapters() if hasattr(pipe, "get_list_adapters") else {"?": ["?"]}
    if not any(adapters.values()):
        raise UsageError(f"the LoRA in {folder} does not fit the model: none of its weights were loaded")


def _run(args: argparse.Namespace) -> int:
    from copyguard.curation.fileops import expand_paths
    from copyguard.curation.index import TrainingIndex
    from copyguard.mitigation.audit_config import AuditConfig
    from copyguard.mitigation.audit_gate import check_measurable, evaluate_gate, parse_conditions
    from copyguard.mitigation.audit_report import write_reports
    from copyguard.mitigation.audit_run import AuditJob, load_training_images
    from copyguard.mitigation.models import load_sd_pipeline
    from copyguard.mitigation.pipeline_amg import StableDiffusionAMGPipeline
    from copyguard.mitigation.prompts import read_prompt_file

    cfg = load_config(AuditConfig, "audit", args.config, list(args.overrides))
    if args.fail_on:
        cfg.fail_on = list(args.fail_on)
    records = read_prompt_file(args.prompts)
    references = (
        [r.prompt for r in read_prompt_file(args.reference_prompts)] if args.reference_prompts else None
    )
    if args.real_images and not expand_paths(args.real_images):
        raise UsageError(f"--real-images {args.real_images!r} matches no file")
    if "prompt-opt" in cfg.mitigations and cfg.prompt_opt.l_target is None and not references:
        raise UsageError("mitigation prompt-opt needs --reference-prompts or audit.prompt_opt.l_target")
    conditions = parse_conditions(cfg.fail_on, cfg.settings, cfg.gate_on)
    labels = {r.label for r in records if r.label is not None}
    check_measurable(
        conditions,
        similarity=cfg.similarity,
        has_real_images=bool(args.real_images),
        has_labels=len(labels) == 2,
        has_clip=bool(cfg.clip_model),
    )
    index = TrainingIndex.load(args.index)
    train_images = cfg.train_images
    if train_images is None and expand_paths(str(Path(args.index).parent / "shards" / "*.tar")):
        train_images = str(Path(args.index).parent / "shards" / "*.tar")
    from accelerate import PartialState

    device = args.device or str(PartialState().device)
    pipe = load_sd_pipeline(args.model, device, pipeline_cls=StableDiffusionAMGPipeline)
    if args.lora:
        load_lora(pipe, args.lora)
    identity = {
        "model": str(Path(args.model).resolve()),
        "lora": str(Path(args.lora).resolve()) if args.lora else None,
        "index": str(Path(args.index).resolve()),
        "prompts": str(Path(args.prompts).resolve()),
        "reference_prompts": args.reference_prompts,
        "real_images": args.real_images,
        "training_images": train_images,
    }
    job = AuditJob(pipe, index, cfg, args.out, identity=identity, train_images=train_images)
    report = job.run(records, references, args.real_images)
    if not report:  # not the main process
        return 0
    results = evaluate_gate(conditions, report["metrics"])
    failed = [r for r in results if r.failed]
    report["gate"] = {
        "passed": not failed,
        "conditions": [
            {"condition": r.condition.text, "actual": r.actual, "failed": r.failed} for r in results
        ],
    }
    shown = sorted((r for r in report["prompts"] if r["flagged"]), key=lambda r: -r["score"])
    keys = {
        g["nearest_key"]
        for r in shown[: cfg.report_flagged_max]
        for gs in r["generations"].values()
        for g in gs
    }
    train = load_training_images(train_images, keys - {None}) if train_images and keys else {}
    write_reports(report, args.out, train)
    out = Path(args.out)
    none = report["metrics"]["settings"]["none"]["overall"]
    det = report["metrics"]["detection"]
    head = f"Top5% {none['top5pct']:.3f}, %>0.5 {none['pct_gt_0.5']:.1f}" if cfg.similarity == "sscd" else ""
    print(
        f"audited {det['prompts']} prompts ({det['flagged']} flagged) -> {out / 'report.html'}"
        + (f"; no mitigation: {head}" if head else "")
    )
    if failed:
        print("gate FAILED:")
        for r in failed:
            print(f"  {r.describe()}")
        return 1
    print("gate passed")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from copyguard.pipelines.cli import add_config_args

    p = sub.add_parser(
        "audit",
        help="pre-release memorization audit: detect, explain, generate, measure, report, gate",
        description="Audit a model for memorization (algorithms.md §2, §3, §6, §7): score every prompt, "
        "explain the flagged ones, generate without and with each mitigation, find each image's nearest "
        "training image through the index, compute Top5%%/Top1/%%>0.5/%%>0.4 (and FID, CLIP, detection AUC), "
        "write AUDIT_DIR/report.json and a self-contained report.html, and gate the release. "
        "Exit 0: passed; 1: the gate failed; 2: usage or input error. Re-running with the same --out resumes.",
    )
    p.add_argument("--model", required=True, help="a diffusers Stable Diffusion folder")
    p.add_argument("--lora", default=None, metavar="RUN_DIR", help="LoRA weights to load onto the model")
    p.add_argument("--index", required=True, help="training-set index from `copyguard curate` (OUT/index)")
    p.add_argument(
        "--prompts", required=True, help="prompt file (.txt, .jsonl or .csv; labels/groups optional)"
    )
    p.add_argument(
        "--reference-prompts", default=None, metavar="FILE", help="non-memorized prompts (threshold)"
    )
    p.add_argument("--real-images", default=None, metavar="GLOB", help="real image shards for FID (quote it)")
    p.add_argument(
        "--fail-on",
        action="append",
        default=[],
        metavar="COND",
        help="gate condition, e.g. 'share_above_0.5>0' or 'flagged>10' (repeatable; replaces audit.fail_on)",
    )
    p.add_argument("--out", required=True, help="AUDIT_DIR: results, images, report.json, report.html")
    p.add_argument("--device", default=None, help="cpu or cuda (default: Accelerate's device)")
    add_config_args(p, "audit")
    p.set_defaults(func=_run)
