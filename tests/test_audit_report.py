"""The audit's report.html and the report.json parts added by run_audit, on hand-made data (no model runs).

The sample (:func:`tests.report_samples.audit_report`) fails its gate on ``share_above_0.5`` through prompt
#2, which the detector did not flag: the page must still show that generation first.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from copyguard.mitigation import audit as audit_mod
from copyguard.mitigation.audit_facts import gate_details, run_facts, top_similar, weights_hash
from copyguard.mitigation.audit_gate import evaluate_gate, gate_section, parse_conditions
from copyguard.mitigation.audit_report import render_html, write_reports
from copyguard.mitigation.config import AuditConfig
from copyguard.mitigation.prompts import PromptRecord
from tests.report_samples import audit_report, chromium, run_chromium


@pytest.fixture
def sample(tmp_path: Path) -> tuple[dict[str, Any], dict, Path]:
    report, train = audit_report(tmp_path)
    return report, train, tmp_path


def _section(page: str, ident: str) -> str:
    """The HTML from ``<h2 id='ident'>`` up to the next ``<h2``."""
    start = page.index(f"<h2 id='{ident}'>")
    end = page.find("<h2", start + 1)
    return page[start : end if end > 0 else len(page)]


def test_sections_come_worst_case_first(sample) -> None:
    report, train, out = sample
    page = render_html(report, out, train)
    order = [page.index(f"<h2 id='{s}'>") for s in ("gate", "summary", "top", "flagged", "prompts", "run")]
    assert order == sorted(order)
    assert page.index("<h2 id='gate'>") < page.index("<h2 id='detection'>") < page.index("<h2 id='run'>")


def test_verdict_lists_failing_conditions_first_with_measured_vs_threshold(sample) -> None:
    report, train, out = sample
    gate = _section(render_html(report, out, train), "gate")
    assert "<span class='fail'>FAILED</span>: 1 condition of 2 holds" in gate
    rows = re.findall(r"<tr class='(\w*)'>(.*?)</tr>", gate)
    assert [cls for cls, _ in rows] == ["fail", ""]  # failing first though listed second
    assert "share_above_0.5&gt;1" in rows[0][1] and "<td>30</td>" in rows[0][1] and "&gt; 1" in rows[0][1]
    assert "FAILS the gate" in rows[0][1] and "&gt; 0.99" in rows[1][1]


def test_most_similar_generations_shown_whether_flagged_or_not(sample) -> None:
    report, train, out = sample
    top = _section(render_html(report, out, train), "top")
    pairs = top.split("<div class='pair'>")[1:]
    assert len(pairs) == len(report["top_similar"])
    first = pairs[0]  # the gate's culprit: unflagged prompt #2, nearest train/0007
    assert "sim 0.97" in first and "not flagged" in first and "train/0007" in first
    assert "alt='generation'" in first and "alt='training image'" in first
    assert any("<span class='fail'>flagged</span>" in p for p in pairs)


def test_missing_values_and_plurals(sample) -> None:
    report, train, out = sample
    report["config"]["seeds"] = [0]
    train.pop("train/0051")  # a training image the shards no longer hold
    page = render_html(report, out, train)
    assert "None" not in page
    assert "5 prompts × 1 seed per setting" in page and "1 seeds" not in page
    assert _section(page, "top").count("<div class='missing'>not available</div>") == 1
    run = _section(page, "run")
    assert "<th class='l'>LoRA</th><td class='l'>-</td>" in run and "4096" in run and "ab" * 32 in run
    report["config"]["seeds"] = [0, 1]
    assert "5 prompts × 2 seeds" in render_html(report, out, train)


def test_all_prompts_table_is_sortable_and_escaped(sample) -> None:
    report, train, out = sample
    page = render_html(report, out, train)
    table = _section(page, "prompts")
    assert "<table class='sortable' id='prompt-table'>" in table and table.count("<tr>") == 1 + 5
    assert "data-initial='descending'" in table and "<td data-v='0.97'>0.97</td>" in table
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in table
    assert "<script>" not in page and "<script type='text/javascript'>" in page  # only the sort script
    assert "src='images/" not in page and "http" not in page.split("<script", 1)[1]  # self-contained


@pytest.mark.skipif(chromium() is None, reason="chromium not installed")
def test_sort_script_runs_in_headless_chromium(sample) -> None:
    report, train, out = sample
    write_reports(report, out, train)
    source = (out / "report.html").read_text()
    dom = run_chromium(out / "report.html", "--dump-dom")

    def first_rows(html: str) -> list[str]:
        body = html.split("id='prompt-table'" if "id='prompt-table'" in html else 'id="prompt-table"', 1)[1]
        return re.findall(r"<tr><td[^>]*>(\d+)</td>", body)[:5]

    assert first_rows(source) == ["0", "1", "2", "3", "4"]  # written in prompt order
    assert first_rows(dom) == ["2", "0", "4", "3", "1"]  # sorted by the script: worst similarity first
    assert 'aria-sort="descending"' in dom


def test_top_similar_orders_by_closeness_over_all_prompts() -> None:
    prompts = [
        {"index": 0, "prompt": "a", "flagged": True, "score": 3.0, "generations": {"none": [
            {"seed": 0, "image": "a0", "nearest_key": "k1", "similarity": 0.2},
            {"seed": 1, "image": "a1", "nearest_key": "k1", "similarity": None}]}},
        {"index": 1, "prompt": "b", "flagged": False, "score": 1.0, "generations": {"none": [
            {"seed": 0, "image": "b0", "nearest_key": "k2", "similarity": 0.9}], "amg": [
            {"seed": 0, "image": "b1", "nearest_key": "k3", "similarity": 0.5}]}},
    ]  # fmt: skip
    top = top_similar(prompts, "sscd", 2)
    assert [(g["prompt_index"], g["setting"], g["similarity"]) for g in top] == [
        (1, "none", 0.9),
        (1, "amg", 0.5),
    ]
    assert top[0] == {"prompt_index": 1, "prompt": "b", "setting": "none", "seed": 0, "similarity": 0.9,
                      "nearest_key": "k2", "image": "b0", "flagged": False, "score": 1.0}  # fmt: skip
    assert [g["image"] for g in top_similar(prompts, "nl2", 5)] == ["a0", "b1", "b0"]  # lowest nL2 first


def test_gate_details_carry_threshold_and_operator() -> None:
    conditions = parse_conditions(["share_above_0.5>1", "amg:top1>=0.8"], ["none", "amg"])
    metrics = {
        "detection": {"prompts": 2, "flagged": 0, "flagged_share": 0.0},
        "settings": {s: {"overall": {"pct_gt_0.5": 30.0, "top1": 0.5}} for s in ("none", "amg")},
    }
    results = evaluate_gate(conditions, metrics)
    gate = gate_details(gate_section(results), results)
    assert gate["passed"] is False
    assert [
        (c["setting"], c["metric"], c["op"], c["threshold"], c["failed"]) for c in gate["conditions"]
    ] == [
        ("none", "share_above_0.5", ">", 1.0, True),
        ("amg", "top1", ">=", 0.8, False),
    ]


def test_weights_hash_streams_weights_files_only(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\1" * (3 << 20))
    (model / "model_index.json").write_text("{}")
    first = weights_hash(model)
    assert first is not None and first["files"] == 1 and first["bytes"] == 3 << 20
    (model / "model_index.json").write_text('{"changed": 1}')  # not a weights file
    assert weights_hash(model) == first
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\1" * (3 << 20) + b"\2")
    assert weights_hash(model)["sha256"] != first["sha256"]
    assert weights_hash(tmp_path / "absent") is None and weights_hash(None) is None


def test_run_facts_for_a_ci_record(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "w.safetensors").write_bytes(b"weights")
    ident = {
        "model": str(model),
        "lora": None,
        "index": "/x/index",
        "prompts": "/x/p.txt",
        "real_images": None,
    }
    facts = run_facts(ident, {"seeds": [0]}, 17)
    assert facts["copyguard_version"] and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", facts["date_utc"])
    assert facts["model_weights"]["files"] == 1 and facts["lora_weights"] is None
    assert facts["index"] == "/x/index" and facts["index_entries"] == 17 and facts["config"] == {"seeds": [0]}
    assert facts["inputs"] == {"real_images": None} and "python" in facts["machine"]


def test_run_audit_writes_top_similar_run_facts_and_gate_thresholds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "audit"
    report, _ = audit_report(out)
    job_report = {k: v for k, v in report.items() if k not in ("gate", "top_similar", "run")}

    class FakeJob:
        def __init__(self, *args: Any, identity: dict, **kwargs: Any) -> None:
            job_report["identity"] = identity

        def run(self, *args: Any) -> dict:
            return job_report

    class FakeIndex:
        def __len__(self) -> int:
            return 4096

    monkeypatch.setattr(audit_mod, "AuditJob", FakeJob)
    monkeypatch.setattr(audit_mod, "_load_pipeline", lambda *a: object())
    cfg = AuditConfig(fail_on=["share_above_0.5>1"])
    records = [PromptRecord(r["prompt"]) for r in report["prompts"]]
    result = audit_mod.run_audit(cfg, tmp_path / "model", FakeIndex(), records, out, progress=False)
    assert result.exit_code == 1
    saved = json.loads((out / "report.json").read_text())
    assert saved["gate"]["conditions"][0]["threshold"] == 1.0 and saved["gate"]["conditions"][0]["op"] == ">"
    assert (
        saved["top_similar"][0]["nearest_key"] == "train/0007" and saved["top_similar"][0]["flagged"] is False
    )
    assert len(saved["top_similar"]) == min(audit_mod.TOP_SIMILAR, 20)
    assert saved["run"]["index_entries"] == 4096 and saved["run"]["model"] == str(
        (tmp_path / "model").resolve()
    )
    assert "id='top'" in (out / "report.html").read_text()
