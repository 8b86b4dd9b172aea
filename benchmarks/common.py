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
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from copyguard.curation.fileops import atomic_write

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
    "setup_logging",
    "usable_cpus",
    "write_result",
]

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = (
    "numpy",
    "onnxruntime",
    "torch",
    "faiss-cpu",
    "faiss-gpu-cu12",
    "apache-beam",
    "datasketch",
    "pillow",
)


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def usable_cpus() -> int:
    """Cores this process may run on (the affinity mask on Linux, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's ``model name`` from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    if not hasattr(os, "getloadavg"):
        return None
    return [round(x, 2) for x in os.getloadavg()]


def machine_tag(text: str) -> str:
    """A folder-safe machine tag."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "machine"


def default_machine() -> str:
    """``$COPYGUARD_BENCH_MACHINE``, else ``<hostname>-<cores>cpu``."""
    return os.environ.get("COPYGUARD_BENCH_MACHINE") or f"{platform.node()}-{usable_cpus()}cpu"


def gpu_name() -> str | None:
    """The first NVIDIA GPU's name from ``nvidia-smi``, or None on a machine without one."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    names = done.stdout.strip().splitlines()
    return names[0] if names else None


def machine_info(tag: str, threads: int | None = None) -> dict[str, Any]:
    """What the figures came from: platform, CPU model and cores, memory, Python and library versions."""
    return {
        "tag": tag,
        "node": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "threads": threads if threads is not None else usable_cpus(),
        "memory_gib": _memory_gib(),
        "gpu": gpu_name(),
        "python": platform.python_version(),
        "versions": {p: package_version(p) for p in PACKAGES},
    }


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
