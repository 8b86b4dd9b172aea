"""Fault test of the long ``lab-model`` job: SIGKILL at a random point of training, then ``--resume``.

The resumed model must equal the one of an uninterrupted run (every weight of the saved diffusers folder).
The tiny preset is cut by ``--set`` to a few steps with a checkpoint every 3, so one run takes well under a
minute; the kill point is drawn uniformly over the training time of the uninterrupted run (its seed is in
the failure message; ``COPYGUARD_FAULT_SEED`` replays one); should a loaded machine finish a run before
its kill point, the run is repeated with a point drawn from half the span.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import jpeg_bytes, write_tar

pytest.importorskip("diffusers")
safetensors_torch = pytest.importorskip("safetensors.torch")

OVERRIDES = [
    "lab.threads=1",
    "lab.device=cpu",
    "lab.presets.tiny.checkpoint_every=3",
    "lab.presets.tiny.vae.steps=7",
    "lab.presets.tiny.unet.steps=11",
    "lab.presets.tiny.unet.warmup_steps=2",
]


def _data(folder: Path) -> str:
    """Own shards (no ground truth): 12 unique samples and one pair repeated 8 times."""
    folder.mkdir()
    members = []
    for i in range(12):
        members += [(f"u{i:02d}.jpg", jpeg_bytes(i, 32)), (f"u{i:02d}.txt", f"a unique caption {i}".encode())]
    for j in range(8):
        members += [(f"d{j:02d}.jpg", jpeg_bytes(99, 32)), (f"d{j:02d}.txt", b"the duplicated caption")]
    write_tar(folder / "shard-000000.tar", members)
    return str(folder / "*.tar")


def _start(pattern: str, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "copyguard.pipelines.cli",
        "lab-model",
        "--input",
        pattern,
        "--output",
        str(out),
    ]
    cmd += ["--preset", "tiny", "--no-eval", *extra, *[a for o in OVERRIDES for a in ("--set", o)]]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for_training(proc: subprocess.Popen, out: Path) -> float:
    """Seconds until the first checkpoint exists (training under way), or until the process ended."""
    t0 = time.monotonic()
    while proc.poll() is None and not (out / "checkpoints").is_dir():
        time.sleep(0.02)
    return time.monotonic() - t0


def _weights(folder: Path) -> dict:
    out = {}
    for path in sorted(folder.glob("*/*.safetensors")):
        for name, tensor in safetensors_torch.load_file(str(path)).items():
            out[f"{path.parent.name}/{name}"] = tensor
    return out


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    import torch

    pattern = _data(tmp_path / "data")
    straight = tmp_path / "straight"
    proc = _start(pattern, straight)
    started = time.monotonic()
    to_training = _wait_for_training(proc, straight)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    training_s = time.monotonic() - started - to_training

    seed = int(os.environ.get("COPYGUARD_FAULT_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    killed = tmp_path / "killed"
    for attempt in range(4):  # a loaded machine may finish early: draw again from a shorter span
        delay = rng.uniform(0.0, training_s) * 0.5**attempt
        proc = _start(pattern, killed)
        _wait_for_training(proc, killed)
        time.sleep(delay)
        was_running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        if was_running:
            break
        shutil.rmtree(killed)
    note = f"seed {seed}, killed {delay:.2f} s into {training_s:.2f} s of training (attempt {attempt + 1})"
    assert was_running, f"{note}: every run ended before its kill point"

    proc = _start(pattern, killed, "--resume")
    _, err = proc.communicate(timeout=300)
    print(note)  # shown with -s: where this run was killed
    assert proc.returncode == 0, f"{note}: {err.decode()[-2000:]}"
    a, b = _weights(straight), _weights(killed)
    assert a and a.keys() == b.keys(), note
    for name in a:
        torch.testing.assert_close(
            b[name], a[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{note}: {n}: {m}"
        )
    for name in ("model_index.json", "lab_training.json", "README.md"):
        assert (killed / name).is_file(), (note, name)
