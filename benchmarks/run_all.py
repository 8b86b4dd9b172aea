"""Run every benchmark and lab experiment, each in its own process, then regenerate the docs (:mod:`benchmarks.render`).

    python -m benchmarks.run_all [--quick] [--machine TAG] [--out DIR] [--only curate,faiss]

``make bench`` / ``make bench-quick`` (``--quick``: smoke sizes into a temporary folder, ``docs/results.md``
from the recorded results, and the list of stale recorded figures). Exits 1 when a benchmark failed; how
the runs are organised: docs/benchmark-methods-gpu.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from benchmarks.common import RESULTS, default_machine, run_module, setup_logging
from benchmarks.render import render_all, stale_results, write_benchmarks, write_results

log = logging.getLogger("benchmarks.run_all")
# result name -> the module that writes it (bench_curate also writes dedup.json: its manifest scored
# against the ground truth); FULL_ONLY have no smoke version (each needs the trained small lab model), so
# --quick skips them and only checks their recorded result for staleness.
SCRIPTS = {
    "embedders": "benchmarks.bench_embedders",
    "minhash": "benchmarks.bench_minhash",
    "faiss": "benchmarks.bench_faiss",
    "curate": "benchmarks.bench_curate",
    "lab_model": "copyguard.pipelines.lab.model_summary",
    "mitigation": "benchmarks.bench_mitigation",
    "lab_mitigation": "copyguard.pipelines.lab.mitigation_evidence",
    "train": "benchmarks.bench_train",
    "train_evidence": "copyguard.pipelines.lab.filter_evidence",
}
FULL_ONLY = ("lab_mitigation", "train_evidence")
BENCHMARKS = tuple(SCRIPTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke versions into a temporary folder")
    parser.add_argument("--machine", default=default_machine(), help="results folder name")
    parser.add_argument("--out", help="results root (default: benchmarks/results; --quick: temp)")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset to run")
    args = parser.parse_args(argv)
    setup_logging()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if unknown := sorted(set(names) - set(BENCHMARKS)):
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    out = args.out or (tempfile.mkdtemp(prefix="copyguard-bench-") if args.quick else str(RESULTS))
    flags = ["--machine", args.machine] + (["--out", out] if Path(out).resolve() != RESULTS.resolve() else [])
    flags += ["--quick"] if args.quick else []
    failed = []
    for name in names:
        if args.quick and name in FULL_ONLY:
            log.info("%s: no smoke version, skipped by --quick (its recorded result is checked)", name)
            continue
        code, seconds = run_module(SCRIPTS[name], *flags)
        log.info("%s: %s in %.0f s", name, "ok" if code == 0 else f"FAILED (exit {code})", seconds)
        failed += [name] if code else []
    if args.quick:  # the smoke figures stay out of docs/; docs/results.md from the recorded ones
        pages = [
            write_benchmarks(out, Path(out) / "benchmarks.md", include_quick=True),
            write_results(RESULTS),
        ]
    else:
        pages = render_all(out)
    print(f"results in {out}; pages {', '.join(str(p) for p in pages)}")
    if stale := stale_results(RESULTS if args.quick else out):
        print("stale recorded figures (re-run them with `make bench`):", *stale, sep="\n  ")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
