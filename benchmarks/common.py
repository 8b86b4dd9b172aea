"""What every benchmark script shares: the result files of the lab's experiments, a script's ``main``, and
:func:`run_module` (a script or a GPU section in its own process, for ``run_all`` and ``bench_gpu``).

A result is ``benchmarks/results/<machine-tag>/<name>.json`` with the header of
:mod:`copyguard.pipelines.lab.results`: :func:`begin` (benchmark, command, commit, machine, load average at
the start) and :func:`finish` (load average at the end, wall time), so figures taken on a loaded machine
say so in their own file.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from copyguard.common.runtime import load_average, usable_cpus
from copyguard.pipelines.lab.results import RESULTS, default_machine, result_path, setup_logging, write_result
from copyguard.pipelines.lab.results import add_result_args as add_common_args
from copyguard.pipelines.lab.results import begin_result as begin
from copyguard.pipelines.lab.results import finish_result as finish

__all__ = ["RESULTS", "add_common_args", "begin", "default_machine", "finish", "load_average", "result_path",
           "run_module", "script_main", "setup_logging", "usable_cpus", "write_result"]  # fmt: skip

log = logging.getLogger("benchmarks")
ROOT = Path(__file__).resolve().parent.parent


def run_module(module: str, *args: str, timeout: float | None = None) -> tuple[int | None, float]:
    """``python -m module *args`` in a child process from the checkout: its exit code (None when it was
    killed after ``timeout`` seconds) and its seconds."""
    log.info("running %s %s", module, " ".join(args))
    start = time.perf_counter()
    try:
        code: int | None = subprocess.run(
            [sys.executable, "-m", module, *args], cwd=ROOT, timeout=timeout
        ).returncode
    except subprocess.TimeoutExpired:
        code = None
    return code, time.perf_counter() - start


def script_main(
    argv: list[str] | None,
    doc: str,
    name: str,
    add_args: Callable[[argparse.ArgumentParser], None],
    measure: Callable[[argparse.Namespace], dict[str, Any]],
    summary: Callable[[dict[str, Any]], str],
) -> int:
    """A benchmark's ``main``: the common arguments plus ``add_args``' (``args.argv`` is ``argv``), logging,
    ``measure(args)`` (a :func:`begin` report) written to ``<--out>/<--machine>/<name>.json``, and its
    one-line ``summary`` printed with the file's path. ``doc``'s first line describes the script."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_common_args(parser)
    add_args(parser)
    args = parser.parse_args(argv)
    args.argv = argv
    setup_logging(args.verbose)
    report = measure(args)
    path = write_result(report, args.out, args.machine, name)
    print(f"{summary(report)}; wrote {path}")
    return 0
