"""Render ``docs/benchmarks.md`` from the JSON results under ``benchmarks/results/<machine>/``.

    python -m benchmarks.report [--results benchmarks/results] [--docs docs/benchmarks.md]

One section per benchmark, a table per section with the figures, the goal, pass/fail, the machine (CPU
model, cores, load average at the start and end of the run) and the command that reproduces it. Results
written by a ``--quick`` run are skipped. The page is generated: edit this script, not the page.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, setup_logging
from copyguard.curation.fileops import atomic_write

__all__ = ["load_results", "render", "write_docs"]

log = logging.getLogger("benchmarks.report")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
NO_GPU = "GPU FAISS: not measured, no GPU available in this task"


def load_results(root: str | Path, include_quick: bool = False) -> dict[str, dict[str, dict[str, Any]]]:
    """``{benchmark: {machine: result}}`` for every ``<root>/<machine>/<benchmark>.json``; results of
    ``--quick`` runs only with ``include_quick``."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(Path(root).glob("*/*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        if not isinstance(data, dict) or (data.get("quick") and not include_quick):
            continue
        name = data.get("benchmark", path.stem)
        out.setdefault(name, {})[path.parent.name] = data
    return out


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _load(machine: dict[str, Any]) -> str:
    start = machine.get("load_average_at_start") or []
    end = machine.get("load_average_at_end") or []
    first = f"{start[0]:.1f}" if start else "?"
    last = f"{end[0]:.1f}" if end else "?"
    return f"{first} → {last}"


def _command(r: dict[str, Any]) -> str:
    """The recorded command, without ``--out`` when it names the default results folder."""
    words = str(r.get("command", "?")).split(" ")
    for k in range(len(words) - 1):
        if words[k] == "--out" and Path(words[k + 1]).as_posix().endswith("benchmarks/results"):
            del words[k : k + 2]
            break
    return " ".join(words)


def _machine_line(tag: str, r: dict[str, Any]) -> str:
    m = r.get("machine", {})
    cores = f"{m.get('usable_cpus', '?')} of {m.get('cpu_count', '?')} cores"
    mem = f", {m['memory_gib']} GiB" if m.get("memory_gib") else ""
    return (
        f"*Machine `{tag}`: {m.get('cpu_model') or m.get('processor', '?')}, {cores}{mem}; "
        f"1-min load average {_load(m)} (start → end) on {r.get('started', '?')[:16]}; "
        f"run took {r.get('wall_s', '?')} s. Reproduce: `{_command(r)}`.*"
    )


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("**pass**" if ok else "**FAIL**")


def _curate(results: dict[str, dict[str, Any]]) -> str:
    parts = [
        "## End-to-end curation vs pure SSCD embedding",
        "",
        "Goal: the whole `copyguard curate` job on the sample data runs at **>= 0.8x** the images/s of the "
        "SSCD model alone on the same images (pipeline overhead <= 25%). Pure and pipeline runs alternate; "
        "the ratio is the median of the per-round ratios. *Model share*: the fraction of the pipeline's "
        "wall time spent inside the embedder's batch calls (median over rounds), the ratio the job would "
        "reach with its model running as fast as in the pure runs; measured within each run, it is immune "
        "to load changes between runs. *Outside model* is the rest of the pipeline's wall time.",
        "",
    ]
    for tag, r in results.items():
        s, d = r["summary"], r["data"]
        parts.append(
            _table(
                ["images", "pure img/s", "pipeline img/s", "ratio", "model share", "goal", "result"],
                [
                    [
                        d["valid_images"],
                        s["pure_images_per_s_median"],
                        s["pipeline_images_per_s_median"],
                        s["ratio_median"],
                        s.get("model_share_median"),
                        f">= {s['goal_ratio']}",
                        _verdict(s["passes"]),
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
            _table(
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
                "Stage breakdown (once, same data): the job with a trivial embedder (no decoding, no model) "
                "takes the pipeline's own overhead; the plain functions in memory:",
                "",
                _table(
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
            f"Data: `{d['source']}` ({d['valid_images']} valid images). " + _machine_line(tag, r),
            "",
        ]
    return "\n".join(parts)


def _minhash(results: dict[str, dict[str, Any]]) -> str:
    parts = [
        "## Caption MinHash LSH: Beam vs plain datasketch",
        "",
        "The same captions through plain datasketch (`MinHash.bulk`, `MinHashLSH` insert + query, exact "
        "Jaccard check of every candidate, union-find), the job's in-memory function "
        "(`caption_groups`) and the Beam transform (`CaptionComponents` on the in-process runner, "
        "pipeline start-up included). No speed goal: Beam pays a fixed start-up and a shuffle per "
        "connected-components round for running distributed. Correctness goal: Beam finds exactly the "
        "in-memory groups. datasketch checks every candidate pair with the exact Jaccard, the job only "
        "each bucket member against the bucket's leaders, so it may link a few pairs fewer (last column: "
        "the job's same-group pairs against datasketch's).",
        "",
    ]
    for tag, r in results.items():
        s, c = r["summary"], r["captions"]
        cmp_ = s["in_memory_vs_datasketch"]
        parts.append(
            _table(
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
                        _verdict(s["beam_equals_in_memory"]),
                        f"{cmp_['precision']} / {cmp_['recall']}",
                    ]
                ],
            )
        )
        parts += ["", f"Captions from {', '.join(c['sources'])}. " + _machine_line(tag, r), ""]
    return "\n".join(parts)


def _faiss(results: dict[str, dict[str, Any]]) -> str:
    parts = [
        "## FAISS image clustering at 1e4-1e6 vectors",
        "",
        "Goal: **1e6** SSCD-like descriptors clustered (similarity graph + groups, production config) in "
        "**< 10 minutes** on this CPU with planted-pair recall **>= 0.95**. Synthetic 512-d unit vectors "
        "around random centres (see `benchmarks/bench_faiss.py` for the generator) with 5% of them in "
        "planted near-duplicate pairs at cosine 0.76-0.98. *Edge recall*: planted pairs found as "
        "similarity edges; *group recall*: planted pairs that end in one group. Up to `exact_max` the "
        "job runs an exact `IndexFlatIP` range search; above, an IVF partition (spherical k-means on a "
        "sample, every vector assigned to its `nprobe` nearest lists) joined list by list with matrix "
        "products. *Recall vs exact*: below `exact_max` the IVF path forced on the same data against the "
        "exact edges; above, the IVF edges of randomly chosen rows against an exact search of those rows.",
        "",
    ]
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
                    _verdict(s["verdict"]["passes"]),
                    (p.get("load_average_before") or ["?"])[0],
                ]
            )
        parts.append(
            _table(
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
            + _machine_line(tag, r),
            "",
        ]
    return "\n".join(parts)


def _embedders(results: dict[str, dict[str, Any]]) -> str:
    parts = [
        "## SSCD embedders",
        "",
        "Throughput of the packaged ONNX models: end to end (64 px crops, resized to 320 by the embedder) "
        "and model only (320 px input), best of the repeats; copies (JPEG q75, 90% crop at 64 px) should "
        "score > 0.75, different photos low.",
        "",
    ]
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
            _table(
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
        parts += ["", _machine_line(tag, r), ""]
    return "\n".join(parts)


SECTIONS: dict[str, Callable[[dict[str, dict[str, Any]]], str]] = {
    "curate": _curate,
    "minhash": _minhash,
    "faiss": _faiss,
    "embedders": _embedders,
}


def render(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The whole page."""
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python -m benchmarks.report` from benchmarks/results/<machine>/*.json; "
        "do not edit by hand. -->",
        "",
        "Performance claims live here, never in timed tests. Every figure below comes from one JSON file "
        "under `benchmarks/results/<machine>/`, which also records the machine, library versions and "
        "the load average at the start and end of the run. Ratios are measured side by side in one run "
        "(the machines are shared and noisy). Run everything with `make bench` "
        "(`python -m benchmarks.run_all`; `--quick` for a smoke run that leaves these results alone).",
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
    return "\n".join(lines).rstrip() + "\n"


def write_docs(
    results_root: str | Path = RESULTS, docs: str | Path = DOCS, include_quick: bool = False
) -> Path:
    """Render the results under ``results_root`` into ``docs``; returns its path."""
    text = render(load_results(results_root, include_quick))
    path = Path(docs)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(path), text)
    log.info("wrote %s", path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS), help="results root (default: benchmarks/results)")
    parser.add_argument("--docs", default=str(DOCS), help="output page (default: docs/benchmarks.md)")
    args = parser.parse_args(argv)
    setup_logging()
    print(f"wrote {write_docs(args.results, args.docs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
