"""``copyguard generate``: plain, baseline, prompt-opt and AMG generations on a saved toy model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from copyguard.curation.index import TrainingIndex
from copyguard.mitigation.config import AMG_PRESETS, MITIGATIONS
from copyguard.pipelines.cli import build_parser, main
from tests.tiny_sd import cached_trigger_pipeline, torch_threads

FAST = ["--set", "generate.num_inference_steps=4", "--device", "cpu"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trigger_model_gen")
    with torch_threads(1):
        cached_trigger_pipeline().save_pretrained(path)
    return path


def test_cli_choices_match_the_library() -> None:
    sub = next(a for a in build_parser()._actions if a.choices and "generate" in a.choices)
    options = {a.dest: a.choices for a in sub.choices["generate"]._actions}
    assert tuple(options["mitigation"]) == MITIGATIONS
    assert tuple(options["amg_preset"]) == AMG_PRESETS


@pytest.mark.parametrize("mitigation", ["none", "gni", "rt", "cwr", "rna"])
def test_generate_writes_images_and_records(model_dir: Path, tmp_path: Path, mitigation: str) -> None:
    out = tmp_path / mitigation
    argv = ["generate", "--model", str(model_dir), "--prompt", "a trigger dog", "--prompt", "a house"]
    argv += ["--seed", "0,1", "--mitigation", mitigation, "--output", str(out), *FAST]
    with torch_threads(1):
        assert main(argv) == 0
    records = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert [(r["prompt_index"], r["seed"]) for r in records] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert all(r["mitigation"] == mitigation for r in records)
    img = Image.open(out / records[0]["image"])
    assert img.size == (16, 16)


def test_same_seed_same_image_regardless_of_batching(model_dir: Path, tmp_path: Path) -> None:
    base = ["generate", "--model", str(model_dir), "--seed", "3", *FAST]
    with torch_threads(1):
        assert main([*base, "--prompt", "a house", "--output", str(tmp_path / "one")]) == 0
        assert (
            main(
                [*base, "--prompt", "a trigger dog", "--prompt", "a house", "--output", str(tmp_path / "two")]
            )
            == 0
        )
    a = np.asarray(Image.open(tmp_path / "one" / "images" / "p00000_s3.png"))
    b = np.asarray(Image.open(tmp_path / "two" / "images" / "p00001_s3.png"))
    assert np.array_equal(a, b)


def test_prompt_opt_calibrates_on_reference_prompts(model_dir: Path, tmp_path: Path) -> None:
    refs = tmp_path / "refs.txt"
    refs.write_text("a cat\nan old car\na bowl of fruit\n")
    out = tmp_path / "po"
    argv = ["generate", "--model", str(model_dir), "--prompt", "a trigger dog", "--mitigation", "prompt-opt"]
    argv += ["--reference-prompts", str(refs), "--output", str(out), *FAST]
    with torch_threads(1):
        assert main(argv) == 0
    (record,) = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert record["prompt_opt"]["final_loss"] < record["prompt_opt"]["initial_loss"]


def test_amg_records_sigma_traces(model_dir: Path, tmp_path: Path) -> None:
    """The training index holds the image plain sampling makes for this prompt and seed: AMG must see it."""
    from copyguard.curation.embedders import embedder_info, load_embedder

    base = ["generate", "--model", str(model_dir), "--prompt", "a trigger dog", *FAST]
    with torch_threads(1):
        assert main([*base, "--output", str(tmp_path / "plain")]) == 0
    copy = np.asarray(Image.open(tmp_path / "plain" / "images" / "p00000_s0.png").convert("RGB"))
    rng = np.random.default_rng(0)
    others = [rng.integers(0, 255, size=(16, 16, 3), dtype=np.uint8) for _ in range(2)]
    embedder = load_embedder("sscd-distilled-onnx")
    vectors = embedder.embed([copy, *others])
    entries = [{"key": f"k{i}", "caption": "a trigger dog"} for i in range(3)]
    TrainingIndex.build(vectors, entries, embedder_info(embedder)).save(str(tmp_path / "index"))
    out = tmp_path / "amg"
    argv = [*base, "--mitigation", "amg", "--index", str(tmp_path / "index"), "--output", str(out)]
    with torch_threads(1):
        assert main(argv) == 0
    (record,) = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    trace = record["amg"]
    assert len(trace["sigma"]) == 4 and trace["nearest_key"][0] == "k0"
    assert trace["sigma"][0] > 0.5 and any(trace["g_spe"])
    guided = np.asarray(Image.open(out / record["image"]).convert("RGB"), dtype=np.float32)
    assert np.abs(guided - copy.astype(np.float32)).mean() > 1.0  # guidance changed the image


def test_generate_user_errors(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "o")
    assert main(["generate", "--model", str(model_dir), "--output", out]) == 2
    assert "--prompt" in capsys.readouterr().err
    assert (
        main(["generate", "--model", str(model_dir), "--prompt", "x", "--mitigation", "amg", "--output", out])
        == 2
    )
    assert "--index" in capsys.readouterr().err
    assert (
        main(["generate", "--model", str(model_dir), "--prompt", "x", "--seed", "a,b", "--output", out]) == 2
    )


def test_run_generate_library_entry_on_a_loaded_pipeline(tmp_path: Path) -> None:
    """The job without the command line: texts in, a :class:`GenerateResult`, images and records out."""
    from copyguard.mitigation import GenerateConfig, GenerateResult, run_generate

    cfg = GenerateConfig(num_inference_steps=2, seeds=[0, 1], mitigation="rt")
    with torch_threads(1):
        result = run_generate(
            cfg, cached_trigger_pipeline(), ["a trigger dog", "a house"], tmp_path, progress=False
        )
    assert isinstance(result, GenerateResult)
    assert [(r["prompt_index"], r["seed"]) for r in result.records] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    lines = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert lines == result.records and all(r["mitigation"] == "rt" for r in lines)
    assert Image.open(tmp_path / lines[3]["image"]).size == (16, 16)
    assert json.loads((tmp_path / "config.json").read_text())["seeds"] == [0, 1]
    assert result.summary() == f"wrote 4 images (rt) to {tmp_path}"
