"""Wiring of the memorization filter inside the trainer: the gradient ``run_training`` applies equals the
gradient of the loss over the kept samples only (Wen et al., ICLR 2024), computed here by a plain reference.

Each test runs the real loop (``copyguard.train.finetune.run_training``, full fine-tuning of the tiny SD UNet
of :mod:`tests.tiny_sd` on a 4-image shard written here) with three recorders: ``torch.optim.AdamW`` is
replaced by an SGD that keeps a copy of every gradient it applies, ``DDPMScheduler.add_noise`` records each
micro-batch's noise (the target) and noisy latents, and ``UNet2DConditionModel.forward`` records the text
embeddings it is called with (the caption embedding and e_0). The reference then recomputes, with a fresh
copy of the initial UNet: the magnitude ``m_i = ||eps(x_t, e_i) - eps(x_t, e_0)||``, the keep decision
``m_i < tau`` and the gradient of ``sum_{kept} l_i / n_kept`` (kept samples *indexed*, the plain form), divided
by ``grad_accum`` per micro-batch as Accelerate does.

Runs are deterministic (seeded draws per step and micro-batch), so a probe run with a threshold nobody
reaches gives the magnitudes, and the threshold of the real run is put between them.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from PIL import Image

from copyguard.train.config import TrainConfig
from copyguard.train.finetune import run_training
from tests.tiny_sd import save_tiny_pipeline

pytestmark = pytest.mark.usefixtures("torch_single_thread")

CAPTIONS = ["a photo of the cat", "a red house", "the old city at night", "a trigger zebra on the river"]
LR = 0.05
NEVER = 1e9  # a threshold no magnitude reaches


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd_train"))


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> str:
    """A WebDataset shard of four distinct 16 px images (the tiny model's resolution) with captions."""
    path = tmp_path_factory.mktemp("shard") / "shard-000000.tar"
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w") as tar:
        for i, caption in enumerate(CAPTIONS):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
            for ext, data in (("png", buf.getvalue()), ("txt", caption.encode())):
                info = tarfile.TarInfo(f"s{i:02d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


@dataclass
class Micro:
    """One micro-batch as the trainer drew it."""

    noise: torch.Tensor
    t: torch.Tensor
    noisy: torch.Tensor
    cond: torch.Tensor | None = None
    e0: torch.Tensor | None = None


@dataclass
class Record:
    micros: list[Micro] = field(default_factory=list)
    steps: list[list[torch.Tensor]] = field(default_factory=list)  # gradients at each optimizer step
    summary: dict = field(default_factory=dict)
    filtered: list[dict] = field(default_factory=list)


def train(model_dir: Path, shard: str, out: Path, monkeypatch, **overrides) -> Record:
    """``run_training`` with SGD at lr ``LR`` and no clipping; records draws, embeddings and gradients."""
    rec = Record()

    class RecordingSGD(torch.optim.SGD):
        def __init__(self, params, lr, weight_decay=0.0, **_):
            super().__init__(params, lr=lr)

        def step(self, closure=None):
            rec.steps.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])
            return super().step(closure)

    add_noise, forward = DDPMScheduler.add_noise, UNet2DConditionModel.forward

    def recording_add_noise(self, original_samples, noise, timesteps):
        noisy = add_noise(self, original_samples, noise, timesteps)
        rec.micros.append(Micro(noise.detach().clone(), timesteps.detach().clone(), noisy.detach().clone()))
        return noisy

    def recording_forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs):
        if rec.micros:
            m, b = rec.micros[-1], rec.micros[-1].noisy.shape[0]
            ehs = encoder_hidden_states.detach().clone()
            if sample.shape[0] == 2 * b:  # batched (uncond, cond) call
                m.e0, m.cond = ehs[:b], ehs[b:]
            elif torch.is_grad_enabled():  # the training call
                m.cond = ehs
            else:  # the extra no-grad unconditional call
                m.e0 = ehs
        return forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs)

    base = {
        "mode": "full",
        "max_steps": 1,
        "batch_size": 4,
        "lr": LR,
        "weight_decay": 0.0,
        "max_grad_norm": 1e9,
        "threads": 1,
        "checkpoint_every": 1000,
        "log_every": 1,
        "data": {"caption_dropout": 0.0, "shuffle_buffer": 0},
    }
    cfg = TrainConfig.model_validate({**base, **overrides})
    with monkeypatch.context() as mp:
        mp.setattr(torch.optim, "AdamW", RecordingSGD)
        mp.setattr(DDPMScheduler, "add_noise", recording_add_noise)
        mp.setattr(UNet2DConditionModel, "forward", recording_forward)
        rec.summary = run_training(cfg, model_dir, shard, out)
    log = out / "filtered.jsonl"
    rec.filtered = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
    assert len(rec.micros) == cfg.max_steps * cfg.grad_accum and len(rec.steps) == cfg.max_steps
    assert all(m.cond is not None and m.e0 is not None for m in rec.micros)
    return rec


def fresh_unet(model_dir: Path) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(model_dir / "unet").train()


@torch.no_grad()
def magnitudes(unet, m: Micro) -> torch.Tensor:
    """Text-conditional magnitude ``||eps(x_t, e_i) - eps(x_t, e_0)||_2`` per sample."""
    e0 = m.e0.expand(m.noisy.shape[0], -1, -1)
    diff = unet(m.noisy, m.t, encoder_hidden_states=m.cond).sample - unet(m.noisy, m.t, e0).sample
    return diff.flatten(1).norm(dim=1)


def reference_grads(unet, micros: list[Micro], keeps: list[torch.Tensor], accum: int) -> list[torch.Tensor]:
    """Gradient of ``mean_{kept i} ||eps(x_t_i, e_i) - noise_i||^2 / D`` per micro-batch, summed / accum."""
    params = list(unet.parameters())
    total = [torch.zeros_like(p) for p in params]
    for m, keep in zip(micros, keeps, strict=True):
        pred = unet(m.noisy, m.t, encoder_hidden_states=m.cond).sample
        per_sample = ((pred - m.noise) ** 2).flatten(1).mean(1)
        kept = per_sample[keep]  # the kept samples only
        loss = kept.sum() / max(len(kept), 1) / accum
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        total = [a + (torch.zeros_like(a) if g is None else g) for a, g in zip(total, grads, strict=True)]
    return total


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


def assert_same_grads(got: list[torch.Tensor], want: list[torch.Tensor], other: list[torch.Tensor]) -> None:
    """``got`` equals ``want`` to float precision, and ``want`` is far from ``other`` (the setup bites)."""
    g, w, o = flat(got), flat(want), flat(other)
    scale = float(w.norm())
    assert float((g - w).norm()) < 1e-4 * scale, (float((g - w).norm()), scale)
    assert float((w - o).norm()) > 1e-2 * scale  # the test can tell the two losses apart


def between(values: list[float], lo_rank: int) -> float:
    """A threshold between the ``lo_rank``-th and the next largest of ``values`` (0: just below the maximum)."""
    s = sorted(values, reverse=True)
    return (s[lo_rank] + s[lo_rank + 1]) / 2


# -- fixed threshold, one micro-batch ----------------------------------------------------------------------
@pytest.mark.parametrize("batched", [False, True])
def test_gradient_is_the_gradient_over_kept_samples(model_dir, shard, tmp_path, monkeypatch, batched):
    probe = train(
        model_dir, shard, tmp_path / "probe", monkeypatch, filter={"enabled": True, "threshold": NEVER}
    )
    unet = fresh_unet(model_dir)
    mags = magnitudes(unet, probe.micros[0])
    all_kept = [torch.ones(4, dtype=torch.bool)]
    assert_same_grads(probe.steps[0], reference_grads(unet, probe.micros, all_kept, 1), [torch.zeros(1)])
    assert probe.summary["filter"]["samples_filtered"] == 0

    tau = between(mags.tolist(), 0)  # exactly one sample is at or above it
    run = train(
        model_dir,
        shard,
        tmp_path / "run",
        monkeypatch,
        filter={"enabled": True, "threshold": tau, "batched": batched},
    )
    m = run.micros[0]
    assert torch.equal(m.noise, probe.micros[0].noise) and torch.equal(m.t, probe.micros[0].t)
    keep = mags < tau
    assert int((~keep).sum()) == 1
    want = reference_grads(fresh_unet(model_dir), run.micros, [keep], 1)
    plain = reference_grads(fresh_unet(model_dir), run.micros, all_kept, 1)
    assert_same_grads(run.steps[0], want, plain)
    # the filtered sample is logged with its magnitude and the run's threshold
    assert [r["magnitude"] for r in run.filtered] == [pytest.approx(float(mags.max()), rel=1e-4)]
    assert run.filtered[0]["threshold"] == pytest.approx(tau, rel=1e-5) and run.filtered[0]["step"] == 1
    assert run.summary["filter"]["samples_filtered"] == 1


# -- fixed threshold, gradient accumulation ---------------------------------------------------------------
def test_gradient_accumulation_averages_the_kept_means_of_the_micro_batches(
    model_dir, shard, tmp_path, monkeypatch
):
    probe = train(
        model_dir,
        shard,
        tmp_path / "probe",
        monkeypatch,
        grad_accum=2,
        filter={"enabled": True, "threshold": NEVER},
    )
    unet = fresh_unet(model_dir)
    mags = [magnitudes(unet, m) for m in probe.micros]
    # drop the two largest magnitudes over both micro-batches: the kept counts then differ or one micro
    # loses samples the other keeps
    tau = between(torch.cat(mags).tolist(), 1)
    run = train(
        model_dir,
        shard,
        tmp_path / "run",
        monkeypatch,
        grad_accum=2,
        filter={"enabled": True, "threshold": tau, "batched": False},
    )
    keeps = [m < tau for m in mags]
    assert sum(int((~k).sum()) for k in keeps) == 2
    want = reference_grads(fresh_unet(model_dir), run.micros, keeps, 2)
    plain = reference_grads(fresh_unet(model_dir), run.micros, [torch.ones(4, dtype=torch.bool)] * 2, 2)
    assert_same_grads(run.steps[0], want, plain)
    assert run.summary["filter"]["samples_filtered"] == 2


# -- per-timestep-bucket thresholds (calibrated) ----------------------------------------------------------
def _mad_tau(values: np.ndarray, k: float) -> float:
    med = float(np.median(values))
    return med + k * 1.4826 * float(np.median(np.abs(values - med)))


RULES = {  # rule -> (its FilterConfig fields, the threshold it must set from one bucket's magnitudes)
    "percentile": ({"rule": "percentile", "percentile": 60.0}, lambda v: float(np.percentile(v, 60.0))),
    "mad": ({"rule": "mad", "mads": 0.5}, lambda v: _mad_tau(v, 0.5)),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_bucket_thresholds_drop_by_each_samples_own_bucket(rule, model_dir, shard, tmp_path, monkeypatch):
    """Step 1 calibrates (keeps all, records m_i and t_i), step 2 compares m_i with tau of t_i's bucket, set by
    the configured rule (the percentile, or median + k * 1.4826 * MAD)."""
    buckets = 2
    fields, rule_tau = RULES[rule]
    spec = {"enabled": True, "calibrate_steps": 1, "timestep_buckets": buckets, "batched": False, **fields}
    # 48 samples per micro-batch (the 4 images repeat): >= 20 magnitudes per bucket, as the calibration needs
    run = train(model_dir, shard, tmp_path / "run", monkeypatch, batch_size=48, max_steps=2, filter=spec)
    unet = fresh_unet(model_dir)
    m1, m2 = run.micros
    mag1 = magnitudes(unet, m1)
    # calibration (copyguard's timestep-bucket extension): percentile of each bucket's step-1 magnitudes
    b1 = (m1.t * buckets // 1000).clamp(max=buckets - 1)
    assert all(int((b1 == b).sum()) >= 20 for b in range(buckets))
    taus = [rule_tau(mag1[b1 == b].numpy().astype(np.float64)) for b in range(buckets)]
    assert run.summary["filter"]["bucket_thresholds"] == pytest.approx(taus, rel=1e-4)
    assert run.summary["filter"]["samples_filtered"] >= 1  # counted at step 2 only (step 1 calibrates)
    # step 2 runs on the weights after step 1 (SGD: p - lr * g)
    with torch.no_grad():
        for p, g in zip(unet.parameters(), run.steps[0], strict=True):
            p -= LR * g
    mag2 = magnitudes(unet, m2)
    b2 = (m2.t * buckets // 1000).clamp(max=buckets - 1)
    keep = mag2 < torch.tensor(taus)[b2]
    single = mag2 < rule_tau(mag1.numpy().astype(np.float64))  # what one global threshold would keep
    assert not torch.equal(keep, single)  # the buckets matter for this batch
    want = reference_grads(unet, [m2], [keep], 1)
    assert_same_grads(run.steps[1], want, reference_grads(unet, [m2], [single], 1))
    assert run.summary["filter"]["samples_filtered"] == int((~keep).sum())
