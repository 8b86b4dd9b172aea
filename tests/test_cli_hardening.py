"""Slips of the keyboard (issue 16): each ends in one line on stderr and exit 2 (130 for Ctrl-C), before any
work, leaving the output as it was."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from copyguard.common.errors import UsageError
from copyguard.pipelines.cli import main
from tests.helpers import jpeg_bytes, write_tar
from tests.tiny_sd import cached_trigger_pipeline, save_tiny_pipeline, torch_threads

CPU = ["--device", "cpu"]


def _one_line_error(capsys: pytest.CaptureFixture, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("hardening_model"))


@pytest.fixture()
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "p.txt"
    path.write_text("a photo of a dog\n")
    return path


# ------------------------------------------------------------------------------------------ curate


@pytest.mark.parametrize(
    ("typo", "hint"),
    [
        (["--refrence", "PREV"], "did you mean --reference?"),
        (["--confg", "x.yaml"], "did you mean --config?"),
        (["--direct_num_worker", "2"], "did you mean --direct_num_workers?"),
    ],
)
def test_curate_unknown_flag_is_one_line_with_a_suggestion(
    typo: list[str], hint: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert main(["curate", "--input", str(tmp_path / "*.tar"), "--output", str(out), *typo]) == 2
    _one_line_error(capsys, hint)
    assert not out.exists()  # nothing left behind


def test_curate_bad_beam_value_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    argv = ["curate", "--input", str(tmp_path / "*.tar"), "--output", str(out), "--direct_num_workers", "abc"]
    assert main(argv) == 2
    _one_line_error(capsys, "--direct_num_workers", "'abc'")
    assert not out.exists()


def test_curate_run_argv_rejects_typos_and_passes_real_beam_options(tmp_path: Path) -> None:
    from copyguard.pipelines.curate import run
    from copyguard.pipelines.curate_args import check_beam_options

    with pytest.raises(UsageError, match="did you mean --reference"):
        run(["--input", str(tmp_path / "*.tar"), "--output", str(tmp_path / "o"), "--refrence", "x"])
    real = ["--runner", "DataflowRunner", "--project", "P", "--region", "R", "--temp_location", "gs://b/t"]
    real += ["--direct_num_workers=2", "--direct_running_mode", "multi_processing"]
    real += ["--flink_master", "h:8081", "--environment_type", "LOOPBACK", "--spark_master_url", "spark://h"]
    assert check_beam_options(real) == real


def test_curate_output_that_is_a_file_fails_before_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    out.write_text("not a folder")
    # The input matches nothing: the output is checked first, before the inputs are listed.
    assert main(["curate", "--input", str(tmp_path / "*.tar"), "--output", str(out)]) == 2
    _one_line_error(capsys, "--output", "is a file")
    assert out.read_text() == "not a folder"


def test_curate_unwritable_output_fails_before_reading(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = "/proc/copyguard-no-such-out"  # not writable, even for root
    assert main(["curate", "--input", str(tmp_path / "*.tar"), "--output", out]) == 2
    _one_line_error(capsys, "--output", "cannot write")
    assert not os.path.exists(out)


def test_curate_empty_folders_of_a_failed_start_do_not_block_the_rerun(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from copyguard.pipelines.curate import _check_output

    out = tmp_path / "out"
    for sub in ("shards", "manifest", "index"):
        (out / sub).mkdir(parents=True)
    _check_output(str(out), overwrite=False)  # empty folders are no outputs
    (out / "index" / "index.json").write_text("{}")
    with pytest.raises(UsageError, match=r"already holds curation outputs \(index\)"):
        _check_output(str(out), overwrite=False)


# ------------------------------------------------------------------------------------------ interrupts

_SLOW_IMPORTS = """
import signal, sys, time
from copyguard.pipelines import cli

# Ctrl-C as in a terminal: under a shell's background job (e.g. `pytest &`) the child starts with SIGINT ignored
signal.signal(signal.SIGINT, signal.default_int_handler)

def slow_register_all(sub):  # stands in for the seconds spent importing the subcommands
    print("ready", flush=True)
    time.sleep(60)

cli._register_all = slow_register_all
sys.exit(cli.main(["sample-data", "--output", "x"]))
"""


def test_ctrl_c_exits_130_with_one_line() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_SLOW_IMPORTS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err == "copyguard: interrupted\n"


# ------------------------------------------------------------------------------------------ detect


def test_detect_nan_threshold_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from copyguard.mitigation import DetectConfig, run_detect

    with pytest.raises(UsageError, match="finite"):
        run_detect(
            DetectConfig(), cached_trigger_pipeline(), ["a dog"], tmp_path / "o.jsonl", threshold=math.nan
        )
    argv = [
        "detect",
        "--model",
        "m",
        "--prompts",
        "p",
        "--output",
        str(tmp_path / "o.jsonl"),
        "--threshold",
        "nan",
    ]
    assert main(argv) == 2
    _one_line_error(capsys, "--threshold")


def test_detect_unknown_device(
    model_dir: Path, prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [
        "detect",
        "--model",
        str(model_dir),
        "--prompts",
        str(prompts),
        "--output",
        str(tmp_path / "o.jsonl"),
    ]
    assert main([*argv, "--device", "xyz"]) == 2
    _one_line_error(capsys, "unknown device 'xyz'")


def test_detect_out_that_is_a_folder(
    model_dir: Path, prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["detect", "--model", str(model_dir), "--prompts", str(prompts), "--output", str(tmp_path), *CPU]
    with torch_threads(1):
        assert main(argv) == 2
    _one_line_error(capsys, "is a folder")


def test_config_that_is_a_binary_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "model.bin"
    config.write_bytes(bytes(range(256)) * 4)
    argv = [
        "detect",
        "--model",
        "m",
        "--prompts",
        "p",
        "--output",
        str(tmp_path / "o"),
        "--config",
        str(config),
    ]
    assert main(argv) == 2
    _one_line_error(capsys, str(config), "not a UTF-8 YAML file")


# ------------------------------------------------------------------------------------------ generate


def test_generate_seed_out_of_range(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["generate", "--model", str(model_dir), "--prompt", "a dog", "--output", str(tmp_path / "o"), *CPU]
    with torch_threads(1):
        assert main([*argv, "--seed", str(2**70)]) == 2
    _one_line_error(capsys, str(2**70), "out of range")
    assert not (tmp_path / "o").exists()


def test_generate_out_that_is_a_file(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "o"
    out.write_text("keep me")
    argv = ["generate", "--model", str(model_dir), "--prompt", "a dog", "--output", str(out), *CPU]
    with torch_threads(1):
        assert main(argv) == 2
    _one_line_error(capsys, "is a file")
    assert out.read_text() == "keep me"


def test_generate_needs_overwrite_for_an_earlier_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from copyguard.mitigation import GenerateConfig, run_generate

    cfg = GenerateConfig(num_inference_steps=2, seeds=[0, 1])
    pipe, out = cached_trigger_pipeline(), tmp_path / "o"
    with torch_threads(1):
        first = run_generate(cfg, pipe, ["a dog"], out, progress=False)
        assert len(first.records) == 2
        before = (out / "generations.jsonl").read_text()
        with pytest.raises(UsageError, match="--overwrite"):
            run_generate(cfg, pipe, ["a house"], out, progress=False)
        assert (out / "generations.jsonl").read_text() == before
        cfg.seeds = [3]
        again = run_generate(cfg, pipe, ["a house"], out, overwrite=True, progress=False)
    assert [r["prompt"] for r in again.records] == ["a house"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["p00000_s3.png"]
    argv = ["generate", "--model", "m", "--prompt", "x", "--output", str(out), *CPU]
    assert main(argv) == 2
    _one_line_error(capsys, "--overwrite")


def test_curate_exclude_keys_flag_reaches_the_job(tmp_path: Path, monkeypatch, capsys) -> None:
    """``--exclude-keys`` is a typed job argument; a missing file is one line before any work."""
    import copyguard.pipelines.curate as curate_mod

    seen: dict = {}

    def fake_graph(p, shards, output, cfg, reference=None, exclude_keys=None, run=None):
        seen["exclude_keys"] = exclude_keys
        raise UsageError("stop after wiring")

    monkeypatch.setattr(curate_mod, "build_pipeline", fake_graph)
    shard = tmp_path / "s.tar"
    shard.write_bytes(b"")
    keys = tmp_path / "filtered.jsonl"
    keys.write_text('{"key": "a"}\n')
    out = tmp_path / "out"
    assert main(["curate", "--input", str(shard), "--output", str(out), "--exclude-keys", str(keys)]) == 2
    assert seen["exclude_keys"] == str(keys)
    capsys.readouterr()
    missing = tmp_path / "nope.txt"
    assert main(["curate", "--input", str(shard), "--output", str(out), "--exclude-keys", str(missing)]) == 2
    _one_line_error(capsys, "--exclude-keys", "no such file")


def test_train_model_without_its_subfolders_fails_fast_and_offline(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """A ``model_index.json`` whose component folders are missing: one line, exit 2, no network, no retries."""
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("copyguard tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    code = main(
        ["train", "--model", str(model), "--input", str(tmp_path / "*.tar"), "--output", str(tmp_path / "o")]
    )
    assert code == 2
    _one_line_error(capsys, "without", "unet")


def test_curate_on_a_device_onnxruntime_lacks_fails_before_any_work(tmp_path: Path) -> None:
    """``--set curate.images.device=cuda`` without onnxruntime-gpu (this machine): one line, exit 2, no output."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine can embed on CUDA")
    write_tar(tmp_path / "a.tar", [("k0.jpg", jpeg_bytes(1)), ("k0.txt", b"a caption")])
    out = tmp_path / "out"
    argv = ["curate", "--input", str(tmp_path / "*.tar"), "--output", str(out)]
    assert main([*argv, "--set", "curate.images.device=cuda"]) == 2
    assert not out.exists()
    assert main([*argv, "--set", "curate.images.device=gpu"]) == 2  # not a device name
