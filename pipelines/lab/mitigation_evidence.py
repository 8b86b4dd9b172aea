"""Detection and mitigation evidence on a lab model: what detection separates and what each mitigation does.

Methods: Wen et al., ICLR 2024 (detection, prompt-embedding optimization); Chen et al., CVPR 2024 (AMG);
Somepalli et al., NeurIPS 2023 (inference-time baselines).

    python -m copyguard.pipelines.lab.mitigation_evidence --model models/lab-small --data 'data/small/*.tar' \
        --index out/index [--seeds 4] [--unique-prompts 50] [--fid-images 200] [--steps 25] \
        [--methods none,gni,...] [--machine TAG] [--out DIR] [--partial FILE]
    python -m copyguard.pipelines.lab.mitigation_evidence merge MAIN.json OTHER.json ...

``--data`` must be the shards the model was trained on (``copyguard sample-data`` with the model's preset
and seed); :func:`~copyguard.pipelines.lab.evidence.load_evidence_setup` checks that the model's held-out
keys (``lab_training.json``) are among them. ``--index`` is ``OUT/index`` of ``copyguard curate`` on those
shards (SSCD embedder). Without ``--model``/``--data``/``--index`` the cached ``small`` lab model, its data
and index are used (:func:`~copyguard.pipelines.lab.cache.lab_setup`).

1. **Detection** (:func:`~copyguard.pipelines.lab.mitigation_measure.detection_evidence`): ROC AUC and
   TPR@1%FPR of the first-step and all-steps noise magnitude for memorized (>= 25 copies) and all duplicated
   prompts against the unique ones, and AMG's detection gate calibrated at 1% FPR on the held-out captions.
2. **Mitigation** (:func:`~copyguard.pipelines.lab.mitigation_measure.mitigation_evidence`): the memorized
   prompts with ``--seeds`` seeds each through :func:`copyguard.mitigation.generate.generate_images` (the code
   path of ``copyguard generate``) with each method; SSCD to each prompt's own training image, FID of
   ``--fid-images`` held-out captions, the unique prompts' change from their unmitigated images.
3. **Goals** (:func:`goals`): the figures the mitigation issue asks for, checked.

Writes ``benchmarks/results/<machine>/lab_mitigation.json``; ``python -m benchmarks.render`` renders
``docs/mitigation.md`` from it. ``merge`` adds the methods of runs split over several processes (same model,
data and seeds; their unmitigated images must agree) to MAIN, rewritten in place.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from copyguard.common.errors import UsageError
from copyguard.common.fileops import atomic_write
from copyguard.pipelines.lab.evidence import evidence_prompts, load_evidence_setup
from copyguard.pipelines.lab.mitigation_measure import (
    INT_ARGS,
    METHODS,
    EvidenceSpec,
    detection_evidence,
    fid_changes,
    mitigation_evidence,
)
from copyguard.pipelines.lab.results import add_result_args, begin_result, setup_logging, write_result

__all__ = ["MODULE", "goals", "main", "merge_results", "run_evidence"]

log = logging.getLogger(__name__)
MODULE = "copyguard.pipelines.lab.mitigation_evidence"


# --------------------------------------------------------------------------------------------- goals
def goals(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals, checked against the figures (None where not measured)."""
    rows = result["mitigation"]["methods"]
    none = rows["none"]["memorized"]
    out: dict[str, Any] = {}
    if "settings" in result["detection"]:
        det = result["detection"]["settings"]["first_step_n1"]["memorized"]
        out["detection_auc_ge_0.95"] = det["auc"] >= 0.95
        out["detection_tpr1_ge_0.8"] = det["tpr_at_1pct_fpr"] >= 0.8
    if "amg-strong" in rows:
        out["amg_strong_zero_memorized"] = rows["amg-strong"]["memorized"]["pct_gt_0.4"] == 0.0
    if "amg-paper" in rows:
        out["amg_paper_below_tenth"] = rows["amg-paper"]["memorized"]["pct_gt_0.4"] < none["pct_gt_0.4"] / 10
    for name in ("amg-paper", "amg-strong"):
        fid = (rows.get(name) or {}).get("fid")
        if fid and "change_pct" in fid:
            out[f"{name}_fid_within_10pct"] = abs(fid["change_pct"]) <= 10.0
        uni = (rows.get(name) or {}).get("unique") or {}
        if uni.get("change") and uni.get("amg"):  # every prompt the gate did not flag is bit-identical
            unflagged = 100.0 - uni["amg"]["flagged_pct"]
            out[f"{name}_unflagged_unique_bit_identical"] = uni["change"]["identical_pct"] >= unflagged - 1e-9
    return out


# ----------------------------------------------------------------------------------------------- run
def run_evidence(
    model: str | Path,
    data: str,
    index_dir: str | Path,
    spec: EvidenceSpec,
    machine: str,
    methods: Sequence[str] = METHODS,
    fid: bool = True,
    argv: list[str] | None = None,
    partial: str | Path | None = None,
) -> dict[str, Any]:
    """Detection, mitigation and goals on ``model``; returns the result JSON body (with the
    :func:`~copyguard.pipelines.lab.results.begin_result` header, not yet finished)."""
    report = begin_result("lab_mitigation", MODULE, argv, machine, threads=torch.get_num_threads())
    git = report["git"]
    report["commit"] = (git["commit"] or "unknown")[:7] + ("+dirty" if git["dirty"] else "")
    pipe, lab, index, info = load_evidence_setup(model, data, index_dir)
    prompts = evidence_prompts(lab, spec.unique_prompts, spec.seed, spec.min_copies, spec.detect_negatives)
    if not prompts["memorized"]:
        raise UsageError(f"no duplicated prompt with >= {spec.min_copies} copies in {data}")
    report["model"] = {
        "path": str(model),
        "preset": info.get("preset"),
        "resolution": int(pipe.unet.config.sample_size * pipe.vae_scale_factor),
        "params": info.get("params"),
    }
    report["data"] = {
        "shards": data,
        "train_samples": len(lab.keys),
        "heldout": len(lab.heldout_keys),
        "index": str(index_dir),
        "index_images": len(index),
        "index_embedder": index.info.get("embedder", {}).get("name"),
        "prompts": {k: len(v) for k, v in prompts.items()},
    }
    report["spec"] = dict(spec.__dict__)
    t0 = time.perf_counter()
    report["detection"] = detection_evidence(pipe, prompts, spec)
    log.info("detection done in %.0f s", time.perf_counter() - t0)
    cal = report["detection"]["calibration"]
    report["mitigation"] = mitigation_evidence(
        pipe, lab, index, prompts, spec, cal["threshold"], methods, fid, partial=partial,
        l_target=cal["l_target_median"],
    )  # fmt: skip
    report["goals"] = goals(report)
    return report


def merge_results(main: dict[str, Any], others: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Add the methods measured by other runs (split over processes to share a busy machine) to ``main``.

    Every run measures ``none`` itself; its per-image figures must equal ``main``'s (same model, data,
    seeds: sampling is deterministic), and the gate threshold must be the same, else the merge is refused.
    """
    rows = main["mitigation"]["methods"]
    base = rows["none"]["memorized"]["per_image"]
    main.setdefault("merged_runs", [])
    for other in others:
        o = other["mitigation"]
        if o["methods"]["none"]["memorized"]["per_image"] != base:
            raise UsageError(f"cannot merge {other['command']!r}: its unmitigated generations differ")
        if abs(o["gate_threshold"] - main["mitigation"]["gate_threshold"]) > 1e-9:
            raise UsageError(f"cannot merge {other['command']!r}: another gate threshold")
        for name, row in o["methods"].items():
            if name != "none":
                rows[name] = row
        if main["mitigation"].get("prompt_opt_l_target") is None:
            main["mitigation"]["prompt_opt_l_target"] = o.get("prompt_opt_l_target")
        if not rows["none"].get("fid") and o["methods"]["none"].get("fid"):  # main ran without FID
            rows["none"]["fid"] = o["methods"]["none"]["fid"]
            for key in ("fid_images", "fid_seeds", "fid_reference"):
                main["mitigation"][key] = o.get(key, main["mitigation"].get(key))
        main["merged_runs"].append(
            {
                "command": other["command"],
                "methods": [k for k in o["methods"] if k != "none"],
                "machine": other["machine"],
                "wall_s": other.get("wall_s"),
                "commit": other.get("commit"),
            }
        )
    fid_changes(rows)
    order = [m for m in (*METHODS, "amg-paper-ungated") if m in rows]
    main["mitigation"]["methods"] = {k: rows[k] for k in order}
    main["goals"] = goals(main)
    return main


def merge_main(argv: list[str]) -> int:
    """``merge MAIN.json OTHER.json ...``: merge the other runs' methods into MAIN (rewritten in place) and
    print the goals."""
    parser = argparse.ArgumentParser(prog=f"{MODULE} merge")
    parser.add_argument("main")
    parser.add_argument("others", nargs="+")
    args = parser.parse_args(argv)
    setup_logging()
    main_path = Path(args.main)
    result = merge_results(
        json.loads(main_path.read_text()), [json.loads(Path(p).read_text()) for p in args.others]
    )
    atomic_write(str(main_path), json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["goals"], indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["merge"]:
        return merge_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a copyguard lab model folder (default: the cached small one)")
    parser.add_argument("--data", help="the shards the model was trained on (quote the glob)")
    parser.add_argument("--index", help="OUT/index of `copyguard curate` on those shards")
    for flag, default, text in INT_ARGS:  # EvidenceSpec fields
        parser.add_argument(flag, type=int, default=default, help=text)
    parser.add_argument("--no-all-steps", action="store_true", help="skip the all-steps detection setting")
    parser.add_argument("--calibration-only", action="store_true", help="detection: the gate threshold only")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)"
    )
    parser.add_argument("--partial", default=None, help="write each finished method's figures here")
    add_result_args(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.ungated_unique:
        methods.append("amg-paper-ungated")
    fields = {flag[2:].replace("-", "_") for flag, _, _ in INT_ARGS}
    spec = EvidenceSpec(
        **{f: getattr(args, f) for f in fields},
        detect_all_steps=not args.no_all_steps,
        calibration_only=args.calibration_only,
    )
    if args.model is None or args.data is None or args.index is None:
        from copyguard.pipelines.lab.cache import lab_setup

        model, data, index = lab_setup("small")
        args.model, args.data, args.index = (
            args.model or str(model),
            args.data or data,
            args.index or str(index),
        )
    try:
        result = run_evidence(
            args.model, args.data, args.index, spec, args.machine, methods, args.fid_images >= 2, argv,
            partial=args.partial,
        )  # fmt: skip
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["quick"] = args.quick
    write_result(result, args.out, args.machine, "lab_mitigation")
    print(json.dumps(result["goals"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
