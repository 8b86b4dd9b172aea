"""The one renderer: every generated page under ``docs/`` from the JSON under ``benchmarks/results/``.

    python -m benchmarks.render [--machine dev-2cpu] [--results benchmarks/results] [--docs docs]

Pages: ``docs/benchmarks.md`` (:mod:`.benchmarks_page`), ``docs/results.md`` (:mod:`.results_page`,
with its plots in ``docs/img/``) and ``docs/mitigation.md`` (:mod:`.mitigation`). Tables and numbers go
through :mod:`copyguard.common.fmt`; prose is hand-written in ``docs/_partials/`` and included verbatim.
The benchmark scripts only measure and write JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import RESULTS
from benchmarks.render.base import CPU, DOCS
from benchmarks.render.benchmarks_page import write_benchmarks
from benchmarks.render.mitigation import write_mitigation
from benchmarks.render.results_page import write_results

__all__ = ["RESULTS", "main", "render_all"]


def render_all(results: str | Path = RESULTS, machine: str = CPU, docs: str | Path = DOCS) -> list[Path]:
    """Regenerate every generated page under ``docs`` from the JSON under ``results``: benchmarks.md
    (every machine), results.md and mitigation.md (``machine``'s figures). Returns the pages written."""
    docs = Path(docs)
    return [
        write_benchmarks(results, docs / "benchmarks.md"),
        write_results(results, docs / "results.md", machine),
        write_mitigation(results, machine, docs / "mitigation.md"),
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.render``: regenerate the docs from the recorded JSON (no measuring)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.render", description=main.__doc__)
    parser.add_argument("--results", default=str(RESULTS), help="results root (default: benchmarks/results)")
    parser.add_argument(
        "--machine", default=CPU, help=f"machine whose figures results.md shows (default {CPU})"
    )
    parser.add_argument("--docs", default=str(DOCS), help="folder of the pages (default: docs)")
    args = parser.parse_args(argv)
    for page in render_all(args.results, args.machine, args.docs):
        print(f"wrote {page}")
    return 0
