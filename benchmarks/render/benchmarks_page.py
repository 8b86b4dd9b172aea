"""``docs/benchmarks.md``: one section per curation benchmark (curate, MinHash, FAISS, embedders).

Each section: the hand-written explanation from ``docs/_partials/benchmarks.md``, a table per machine
with the figures, the goal and pass/fail, and the line naming the machine and the reproducing command.
Results of ``--quick`` runs are skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.render.base import DOCS, Results, load_results, machine_line, partial, verdict, write_page
from copyguard.common.fmt import markdown_table

__all__ = ["SECTIONS", "render_benchmarks", "write_benchmarks"]

log = logging.getLogger("benchmarks.render")
NO_GPU = "GPU FAISS: not measured, no GPU available in this task"


def _curate(results: dict[str, dict[str, Any]]) -> str:
    """End-to-end curation against pure SSCD embedding (``bench_curate``)."""
    parts = [partial("benchmarks", "curate"), ""]
    for tag, r in results.items():
        s, d = r["summary"], r["data"]
        parts.append(
            markdown_table(
                ["images", "pure img/s", "pipeline img/s", "ratio", "model share", "goal", "result"],
                [
                    [
                        d["valid_images"],
                        s["pure_images_per_s_median"],
                        s["pipeline_images_per_s_median"],
                        s["ratio_median"],
                        s.get("model_share_median"),
                        f">= {s['goal_ratio']}",
                        verdict(s["passes"]),
                    ]
                ],
            )
        )
        parts += ["", "Rounds (in the order they ran):", ""]
        rows = []
        for rnd in r["rounds"]:
            pipe = rnd["pipeline"]
            rows.append(
                [
                    rnd["round"],
                    rnd["pure"]["images_per_s"],
                    pipe["images_per_s"],
                    rnd["ratio"],
                    pipe["seconds"],
                    pipe["model_s"],
                    pipe["outside_model_s"],
                    ", ".join(f"{k}x{v}" for k, v in pipe["batch_sizes"].items()),
                    f"{(rnd['pure'].get('load_average_before') or ['?'])[0]} / "
                    f"{(pipe.get('load_average_before') or ['?'])[0]}",
                ]
            )
        parts.append(
            markdown_table(
                [
                    "round",
                    "pure img/s",
                    "pipeline img/s",
                    "ratio",
                    "pipeline s",
                    "in model s",
                    "outside model s",
                    "batch sizes (size x count)",
                    "load before pure / pipeline",
                ],
                rows,
            )
        )
        b = r.get("breakdown") or {}
        if b:
            parts += [
                "",
                partial("benchmarks", "curate_breakdown"),
                "",
                markdown_table(
                    [
                        "job, trivial embedder s",
                        "read shards s",
                        "caption MinHash groups s",
                        "FAISS clustering s",
                    ],
                    [
                        [
                            b.get("pipeline_with_null_embedder_s"),
                            b.get("read_shards_s"),
                            b.get("caption_minhash_groups_s"),
                            b.get("faiss_cluster_s"),
                        ]
                    ],
                ),
            ]
        parts += [
            "",
            f"Data: `{d['source']}` ({d['valid_images']} valid images). " + machine_line(tag, r),
            "",
        ]
    return "\n".join(parts)


def _minhash(results: dict[str, dict[str, Any]]) -> str:
    """Caption MinHash LSH, Beam against datasketch (``bench_minhash``)."""
    parts = [partial("benchmarks", "minhash"), ""]
    for tag, r in results.items():
        s, c = r["summary"], r["captions"]
        cmp_ = s["in_memory_vs_datasketch"]
        parts.append(
            markdown_table(
                [
                    "captions (real + planted)",
                    "datasketch cap/s",
                    "in-memory cap/s",
                    "Beam cap/s",
                    "Beam / datasketch",
                    "groups (captions)",
                    "Beam = in-memory",
                    "same-group pairs vs datasketch: precision / recall",
                ],
                [
                    [
                        f"{c['total']} ({c['real']} + {c['planted']})",
                        s["datasketch_captions_per_s"],
                        s["in_memory_captions_per_s"],
                        s["beam_captions_per_s"],
                        s["beam_vs_datasketch_ratio"],
                        f"{s['groups_with_duplicates']} ({s['captions_in_duplicate_groups']})",
                        verdict(s["beam_equals_in_memory"]),
                        f"{cmp_['precision']} / {cmp_['recall']}",
                    ]
                ],
            )
        )
        parts += ["", f"Captions from {', '.join(c['sources'])}. " + machine_line(tag, r), ""]
    return "\n".join(parts)


def _faiss(results: dict[str, dict[str, Any]]) -> str:
    """FAISS image clustering at scale (``bench_faiss``)."""
    parts = [partial("benchmarks", "faiss"), ""]
    for tag, r in results.items():
        rows = []
        for s in r["sizes"]:
            p = s["production"]
            forced = s.get("ivf_forced") or {}
            sample = s.get("exact_sample") or {}
            if forced:
                vs_exact = f"IVF forced: {forced['edge_recall_vs_exact']} in {forced['total_s']} s"
            elif sample:
                vs_exact = f"{sample['edge_recall_vs_exact']} ({sample['rows']} rows searched exactly)"
            else:
                vs_exact = "1 (exact search)" if s["production_mode"] == "exact" else None
            ivf = (
                f"{p.get('ivf_train_s')} / {p.get('ivf_assign_s')} / {p.get('ivf_join_s')}"
                if s["production_mode"] == "ivf"
                else None
            )
            goal = "< 600 s, >= 0.95" if s["n"] >= 1_000_000 else ">= 0.95"
            rows.append(
                [
                    f"{s['n']:,}",
                    s["production_mode"]
                    + (f" (nlist {p['nlist']}, nprobe {p['nprobe']})" if "nlist" in p else ""),
                    p["total_s"],
                    ivf,
                    p.get("cluster_s"),
                    s["planted_edge_recall"],
                    s["planted_group_recall"],
                    vs_exact,
                    goal,
                    verdict(s["verdict"]["passes"]),
                    (p.get("load_average_before") or ["?"])[0],
                ]
            )
        parts.append(
            markdown_table(
                [
                    "N",
                    "path",
                    "total s",
                    "IVF train / assign / join s",
                    "cluster s",
                    "edge recall",
                    "group recall",
                    "recall vs exact",
                    "goal",
                    "result",
                    "load before",
                ],
                rows,
            )
        )
        fa = r.get("faiss", {})
        gpu = NO_GPU if not fa.get("gpu") else "GPU FAISS present but not benchmarked here"
        cfg = r.get("config", {})
        parts += [
            "",
            f"{gpu}. FAISS {fa.get('version')}, {fa.get('omp_threads')} OpenMP threads. Config: "
            f"`exact_max={cfg.get('exact_max')}`, `ivf_nlist_factor={cfg.get('ivf_nlist_factor')}`, "
            f"`ivf_train_size={cfg.get('ivf_train_size')}`, `nprobe={cfg.get('nprobe')}`, "
            f"`threshold={cfg.get('threshold')}`; peak memory {r.get('peak_rss_gib', '?')} GiB"
            + (f"; overrides {r['overrides']}" if r.get("overrides") else "")
            + ". "
            + machine_line(tag, r),
            "",
        ]
    return "\n".join(parts)


def _embedders(results: dict[str, dict[str, Any]]) -> str:
    """SSCD embedder throughput and copy scores (``bench_embedders``)."""
    parts = [partial("benchmarks", "embedders"), ""]
    for tag, r in results.items():
        rows = []
        for kind, res in r["models"].items():
            q = res["quality"]["64px"]
            for bs, e2e in res["end_to_end_64px"].items():
                rows.append(
                    [
                        kind,
                        bs,
                        e2e["images_per_s"],
                        res["model_only_320px"][bs]["images_per_s"],
                        q["jpeg_q75"]["min"],
                        q["crop_90"]["min"],
                        q["different_photos"]["max"],
                    ]
                )
        parts.append(
            markdown_table(
                [
                    "model",
                    "batch",
                    "img/s end to end",
                    "img/s model only",
                    "min cos JPEG q75",
                    "min cos crop",
                    "max cos different",
                ],
                rows,
            )
        )
        parts += ["", machine_line(tag, r), ""]
    return "\n".join(parts)


SECTIONS: dict[str, Callable[[dict[str, dict[str, Any]]], str]] = {
    "curate": _curate,
    "minhash": _minhash,
    "faiss": _faiss,
    "embedders": _embedders,
}


def render_benchmarks(results: Results) -> str:
    """The whole page."""
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python -m benchmarks.render` from benchmarks/results/<machine>/*.json and "
        "docs/_partials/benchmarks.md; do not edit by hand. -->",
        "",
        partial("benchmarks", "intro"),
        "",
    ]
    found = False
    for name, section in SECTIONS.items():
        if name in results:
            found = True
            try:
                lines += [section(results[name]), ""]
            except (KeyError, TypeError, IndexError) as exc:
                log.warning("cannot render %s: %s", name, exc)
                lines += [f"## {name}", "", f"(result file incomplete: {exc})", ""]
    if "faiss" not in results:
        lines += ["## FAISS image clustering", "", NO_GPU + "; CPU results not yet recorded.", ""]
    if not found:
        lines += ["No results yet: run `make bench`.", ""]
    return "\n".join(lines)


def write_benchmarks(
    results_root: str | Path, docs: str | Path = DOCS / "benchmarks.md", include_quick: bool = False
) -> Path:
    """Render the results under ``results_root`` into ``docs``; returns its path."""
    return write_page(docs, render_benchmarks(load_results(results_root, include_quick)))
