"""``make demo`` runs end to end (on the tiny preset here, with the session's tiny lab model as the cache)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from copyguard.pipelines.demo import main
from copyguard.pipelines.lab.cache import lab_key, sample_data_dir


@pytest.mark.slow
def test_demo_runs_all_stages(
    lab_tiny_data: Path,
    lab_tiny_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    torch_single_thread,
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(lab_tiny_data, sample_data_dir("tiny", cache=cache))
    shutil.copytree(lab_tiny_model, cache / f"lab-tiny-s0-{lab_key('tiny')}")
    for folder in cache.iterdir():
        (folder / ".done").touch()
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--preset", "tiny", "--cache", str(cache)]) == 0
    text = capsys.readouterr().out
    assert "=== summary" in text and "fine-tuning filter:" in text
    assert "lab model (memorizing)" in text and "fine-tuned with the filter" in text
    scores = json.loads((out / "curated" / "eval.json").read_text())
    assert scores["images"]["f1"] >= 0.95 and scores["captions"]["f1"] >= 0.95
    for audit in ("audit_lab", "audit_finetuned"):
        report = json.loads((out / audit / "report.json").read_text())
        assert {"none", "amg"} <= set(report["metrics"]["settings"])
        assert (out / audit / "report.html").is_file()
    assert (out / "finetuned" / "model_index.json").is_file()
