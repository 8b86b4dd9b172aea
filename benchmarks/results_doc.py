"""Render ``docs/results.md``: every recorded figure set against the published anchors.

    python -m benchmarks.results_doc [--results benchmarks/results] [--docs docs/results.md]

Reads ``benchmarks/results/<machine>/*.json`` (written by the benchmark scripts, see ``make bench``) and
writes the page from scratch: curation, the lab model, detection, mitigation, costs, plots (PNG files next
to the page, drawn from the same JSON) and a table of which figures are stale. Never edit the page by hand.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, setup_logging
from benchmarks.report import _table, load_results
from benchmarks.results_sections import (
    costs_section,
    detection_section,
    mitigation_section,
    plots_section,
)
from benchmarks.results_sections import (
    source as _source,
)
from benchmarks.staleness import stale_reason
from copyguard.curation.fileops import atomic_write

__all__ = ["render", "write_results_doc"]

log = logging.getLogger("benchmarks.results_doc")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "results.md"
CPU = "dev-2cpu"
NO_GPU = (
    "**GPU column: not measured.** No GPU machine was lent to this task; `make bench-gpu` runs the GPU "
    "preset (the `gpu` lab model, SD 1.5's architecture at 512 px, GPU FAISS at 1e6-1e7) when one is."
)


def _f(v: Any, nd: int = 3) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def curation_section(res: dict[str, dict[str, dict[str, Any]]], machine: str = CPU) -> str:
    """Dedup accuracy per planted kind, throughput against the SSCD bound, FAISS at 1e4-1e6."""
    lines = ["## Curation", ""]
    dedup = res.get("dedup", {}).get(machine)
    if dedup:
        s = dedup["summary"]
        lines += [
            "Dedup against the planted ground truth of `sample-data --preset small` (pairwise scores; "
            "algorithms.md §10-§11; goal F1 >= 0.95):",
            "",
            _table(
                ["groups", "precision", "recall", "F1"],
                [[p, _f(s[p]["precision"]), _f(s[p]["recall"]), _f(s[p]["f1"])] for p in s],
            ),
            "",
            "Per planted kind (pairs that involve a sample of the kind; captions for caption edits and "
            "templates, images otherwise):",
            "",
        ]
        rows = []
        scores = dedup["scores"]
        for kind in sorted(scores["images"].get("by_kind", {})):
            part = "captions" if kind.startswith(("caption", "template")) else "images"
            k = scores[part]["by_kind"].get(kind, {})
            rows.append(
                [kind, part, k.get("samples"), _f(k.get("pair_precision")), _f(k.get("pair_recall")),
                 _f(k.get("pair_f1")), _f(k.get("false_merge"))]
            )  # fmt: skip
        lines += [
            _table(["kind", "scored on", "samples", "precision", "recall", "F1", "false merges"], rows),
            "",
            _source("dedup", dedup),
            "",
        ]
    curate = res.get("curate", {}).get(machine)
    if curate:
        s = curate["summary"]
        lines += [
            f"Throughput: the whole Beam job runs at **{s['ratio_median']:.2f}x** the images/s of the SSCD "
            f"model alone on the same images ({s['pipeline_images_per_s_median']} vs "
            f"{s['pure_images_per_s_median']} images/s; goal >= {s['goal_ratio']}).",
            "",
            _source("curate", curate),
            "",
        ]
    faiss = res.get("faiss", {}).get(machine)
    if faiss:
        rows = []
        for size in faiss["sizes"]:
            ivf = size.get("ivf_forced") or {}
            sample = size.get("exact_sample") or {}
            rows.append(
                [f"{size['n']:,}", size["production_mode"], size["production"]["total_s"],
                 size["planted_group_recall"], ivf.get("edge_recall_vs_exact", sample.get("edge_recall"))]
            )  # fmt: skip
        lines += [
            "FAISS clustering of SSCD-like descriptors (CPU, production config; goal: 1e6 in < 10 min at "
            "planted recall >= 0.95):",
            "",
            _table(["N", "path", "seconds", "planted recall", "recall vs exact"], rows),
            "",
            _source("faiss", faiss),
            "",
        ]
    if len(lines) == 2:
        lines += ["Not measured yet: run `make bench`.", ""]
    lines += ["Details and the other curation benchmarks: [benchmarks.md](benchmarks.md).", ""]
    return "\n".join(lines)


def lab_section(res: dict[str, dict[str, dict[str, Any]]], machine: str = CPU) -> str:
    """The lab model's memorization per duplication count."""
    lab = res.get("lab_model", {}).get(machine)
    lines = ["## The lab model", ""]
    if not lab:
        return "\n".join([*lines, "Not measured yet: run `python -m benchmarks.bench_lab`.", ""])
    over = f"pct_gt_{lab['threshold']:g}"
    order = sorted(lab["by_copies"], key=lambda k: int(k) if k.isdigit() else 1 << 30)
    rows = [
        [k, lab["by_copies"][k]["prompts"], _f(lab["by_copies"][k]["mean"]), _f(lab["by_copies"][k]["top5pct"]),
         _f(lab["by_copies"][k][over], 1), _f(lab["by_copies"][k]["nl2"]["mean"], 2)]
        for k in order
    ]  # fmt: skip
    t = lab["training"]["timings"] or {}
    lines += [
        f"`{lab['preset']}` preset, 32 px, trained from scratch in {t.get('train_total_s', 0) / 60:.1f} CPU "
        f"minutes; {lab['eval']['seeds']} seeds per prompt, DDIM {lab['eval']['steps']}, guidance "
        f"{lab['eval']['guidance_scale']}; memorized = SSCD > {lab['threshold']:g} (calibrated: "
        "[lab_model.md](lab_model.md)).",
        "",
        _table(["copies", "prompts", "SSCD mean", "Top5%", f"% > {lab['threshold']:g}", "nL2 mean"], rows),
        "",
        f"Pairs with >= 25 copies: **{lab['share_dup_ge25']:.1f} %** of generations memorized (goal >= 60 %), "
        f"unique prompts **{lab['share_unique']:.1f} %** (goal <= 2 %); first-step magnitude AUC "
        f"{_f((lab.get('magnitude') or {}).get('auc'))}; FID {_f((lab.get('fid') or {}).get('fid'), 1)}.",
        "",
        _source("lab_model", lab),
        "",
    ]
    return "\n".join(lines)


def staleness_section(res: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Every result file, its commit, and whether the code it measures changed since."""
    rows, cache = [], {}
    for name in sorted(res):
        for machine, r in sorted(res[name].items()):
            reason = stale_reason(name, r, cache)
            commit = (r.get("git") or {}).get("commit")
            rows.append([f"{machine}/{name}", (commit or "-")[:10], r.get("started", "-")[:16],
                         "current" if reason is None else f"**stale**: {reason}"])  # fmt: skip
    return "\n".join(["## Freshness", "", _table(["result", "commit", "measured", "status"], rows), ""])


def render(res: dict[str, dict[str, dict[str, Any]]], img_dir: Path, machine: str = CPU) -> str:
    """The whole page; plots are written into ``img_dir``."""
    parts = [
        "# Results",
        "",
        "<!-- Generated by `python -m benchmarks.results_doc` from benchmarks/results/<machine>/*.json; "
        "do not edit by hand. -->",
        "",
        "Every figure copyguard claims, measured by `make bench` on the machines named under each table, "
        "with the published anchors from ../shared/algorithms.md beside them. The lab figures come from the "
        "32 px lab model trained here (a different model and data from the papers' Stable Diffusion: "
        "compare directions and ratios, not absolute values).",
        "",
        NO_GPU,
        "",
        curation_section(res, machine),
        lab_section(res, machine),
        detection_section(res, machine),
        mitigation_section(res, machine),
        costs_section(res, machine),
        plots_section(res, img_dir, machine),
        staleness_section(res),
    ]
    return "\n".join(parts).rstrip() + "\n"


def write_results_doc(
    results_root: str | Path = RESULTS, docs: str | Path = DOCS, machine: str = CPU
) -> Path:
    """Render the results of ``machine`` under ``results_root`` into ``docs`` (plots into ``docs/img``)."""
    path = Path(docs)
    img = path.parent / "img"
    img.mkdir(parents=True, exist_ok=True)
    text = render(load_results(results_root), img, machine)
    atomic_write(str(path), text)
    log.info("wrote %s", path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS), help="results root (default: benchmarks/results)")
    parser.add_argument("--docs", default=str(DOCS), help="output page (default: docs/results.md)")
    parser.add_argument("--machine", default=CPU, help=f"the CPU machine's results folder (default {CPU})")
    args = parser.parse_args(argv)
    setup_logging()
    print(f"wrote {write_results_doc(args.results, args.docs, args.machine)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
