"""Timing calls on the CPU or a GPU: one call, alternating rounds of named calls, and per-round ratios.

Comparing variants round by round (each round runs every variant once, in order) keeps a slow patch of a
shared machine, or a GPU changing clocks, from landing on one variant only. torch is imported only to
synchronize a CUDA device.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Deadline", "median_ratio", "throughput", "time_rounds", "timed"]

log = logging.getLogger(__name__)


def timed(fn: Callable[[], Any], device: str = "cpu") -> tuple[float, Any]:
    """Seconds of ``fn()`` (CUDA synchronized before and after it when ``device`` is a GPU) and its result."""
    if str(device).startswith("cuda"):
        import torch

        sync: Callable[[], None] = torch.cuda.synchronize
    else:
        sync = lambda: None  # noqa: E731
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def time_rounds(
    calls: dict[str, Callable[[], Any]],
    rounds: int,
    device: str = "cpu",
    stop: Callable[[], bool] | None = None,
    describe: Callable[[Any], Any] | None = None,
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Seconds of every call per round, and ``describe(result)`` of each call's first result (None without
    ``describe``). ``stop()`` true ends the rounds early, never before the first."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    described: dict[str, Any] = {}
    for r in range(rounds):
        if r and stop is not None and stop():
            break
        for name, fn in calls.items():
            sec, out = timed(fn, device)
            times[name].append(sec)
            described.setdefault(name, describe(out) if describe is not None else None)
            log.info("round %d %s: %.3f s", r, name, sec)
    return times, described


def median_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float | None:
    """Median of the per-round ratios ``numerators[i] / denominators[i]`` (rounds with a zero denominator
    are skipped; None when all are)."""
    pairs = [x / y for x, y in zip(numerators, denominators, strict=True) if y]
    return statistics.median(pairs) if pairs else None


class Deadline:
    """A time budget: seconds from now (:meth:`left`), and whether it is spent but for ``margin``."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def expired(self, margin: float = 0.0) -> bool:
        return self.left() <= margin


def throughput(embedder: Any, images: Sequence[Any], batch_size: int, repeats: int) -> dict[str, float]:
    """Images per second of ``embedder.embed`` over ``images`` in batches: the best of ``repeats`` timed
    passes (the least disturbed by other processes on a shared machine) and the median's ms per image."""
    embedder.embed(images[:batch_size])  # warm-up at this batch shape
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(images), batch_size):
            embedder.embed(images[i : i + batch_size])
        passes.append((time.perf_counter() - start) / len(images))
    best, median = min(passes), statistics.median(passes)
    return {"images_per_s": round(1 / best, 2), "ms_per_image": round(1000 * best, 2),
            "ms_per_image_median": round(1000 * median, 2)}  # fmt: skip
