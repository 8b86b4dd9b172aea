"""Model sources of ``--model``: a local folder, a Hub id in the local Hugging Face cache (never downloaded),
a single ``.safetensors`` checkpoint. The cache is a fake one laid out as huggingface_hub lays it out."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest
import torch

from copyguard.common.errors import UsageError
from copyguard.mitigation.sd_loader import load_sd_pipeline, resolve_model_source
from copyguard.pipelines.cli import main as cli_main

REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(name="no_network")
def no_network_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt fails the test (and HF_HUB_OFFLINE=1 as the test env sets it)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _fake_cache(root: Path, repo_id: str, model: Path) -> Path:
    """``root/hub/models--org--name/{refs/main, snapshots/REV/...}`` holding a copy of the folder ``model``."""
    repo = root / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REV)
    snapshot = repo / "snapshots" / REV
    shutil.copytree(model, snapshot, ignore=shutil.ignore_patterns(".done", "*.json.lock"))
    return snapshot


@pytest.fixture(name="hf_home")
def hf_home_fixture(tiny_sd_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HOME in tmp with ``org/tiny-sd`` (a tiny SD folder) in its hub cache; returns the snapshot."""
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return _fake_cache(tmp_path / "hf", "org/tiny-sd", tiny_sd_folder)


def test_resolves_the_three_kinds(hf_home: Path, tiny_sd_folder: Path, tmp_path: Path, no_network) -> None:
    assert resolve_model_source(tiny_sd_folder).kind == "folder"
    source = resolve_model_source("org/tiny-sd")
    assert (source.kind, source.path) == ("hub_cache", hf_home)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    assert resolve_model_source(weights).kind == "single_file"
    (tmp_path / "model.ckpt").write_bytes(b"")
    with pytest.raises(UsageError, match="pickle checkpoints are not loaded"):
        resolve_model_source(tmp_path / "model.ckpt")


def test_hub_id_from_the_local_cache_loads_with_no_network(hf_home: Path, tiny_sd_folder: Path,
                                                           no_network) -> None:  # fmt: skip
    from copyguard.train.sd_models import load_models

    pipe = load_sd_pipeline("org/tiny-sd", device="cpu")
    reference = load_sd_pipeline(tiny_sd_folder, device="cpu")
    for name, value in reference.unet.state_dict().items():
        torch.testing.assert_close(pipe.unet.state_dict()[name], value)
    models = load_models("org/tiny-sd")
    assert models["source_dir"] == hf_home
    assert type(models["unet"]).__name__ == "UNet2DConditionModel"


def test_train_from_a_cached_hub_id_with_diffusers_flags(hf_home: Path, lab_tiny_data: Path, tmp_path: Path,
                                                         no_network, torch_single_thread) -> None:  # fmt: skip
    out = tmp_path / "run"
    argv = ["train", "--pretrained_model_name_or_path", "org/tiny-sd", "--train_data_dir",
            str(lab_tiny_data / "*.tar"), "--output_dir", str(out), "--max_train_steps", "3",
            "--train_batch_size", "2", "--checkpointing_steps", "1", "--checkpoints_total_limit", "2",
            "--rank", "2", "--report_to", "tensorboard"]  # fmt: skip
    assert cli_main(argv) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    assert any((out / "logs").rglob("events.out.tfevents*"))


def test_hub_id_not_in_the_cache_exits_2_quickly(hf_home: Path, lab_tiny_data: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture, no_network) -> None:  # fmt: skip
    t0 = time.perf_counter()
    with pytest.raises(UsageError, match="not in the local Hugging Face cache"):
        resolve_model_source("org/absent-model")
    assert time.perf_counter() - t0 < 5
    argv = ["train", "--model", "org/absent-model", "--input", str(lab_tiny_data / "*.tar"), "--output",
            str(tmp_path / "r")]  # fmt: skip
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "huggingface-cli download org/absent-model" in err[0], err


def test_single_file_without_a_cached_config_never_downloads(hf_home: Path, tmp_path: Path,
                                                             no_network) -> None:  # fmt: skip
    """diffusers would download the inferred config repo; copyguard stops with a one-line error instead."""
    from safetensors.torch import save_file

    weights = tmp_path / "sd.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, str(weights))
    t0 = time.perf_counter()
    with pytest.raises(UsageError, match="--model_config") as exc:
        load_sd_pipeline(weights, device="cpu")
    assert time.perf_counter() - t0 < 5
    assert "not in the local Hugging Face cache" in str(exc.value) and "\n" not in str(exc.value)


def test_single_file_with_a_config_that_does_not_fit_is_one_line(hf_home: Path, tmp_path: Path,
                                                                 no_network) -> None:  # fmt: skip
    """``--model_config`` (here a cached Hub id) is used as the config; weights that do not match it fail
    with one line, with no download."""
    from safetensors.torch import save_file

    from copyguard.train.sd_models import load_models

    weights = tmp_path / "sd.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, str(weights))
    with pytest.raises(UsageError, match="cannot load") as exc:
        load_models(weights, model_config="org/tiny-sd")
    assert "\n" not in str(exc.value)
