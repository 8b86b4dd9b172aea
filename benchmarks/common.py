"""What every benchmark script shares: the result files of the lab's experiments, a script's ``main``, and
:func:`run_module` (a script or a GPU section in its own process, for ``run_all`` and ``bench_gpu``).

A result is ``benchmarks/results/<machine-tag>/<name>.json`` with the header of
:mod:`copyguard.pipelines.lab.results`: :func:`begin` (benchmark, command, commit, machine, load average at
the start) and :func:`finish` (load average at the end, wall time), so figures taken on a loaded machine
say so in their own file.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

from copyguard.common.runtime import load_average, usable_cpus
from copyguard.pipelines.lab.results import RESULTS, default_machine, result_path, setup_logging, write_result
from copyguard.pipelines.lab.results import add_result_args as add_common_args
from copyguard.pipelines.lab.results import begin_result as begin
from copyguard.pipelines.lab.results import finish_result as finish
from copyguard.pipelines.lab.results import result_main as script_main

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
