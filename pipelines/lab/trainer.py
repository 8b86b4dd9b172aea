"""``lab-model``: train a small Stable Diffusion from scratch that memorizes its duplicated pairs.

Stages (each resumable from its last checkpoint in ``MODEL_DIR/checkpoints``):

1. ``vae``: ``AutoencoderKL`` on the training images, or on random crops of them (``vae.crop``) and then on
   whole ones (``vae.full_size_steps``), with the loss of :mod:`copyguard.pipelines.lab.vae_loss`.
2. latents: every training image encoded once (posterior mean and std); ``scaling_factor`` = 1 / std.
3. ``unet``: ``UNet2DConditionModel`` and the ``CLIPTextModel`` trained jointly on epsilon prediction,
   with caption dropout (the empty prompt) so classifier-free guidance works, and an EMA of both.
4. the diffusers folder (``StableDiffusionPipeline`` layout, EMA weights, no safety checker), then the
   memorization measurement (:mod:`copyguard.pipelines.lab.evaluate`) and the model card.

Determinism: the data order of every epoch and every random draw of step ``s`` come from generators seeded
with ``(seed, stage, epoch)`` / ``(seed, stage, s)``, so an interrupted and resumed run repeats the
uninterrupted one step for step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from copyguard.common.errors import UsageError
from copyguard.common.runtime import choose_threads, progress_bar, resolve_device
from copyguard.pipelines.lab.architecture import (
    build_clip_tokenizer,
    build_scheduler,
    build_text_encoder,
    build_unet,
    build_vae,
    count_params,
    save_pipeline,
)
from copyguard.pipelines.lab.config import LabConfig, LabPresetConfig
from copyguard.pipelines.lab.data import LabData, load_lab_data, tokenize_captions
from copyguard.pipelines.lab.vae_loss import InceptionPerceptual, vae_loss
from copyguard.train.ema import ExponentialMovingAverage

__all__ = ["LabResult", "torch_settings", "train_lab_model"]

log = logging.getLogger(__name__)

_STAGE_IDS = {"vae": 1, "unet": 2}


@dataclass
class LabResult:
    """What a run produced: the model folder, whether training finished, timings, sizes."""

    out_dir: Path
    complete: bool
    timings: dict[str, float] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    scaling_factor: float = 1.0


def _generator(seed: int, stage: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + _STAGE_IDS[stage] * 100_003 + step)


def _batch_indices(n: int, batch: int, step: int, seed: int, stage: str) -> np.ndarray:
    """Indices of step ``step``: consecutive slices of per-epoch seeded permutations."""
    out = []
    pos = step * batch
    while len(out) < batch:
        epoch, offset = divmod(pos, n)
        perm = np.random.default_rng([seed, _STAGE_IDS[stage], epoch]).permutation(n)
        take = perm[offset : offset + batch - len(out)]
        out.extend(take.tolist())
        pos += len(take)
    return np.asarray(out)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the base rate."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def _save_ckpt(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_ckpt(path: Path, fingerprint: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        raise UsageError(
            f"checkpoint {path} was written with other settings or data; run without --resume to start over"
        )
    return state


def _fingerprint(cfg: LabConfig, data: LabData, stage: str) -> str:
    """What a stage's checkpoint depends on: the VAE only on its own settings; the UNet on all training ones."""
    preset = cfg.active()
    settings = (
        {"resolution": preset.resolution, "vae": preset.vae.model_dump()}
        if stage == "vae"
        else preset.model_dump(exclude={"eval", "checkpoint_every"})
    )
    body = {"seed": cfg.seed, "settings": settings, "stage": stage}
    body["keys"] = hashlib.sha256("\n".join(data.keys).encode()).hexdigest()
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _random_crop(x: torch.Tensor, crop: int, align: int, g: torch.Generator) -> torch.Tensor:
    """One ``crop`` x ``crop`` window per image at a seeded position on the ``align`` grid (0: ``x``)."""
    side = x.shape[-1]
    if not crop or crop >= side:
        return x
    slots = (side - crop) // align + 1
    pos = torch.randint(0, slots, (len(x), 2), generator=g) * align
    return torch.stack(
        [im[:, y : y + crop, c : c + crop] for im, (y, c) in zip(x, pos.tolist(), strict=True)]
    )


def _train_vae(vae, data: LabData, preset: LabPresetConfig, ctx: dict[str, Any]) -> float:
    spec = preset.vae
    device, seed = ctx["device"], ctx["seed"]
    ckpt_path = ctx["ckpt_dir"] / "vae.pt"
    opt = torch.optim.AdamW(vae.parameters(), lr=spec.lr, weight_decay=0.0)
    start, loss_avg = 0, float("nan")
    state = _load_ckpt(ckpt_path, ctx["fp_vae"]) if ctx["resume"] else None
    if state is not None:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, loss_avg = int(state["step"]), float(state["loss"])
        log.info("vae: resumed at step %d/%d", start, spec.steps)
    images = _to_float(data.images)
    perceptual = InceptionPerceptual().to(device) if spec.perceptual_weight else None
    vae.to(device).train()
    bar = progress_bar(range(start, spec.steps), desc="vae", initial=start, total=spec.steps, unit="step")
    for step in bar:
        if ctx["stop"] == ("vae", step):
            return math.nan
        g = _generator(seed, "vae", step)
        whole = step >= spec.steps - spec.full_size_steps
        batch = (spec.full_size_batch_size or spec.batch_size) if whole else spec.batch_size
        x = images[_batch_indices(len(images), batch, step, seed, "vae")]
        x = (x if whole else _random_crop(x, spec.crop, spec.factor, g)).to(device)
        for group in opt.param_groups:
            group["lr"] = spec.lr * _lr_factor(step, spec.steps, 20)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx["bf16"]):
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(device)
            rec = vae.decode(z).sample.float()
        loss = vae_loss(rec, x, post.kl().float(), kl_weight=spec.kl_weight, edge_weight=spec.edge_weight,
                        perceptual_weight=spec.perceptual_weight, perceptual=perceptual)  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        loss_avg = loss.item() if math.isnan(loss_avg) else 0.95 * loss_avg + 0.05 * loss.item()
        bar.set_postfix(loss=f"{loss_avg:.4f}")
        if (step + 1) % preset.checkpoint_every == 0 or step + 1 == spec.steps:
            state = {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1, "loss": loss_avg}
            _save_ckpt(ckpt_path, {**state, "fingerprint": ctx["fp_vae"]})
    vae.eval()
    return loss_avg


@torch.no_grad()
def _encode_latents(
    vae, images: np.ndarray, device: torch.device, batch: int = 128
) -> tuple[torch.Tensor, ...]:
    means, stds = [], []
    for i in range(0, len(images), batch):
        post = vae.encode(_to_float(images[i : i + batch]).to(device)).latent_dist
        means.append(post.mean.float().cpu())
        stds.append(post.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def _train_unet(unet, text_encoder, lat: tuple[torch.Tensor, ...], ids: np.ndarray, empty: np.ndarray,
                preset: LabPresetConfig, ctx: dict[str, Any]) -> float:  # fmt: skip
    spec = preset.unet
    device, seed = ctx["device"], ctx["seed"]
    noise_sched = DDPMScheduler.from_config(build_scheduler(preset).config)
    ckpt_path = ctx["ckpt_dir"] / "unet.pt"
    unet.to(device).train()  # before the EMA copies the weights: its shadow lives on the same device
    text_encoder.to(device).train()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    ema_u = ExponentialMovingAverage(unet.state_dict(), spec.ema_decay)
    ema_t = ExponentialMovingAverage(text_encoder.state_dict(), spec.ema_decay)
    start, loss_avg = 0, float("nan")
    state = _load_ckpt(ckpt_path, ctx["fp_unet"]) if ctx["resume"] else None
    if state is not None:
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        ema_u.shadow = {k: v.to(device) for k, v in state["ema_unet"].items()}
        ema_t.shadow = {k: v.to(device) for k, v in state["ema_text_encoder"].items()}
        opt.load_state_dict(state["opt"])
        start, loss_avg = int(state["step"]), float(state["loss"])
        log.info("unet: resumed at step %d/%d", start, spec.steps)
    mean, std = lat[0], lat[1]
    scale = ctx["scaling_factor"]
    ids_t, empty_t = torch.from_numpy(ids), torch.from_numpy(empty)
    acp = noise_sched.alphas_cumprod
    bar = progress_bar(range(start, spec.steps), desc="unet", initial=start, total=spec.steps, unit="step")
    for step in bar:
        if ctx["stop"] == ("unet", step):
            return math.nan
        g = _generator(seed, "unet", step)
        idx = torch.from_numpy(_batch_indices(len(mean), spec.batch_size, step, seed, "unet"))
        b = len(idx)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scale
        noise = torch.randn(z0.shape, generator=g)
        if spec.offset_noise:
            noise = noise + spec.offset_noise * torch.randn((b, z0.shape[1], 1, 1), generator=g)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (b,), generator=g)
        drop = torch.rand(b, generator=g) < spec.caption_dropout
        tok = torch.where(drop[:, None], empty_t[None, :], ids_t[idx])
        a = acp[t].view(-1, 1, 1, 1)
        zt = (a.sqrt() * z0 + (1 - a).sqrt() * noise).to(device)
        for group in opt.param_groups:
            group["lr"] = spec.lr * _lr_factor(step, spec.steps, spec.warmup_steps)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx["bf16"]):
            enc = text_encoder(tok.to(device))[0]
            pred = unet(zt, t.to(device), enc).sample.float()
        loss = F.mse_loss(pred, noise.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_u.update(unet.state_dict(), step)
        ema_t.update(text_encoder.state_dict(), step)
        loss_avg = loss.item() if math.isnan(loss_avg) else 0.98 * loss_avg + 0.02 * loss.item()
        bar.set_postfix(loss=f"{loss_avg:.4f}")
        if (step + 1) % preset.checkpoint_every == 0 or step + 1 == spec.steps:
            state = {
                "unet": unet.state_dict(),
                "text_encoder": text_encoder.state_dict(),
                "ema_unet": ema_u.shadow,
                "ema_text_encoder": ema_t.shadow,
                "opt": opt.state_dict(),
                "step": step + 1,
                "loss": loss_avg,
                "fingerprint": ctx["fp_unet"],
            }
            _save_ckpt(ckpt_path, state)
    ema_u.copy_to(unet.state_dict())
    ema_t.copy_to(text_encoder.state_dict())
    unet.eval()
    text_encoder.eval()
    return loss_avg


@contextlib.contextmanager
def torch_settings(cfg: LabConfig, device: torch.device) -> Iterator[None]:
    """Threads and deterministic algorithms for a run; the process's previous settings come back after."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(choose_threads(cfg.threads))
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)


def train_lab_model(
    cfg: LabConfig,
    data_pattern: str | list[str],
    out_dir: str | Path,
    *,
    resume: bool = False,
    data: LabData | None = None,
    stop_at: tuple[str, int] | None = None,
) -> LabResult:
    """Train every component of ``cfg``'s active preset and write the diffusers folder to ``out_dir``.

    ``stop_at=("unet", n)`` stops before step ``n`` of that stage as an interruption would (tests of
    ``resume``); the result then has ``complete=False`` and only checkpoints are written.
    """
    preset = cfg.active()
    device = resolve_device(cfg.device)
    if cfg.mixed_precision == "bf16" and device.type != "cuda":
        raise UsageError("mixed_precision=bf16 needs --device cuda")
    with torch_settings(cfg, device):
        log.info("device %s, %d CPU thread(s)", device, torch.get_num_threads())
        return _train(cfg, preset, device, data_pattern, Path(out_dir), resume, data, stop_at)


def _train(cfg: LabConfig, preset: LabPresetConfig, device: torch.device, data_pattern: str | list[str], out: Path,
           resume: bool, data: LabData | None, stop_at: tuple[str, int] | None) -> LabResult:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if data is None:
        data = load_lab_data(data_pattern, preset.resolution, preset.heldout, cfg.seed)
    timings["data_s"] = time.perf_counter() - t0
    log.info("lab data: %s", data.info())
    torch.manual_seed(cfg.seed)
    tokenizer = build_clip_tokenizer()
    vae, text_encoder, unet = build_vae(preset), build_text_encoder(preset), build_unet(preset)
    params = {
        "vae": count_params(vae),
        "text_encoder": count_params(text_encoder),
        "unet": count_params(unet),
    }
    log.info("parameters: %s", params)
    ctx: dict[str, Any] = {
        "device": device,
        "seed": cfg.seed,
        "resume": resume,
        "stop": stop_at,
        "bf16": cfg.mixed_precision == "bf16",
        "ckpt_dir": out / "checkpoints",
        "fp_vae": _fingerprint(cfg, data, "vae"),
        "fp_unet": _fingerprint(cfg, data, "unet"),
    }
    losses: dict[str, float] = {}
    t1 = time.perf_counter()
    losses["vae"] = _train_vae(vae, data, preset, ctx)
    timings["vae_s"] = time.perf_counter() - t1
    if stop_at is not None and stop_at[0] == "vae":
        return LabResult(out, False, timings, params, losses)
    mean, std = _encode_latents(vae, data.images, device)
    sample = mean + std * torch.randn(mean.shape, generator=_generator(cfg.seed, "vae", 10**6))
    scaling = float(1.0 / sample.std())
    vae.register_to_config(scaling_factor=scaling)
    ctx["scaling_factor"] = scaling
    log.info("latents %s, scaling_factor %.4f", tuple(mean.shape), scaling)
    ids = tokenize_captions(tokenizer, data.captions)
    empty = tokenize_captions(tokenizer, [""])[0]
    t2 = time.perf_counter()
    losses["unet"] = _train_unet(unet, text_encoder, (mean, std), ids, empty, preset, ctx)
    timings["unet_s"] = time.perf_counter() - t2
    if stop_at is not None:
        return LabResult(out, False, timings, params, losses, scaling)
    for module in (vae, text_encoder, unet):
        module.to("cpu")
    save_pipeline(
        out,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(preset),
    )
    timings["train_total_s"] = time.perf_counter() - t0
    result = LabResult(out, True, timings, params, losses, scaling)
    info = {
        "preset": cfg.preset,
        "seed": cfg.seed,
        "settings": preset.model_dump(),
        "data": data.info(),
        "heldout_keys": data.heldout_keys,
        "timings": timings,
        "params": params,
        "final_losses": losses,
        "scaling_factor": scaling,
        "device": str(device),
    }
    (out / "lab_training.json").write_text(
        json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return result
