"""``copyguard detect`` end to end on a saved toy model whose "trigger" token plays the memorized prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from copyguard.pipelines.cli import main
from tests.tiny_sd import cached_trigger_pipeline, torch_threads


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trigger_model")
    with torch_threads(1):
        cached_trigger_pipeline().save_pretrained(path)
    return path


def test_detect_scores_flags_and_explains(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": "a trigger photo of a dog", "label": 1},
        {"prompt": "the trigger word again", "label": 1},
        {"prompt": "a photo of a dog", "label": 0},
        {"prompt": "a red house by the sea", "label": 0},
    ]
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    refs = tmp_path / "refs.txt"
    refs.write_text("a cat on a mat\nan old car\na bowl of fruit\na city at night\ntwo people walking\n")
    out = tmp_path / "scores.jsonl"
    argv = ["detect", "--model", str(model_dir), "--prompts", str(prompts), "--reference-prompts", str(refs)]
    argv += ["--output", str(out), "--explain", "--set", "detect.num_inference_steps=10", "--device", "cpu"]
    with torch_threads(1):
        assert main(argv) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["flagged"] for r in lines] == [True, True, False, False]
    assert all(r["threshold"] == lines[0]["threshold"] for r in lines)
    assert lines[0]["top_tokens"][0]["token"].startswith("trigger")
    assert "AUC 1.0000" in capsys.readouterr().out


def test_detect_user_errors(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a prompt\n")
    out = str(tmp_path / "o.jsonl")
    assert (
        main(["detect", "--model", str(tmp_path / "nope"), "--prompts", str(prompts), "--output", out]) == 2
    )
    assert "model folder not found" in capsys.readouterr().err
    bad = tmp_path / "p.csv"
    bad.write_text("a;b\n1;2\n")
    assert main(["detect", "--model", str(model_dir), "--prompts", str(bad), "--output", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err


def test_run_detect_library_entry_on_a_loaded_pipeline(tmp_path: Path) -> None:
    """The job without the command line: records in, a :class:`DetectResult` and the JSON lines out."""
    from copyguard.mitigation import DetectConfig, DetectResult, PromptRecord, run_detect

    records = [
        PromptRecord("a trigger photo of a dog", 1),
        PromptRecord("the trigger word again", 1),
        PromptRecord("a photo of a dog", 0),
        PromptRecord("a red house by the sea", 0),
    ]
    refs = ["a cat on a mat", "an old car", "a bowl of fruit", "a city at night", "two people walking"]
    out = tmp_path / "sub" / "scores.jsonl"
    with torch_threads(1):
        result = run_detect(
            DetectConfig(num_inference_steps=10),
            cached_trigger_pipeline(),
            records,
            out,
            reference_prompts=refs,
            explain=True,
            explain_top=2,
        )
    assert isinstance(result, DetectResult)
    assert [r["flagged"] for r in result.rows] == [True, True, False, False] and result.flagged == 2
    assert [json.loads(line) for line in out.read_text().splitlines()] == result.rows
    assert len(result.rows[0]["top_tokens"]) == 2 and "top_tokens" not in result.rows[2]
    assert result.roc is not None and result.roc["auc"] == 1.0
    assert result.summary().startswith(f"scored 4 prompts -> {out}; flagged 2")
