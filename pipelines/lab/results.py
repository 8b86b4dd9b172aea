"""Result files of the lab's experiments: one JSON per experiment and machine, with a common header.

Every file is ``<results root>/<machine tag>/<name>.json`` (root by default ``benchmarks/results`` of the
source checkout, where the benchmark renderer reads them) and starts with the same header
(:func:`begin_result`): the experiment's name, the command that reproduces it, the commit, the machine
(:func:`copyguard.common.runtime.machine_info` plus its tag) and the load average at the start;
:func:`finish_result` adds the load average at the end and the wall time. Figures taken on a loaded machine
say so in their own file.
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

__all__ = [
    "RESULTS",
    "result_main",
    "add_result_args",
    "begin_result",
    "default_machine",
    "finish_result",
    "git_info",
    "machine_tag",
    "result_path",
    "setup_logging",
    "write_result",
]

log = logging.getLogger(__name__)
# pipelines/lab/results.py -> the source checkout (its benchmarks/ holds the recorded results)
SOURCE_ROOT = Path(__file__).resolve().parents[2]
IN_CHECKOUT = (SOURCE_ROOT / "benchmarks").is_dir()
RESULTS = SOURCE_ROOT / "benchmarks" / "results" if IN_CHECKOUT else Path("benchmarks") / "results"


def machine_tag(text: str) -> str:
    """A folder-safe machine tag."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "machine"


def default_machine() -> str:
    """``$COPYGUARD_BENCH_MACHINE``, else ``<hostname>-<cores>cpu``."""
    return os.environ.get("COPYGUARD_BENCH_MACHINE") or f"{platform.node()}-{runtime.usable_cpus()}cpu"


def git_info() -> dict[str, Any]:
    """The commit the figures were measured on and whether the working tree had uncommitted changes (None
    outside a git checkout)."""
    root = SOURCE_ROOT if IN_CHECKOUT else Path.cwd()

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def begin_result(
    name: str,
    module: str,
    argv: list[str] | None,
    tag: str,
    quick: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """A result header: experiment name, the command that reproduces it (``python -m <module> <argv>``;
    ``argv`` None: ``sys.argv[1:]``), commit, machine, start time and load average at the start."""
    args = list(sys.argv[1:] if argv is None else argv)
    return {
        "benchmark": name,
        "quick": quick,
        "command": f"python -m {module} {shlex.join(args)}".strip(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": git_info(),
        "machine": {
            "tag": tag,
            **runtime.machine_info(threads=threads),
            "load_average_at_start": runtime.load_average(),
        },
        "_t0": time.perf_counter(),
    }


def finish_result(report: dict[str, Any]) -> dict[str, Any]:
    """Add the load average at the end and the wall time to a :func:`begin_result` header (in place)."""
    t0 = report.pop("_t0", None)
    report["machine"]["load_average_at_end"] = runtime.load_average()
    if t0 is not None:
        report["wall_s"] = round(time.perf_counter() - t0, 1)
    return report


def result_path(out: str | Path, tag: str, name: str) -> Path:
    """``<out>/<machine_tag(tag)>/<name>.json``."""
    return Path(out) / machine_tag(tag) / f"{name}.json"


def write_result(report: dict[str, Any], out: str | Path, tag: str, name: str) -> Path:
    """Write ``report`` (finished with :func:`finish_result` when it was not yet) to :func:`result_path`."""
    if "_t0" in report:
        finish_result(report)
    path = result_path(out, tag, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(path), json.dumps(report, indent=2) + "\n")
    log.info("wrote %s", path)
    return path


def add_result_args(parser: argparse.ArgumentParser) -> None:
    """``--quick``, ``--machine``, ``--out`` and ``-v``, the same for every experiment and benchmark."""
    parser.add_argument("--quick", action="store_true", help="a fast smoke version at tiny sizes")
    parser.add_argument(
        "--machine",
        default=default_machine(),
        help="results folder name (default: $COPYGUARD_BENCH_MACHINE or <hostname>-<cores>cpu)",
    )
    parser.add_argument("--out", default=str(RESULTS), help="results root (default: benchmarks/results)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with ``verbose``) with timestamps; Apache Beam's own INFO chatter silenced."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("apache_beam").setLevel(logging.DEBUG if verbose else logging.WARNING)


def result_main(
    argv: list[str] | None,
    doc: str,
    name: str,
    add_args: Callable[[argparse.ArgumentParser], None],
    measure: Callable[[argparse.Namespace], dict[str, Any]],
    summary: Callable[[dict[str, Any]], str],
) -> int:
    """A result script's ``main``: the common arguments plus ``add_args``' (``args.argv`` is ``argv``), logging,
    ``measure(args)`` (a :func:`begin` report) written to ``<--out>/<--machine>/<name>.json``, and its
    one-line ``summary`` printed with the file's path. ``doc``'s first line describes the script."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_result_args(parser)
    add_args(parser)
    args = parser.parse_args(argv)
    args.argv = argv
    setup_logging(args.verbose)
    report = measure(args)
    path = write_result(report, args.out, args.machine, name)
    print(f"{summary(report)}; wrote {path}")
    return 0
