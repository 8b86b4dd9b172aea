"""Runtime facts and choices every stage needs: the torch device, CPU threads, and what machine ran a job.

``machine_info`` is the one description of a machine that result files, model cards and reports record
(CPU model, cores, memory, GPU, Python and library versions, load average). Nothing here imports torch at
module level, so the light stages (a Beam worker) can import it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from copyguard.common.errors import UsageError

if TYPE_CHECKING:
    import torch

__all__ = [
    "PACKAGES",
    "choose_threads",
    "cpu_model",
    "gpu_name",
    "load_average",
    "machine_info",
    "package_version",
    "peak_rss_mib",
    "resolve_device",
    "usable_cpus",
]

# The libraries whose versions a result depends on (recorded by ``machine_info``).
PACKAGES = (
    "numpy",
    "onnxruntime",
    "onnxruntime-gpu",
    "torch",
    "diffusers",
    "faiss-cpu",
    "faiss-gpu-cu12",
    "apache-beam",
    "datasketch",
    "pillow",
)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a usage error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} was asked for but torch sees no CUDA device")
    return device


def choose_threads(requested: int = 0) -> int:
    """CPU threads for torch: ``requested`` when > 0; else all cores on an idle machine, one otherwise.

    Small models gain little from a second thread, while OpenMP threads that compete with other busy
    processes spin and slow every step down several-fold (measured 4x on the 2-core lab machine).
    """
    if requested > 0:
        return requested
    try:
        idle = os.getloadavg()[0] < 0.5
    except OSError:
        idle = False
    return (os.cpu_count() or 1) if idle else 1


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


def machine_info(*, threads: int | None = None, device: str | None = None) -> dict[str, Any]:
    """What a figure came from: platform, CPU model and cores, memory, GPU, Python and library versions.

    ``threads`` is the number of CPU threads the work used (default: the usable cores); ``device`` the torch
    device it ran on, when it used torch.
    """
    info: dict[str, Any] = {
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
        "load_average": load_average(),
    }
    if device is not None:
        info["device"] = device
    return info


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def progress_bar(iterable: Any = None, *, enabled: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar over ``iterable``; off when ``enabled`` is false or the user asked for quiet (``-q`` sets
    ``TQDM_DISABLE``). tqdm itself reads that variable once, when it is imported, and an explicit ``disable=``
    overrides it, so every bar of ours goes through here."""
    from tqdm import tqdm

    quiet = os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")
    return tqdm(iterable, disable=quiet or not enabled, **kwargs)
