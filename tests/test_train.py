"""``copyguard train``: the memorization filter on constructed tensors, the data stream, and the trainer on
the tiny lab model (loss goes down, LoRA round trip through ``load_lora_weights``, kill and resume, NaN stop,
config errors).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from copyguard.pipelines.cli import main as cli_main
from copyguard.train.config import DataConfig, FilterConfig, TrainConfig
from copyguard.train.finetune_data import make_loader, shard_paths
from copyguard.train.mem_filter import MagnitudeFilter, filter_mask, filtered_prediction, masked_loss

pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parent.parent
# Kill-and-resume tolerance: every random draw is seeded by (seed, step, micro-batch, rank) and the data
# stream by (seed, epoch), so the resumed run repeats the same float operations; on one CPU thread the
# weights come out bit-identical. The bound leaves room for other BLAS builds.
RESUME_ATOL = 1e-6


# --- the filter (pure functions on tensors) ------------------------------------------------------------


def test_filter_drops_exactly_the_samples_at_or_above_the_threshold(tmp_path: Path) -> None:
    mags = torch.tensor([0.5, 2.0, 1.999, 3.0, 0.0])
    keep = filter_mask(mags, 2.0)
    assert keep.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    per = torch.tensor([1.0, 10.0, 2.0, 20.0, 3.0], requires_grad=True)
    loss = masked_loss(per, keep)
    assert loss.item() == pytest.approx((1 + 2 + 3) / 3)
    loss.backward()
    assert per.grad.tolist() == pytest.approx([1 / 3, 0, 1 / 3, 0, 1 / 3])
    none = masked_loss(per, torch.zeros(5))  # every sample dropped: zero loss, graph kept (mask, not index)
    assert none.item() == 0.0 and none.requires_grad
    flt = MagnitudeFilter(FilterConfig(enabled=True, threshold=2.0))
    flt.open_log(tmp_path / "filtered.jsonl", 0)
    rows = flt.record(7, list("abcde"), [10, 20, 30, 40, 50], mags.tolist(), keep.tolist())
    assert [r["key"] for r in rows] == ["b", "d"]
    lines = [json.loads(x) for x in (tmp_path / "filtered.jsonl").read_text().splitlines()]
    assert lines == [
        {"key": "b", "step": 7, "timestep": 20, "magnitude": 2.0, "threshold": 2.0},
        {"key": "d", "step": 7, "timestep": 40, "magnitude": 3.0, "threshold": 2.0},
    ]
    s = flt.summary()
    assert (s["samples_seen"], s["samples_filtered"], s["unique_keys_filtered"]) == (5, 2, 2)


def test_filter_calibrates_a_percentile_then_filters() -> None:
    flt = MagnitudeFilter(
        FilterConfig(enabled=True, rule="percentile", percentile=50, calibrate_steps=2, timestep_buckets=1)
    )
    for step in range(2):
        m = torch.arange(4, dtype=torch.float32) + 4 * step
        keep = flt.keep(m)
        assert keep.tolist() == [1.0] * 4  # nothing filtered while calibrating
        flt.record(step, [f"k{step}{i}" for i in range(4)], [0] * 4, m.tolist(), keep.tolist())
        flt.end_step(step)
    assert flt.threshold == pytest.approx(3.5) and flt.calibrated_at == 2
    assert flt.keep(torch.tensor([3.4, 3.5, 9.0])).tolist() == [1.0, 0.0, 0.0]
    clone = MagnitudeFilter(
        FilterConfig(enabled=True, rule="percentile", percentile=50, calibrate_steps=2, timestep_buckets=1)
    )
    clone.load_state_dict(json.loads(json.dumps(flt.state_dict())))
    assert clone.threshold == flt.threshold and clone.summary() == flt.summary()


def _calibrated_bucket_filter(buckets: int, percentile: float = 90) -> MagnitudeFilter:
    """Calibrated on one step: 40 samples per 100-wide timestep bucket of 1000, magnitudes 1..40 times
    ``b + 1`` in bucket ``b``, so bucket ``b``'s percentile is ``(b + 1)`` times that of 1..40; bucket 9 has
    only 10 samples (< MIN_BUCKET_SAMPLES) and falls back to the global percentile."""
    flt = MagnitudeFilter(
        FilterConfig(
            enabled=True,
            rule="percentile",
            percentile=percentile,
            calibrate_steps=1,
            timestep_buckets=buckets,
        )
    )
    ts, mags = [], []
    for b in range(10):
        n = 10 if b == 9 else 40
        ts += [100 * b + (i % 100) for i in range(n)]
        mags += [float((b + 1) * (i + 1)) for i in range(n)]
    assert flt.keep(torch.tensor(mags), torch.tensor(ts)).tolist() == [1.0] * len(ts)  # calibrating
    flt.record(1, [f"c{i}" for i in range(len(ts))], ts, mags, [1.0] * len(ts))
    flt.end_step(0)
    return flt


def test_filter_calibrates_one_threshold_per_timestep_bucket() -> None:
    flt = _calibrated_bucket_filter(10)
    base = float(np.percentile(np.arange(1, 41), 90))
    glob = float(np.percentile(flt.calibration, 90))
    assert flt.threshold == pytest.approx(glob)
    assert flt.thresholds == pytest.approx([(b + 1) * base for b in range(9)] + [glob])
    assert flt.summary()["bucket_thresholds"] == flt.thresholds and flt.summary()["timestep_buckets"] == 10
    # the last timestep (999) falls in the last bucket; bucket edges are t * N // T
    assert flt.sample_thresholds([0, 99, 100, 999]) == pytest.approx([base, base, 2 * base, glob])
    with pytest.raises(ValueError, match="timesteps"):
        flt.keep(torch.tensor([1.0]))
    fixed = MagnitudeFilter(FilterConfig(enabled=True, threshold=2.0, timestep_buckets=10))
    assert fixed.thresholds is None and fixed.keep(
        torch.tensor([1.0, 3.0]), torch.tensor([0, 900])
    ).tolist() == [1.0, 0.0]


def test_timestep_buckets_drop_a_low_t_sample_the_single_threshold_keeps(tmp_path: Path) -> None:
    single, bucketed = _calibrated_bucket_filter(1), _calibrated_bucket_filter(10)
    assert single.thresholds is None and single.threshold == pytest.approx(bucketed.threshold)
    # a memorized sample at t=5: small in absolute terms (far below the global tau), high for its bucket;
    # an ordinary sample at t=850 with a large absolute magnitude that is normal for its bucket
    mags, ts = torch.tensor([40.0, 300.0]), torch.tensor([5, 850])
    assert mags[0] < single.threshold < mags[1]
    assert single.keep(mags, ts).tolist() == [1.0, 0.0]
    keep = bucketed.keep(mags, ts)
    assert keep.tolist() == [0.0, 1.0]
    bucketed.open_log(tmp_path / "filtered.jsonl", 0)
    rows = bucketed.record(2, ["mem", "ok"], ts.tolist(), mags.tolist(), keep.tolist())
    assert rows == [{"key": "mem", "step": 2, "timestep": 5, "magnitude": 40.0,
                     "threshold": pytest.approx(bucketed.thresholds[0], abs=1e-6)}]  # fmt: skip
    logged = json.loads((tmp_path / "filtered.jsonl").read_text())
    assert logged["threshold"] == pytest.approx(bucketed.thresholds[0], abs=1e-6)


def test_bucket_filter_state_round_trips_exactly() -> None:
    flt = _calibrated_bucket_filter(10)
    flt.num_train_timesteps = 500  # as set by the trainer from the scheduler
    clone = MagnitudeFilter(
        FilterConfig(enabled=True, rule="percentile", percentile=90, calibrate_steps=1, timestep_buckets=10)
    )
    clone.load_state_dict(json.loads(json.dumps(flt.state_dict())))
    assert clone.thresholds == flt.thresholds and clone.threshold == flt.threshold
    assert clone.num_train_timesteps == 500 and clone.calibration_t == flt.calibration_t
    assert clone.summary() == flt.summary() and clone.state_dict() == flt.state_dict()
    m, t = torch.tensor([30.0, 30.0, 80.0, 80.0]), torch.tensor([10, 60, 60, 499])
    assert torch.equal(clone.keep(m, t), flt.keep(m, t))
    old = flt.state_dict()  # a checkpoint written before timestep buckets existed
    for k in ("thresholds", "calibration_t", "num_train_timesteps"):
        old.pop(k)
    legacy = MagnitudeFilter(FilterConfig(enabled=True, rule="percentile", percentile=90, calibrate_steps=1))
    legacy.load_state_dict(old)
    assert legacy.thresholds is None and legacy.threshold == flt.threshold


class _ToyUnet(torch.nn.Module):
    """eps = conv(x) + mean of the text embedding (so cond and uncond differ); counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.calls = 0

    def forward(self, x, t, encoder_hidden_states):
        self.calls += 1
        out = self.conv(x) + encoder_hidden_states.mean(dim=(1, 2))[:, None, None, None]

        class _Out:
            sample = out

        return _Out()


def test_filtered_prediction_is_one_batched_call_equal_to_the_sequential_pair() -> None:
    torch.manual_seed(0)
    unet = _ToyUnet()
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([1, 2, 3])
    cond, uncond = torch.randn(3, 77, 16), torch.randn(1, 77, 16, requires_grad=True)
    pred_b, mag_b = filtered_prediction(unet, x, t, cond, uncond, batched=True)
    assert unet.calls == 1 and not mag_b.requires_grad and pred_b.requires_grad
    pred_s, mag_s = filtered_prediction(unet, x, t, cond, uncond, batched=False)
    assert unet.calls == 3
    torch.testing.assert_close(pred_b, pred_s)
    torch.testing.assert_close(mag_b, mag_s)
    expected = (unet(x, t, cond).sample - unet(x, t, uncond.expand(3, -1, -1)).sample).flatten(1).norm(dim=1)
    torch.testing.assert_close(mag_b, expected)
    pred_b.sum().backward()
    assert uncond.grad is None  # the unconditional half never carries gradient to its embedding


# --- the data stream ---------------------------------------------------------------------------------


def test_stream_is_seeded_skips_and_counts_broken_samples(lab_tiny_data: Path) -> None:
    paths = shard_paths(str(lab_tiny_data / "*.tar"))
    spec = DataConfig(center_crop=False, random_flip=True, caption_dropout=0.5, shuffle_buffer=64)

    def take(seed: int, n: int = 25):
        return list(islice(iter(make_loader(paths, spec, 24, 16, seed)), n))

    a, b, c = take(0), take(0), take(1)
    assert a[0].pixels.shape == (16, 3, 24, 24) and a[0].pixels.min() >= -1 and a[0].pixels.max() <= 1
    assert all(x.keys == y.keys and torch.equal(x.pixels, y.pixels) for x, y in zip(a, b, strict=True))
    assert a[0].keys != c[0].keys
    skipped: dict[str, int] = {}
    for batch in a:
        for k, v in batch.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
    assert {"corrupt_image", "missing_caption", "non_utf8_caption"} <= set(skipped)
    captions = [cap for batch in a for cap in batch.captions]
    assert 0.3 < sum(cap == "" for cap in captions) / len(captions) < 0.7


# --- the trainer on the tiny lab model ---------------------------------------------------------------


def _cfg(**kw) -> TrainConfig:
    base = {"max_steps": 10, "batch_size": 8, "threads": 1, "checkpoint_every": 1000, "log_every": 5}
    return TrainConfig.model_validate({**base, **kw})


@torch.no_grad()
def _fixed_loss(unet, model_dir: Path, shard: str, size: int) -> float:
    """Epsilon MSE on fixed samples, noise and timesteps (the same draws for every UNet compared)."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    vae = AutoencoderKL.from_pretrained(model_dir / "vae")
    te = CLIPTextModel.from_pretrained(model_dir / "text_encoder")
    tok = CLIPTokenizer.from_pretrained(model_dir / "tokenizer")
    sched = DDPMScheduler.from_pretrained(model_dir / "scheduler")
    batch = next(iter(make_loader([shard], DataConfig(shuffle_buffer=0, caption_dropout=0), size, 48, 0)))
    g = torch.Generator().manual_seed(123)
    z = vae.encode(batch.pixels).latent_dist.mean * vae.config.scaling_factor
    ids = tok(
        batch.captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    emb = te(ids)[0]
    total = 0.0
    for _ in range(4):
        noise = torch.randn(z.shape, generator=g)
        t = torch.randint(0, 1000, (len(z),), generator=g)
        pred = unet(sched.add_noise(z, noise, t), t, emb).sample
        total += torch.nn.functional.mse_loss(pred, noise).item() / 4
    return total


def test_full_finetune_lowers_the_loss(tiny_sd_folder: Path, lab_tiny_data: Path, tmp_path: Path,
                                       torch_single_thread) -> None:  # fmt: skip
    from diffusers import UNet2DConditionModel

    from copyguard.train.finetune import run_training

    # A random tiny SD (tests/tiny_sd.py, VAE factor 2): full fine-tuning at 16 px must lower its loss.
    shard = str(lab_tiny_data / "shard-000000.tar")
    run = tmp_path / "runs" / "tiny" / "run"  # a folder whose parents do not exist yet
    cfg = _cfg(
        mode="full", max_steps=40, batch_size=16, lr=1e-3, ema=True, ema_decay=0.9, data={"resolution": 16}
    )
    summary = run_training(cfg, tiny_sd_folder, shard, run)
    assert summary["status"] == "complete" and summary["steps"] == 40
    before = _fixed_loss(
        UNet2DConditionModel.from_pretrained(tiny_sd_folder / "unet"), tiny_sd_folder, shard, 16
    )
    after = _fixed_loss(UNet2DConditionModel.from_pretrained(run / "unet"), tiny_sd_folder, shard, 16)
    assert after < 0.9 * before, (before, after)
    rows = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert yaml_section(run / "train_config.yaml")["mode"] == "full"
    assert (run / "model_index.json").is_file()
    assert any((run / "logs").rglob("events.out.tfevents*"))
    # the summary's loss is the 0.9/0.1 moving average of the logged step losses; the device is named
    ema_loss = float("nan")
    for r in rows:
        ema_loss = r["loss"] if np.isnan(ema_loss) else 0.9 * ema_loss + 0.1 * r["loss"]
    assert summary["final_loss_ema"] == pytest.approx(ema_loss, rel=1e-9)
    assert summary["device"] == "cpu"


def _shard_with_broken_samples_first(source: Path, out: Path) -> Path:
    """``source``'s samples with broken ones: an image that does not decode and an image without a caption
    before the first batch of 4, another undecodable image before the second (the two training steps below
    read 8 good samples, so each broken one is read once)."""
    import io
    import tarfile

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(source) as src, tarfile.open(out, "w") as dst:
        add(dst, "broken0.jpg", b"not a jpeg")
        add(dst, "broken0.txt", b"a caption")
        good = next(m for m in src.getmembers() if m.name.endswith(".jpg"))
        add(dst, "broken1.jpg", src.extractfile(good).read())
        keys: list[str] = []
        for member in src.getmembers():
            key = member.name.rsplit(".", 1)[0]
            if key not in keys:
                keys.append(key)
                if len(keys) == 5:
                    add(dst, "broken2.jpg", b"not a jpeg either")
                    add(dst, "broken2.txt", b"a caption")
            add(dst, member.name, src.extractfile(member).read())
    return out


def test_full_finetune_keeps_the_base_models_sampler(tiny_sd_folder: Path, lab_tiny_data: Path, tmp_path: Path,
                                                     torch_single_thread) -> None:  # fmt: skip
    """The trainer reads the scheduler folder as a DDPM noise schedule; the output keeps the base model's own
    sampler (here Euler, as a user's model might ship), its config and its model_index entry."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from copyguard.train.finetune import run_training

    base = tmp_path / "euler_base"
    shutil.copytree(tiny_sd_folder, base)
    sched = EulerDiscreteScheduler.from_pretrained(base / "scheduler")
    shutil.rmtree(base / "scheduler")
    sched.save_pretrained(base / "scheduler")
    index = json.loads((base / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
    (base / "model_index.json").write_text(json.dumps(index))
    shard = _shard_with_broken_samples_first(lab_tiny_data / "shard-000000.tar", tmp_path / "shard.tar")
    cfg = _cfg(mode="full", max_steps=2, batch_size=4, data={"resolution": 16, "shuffle_buffer": 0})
    summary = run_training(cfg, base, str(shard), tmp_path / "out")
    out = tmp_path / "out"
    # the broken samples of both batches are counted by reason in the summary and training.json
    assert summary["skipped_samples"] == {"corrupt_image": 2, "missing_caption": 1}
    assert json.loads((out / "training.json").read_text())["skipped_samples"] == summary["skipped_samples"]
    assert json.loads((out / "model_index.json").read_text())["scheduler"] == [
        "diffusers",
        "EulerDiscreteScheduler",
    ]
    assert (out / "scheduler" / "scheduler_config.json").read_text() == (
        base / "scheduler" / "scheduler_config.json"
    ).read_text()
    assert isinstance(StableDiffusionPipeline.from_pretrained(out).scheduler, EulerDiscreteScheduler)


def test_resume_keeps_the_skipped_counts_and_reads_an_older_checkpoint(tiny_sd_folder: Path, lab_tiny_data: Path,
                                                                        tmp_path: Path, torch_single_thread) -> None:  # fmt: skip
    """A resumed run adds the checkpoint's skipped-sample counts to its own; a checkpoint written before those
    counts existed (no ``skipped`` in its state) still resumes."""
    from copyguard.train.checkpoints import STATE_FILE
    from copyguard.train.finetune import run_training

    shard = str(_shard_with_broken_samples_first(lab_tiny_data / "shard-000000.tar", tmp_path / "shard.tar"))
    data = {"resolution": 16, "shuffle_buffer": 0}
    first = run_training(_cfg(mode="full", max_steps=1, batch_size=4, checkpoint_every=1, data=data),
                         tiny_sd_folder, shard, tmp_path / "run")  # fmt: skip
    assert first["skipped_samples"] == {"corrupt_image": 1, "missing_caption": 1}
    ckpt = tmp_path / "run" / "checkpoints" / "step-000001"
    legacy = tmp_path / "legacy"
    shutil.copytree(tmp_path / "run", legacy)
    state = json.loads((legacy / "checkpoints" / ckpt.name / STATE_FILE).read_text())
    del state["skipped"]
    (legacy / "checkpoints" / ckpt.name / STATE_FILE).write_text(json.dumps(state))
    cfg = _cfg(mode="full", max_steps=2, batch_size=4, checkpoint_every=1, data=data)
    resumed = run_training(cfg, tiny_sd_folder, shard, tmp_path / "run", resume="latest")
    old = run_training(cfg, tiny_sd_folder, shard, legacy, resume="latest")
    assert resumed["status"] == old["status"] == "complete" and resumed["steps"] == old["steps"] == 2
    # the resumed stream reads the first batch's broken samples again and the second's: on top of the saved ones
    more = {k: old["skipped_samples"].get(k, 0) for k in ("corrupt_image", "missing_caption")}
    assert more["corrupt_image"] >= 1
    assert resumed["skipped_samples"] == {k: v + first["skipped_samples"][k] for k, v in more.items()}


def test_bf16_mixed_precision_feeds_the_frozen_models_their_dtype(tiny_sd_folder: Path, lab_tiny_data: Path,
                                                                  tmp_path: Path, torch_single_thread) -> None:  # fmt: skip
    """``--mixed_precision bf16`` on the CPU: the frozen VAE and text encoder run in bfloat16, so the pixels
    must reach the VAE in bfloat16 (float32 pixels fail in its first convolution)."""
    from accelerate.state import AcceleratorState

    from copyguard.train.finetune import run_training

    # Accelerate keeps one precision per process: forget the fp32 state earlier tests left, and this one after
    AcceleratorState._reset_state()
    try:
        cfg = _cfg(max_steps=2, batch_size=4, mixed_precision="bf16", data={"resolution": 16})
        summary = run_training(
            cfg, tiny_sd_folder, str(lab_tiny_data / "shard-000000.tar"), tmp_path / "bf16"
        )
    finally:
        AcceleratorState._reset_state()
    assert summary["status"] == "complete" and np.isfinite(summary["final_loss_ema"])


def test_fp16_without_a_gpu_is_a_one_line_error(tiny_sd_folder: Path, lab_tiny_data: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from copyguard.common.errors import UsageError
    from copyguard.train.finetune import run_training

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        UsageError, match="^mixed_precision fp16 needs a CUDA GPU; on the CPU use bf16 or no$"
    ):
        run_training(
            _cfg(mixed_precision="fp16"), tiny_sd_folder, str(lab_tiny_data / "*.tar"), tmp_path / "fp16"
        )
    assert not (tmp_path / "fp16").exists()  # refused before anything is written


def yaml_section(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())["train"]


def test_lora_round_trip_through_load_lora_weights(tiny_sd_folder: Path, lab_tiny_data: Path, tmp_path: Path,
                                                   torch_single_thread) -> None:  # fmt: skip
    from diffusers import StableDiffusionPipeline

    from copyguard.train.finetune import run_training

    out = tmp_path / "lora"
    cfg = _cfg(lr=5e-2, max_steps=8, validation={"prompts": ["a red bus"], "every": 8, "steps": 2})
    run_training(cfg, tiny_sd_folder, str(lab_tiny_data / "*.tar"), out)
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "validation" / "step-000008" / "00.png").is_file()

    def generate(pipe) -> np.ndarray:
        pipe.set_progress_bar_config(disable=True)
        gen = torch.Generator().manual_seed(0)
        return pipe("a red bus", num_inference_steps=4, generator=gen, output_type="np").images[0]

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_folder)
    base = generate(pipe)
    pipe.load_lora_weights(out)
    tuned = generate(pipe)
    assert np.abs(tuned - base).mean() > 1e-3
    pipe.unload_lora_weights()
    np.testing.assert_allclose(generate(pipe), base, atol=1e-5)


def _cli(model: Path, data: str, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--input", data, "--output", str(out), *extra]


def _lora_tensors(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "pytorch_lora_weights.safetensors"))


@pytest.mark.slow  # a real run killed and resumed, or a full lab/eval run: minutes
def test_kill_and_resume_matches_an_uninterrupted_run(tiny_sd_folder: Path, lab_tiny_data: Path, tmp_path: Path,
                                                      torch_single_thread) -> None:  # fmt: skip
    data = str(lab_tiny_data / "*.tar")
    sets = ["train.max_steps=36", "train.batch_size=8", "train.threads=1", "train.checkpoint_every=12",
            "train.lr=1e-2", "train.filter.enabled=true", "train.filter.calibrate_steps=16",
            "train.filter.rule=percentile", "train.filter.percentile=90"]  # fmt: skip
    args = [a for s in sets for a in ("--set", s)]
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "copyguard.pipelines", "-q", *_cli(tiny_sd_folder, data, killed, *args)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = killed / "checkpoints" / "step-000012" / "trainer_state.json"
    deadline = time.monotonic() + 120
    while not marker.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "pytorch_lora_weights.safetensors").exists()
    assert cli_main(["-q", *_cli(tiny_sd_folder, data, killed, *args, "--resume", "latest")]) == 0
    straight = tmp_path / "straight"
    assert cli_main(["-q", *_cli(tiny_sd_folder, data, straight, *args)]) == 0
    a, b = _lora_tensors(killed), _lora_tensors(straight)
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=RESUME_ATOL, rtol=0)
    fa, fb = ((r / "filtered.jsonl").read_text() for r in (killed, straight))
    assert fa == fb and fa  # the filter log is replayed exactly, no duplicate rows from the killed part
    sa, sb = (json.loads((r / "training.json").read_text())["filter"] for r in (killed, straight))
    assert sa["threshold"] == sb["threshold"] and sa["samples_filtered"] == sb["samples_filtered"]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_sd_folder: Path, lab_tiny_data: Path,
                                                           tmp_path: Path, torch_single_thread, capsys) -> None:  # fmt: skip
    out = tmp_path / "nan"
    sets = ["train.max_steps=20", "train.checkpoint_every=4", "train.threads=1", "train.debug_nan_at_step=6"]
    code = cli_main(["-q", *_cli(tiny_sd_folder, str(lab_tiny_data / "*.tar"), out,
                                 *[a for s in sets for a in ("--set", s)])])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert "non-finite loss (nan) at step 6" in err[-1] and "step-000004" in err[-1]
    summary = json.loads((out / "training.json").read_text())
    assert summary["status"].startswith("stopped") and summary["steps"] == 5  # steps 1-5 done, 6 poisoned
    assert summary["last_checkpoint"].endswith("step-000004")
    assert (out / "checkpoints" / "step-000004" / "model.safetensors").is_file()
    assert not (out / "checkpoints" / "step-000004" / "ema.safetensors").exists()  # EMA is off by default
    assert not (out / "pytorch_lora_weights.safetensors").exists()
    from safetensors.torch import load_file

    weights = load_file(str(out / "checkpoints" / "step-000004" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--set", "train.nope=1"], "unknown key 'train.nope'"),
        (["--set", "train.mode=half"], "train.mode"),
        (["--set", "train.filter.percentile=100"], "train.filter.percentile"),
        (["--resume", "/nonexistent/ckpt"], "not a checkpoint folder"),
    ],
)
def test_config_errors_exit_2_with_one_line(tiny_sd_folder: Path, lab_tiny_data: Path, tmp_path: Path,
                                            capsys, extra: list[str], needle: str) -> None:  # fmt: skip
    code = cli_main(_cli(tiny_sd_folder, str(lab_tiny_data / "*.tar"), tmp_path / "r", *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err


def test_missing_model_and_data_exit_2(lab_tiny_data: Path, tmp_path: Path, capsys) -> None:
    assert cli_main(_cli(tmp_path / "none", str(lab_tiny_data / "*.tar"), tmp_path / "r")) == 2
    assert "no model_index.json" in capsys.readouterr().err
    proc = subprocess.run(
        [sys.executable, "-m", "copyguard.train", "--model", str(tmp_path), "--input", "x", "--output", str(tmp_path),
         "--set", "train.batch_size=0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("copyguard")]
    assert len(lines) == 1 and "train.batch_size" in lines[0]


def test_quiet_turns_off_the_training_bar(tiny_sd_folder: Path, lab_tiny_data: Path, tmp_path: Path) -> None:
    """``copyguard -q train`` prints no progress bar (tqdm reads TQDM_DISABLE only at import, and the trainer's
    explicit ``disable=`` overrode it: the bar showed under ``-q``)."""
    sets = ["train.max_steps=3", "train.threads=1", "train.filter.enabled=false"]
    argv = _cli(
        tiny_sd_folder, str(lab_tiny_data / "*.tar"), tmp_path / "q", *[a for s in sets for a in ("--set", s)]
    )
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    res = subprocess.run([sys.executable, "-m", "copyguard.pipelines", "-q", *argv], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "train:" not in res.stderr and "it/s" not in res.stderr, res.stderr[-2000:]


def test_progress_bar_is_off_when_quiet_or_not_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    from copyguard.common.runtime import progress_bar

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert not progress_bar(range(2)).disable and progress_bar(range(2), enabled=False).disable
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress_bar(range(2)).disable
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert not progress_bar(range(2)).disable
