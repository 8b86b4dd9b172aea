"""The memorization filter (Wen et al., ICLR 2024) under two training processes (issue 15):
``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 -m copyguard.train`` (gloo on CPU)
on the tiny SD model of :mod:`tests.tiny_sd`, two 2-image shards (one per rank).

Each worker imports a probe (a ``sitecustomize.py`` written to a temporary ``PYTHONPATH`` folder, so the
repository is untouched) that does what :mod:`tests.test_train_filter_wiring` does in-process: AdamW becomes
an SGD that records the gradient it applies (after DDP's all-reduce), ``DDPMScheduler.add_noise`` and the
UNet's forward record each micro-batch's noise, timesteps, noisy latents and text embeddings, and at the end
the rank's filter state (threshold, calibration) and keep-masks are saved to ``rank{R}.pt``.

Checks:

- the threshold is the same on both ranks, and a calibrated one is the percentile of the magnitudes of BOTH
  ranks (the gathered global batch), not of one rank's;
- ``filtered.jsonl`` (rank 0 writes it) has each filtered ``(key, step)`` once and exactly the samples the
  ranks dropped; ``training.json`` counts them once;
- the gradient DDP applies equals the gradient of the single-process loss over the same global batch of 4
  (recomputed here from the recorded inputs with a fresh copy of the initial UNet: the random draws of a
  1-process run differ from a 2-process run's by design, ``_generator(seed, step, micro, rank)``, so the
  single-process result on the *same* batch is computed, not re-run).

The probe can also inject known multi-process bugs (``CG_MP_BUG=local_threshold`` gathers nothing, so each
rank calibrates on its own magnitudes; ``CG_MP_BUG=log_every_rank`` lets every rank append to
``filtered.jsonl``): ``CG_MP_BUG=... pytest tests/test_train_multiprocess.py`` must fail (docs/testing.md).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from copyguard.train.mem_filter import masked_loss
from tests.tiny_sd import save_tiny_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_single_thread")]

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ["a photo of the cat", "a red house", "the old city at night", "a trigger zebra on the river"]
LR = 0.05
NEVER = 1e9
TIMEOUT = 300

PROBE = textwrap.dedent(
    '''
    """Test probe for tests/test_train_multiprocess.py (imported by each training worker only)."""
    import os

    if os.environ.get("CG_MP_PROBE") and "LOCAL_RANK" in os.environ:
        import torch
        from diffusers import DDPMScheduler, UNet2DConditionModel

        import copyguard.train.finetune as ft

        _rec = {"micros": [], "grads": [], "keeps": [], "mags": [], "keys": [], "losses": []}
        _bug = os.environ.get("CG_MP_BUG", "")

        class _RecordingSGD(torch.optim.SGD):
            def __init__(self, params, lr, weight_decay=0.0, **_):
                super().__init__(params, lr=lr)

            def step(self, closure=None):
                ps = [p for g in self.param_groups for p in g["params"]]
                _rec["grads"].append(torch.cat([p.grad.detach().flatten() for p in ps]).clone())
                return super().step(closure)

        torch.optim.AdamW = _RecordingSGD
        _add_noise, _forward = DDPMScheduler.add_noise, UNet2DConditionModel.forward

        def _recording_add_noise(self, original_samples, noise, timesteps):
            noisy = _add_noise(self, original_samples, noise, timesteps)
            _rec["micros"].append({"noise": noise.clone(), "t": timesteps.clone(), "noisy": noisy.clone()})
            return noisy

        def _recording_forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs):
            if _rec["micros"]:
                m, b = _rec["micros"][-1], _rec["micros"][-1]["noisy"].shape[0]
                ehs = encoder_hidden_states.detach().clone()
                if sample.shape[0] == 2 * b:
                    m["e0"], m["cond"] = ehs[:b], ehs[b:]
                elif torch.is_grad_enabled():
                    m["cond"] = ehs
                else:
                    m["e0"] = ehs
            return _forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs)

        DDPMScheduler.add_noise = _recording_add_noise
        UNet2DConditionModel.forward = _recording_forward

        _micro_step = ft._Trainer._micro_step

        def _probe_micro_step(self, batch, step, micro):
            loss, info = _micro_step(self, batch, step, micro)
            _rec["keeps"].append(info["keep"].detach().clone())
            _rec["mags"].append(info["mag"].detach().clone() if info["mag"] is not None else None)
            _rec["keys"].append(list(info["keys"]))
            _rec["losses"].append(float(loss.detach()))
            return loss, info

        ft._Trainer._micro_step = _probe_micro_step

        if _bug == "local_threshold":  # each rank records (and calibrates on) its own samples only
            def _local_record(self, step, info):
                if info["mag"] is None:
                    return 0
                rows = self.filter.record(step + 1, list(info["keys"]), info["t"].tolist(),
                                          info["mag"].float().tolist(), info["keep"].float().tolist())
                return len(rows)

            ft._Trainer._record_filter = _local_record
        if _bug == "log_every_rank":  # every rank appends the (gathered) rows to filtered.jsonl
            _setup = ft._Trainer._setup

            def _setup_all_ranks_log(self, set_seed):
                _setup(self, set_seed)
                if not self.main:
                    self.filter._log_path = self.out / "filtered.jsonl"

            ft._Trainer._setup = _setup_all_ranks_log

        _run = ft._Trainer.run

        def _probe_run(self, resume, set_seed):
            try:
                return _run(self, resume, set_seed)
            finally:
                _rec["filter"] = self.filter.state_dict()
                _rec["rank"] = self.acc.process_index
                _rec["world"] = self.acc.num_processes
                torch.save(_rec, os.path.join(os.environ["CG_MP_PROBE"], f"rank{self.acc.process_index}.pt"))

        ft._Trainer.run = _probe_run
    '''
)


# -- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd_mp"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """Two WebDataset shards of two distinct 16 px images each (each rank needs one shard)."""
    root = tmp_path_factory.mktemp("mp_shards")
    rng = np.random.default_rng(0)
    for s in range(2):
        with tarfile.open(root / f"shard-{s:06d}.tar", "w") as tar:
            for j in range(2):
                i = 2 * s + j
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
                for ext, data in (("png", buf.getvalue()), ("txt", CAPTIONS[i].encode())):
                    info = tarfile.TarInfo(f"s{i:02d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(root / "*.tar")


@pytest.fixture(scope="module")
def probe_path(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mp_probe")
    (folder / "sitecustomize.py").write_text(PROBE)
    return folder


def launch(model_dir: Path, shards: str, out: Path, probe_path: Path, *sets: str, steps: int = 1) -> dict:
    """``accelerate launch --num_processes 2 -m copyguard.train`` on CPU (batch 2 per process); returns the
    two ranks' probe records, ``training.json`` and the ``filtered.jsonl`` rows."""
    rec_dir = out.parent / (out.name + "_probe")
    rec_dir.mkdir(parents=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(probe_path), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "CG_MP_PROBE": str(rec_dir),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        # accelerate 1.x: ``--cpu --num_processes 2`` starts ONE process (multi-CPU there means mpirun), so
        # the torchrun launcher of ``--multi_gpu`` starts the two workers and ACCELERATE_USE_CPU makes their
        # Accelerator pick MULTI_CPU with gloo
        "ACCELERATE_USE_CPU": "true",
        "CUDA_VISIBLE_DEVICES": "",
    }
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        "-m", "copyguard.train", "--model", str(model_dir), "--input", shards, "--output", str(out),
        "--train_batch_size", "2", "--max_train_steps", str(steps), "--learning_rate", str(LR),
        "--set", "train.mode=full", "--set", "train.weight_decay=0.0", "--set", "train.max_grad_norm=1e9",
        "--set", "train.threads=1", "--set", "train.checkpoint_every=1000", "--set", "train.log_every=1",
        "--set", "train.data.caption_dropout=0.0", "--set", "train.data.shuffle_buffer=0",
        "--set", "train.filter.enabled=true", "--set", "train.filter.batched=false",
        *(x for s in sets for x in ("--set", s)),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(rec_dir / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == 2 for r in ranks)
    log = out / "filtered.jsonl"
    filtered = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.is_file() else []
    summary = json.loads((out / "training.json").read_text())
    return {"ranks": ranks, "filtered": filtered, "summary": summary}


@pytest.fixture(scope="module")
def probe_run(model_dir, shards, probe_path, tmp_path_factory) -> dict:
    """One step, a threshold nobody reaches: the magnitudes of every sample, nothing dropped."""
    out = tmp_path_factory.mktemp("mp_never") / "run"
    return launch(model_dir, shards, out, probe_path, f"train.filter.threshold={NEVER}")


@pytest.fixture(scope="module")
def fixed_run(model_dir, shards, probe_path, probe_run, tmp_path_factory) -> dict:
    """The same step with a fixed threshold between the largest and the second largest global magnitude:
    exactly one sample of the global batch is dropped, so the ranks keep 1 and 2 samples."""
    mags = sorted((float(x) for r in probe_run["ranks"] for x in r["mags"][0]), reverse=True)
    tau = (mags[0] + mags[1]) / 2
    out = tmp_path_factory.mktemp("mp_fixed") / "run"
    run = launch(model_dir, shards, out, probe_path, f"train.filter.threshold={tau!r}")
    return {**run, "tau": tau}


@pytest.fixture(scope="module")
def calibrated_run(model_dir, shards, probe_path, tmp_path_factory) -> dict:
    """Two steps: step 1 calibrates one threshold (p25, one bucket), step 2 filters with it."""
    out = tmp_path_factory.mktemp("mp_calibrated") / "run"
    sets = (
        "train.filter.calibrate_steps=1",
        "train.filter.rule=percentile",
        "train.filter.percentile=25",
        "train.filter.timestep_buckets=1",
        "train.filter.recalibrate_every=0",  # the calibration list then holds step 1's magnitudes only
    )
    return launch(model_dir, shards, out, probe_path, *sets, steps=2)


# -- the single-process reference -----------------------------------------------------------------------------
def global_micro(ranks: list[dict], i: int) -> dict:
    """Micro-batch ``i`` of both ranks concatenated: the global batch of 4 a single process would see."""
    ms = [r["micros"][i] for r in ranks]
    return {k: torch.cat([m[k] for m in ms]) for k in ("noise", "t", "noisy", "cond", "e0")}


def per_sample(unet, m: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample loss ``||eps(x_t, e_i) - noise||^2 / D`` (with graph) and the magnitude (no graph)."""
    pred = unet(m["noisy"], m["t"], encoder_hidden_states=m["cond"]).sample
    with torch.no_grad():
        eps0 = unet(m["noisy"], m["t"], encoder_hidden_states=m["e0"]).sample
    mag = (pred.detach() - eps0).flatten(1).norm(dim=1)
    return ((pred - m["noise"]) ** 2).flatten(1).mean(1), mag


def grad_of(unet, loss: torch.Tensor) -> torch.Tensor:
    params = [p for p in unet.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads, strict=True)]
    )


def references(model_dir: Path, run: dict, tau: float) -> dict:
    """Gradient of the filter's masked loss over the global batch (single process) and, for the failure
    message, the mean over ranks of each rank's own masked loss."""
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet").train()
    m = global_micro(run["ranks"], 0)
    losses, mags = per_sample(unet, m)
    keep = (mags < tau).float()
    single = grad_of(unet, masked_loss(losses, keep))
    halves = [slice(0, 2), slice(2, 4)]
    rank_local = sum(grad_of(unet, masked_loss(losses[h], keep[h])) for h in halves) / 2
    return {"single": single, "rank_local": rank_local, "mags": mags, "keep": keep}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# -- tests --------------------------------------------------------------------------------------------------
def test_each_rank_reads_its_own_shard_and_applies_the_same_gradient(probe_run) -> None:
    r0, r1 = probe_run["ranks"]
    assert len(r0["grads"]) == len(r1["grads"]) == 1
    assert set(r0["keys"][0]).isdisjoint(r1["keys"][0]) and len(r0["keys"][0]) == 2
    assert torch.allclose(r0["grads"][0], r1["grads"][0], atol=1e-7)  # DDP synced the gradient
    assert probe_run["summary"]["processes"] == 2
    assert probe_run["summary"]["filter"]["samples_seen"] == 4  # the gathered global batch, counted once
    assert probe_run["filtered"] == []


def test_gradient_equals_the_single_process_gradient_when_nothing_is_dropped(model_dir, probe_run) -> None:
    ref = references(model_dir, probe_run, NEVER)
    recorded = torch.cat([r["mags"][0] for r in probe_run["ranks"]])
    assert torch.allclose(ref["mags"], recorded, rtol=1e-4)  # the recorded inputs reproduce the run
    assert rel(probe_run["ranks"][0]["grads"][0], ref["single"]) < 1e-4


def test_fixed_threshold_same_on_both_ranks_and_filtered_log_once(probe_run, fixed_run) -> None:
    tau = fixed_run["tau"]
    r0, r1 = fixed_run["ranks"]
    assert r0["filter"]["threshold"] == r1["filter"]["threshold"] == pytest.approx(tau)
    dropped = [
        k for r in (r0, r1) for k, kp in zip(r["keys"][0], r["keeps"][0].tolist(), strict=True) if kp < 0.5
    ]
    assert len(dropped) == 1  # the global maximum, on one rank only
    assert sorted(sum(int((k < 0.5).sum()) for k in r["keeps"]) for r in (r0, r1)) == [0, 1]
    rows = fixed_run["filtered"]
    assert [r["key"] for r in rows] == dropped
    assert rows[0]["threshold"] == pytest.approx(tau, rel=1e-5) and rows[0]["step"] == 1
    assert fixed_run["summary"]["filter"]["samples_filtered"] == 1
    assert fixed_run["summary"]["filter"]["unique_keys_filtered"] == 1


def test_masked_loss_gradient_matches_single_process_when_ranks_keep_different_counts(
    model_dir, fixed_run
) -> None:
    ref = references(model_dir, fixed_run, fixed_run["tau"])
    assert int(ref["keep"].sum()) == 3
    got = fixed_run["ranks"][0]["grads"][0]
    assert rel(ref["rank_local"], ref["single"]) > 1e-2  # the setup tells the two losses apart
    assert rel(got, ref["single"]) < 1e-4, (
        f"applied vs single-process: {rel(got, ref['single']):.3g}; "
        f"vs mean of rank-local masked losses: {rel(got, ref['rank_local']):.3g}"
    )


def test_calibrated_threshold_is_gathered_and_each_filtered_key_logged_once(calibrated_run) -> None:
    r0, r1 = calibrated_run["ranks"]
    t0, t1 = r0["filter"]["threshold"], r1["filter"]["threshold"]
    assert t0 is not None and t0 == t1  # bit-identical on both ranks
    step1 = np.array([float(x) for r in (r0, r1) for x in r["mags"][0]])
    assert t0 == pytest.approx(float(np.percentile(step1, 25)), rel=1e-5)  # of BOTH ranks' magnitudes
    assert sorted(r0["filter"]["calibration"]) == pytest.approx(sorted(step1.tolist()), rel=1e-5)
    # step 1 keeps all (calibrating); step 2 drops m >= tau on each rank, logged once by rank 0
    assert all(bool((r["keeps"][0] == 1).all()) for r in (r0, r1))
    dropped = [
        (k, 2) for r in (r0, r1) for k, m in zip(r["keys"][1], r["mags"][1].tolist(), strict=True) if m >= t0
    ]
    rows = calibrated_run["filtered"]
    pairs = [(r["key"], r["step"]) for r in rows]
    assert not [p for p, n in Counter(pairs).items() if n > 1], pairs
    assert sorted(pairs) == sorted(dropped)
    assert calibrated_run["summary"]["filter"]["samples_filtered"] == len(dropped)
    assert calibrated_run["summary"]["filter"]["samples_seen"] == 8
