"""``copyguard audit`` end to end on the tiny lab model: report, gate exit codes, resume, bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from copyguard.curation.embedders import load_embedder
from copyguard.curation.images import to_rgb_array
from copyguard.curation.index import TrainingIndex
from copyguard.curation.records import Sample
from copyguard.curation.shards import iter_samples
from copyguard.pipelines.cli import main

SCRIPT = "<script>alert('x')</script> a red bus on the street"
# few seeds/steps; threshold 0 flags every prompt so each gets attributions and a report section
FAST = [
    "--set", "audit.seeds=[0]",
    "--set", "audit.num_inference_steps=3",
    "--set", "audit.batch_size=2",
    "--set", "audit.detect_threshold=0",
    "--device", "cpu",
]  # fmt: skip


def _captions(data: Path) -> dict[str, str]:
    return {s.key: s.caption for s in iter_samples(str(data / "*.tar")) if isinstance(s, Sample)}


@pytest.fixture(scope="module")
def setup(lab_tiny_data: Path, tiny_sd_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A training index of the tiny data (SSCD at 64 px for speed) and a labelled prompt file."""
    root = tmp_path_factory.mktemp("audit")
    samples = {}
    for s in iter_samples(str(lab_tiny_data / "*.tar")):
        if isinstance(s, Sample):
            samples.setdefault(s.key, s)
    emb = load_embedder("sscd-onnx", input_size=64, threads=1)
    vectors = emb.embed([to_rgb_array(s.image) for s in samples.values()])
    entries = [{"key": k, "caption": s.caption} for k, s in samples.items()]
    TrainingIndex.build(vectors, entries, emb).save(str(root / "index"))
    truth = [json.loads(line) for line in (lab_tiny_data / "ground_truth.jsonl").read_text().splitlines()]
    dup = sorted({t["caption_group"] for t in truth if t["kind"] == "dup_pair" and t["copies"] >= 10})
    unique = [t["key"] for t in truth if t["kind"] == "unique" and t["key"] in samples][:1]
    rows = [{"prompt": samples[k].caption, "label": 1, "group": "dup"} for k in dup[:2]]
    rows += [{"prompt": samples[k].caption, "label": 0, "group": "unique"} for k in unique]
    rows.append({"prompt": SCRIPT, "label": 0, "group": "<b>odd</b>"})
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = [
        "audit",
        "--model",
        str(tiny_sd_folder),
        "--index",
        str(root / "index"),
        "--prompts",
        str(prompts),
    ]
    base += [*FAST, "--set", f"audit.train_images={lab_tiny_data}/*.tar"]
    return {"root": root, "base": base, "n": len(rows), "data": lab_tiny_data, "model": tiny_sd_folder}


@pytest.fixture(scope="module")
def audited(setup: dict, torch_single_thread: None) -> dict:
    out = setup["root"] / "out"
    code = main([*setup["base"], "--output", str(out), "--fail-on", "top1>1.5", "--fail-on", "flagged>100"])
    return {**setup, "out": out, "code": code}


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_end_to_end_report_json(audited: dict) -> None:
    assert audited["code"] == 0
    report = _report(audited["out"])
    assert len(report["prompts"]) == audited["n"]
    for row in report["prompts"]:
        assert row["flagged"] is True and isinstance(row["score"], float)
        assert row["tokens"] and all(isinstance(t, str) for t, _ in row["tokens"])
        assert set(row["generations"]) == {"none", "amg"}
        for gens in row["generations"].values():
            assert [g["seed"] for g in gens] == [0]
            g = gens[0]
            assert (audited["out"] / g["image"]).is_file()
            assert isinstance(g["nearest_key"], str) and -1.0 <= g["similarity"] <= 1.0
    m = report["metrics"]
    assert set(m["settings"]) == {"none", "amg"}
    for setting in m["settings"].values():
        assert {"top5pct", "top1", "pct_gt_0.5", "pct_gt_0.4"} <= set(setting["overall"])
        assert set(setting["groups"]) == {"dup", "unique", "<b>odd</b>"}
    assert m["detection"]["flagged"] == audited["n"] and 0.0 <= m["detection"]["auc"] <= 1.0
    assert m["prompt_alignment"].startswith("not measured: no CLIP model configured")
    assert report["gate"]["passed"] is True


def test_report_html_sections_and_escaping(audited: dict) -> None:
    page = (audited["out"] / "report.html").read_text()
    for section in ("id='summary'", "id='gate'", "id='detection'", "id='similarity'", "id='flagged'"):
        assert section in page
    assert "alt='ROC curve'" in page and "alt='similarity histograms'" in page
    assert "class='strip'" in page and page.count("alt='training image'") >= 2
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<b>odd</b>" not in page and "&lt;b&gt;odd&lt;/b&gt;" in page
    assert "src='data:image/png;base64," in page and "src='images/" not in page  # self-contained


def test_gate_fails_with_exit_1_and_reuses_results(audited: dict, capsys: pytest.CaptureFixture) -> None:
    out = audited["out"]
    capsys.readouterr()
    code = main([*audited["base"], "--output", str(out), "--fail-on", "top1>=-1", "--fail-on", "flagged>100"])
    printed = capsys.readouterr().out
    assert code == 1
    assert "gate FAILED" in printed and "top1>=-1" in printed and "flagged>100" not in printed
    report = _report(out)
    assert report["timing"]["resumed_prompts"] == audited["n"]  # nothing generated again
    assert report["gate"]["passed"] is False


def test_library_entry_point_gates_without_the_cli(audited: dict, tmp_path: Path) -> None:
    """``run_audit`` called directly (no CLI, no argv) evaluates the gate, writes it and sets the exit code."""
    from copyguard.mitigation import AuditConfig, run_audit

    out = tmp_path / "lib"
    shutil.copytree(audited["out"], out)
    (out / "report.json").unlink()
    cfg = AuditConfig(seeds=[0], num_inference_steps=3, batch_size=2, detect_threshold=0,
                      train_images=f"{audited['data']}/*.tar", fail_on=["top1>=-1", "flagged>100"])  # fmt: skip
    args = (audited["model"], audited["root"] / "index", audited["root"] / "prompts.jsonl", out)
    result = run_audit(cfg, *args, device="cpu", progress=False)
    assert [r.failed for r in result.gate] == [True, False] and not result.passed and result.exit_code == 1
    report = _report(out)
    top1 = report["metrics"]["settings"]["none"]["overall"]["top1"]
    assert result.gate[0].actual == pytest.approx(top1) and result.gate[1].actual == audited["n"]
    assert report["gate"]["passed"] is False and report["timing"]["resumed_prompts"] == audited["n"]
    assert [c["failed"] for c in report["gate"]["conditions"]] == [True, False]
    assert "gate FAILED:" in result.summary() and "top1>=-1" in result.summary()
    assert "class='fail'>FAILED" in (out / "report.html").read_text()
    cfg.fail_on = ["top1>1.5"]
    passed = run_audit(cfg, *args, device="cpu", progress=False)
    assert passed.passed and passed.exit_code == 0 and len(passed.gate) == 1
    assert _report(out)["gate"]["passed"] is True and passed.summary().endswith("gate passed")


def test_resume_after_interruption_skips_finished_prompts(audited: dict) -> None:
    out = audited["root"] / "resumed"
    shutil.copytree(audited["out"], out)
    results = out / "results.jsonl"
    lines = results.read_text().splitlines()
    # a run killed while writing its last batch: the last prompt missing, a torn line at the end
    results.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    (out / "report.json").unlink()
    assert main([*audited["base"], "--output", str(out), "--fail-on", "top1>1.5"]) == 0
    report = _report(out)
    assert report["timing"]["resumed_prompts"] == audited["n"] - 2  # the unfinished batch of 2 is redone
    before = {r["index"]: r for r in _report(audited["out"])["prompts"]}
    for row in report["prompts"]:  # the regenerated prompt gives the same images and similarities
        for s, gens in row["generations"].items():
            assert [g["similarity"] for g in gens] == pytest.approx(
                [g["similarity"] for g in before[row["index"]]["generations"][s]], abs=1e-5
            )
    assert len(results.read_text().splitlines()) == audited["n"] + 1  # the redone batch's first prompt twice


def test_other_settings_on_the_same_out_are_refused(audited: dict, capsys: pytest.CaptureFixture) -> None:
    argv = [*audited["base"], "--output", str(audited["out"]), "--set", "audit.seeds=[5]"]
    assert main(argv) == 2
    assert "holds an audit of other inputs or settings" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ('{"prompt": "ok"}\n{"prompt": \n', ".jsonl", "not valid JSON"),
        ("name;url\nx;y\n", ".csv", "no 'Caption' or 'prompt' column"),
        ("", ".txt", "is empty"),
    ],
)
def test_malformed_prompt_files_exit_2(
    setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture, content: str, suffix: str, message: str
) -> None:
    bad = tmp_path / f"bad{suffix}"
    bad.write_text(content)
    argv = [*setup["base"], "--output", str(tmp_path / "o")]
    argv[argv.index("--prompts") + 1] = str(bad)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_usage_errors_exit_2(setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = ["--output", str(tmp_path / "o")]
    assert main([*setup["base"], *out, "--fail-on", "copies>3"]) == 2
    err = capsys.readouterr().err
    assert "unknown metric 'copies'" in err and "share_above_0.5" in err and "flagged" in err
    assert main([*setup["base"], *out, "--fail-on", "fid>50"]) == 2
    assert "FID needs --real-images" in capsys.readouterr().err
    assert main([*setup["base"], *out, "--real-images", str(tmp_path / "none" / "*.tar")]) == 2
    assert "matches no file" in capsys.readouterr().err
    assert main([*setup["base"], *out, "--set", "audit.mitigations=[amg,amg]"]) == 2
    assert "must not repeat" in capsys.readouterr().err


def test_index_from_another_embedder_is_refused(
    setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [*setup["base"], "--output", str(tmp_path / "o"), "--set", "audit.embedder=sscd-distilled-onnx"]
    assert main(argv) == 2
    assert "the index was built with name='sscd-onnx'" in capsys.readouterr().err
    other = tmp_path / "index"
    vectors = np.eye(2, 16, dtype=np.float32)
    TrainingIndex.build(vectors, [{"key": "a", "caption": "x"}, {"key": "b", "caption": "y"}],
                        {"name": "my-embedder", "dim": 16, "input_size": 64}).save(str(other))  # fmt: skip
    argv = [*setup["base"], "--output", str(tmp_path / "o2")]
    argv[argv.index("--index") + 1] = str(other)
    assert main(argv) == 2
    assert "built with embedder 'my-embedder'" in capsys.readouterr().err


def _save_lora(pipe, directory: Path, rank: int = 4) -> Path:
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe.unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    )
    StableDiffusionPipeline.save_lora_weights(
        directory, unet_lora_layers=get_peft_model_state_dict(pipe.unet)
    )
    return directory


def test_lora_that_fits_loads_and_one_that_does_not_is_refused(
    setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture, torch_single_thread: None
) -> None:
    from diffusers import UNet2DConditionModel

    from copyguard.common.errors import UsageError
    from copyguard.mitigation.audit import load_lora
    from copyguard.mitigation.sd_loader import load_sd_pipeline
    from tests.tiny_sd import tiny_pipeline

    good = _save_lora(load_sd_pipeline(setup["model"], "cpu"), tmp_path / "good")
    pipe = load_sd_pipeline(setup["model"], "cpu")
    load_lora(pipe, str(good))
    assert any(pipe.get_list_adapters().values())
    other = tiny_pipeline()  # another architecture (other UNet widths), in RUN_DIR/lora
    other.unet = UNet2DConditionModel.from_config({**other.unet.config, "block_out_channels": [64, 64]})
    _save_lora(other, tmp_path / "run" / "lora")
    with pytest.raises(UsageError, match="does not fit the model"):
        load_lora(load_sd_pipeline(setup["model"], "cpu"), str(tmp_path / "run"))
    assert main([*setup["base"], "--output", str(tmp_path / "o"), "--lora", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "does not fit the model: size mismatch for" in err and "Traceback" not in err
    assert main([*setup["base"], "--output", str(tmp_path / "o"), "--lora", str(tmp_path)]) == 2
    assert "no LoRA weights" in capsys.readouterr().err


def _tiny_clip(directory: Path) -> Path:
    """A random CLIP (transformers) with the tiny test tokenizer, saved as a local folder."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from tests.tiny_sd import tiny_tokenizer

    tok = tiny_tokenizer()
    small = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    torch.manual_seed(0)
    text = {**small, "vocab_size": len(tok), "max_position_embeddings": 77, "eos_token_id": tok.eos_token_id}
    config = CLIPConfig(text_config=text, vision_config={**small, "image_size": 32, "patch_size": 8},
                        projection_dim=8)  # fmt: skip
    CLIPModel(config).save_pretrained(directory)
    image_proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_proc, tokenizer=tok).save_pretrained(directory)
    return directory


@pytest.mark.slow  # a real run killed and resumed, or a full lab/eval run: minutes
def test_nl2_baseline_clip_alignment_and_fid(setup: dict, tmp_path: Path, torch_single_thread: None) -> None:
    out = tmp_path / "o"
    argv = [
        *setup["base"],
        "--output",
        str(out),
        "--set",
        "audit.similarity=nl2",
        "--set",
        "audit.mitigations=[rna]",
    ]
    argv += ["--set", f"audit.clip_model={_tiny_clip(tmp_path / 'clip')}", "--fail-on", "p5_nl2<-1"]
    argv += ["--fail-on", "clip>100", "--fail-on", "fid<0"]
    argv += ["--real-images", f"{setup['data']}/*.tar", "--set", "audit.fid_max_real=12"]
    assert main(argv) == 0
    report = _report(out)
    for setting in ("none", "rna"):
        overall = report["metrics"]["settings"][setting]["overall"]
        assert {"p5", "min", "pct_lt_1.4", "pct_lt_1.6"} <= set(overall) and 0.0 <= overall["clip"] <= 100.0
        assert overall["fid"] > 0
    assert report["metrics"]["prompt_alignment"].startswith("CLIP score")
    gen = report["prompts"][0]["generations"]
    assert gen["rna"][0]["effective_prompt"] != report["prompts"][0]["prompt"]
    assert gen["none"][0]["nearest_key"] in _captions(setup["data"])
    assert "nL2" in (out / "report.html").read_text()


@pytest.mark.slow  # a real run killed and resumed, or a full lab/eval run: minutes
def test_resume_after_sigkill(setup: dict, tmp_path: Path, torch_single_thread: None) -> None:
    """A real kill -9 of a running audit, then the same command: finished prompts are skipped."""
    import os
    import signal
    import subprocess
    import sys
    import time

    rows = [json.loads(line) for line in Path(setup["base"][6]).read_text().splitlines()] * 3
    prompts = tmp_path / "many.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "killed"
    argv = [*setup["base"], "--output", str(out), "--set", "audit.batch_size=1", "--fail-on", "top1>1.5"]
    argv[6] = str(prompts)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "copyguard.pipelines", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    results = out / "results.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if results.is_file() and results.read_text().count("\n") >= 1:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the audit ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(results.read_text().splitlines())
    assert 1 <= finished < len(rows) and not (out / "report.json").exists()
    assert main(argv) == 0
    report = _report(out)
    assert report["timing"]["resumed_prompts"] >= finished - 1  # a torn last line is redone
    assert [r["index"] for r in report["prompts"]] == list(range(len(rows)))
