"""CLI glue for ``copyguard detect``: score prompts for memorization by text-conditional magnitude."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from copyguard.curation.config import load_config
from copyguard.curation.errors import UsageError
from copyguard.curation.fileops import atomic_write

__all__ = ["register"]

log = logging.getLogger(__name__)


def _run(args: argparse.Namespace) -> int:
    from copyguard.mitigation.attribution import token_attribution, top_tokens
    from copyguard.mitigation.detect import DetectConfig, Detector, roc_metrics
    from copyguard.mitigation.models import load_sd_pipeline
    from copyguard.mitigation.prompts import read_prompt_file

    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"detect.end={args.steps}")
    if args.generations is not None:
        overrides.append(f"detect.generations={args.generations}")
    cfg = load_config(DetectConfig, "detect", args.config, overrides)
    records = read_prompt_file(args.prompts)
    references = read_prompt_file(args.calibrate_on) if args.calibrate_on else None
    if args.threshold is not None and references is not None:
        raise UsageError("give either --threshold or --calibrate-on, not both")
    pipe = load_sd_pipeline(args.model, args.device)
    detector = Detector(pipe, cfg, threshold=args.threshold)
    if references is not None:
        threshold = detector.calibrate([r.prompt for r in references])
        log.info(
            "threshold %.4f calibrated on %d reference prompts (FPR <= %.3g)",
            threshold,
            len(references),
            cfg.target_fpr,
        )
    scores = detector.score([r.prompt for r in records])
    flags = detector.flag(scores) if detector.threshold is not None else [None] * len(scores)
    lines = []
    for record, score, flagged in zip(records, scores, flags, strict=True):
        row = {
            "prompt": record.prompt,
            "score": round(float(score), 6),
            "flagged": flagged,
            "threshold": detector.threshold,
        }
        if record.label is not None:
            row["label"] = record.label
        if args.explain and (flagged or flagged is None):
            row["top_tokens"] = [
                {"token": t.token, "score": round(float(t.score), 6)}
                for t in top_tokens(token_attribution(pipe, record.prompt, cfg), args.explain_top)
            ]
        lines.append(json.dumps(row, ensure_ascii=False))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(out), "\n".join(lines) + "\n")
    n_flagged = sum(1 for f in flags if f)
    summary = f"scored {len(scores)} prompts -> {out}"
    if detector.threshold is not None:
        summary += f"; flagged {n_flagged} (threshold {detector.threshold:.4f})"
    labelled = [(s, r.label) for s, r in zip(scores, records, strict=True) if r.label is not None]
    if labelled and len({label for _, label in labelled}) == 2:
        roc = roc_metrics([s for s, lab in labelled if lab], [s for s, lab in labelled if not lab])
        summary += f"; AUC {roc['auc']:.4f}, TPR@1%FPR {roc['tpr_at_1pct_fpr']:.3f}"
    print(summary)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from copyguard.pipelines.cli import add_config_args

    p = sub.add_parser(
        "detect",
        help="score prompts for memorization (text-conditional noise magnitude)",
        description="Score prompts by the magnitude of the text-conditional noise prediction "
        "(algorithms.md §2). The first step with one generation costs one CFG UNet evaluation per prompt. "
        "Prompt files: .txt (one per line), .jsonl (a 'prompt' or 'caption' field, optional 'label'), "
        ".csv (a 'Caption' or 'prompt' column, ';' or ',' separated).",
    )
    p.add_argument("--model", required=True, help="a diffusers Stable Diffusion folder")
    p.add_argument("--prompts", required=True, help="prompt file (.txt, .jsonl or .csv)")
    p.add_argument("--out", required=True, help="output JSON lines: prompt, score, flagged, threshold")
    p.add_argument("--steps", type=int, default=None, help="score the first N sampling steps (default 1)")
    p.add_argument("--generations", type=int, default=None, help="seeds averaged per prompt (default 1)")
    p.add_argument(
        "--calibrate-on", default=None, metavar="FILE", help="non-memorized prompts to set the threshold"
    )
    p.add_argument("--threshold", type=float, default=None, help="a fixed threshold instead of calibration")
    p.add_argument("--explain", action="store_true", help="add token attributions for flagged prompts")
    p.add_argument("--explain-top", type=int, default=5, help="tokens listed per prompt with --explain")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_config_args(p, "detect")
    p.set_defaults(func=_run)
