"""Helpers shared by the benchmark scripts: machine description, load average, result JSON, arguments.

Every result file is ``benchmarks/results/<machine-tag>/<name>.json`` and starts with the same header
(:func:`begin`): the benchmark's name, the command, the machine (:func:`machine_info`: platform, CPU model,
core counts, memory, library versions) and the load average when the run started; :func:`finish` adds the
load average at the end and the wall time. Figures taken on a loaded machine say so in their own file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from copyguard.common import runtime
from copyguard.common.fileops import atomic_write
from copyguard.common.runtime import PACKAGES, cpu_model, load_average, package_version, usable_cpus

__all__ = [
    "PACKAGES",
    "RESULTS",
    "add_common_args",
    "begin",
    "cpu_model",
    "default_machine",
    "finish",
    "git_info",
    "load_average",
    "machine_info",
    "machine_tag",
    "package_version",
    "result_path",
    "script_main",
    "setup_logging",
    "usable_cpus",
    "write_result",
]

RESULTS = Path(__file__).resolve().parent / "results"


def machine_tag(text: str) -> str:
    """A folder-safe machine tag."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "machine"


def default_machine() -> str:
    """``$COPYGUARD_BENCH_MACHINE``, else ``<hostname>-<cores>cpu``."""
    return os.environ.get("COPYGUARD_BENCH_MACHINE") or f"{platform.node()}-{usable_cpus()}cpu"


def machine_info(tag: str, threads: int | None = None) -> dict[str, Any]:
    """The machine record of a result file: :func:`copyguard.common.runtime.machine_info` plus its tag."""
    return {"tag": tag, **runtime.machine_info(threads=threads)}


def git_info() -> dict[str, Any]:
    """The commit the figures were measured on and whether the working tree had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def begin(
    name: str,
    module: str,
    argv: list[str] | None,
    tag: str,
    quick: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """A result header: benchmark name, the command that reproduces it, machine, start time and the load
    average at the start. ``module`` is the script's module (``benchmarks.bench_curate``), ``argv`` its
    arguments (``None``: ``sys.argv[1:]``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return {
        "benchmark": name,
        "quick": quick,
        "command": f"python -m {module} {shlex.join(args)}".strip(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": git_info(),
        "machine": {**machine_info(tag, threads), "load_average_at_start": load_average()},
        "_t0": time.perf_counter(),
    }


def finish(report: dict[str, Any]) -> dict[str, Any]:
    """Add the load average at the end and the benchmark's wall time to a :func:`begin` header."""
    t0 = report.pop("_t0", None)
    report["machine"]["load_average_at_end"] = load_average()
    if t0 is not None:
        report["wall_s"] = round(time.perf_counter() - t0, 1)
    return report


def result_path(out: str | Path, tag: str, name: str) -> Path:
    return Path(out) / machine_tag(tag) / f"{name}.json"


def write_result(report: dict[str, Any], out: str | Path, tag: str, name: str) -> Path:
    """Write ``report`` (finished with :func:`finish` when it was not yet) to ``<out>/<tag>/<name>.json``."""
    if "_t0" in report:
        finish(report)
    path = result_path(out, tag, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(path), json.dumps(report, indent=2) + "\n")
    logging.getLogger("benchmarks").info("wrote %s", path)
    return path


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """``--quick``, ``--machine`` and ``--out``, the same for every script."""
    parser.add_argument("--quick", action="store_true", help="a fast smoke version at tiny sizes")
    parser.add_argument(
        "--machine",
        default=default_machine(),
        help="results folder name (default: $COPYGUARD_BENCH_MACHINE or <hostname>-<cores>cpu)",
    )
    parser.add_argument("--out", default=str(RESULTS), help="results root (default: benchmarks/results)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Beam logs every type-hint conversion and bundle statistic at INFO: keep its warnings only.
    logging.getLogger("apache_beam").setLevel(logging.DEBUG if verbose else logging.WARNING)


def script_main(
    argv: list[str] | None,
    doc: str,
    name: str,
    add_args: Callable[[argparse.ArgumentParser], None],
    measure: Callable[[argparse.Namespace], dict[str, Any]],
    summary: Callable[[dict[str, Any]], str],
) -> int:
    """The ``main`` of a benchmark script: the common arguments plus ``add_args``', logging, ``measure``
    (returns the :func:`begin` report), the JSON written to ``<--out>/<--machine>/<name>.json`` and a
    one-line ``summary`` of the report printed with the file's path. ``doc``'s first line describes it."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_common_args(parser)
    add_args(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    report = measure(args)
    path = write_result(report, args.out, args.machine, name)
    print(f"{summary(report)}; wrote {path}")
    return 0
