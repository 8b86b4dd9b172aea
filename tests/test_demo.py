"""``make demo`` runs end to end (on the tiny preset here, to stay fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from copyguard.pipelines.demo import main


def test_demo_runs_all_stages(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--out", str(tmp_path), "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "=== summary" in out and "invariant holds: True" in out
    scores = json.loads((tmp_path / "curated" / "eval.json").read_text())
    assert scores["images"]["f1"] >= 0.95 and scores["captions"]["f1"] >= 0.95
    assert (tmp_path / "curated" / "report.html").is_file()
