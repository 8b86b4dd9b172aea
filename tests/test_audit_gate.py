"""The audit gate's condition parser and evaluation (no model needed)."""

from __future__ import annotations

import pytest

from copyguard.common.errors import UsageError
from copyguard.mitigation.audit_gate import check_measurable, evaluate_gate, parse_condition, parse_conditions
from copyguard.mitigation.config import AuditConfig

SETTINGS = ["none", "amg"]
METRICS = {
    "detection": {"prompts": 20, "flagged": 12, "flagged_share": 60.0},
    "settings": {
        "none": {"overall": {"top1": 0.7, "top5pct": 0.6, "pct_gt_0.5": 25.0, "pct_gt_0.4": 40.0}},
        "amg": {"overall": {"top1": 0.45, "top5pct": 0.4, "pct_gt_0.5": 0.0, "pct_gt_0.4": 5.0}},
    },
}


@pytest.mark.parametrize(
    ("text", "setting", "metric", "op", "value"),
    [
        ("share_above_0.5>0", "none", "share_above_0.5", ">", 0.0),
        ("flagged>10", None, "flagged", ">", 10.0),
        ("top1>=0.6", "none", "top1", ">=", 0.6),
        (" amg:top5 < 0.5 ", "amg", "top5", "<", 0.5),
        ("share_above_0.4!=1e-3", "none", "share_above_0.4", "!=", 0.001),
    ],
)
def test_parse(text: str, setting: str | None, metric: str, op: str, value: float) -> None:
    c = parse_condition(text, SETTINGS)
    assert (c.setting, c.metric, c.op, c.value) == (setting, metric, op, value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("copies>3", "unknown metric 'copies'; valid: prompts, flagged"),
        ("top1 = 0.5", "expected [SETTING:]METRIC OP NUMBER"),
        ("top1>high", "'high' is not a number"),
        ("rt:top1>0.5", "setting 'rt' is not audited"),
        ("amg:flagged>1", "takes no setting prefix"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_condition(text, SETTINGS)


def test_evaluate() -> None:
    conds = parse_conditions(
        ["share_above_0.5>0", "amg:share_above_0.5>0", "flagged>10", "top1>=0.8"], SETTINGS
    )
    results = evaluate_gate(conds, METRICS)
    assert [r.failed for r in results] == [True, False, True, False]
    assert results[0].describe() == "share_above_0.5>0: share_above_0.5 (none) = 25"
    gated_on_amg = parse_conditions(["share_above_0.5>0"], SETTINGS, default_setting="amg")
    assert not evaluate_gate(gated_on_amg, METRICS)[0].failed
    with pytest.raises(UsageError, match="was not measured"):
        evaluate_gate(parse_conditions(["auc<0.9"], SETTINGS), METRICS)


def test_check_measurable() -> None:
    kw = {"similarity": "sscd", "has_real_images": False, "has_labels": False, "has_clip": False}
    check_measurable(parse_conditions(AuditConfig().fail_on, SETTINGS), **kw)  # the defaults always work
    for text, why in [("fid>50", "--real-images"), ("auc<0.9", "labels"), ("clip<20", "CLIP"),
                      ("p5_nl2<1.4", "similarity=nl2")]:  # fmt: skip
        with pytest.raises(UsageError, match=why):
            check_measurable(parse_conditions([text], SETTINGS), **kw)
