"""Run every benchmark and lab experiment, then regenerate the docs (:mod:`benchmarks.render`).

    python -m benchmarks.run_all [--quick] [--machine TAG] [--out DIR] [--only curate,faiss]

``make bench`` runs this; ``make bench-quick`` adds ``--quick``. Each benchmark runs in its own Python
process (``python -m benchmarks.<script>``), one after the other, so that memory is returned between them
and one failure does not stop the rest. Full runs write to ``benchmarks/results/<machine>/`` and then render
every generated page from the JSON there (the lab model is trained once into ``.cache/copyguard`` and reused,
see ``copyguard.pipelines.lab.cache``).

``--quick`` runs each script's smoke version (tiny sizes and the tiny lab model) into a temporary folder
(or ``--out``), so every script is exercised end to end in under 15 minutes on two cores, renders its
``benchmarks.md`` there, regenerates ``docs/results.md`` from the recorded results and prints which recorded
figures are stale (measured on a commit older than the code they measure,
:mod:`benchmarks.render.staleness`). Exits 1 when a benchmark failed.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, default_machine, setup_logging
from benchmarks.render import render_all
from benchmarks.render.benchmarks_page import write_benchmarks
from benchmarks.render.results_page import write_results
from benchmarks.render.staleness import stale_results

log = logging.getLogger("benchmarks.run_all")
# result name -> script module under benchmarks/
SCRIPTS = {
    "embedders": "bench_embedders",
    "minhash": "bench_minhash",
    "faiss": "bench_faiss",
    "curate": "bench_curate",
    "dedup": "bench_dedup",
    "lab_model": "bench_lab",
    "mitigation": "bench_mitigation",
    "lab_mitigation": "lab_mitigation",
    "train": "bench_train",
    "train_evidence": "train_evidence",
}
# Not run by --quick: they have no smoke version (each needs the trained small lab model).
FULL_ONLY = ("lab_mitigation", "train_evidence")
BENCHMARKS = tuple(SCRIPTS)
ROOT = Path(__file__).resolve().parent.parent


def run_one(name: str, quick: bool, machine: str, out: str) -> tuple[int, float]:
    """``python -m benchmarks.<script>`` in a child process; returns its exit code and seconds."""
    cmd = [sys.executable, "-m", f"benchmarks.{SCRIPTS[name]}", "--machine", machine]
    if Path(out).resolve() != RESULTS.resolve():
        cmd += ["--out", out]
    if quick:
        cmd.append("--quick")
    log.info("running %s", " ".join(cmd[1:]))
    start = time.perf_counter()
    code = subprocess.run(cmd, cwd=ROOT, check=False).returncode
    return code, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke versions into a temporary folder")
    parser.add_argument("--machine", default=default_machine(), help="results folder name")
    parser.add_argument(
        "--out", default=None, help="results root (default: benchmarks/results; --quick: temp)"
    )
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset to run")
    args = parser.parse_args(argv)
    setup_logging()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    tmp = tempfile.mkdtemp(prefix="copyguard-bench-") if args.quick and args.out is None else None
    out = args.out or tmp or str(RESULTS)
    failed = []
    for name in names:
        if args.quick and name in FULL_ONLY:
            log.info(
                "%s: no smoke version, skipped by --quick (its recorded result is checked for staleness)",
                name,
            )
            continue
        code, seconds = run_one(name, args.quick, args.machine, out)
        log.info("%s: %s in %.0f s", name, "ok" if code == 0 else f"FAILED (exit {code})", seconds)
        if code != 0:
            failed.append(name)
    if args.quick:  # the smoke figures stay out of docs/; docs/results.md from the recorded ones
        pages = [
            write_benchmarks(out, Path(out) / "benchmarks.md", include_quick=True),
            write_results(RESULTS),
        ]
    else:
        pages = render_all(out)
    print(f"results in {out}; pages {', '.join(str(p) for p in pages)}")
    stale = stale_results(RESULTS if args.quick else out)
    if stale:
        print("stale recorded figures (re-run them with `make bench`):")
        for line in stale:
            print(f"  {line}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
