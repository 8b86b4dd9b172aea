"""Run every benchmark, then regenerate ``docs/benchmarks.md`` (``make bench``).

    python -m benchmarks.run_all [--quick] [--machine TAG] [--out DIR] [--only curate,faiss] [--docs PATH]

Each benchmark runs in its own Python process (``python -m benchmarks.<script>``), one after the other,
so that memory is returned between them and one failure does not stop the rest. Full runs write to
``benchmarks/results/<machine>/`` and then render ``docs/benchmarks.md``; about 25 minutes on two cores
(most of it the 1e6 FAISS run and the SSCD passes of the curation benchmark).

``--quick`` runs each script's smoke version (tiny sizes, about a minute in all) into a temporary folder
(or ``--out``) and renders the page next to those results, leaving the recorded results and the docs
untouched. Exits 1 when a benchmark failed.
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
from benchmarks.report import DOCS, write_docs

log = logging.getLogger("benchmarks.run_all")
BENCHMARKS = ("embedders", "minhash", "faiss", "curate")
ROOT = Path(__file__).resolve().parent.parent


def run_one(name: str, quick: bool, machine: str, out: str) -> tuple[int, float]:
    """``python -m benchmarks.bench_<name>`` in a child process; returns its exit code and seconds."""
    cmd = [sys.executable, "-m", f"benchmarks.bench_{name}", "--machine", machine]
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
        code, seconds = run_one(name, args.quick, args.machine, out)
        log.info("%s: %s in %.0f s", name, "ok" if code == 0 else f"FAILED (exit {code})", seconds)
        if code != 0:
            failed.append(name)
    write_docs(out, docs, include_quick=args.quick)
    print(f"results in {out}; page {docs}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
