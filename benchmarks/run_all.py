"""Run every benchmark and lab experiment, then regenerate ``docs/benchmarks.md`` and ``docs/results.md``.

    python -m benchmarks.run_all [--quick] [--machine TAG] [--out DIR] [--only curate,faiss] [--docs PATH]

``make bench`` runs this; ``make bench-quick`` adds ``--quick``. Each benchmark runs in its own Python
process (``python -m benchmarks.<script>``), one after the other, so that memory is returned between them
and one failure does not stop the rest. Full runs write to ``benchmarks/results/<machine>/`` and then render
both pages from every JSON file there (the lab model is trained once into ``.cache/copyguard`` and reused,
see ``copyguard.pipelines.lab_cache``).

``--quick`` runs each script's smoke version (tiny sizes and the tiny lab model) into a temporary folder
(or ``--out``), so every script is exercised end to end in under 15 minutes on two cores, then regenerates
``docs/results.md`` from the recorded results and prints which recorded figures are stale (measured on a
commit older than the code they measure, :mod:`benchmarks.staleness`). Exits 1 when a benchmark failed.
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
from benchmarks.report import DOCS, load_results, write_docs
from benchmarks.results_doc import write_results_doc
from benchmarks.staleness import stale_reason

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


def stale_results(root: str | Path) -> list[str]:
    """``machine/name: reason`` for every recorded result whose code changed since it was measured."""
    out, cache = [], {}
    for name, by_machine in sorted(load_results(root).items()):
        for machine, result in sorted(by_machine.items()):
            reason = stale_reason(name, result, cache)
            if reason:
                out.append(f"{machine}/{name}: {reason}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke versions into a temporary folder")
    parser.add_argument("--machine", default=default_machine(), help="results folder name")
    parser.add_argument(
        "--out", default=None, help="results root (default: benchmarks/results; --quick: temp)"
    )
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset to run")
    parser.add_argument("--docs", default=None, help="page to render (default: docs/benchmarks.md)")
    args = parser.parse_args(argv)
    setup_logging()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    tmp = tempfile.mkdtemp(prefix="copyguard-bench-") if args.quick and args.out is None else None
    out = args.out or tmp or str(RESULTS)
    docs = args.docs or (str(Path(out) / "benchmarks.md") if args.quick else str(DOCS))
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
    write_docs(out, docs, include_quick=args.quick)
    results_page = write_results_doc(RESULTS if args.quick else out)
    print(f"results in {out}; pages {docs} and {results_page}")
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
