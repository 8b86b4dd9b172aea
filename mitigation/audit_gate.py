"""The audit's release gate: ``--fail-on`` conditions over the audit's metrics.

A condition is ``[SETTING:]METRIC OP NUMBER``, e.g. ``share_above_0.5>0``, ``flagged>10``, ``top1>=0.6``,
``amg:top5>0.5``. OP is one of ``> >= < <= == !=``. The gate **fails** when any condition is true.
Per-generation metrics (Chen et al., CVPR 2024; Somepalli et al., NeurIPS 2023) refer to the setting named by the prefix (``none`` = no
mitigation, or a configured mitigation) and, without a prefix, to ``audit.gate_on`` (default ``none``).
Shares are percentages of generations, as in the results table of Chen et al. (CVPR 2024).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from copyguard.common.errors import UsageError

__all__ = [
    "DETECTION_METRICS",
    "GENERATION_METRICS",
    "Condition",
    "GateResult",
    "check_measurable",
    "evaluate_gate",
    "gate_section",
    "metric_names",
    "parse_condition",
    "parse_conditions",
]

# gate name -> (key in the setting's metrics, similarity mode it needs or None for any)
GENERATION_METRICS: dict[str, tuple[str, str | None]] = {
    "top5": ("top5pct", "sscd"),
    "top1": ("top1", "sscd"),
    "share_above_0.5": ("pct_gt_0.5", "sscd"),
    "share_above_0.4": ("pct_gt_0.4", "sscd"),
    "mean_similarity": ("mean", "sscd"),
    "p5_nl2": ("p5", "nl2"),
    "min_nl2": ("min", "nl2"),
    "share_below_1.4": ("pct_lt_1.4", "nl2"),
    "share_below_1.6": ("pct_lt_1.6", "nl2"),
    "mean_nl2": ("mean", "nl2"),
    "fid": ("fid", None),
    "clip": ("clip", None),
}
DETECTION_METRICS = ("prompts", "flagged", "flagged_share", "auc", "tpr_at_1pct_fpr")
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_PATTERN = re.compile(r"^\s*(?:([A-Za-z][\w-]*)\s*:)?\s*([A-Za-z][\w.]*?)\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$")


def metric_names() -> list[str]:
    """Every metric a condition may name."""
    return [*DETECTION_METRICS, *GENERATION_METRICS]


@dataclass(frozen=True)
class Condition:
    """One parsed condition; ``setting`` is None for detection metrics."""

    text: str
    setting: str | None
    metric: str
    op: str
    value: float

    def holds(self, actual: float) -> bool:
        """True when ``actual OP value``, i.e. when this condition fails the gate."""
        return _OPS[self.op](float(actual), self.value)


@dataclass(frozen=True)
class GateResult:
    """One condition evaluated: the measured value and whether the condition holds (fails the gate)."""

    condition: Condition
    actual: float
    failed: bool

    def describe(self) -> str:
        """``CONDITION: METRIC (SETTING) = ACTUAL``, as the CLI prints a failed condition."""
        where = f" ({self.condition.setting})" if self.condition.setting else ""
        return f"{self.condition.text}: {self.condition.metric}{where} = {self.actual:.4g}"


def parse_condition(text: str, settings: Sequence[str], default_setting: str = "none") -> Condition:
    """Parse one condition; UsageError naming the valid metrics or settings when it does not fit."""
    m = _PATTERN.match(text)
    if not m:
        raise UsageError(
            f"--fail-on {text!r}: expected [SETTING:]METRIC OP NUMBER with OP one of > >= < <= == !=, "
            "e.g. share_above_0.5>0"
        )
    prefix, metric, op, raw = m.groups()
    if metric not in DETECTION_METRICS and metric not in GENERATION_METRICS:
        raise UsageError(f"--fail-on {text!r}: unknown metric {metric!r}; valid: {', '.join(metric_names())}")
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"--fail-on {text!r}: {raw!r} is not a number") from None
    if metric in DETECTION_METRICS:
        if prefix is not None:
            raise UsageError(f"--fail-on {text!r}: detection metric {metric!r} takes no setting prefix")
        return Condition(text.strip(), None, metric, op, value)
    setting = prefix if prefix is not None else default_setting
    if setting not in settings:
        raise UsageError(
            f"--fail-on {text!r}: setting {setting!r} is not audited; audited: {', '.join(settings)}"
        )
    return Condition(text.strip(), setting, metric, op, value)


def parse_conditions(
    texts: Sequence[str], settings: Sequence[str], default_setting: str = "none"
) -> list[Condition]:
    """:func:`parse_condition` of each text, in order."""
    return [parse_condition(t, settings, default_setting) for t in texts]


def check_measurable(
    conditions: Sequence[Condition],
    *,
    similarity: str,
    has_real_images: bool,
    has_labels: bool,
    has_clip: bool,
) -> None:
    """Fail early (UsageError) when a condition names a metric this audit will not measure."""
    for c in conditions:
        why = None
        if c.metric in GENERATION_METRICS:
            mode = GENERATION_METRICS[c.metric][1]
            if mode is not None and mode != similarity:
                why = f"it needs audit.similarity={mode}, this audit uses {similarity}"
            elif c.metric == "fid" and not has_real_images:
                why = "FID needs --real-images"
            elif c.metric == "clip" and not has_clip:
                why = "no CLIP model configured (audit.clip_model)"
        elif c.metric in ("auc", "tpr_at_1pct_fpr") and not has_labels:
            why = "the prompt file carries no labels of both kinds"
        if why:
            raise UsageError(f"--fail-on {c.text!r}: {c.metric} is not measured: {why}")


def _lookup(metrics: Mapping[str, Any], c: Condition) -> float | None:
    if c.setting is None:
        return metrics.get("detection", {}).get(c.metric)
    setting = metrics.get("settings", {}).get(c.setting, {})
    return setting.get("overall", {}).get(GENERATION_METRICS[c.metric][0])


def evaluate_gate(conditions: Sequence[Condition], metrics: Mapping[str, Any]) -> list[GateResult]:
    """Each condition against ``metrics`` (the report's ``metrics`` section); UsageError if one is missing."""
    results = []
    for c in conditions:
        actual = _lookup(metrics, c)
        if actual is None:
            raise UsageError(f"--fail-on {c.text!r}: {c.metric} was not measured in this audit")
        results.append(GateResult(c, float(actual), c.holds(float(actual))))
    return results


def gate_section(results: Sequence[GateResult]) -> dict[str, Any]:
    """The report's ``gate`` section: the verdict and every condition with its measured value."""
    return {
        "passed": not any(r.failed for r in results),
        "conditions": [
            {"condition": r.condition.text, "actual": r.actual, "failed": r.failed} for r in results
        ],
    }
