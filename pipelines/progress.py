"""Progress of the curation job: Beam metric counters, logged while the job runs and summed at its end.

Each counting step holds a :class:`Progress`: it increments the Beam counter ``copyguard/<stage>`` (what the
Dataflow, Flink and Spark UIs show live) and logs the worker's running count at most every
``interval`` seconds, so a long local run is never silent. :func:`log_totals` logs the job-wide totals from
the pipeline result's metrics once the job is done.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

__all__ = ["NAMESPACE", "STAGES", "Progress", "log_totals", "totals"]

log = logging.getLogger("copyguard.pipelines.curate")

NAMESPACE = "copyguard"
STAGES = {  # counter name -> what it counts, as logged
    "samples_read": "samples read",
    "samples_rejected": "samples rejected while reading",
    "images_embedded": "images embedded",
    "components_decided": "duplicate groups decided",
}


class Progress:
    """One stage's counter; :meth:`add` counts and, every ``interval`` seconds, logs this worker's total."""

    def __init__(self, stage: str, interval: float = 30.0) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown progress stage {stage!r}")
        self.stage, self.interval = stage, interval
        self.counter = Metrics.counter(NAMESPACE, stage)
        self.count = 0
        self.started = self.last = time.monotonic()

    def add(self, n: int = 1) -> None:
        self.counter.inc(n)
        self.count += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            rate = self.count / max(now - self.started, 1e-9)
            log.info("%s: %d so far on this worker (%.1f/s)", STAGES[self.stage], self.count, rate)

    def __getstate__(self) -> dict[str, Any]:  # a DoFn is pickled to the workers: the clock restarts there
        return {"stage": self.stage, "interval": self.interval}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["stage"], state["interval"])


def totals(result: Any) -> dict[str, int]:
    """The job-wide committed (else attempted) value of each :data:`STAGES` counter in ``result``."""
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except Exception:  # a runner without metrics support
        return {}
    out: dict[str, int] = {}
    for c in counters:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return out


def log_totals(result: Any) -> dict[str, int]:
    """Log the job's counter totals (one line) and return them."""
    found = totals(result)
    if found:
        log.info("totals: %s", ", ".join(f"{STAGES.get(k, k)} {v}" for k, v in sorted(found.items())))
    return found
