"""Inference-time mitigation by prompt-embedding optimization (Wen et al., ICLR 2024).

Starting from ``e = e_p``, minimize ``L(e) = ||eps(x_T, e) - eps(x_T, e_0)||_2`` (the attribution loss, at the
first step only) with AdamW (lr 0.05, at most 10 iterations), stopping early once ``L(e) <= l_target``; the
gradient of the BOS position is zeroed. Then generate normally with the optimized embedding and the same seed:
``pipe(prompt_embeds=result.prompt_embeds, negative_prompt_embeds=e_0, generator=<same seed>)``.

``l_target`` is model specific: :func:`calibrate_l_target` takes the median first-step magnitude of prompts
known not to be memorized (Wen et al., ICLR 2024).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from copyguard.common.errors import UsageError
from copyguard.mitigation.config import DetectConfig, PromptOptConfig
from copyguard.mitigation.detect import Detector
from copyguard.mitigation.magnitude import initial_latents, latent_shape, text_conditional_magnitude
from copyguard.mitigation.prompts import encode_prompts

__all__ = [
    "PromptOptRecord",
    "PromptOptResult",
    "calibrate_l_target",
    "optimize_embeddings",
    "optimize_prompts",
]

log = logging.getLogger(__name__)


@dataclass
class PromptOptRecord:
    """Per prompt: AdamW steps taken, ``L`` before and after, whether ``L <= l_target`` was reached."""

    iterations: int
    initial_loss: float
    final_loss: float
    reached_target: bool


@dataclass
class PromptOptResult:
    prompt_embeds: torch.Tensor
    records: list[PromptOptRecord]


def optimize_embeddings(
    unet: Any,
    model_input: torch.Tensor,
    timestep: torch.Tensor | int,
    prompt_embeds: torch.Tensor,
    uncond_emb: torch.Tensor,
    *,
    l_target: float,
    lr: float = 0.05,
    max_iters: int = 10,
    weight_decay: float = 0.01,
) -> PromptOptResult:
    """Prompt-embedding optimization on a batch: ``model_input`` [B, C, H, W] (the scaled ``x_T``),
    ``prompt_embeds`` [B, 77, D].

    Every prompt stops on its own: once its ``L <= l_target`` its row is frozen (AdamW is elementwise, so
    the batch gives the same result as one prompt at a time). The BOS row's gradient is zeroed and the row
    is also restored after each step, since AdamW's decoupled weight decay would otherwise shrink it.
    The master copy is float32; the UNet sees its own dtype. ``final_loss`` is ``L`` at the returned embedding
    (one extra forward after the last step).
    """
    dtype = prompt_embeds.dtype
    original = prompt_embeds.detach().float()
    e = original.clone().requires_grad_(True)
    e_0 = uncond_emb.detach().to(unet.dtype)
    x = model_input.detach()
    opt = torch.optim.AdamW([e], lr=lr, weight_decay=weight_decay)
    batch = e.shape[0]
    done = torch.zeros(batch, dtype=torch.bool, device=e.device)
    iterations = [0] * batch
    initial: torch.Tensor | None = None
    loss = torch.zeros(batch)
    for it in range(max_iters + 1):
        loss_t = text_conditional_magnitude(unet, x, timestep, e.to(unet.dtype), e_0)
        assert isinstance(loss_t, torch.Tensor)
        loss = loss_t.detach().cpu()
        if initial is None:
            initial = loss.clone()
        done |= (loss_t.detach() <= l_target).to(done.device)
        if bool(done.all()) or it == max_iters:
            break
        opt.zero_grad(set_to_none=True)
        loss_t[~done].sum().backward()  # each row's gradient is its own dL/de
        with torch.no_grad():
            assert e.grad is not None
            e.grad[:, 0] = 0.0  # BOS position (Wen et al., ICLR 2024)
            e.grad[done] = 0.0
        frozen = e.detach().clone()
        opt.step()
        with torch.no_grad():
            e[done] = frozen[done]
            e[:, 0] = original[:, 0]
        for i in range(batch):
            iterations[i] += int(not done[i])
    assert initial is not None
    records = [
        PromptOptRecord(iterations[i], float(initial[i]), float(loss[i]), bool(loss[i] <= l_target))
        for i in range(batch)
    ]
    return PromptOptResult(e.detach().to(dtype), records)


def _first_step(pipe: Any, x_T: torch.Tensor, num_inference_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    sched = copy.deepcopy(pipe.scheduler)
    sched.set_timesteps(num_inference_steps, device=x_T.device)
    t = sched.timesteps[0]
    return sched.scale_model_input(x_T, t), t


def optimize_prompts(
    pipe: Any,
    prompts: Sequence[str],
    seeds: int | Sequence[int],
    *,
    l_target: float,
    config: PromptOptConfig | None = None,
    num_inference_steps: int = 50,
    height: int | None = None,
    width: int | None = None,
) -> PromptOptResult:
    """Prompt-embedding optimization for prompts, each at the ``x_T`` its generation with ``seeds[i]`` (or one
    seed for all) starts from.

    ``x_T`` is drawn exactly as ``pipe(..., generator=torch.Generator().manual_seed(seed))`` draws it for one
    image, and the first timestep is that of ``num_inference_steps``, so generating with the returned
    ``prompt_embeds`` and the same seed and step count samples from the optimized starting point.
    """
    cfg = config or PromptOptConfig()
    prompts = list(prompts)
    seed_list = [int(seeds)] * len(prompts) if isinstance(seeds, int) else [int(s) for s in seeds]
    if len(seed_list) != len(prompts):
        raise UsageError(f"{len(prompts)} prompts but {len(seed_list)} seeds")
    device, dtype = pipe.unet.device, pipe.unet.dtype
    shape = latent_shape(pipe, height, width)
    sigma = float(getattr(pipe.scheduler, "init_noise_sigma", 1.0))
    x_T = torch.cat(
        [initial_latents(s, shape, device=device, dtype=dtype, init_noise_sigma=sigma) for s in seed_list]
    )
    model_input, t = _first_step(pipe, x_T, num_inference_steps)
    with torch.no_grad():
        emb = encode_prompts(pipe, [*prompts, ""], device)
    result = optimize_embeddings(
        pipe.unet,
        model_input,
        t,
        emb[:-1],
        emb[-1:],
        l_target=l_target,
        lr=cfg.lr,
        max_iters=cfg.max_iters,
        weight_decay=cfg.weight_decay,
    )
    for p, r in zip(prompts, result.records, strict=True):
        log.debug(
            "prompt-opt %r: %d iterations, L %.4g -> %.4g", p[:60], r.iterations, r.initial_loss, r.final_loss
        )
    return result


def calibrate_l_target(
    pipe: Any,
    reference_prompts: Sequence[str],
    *,
    quantile: float = 0.5,
    detect_config: DetectConfig | None = None,
) -> float:
    """``l_target``: the ``quantile`` (default median) of non-memorized prompts' first-step magnitudes.

    ``detect_config`` supplies seed, batch size, trajectory length and image size; its step window is
    forced to the first step.
    """
    base = detect_config or DetectConfig()
    cfg = base.model_copy(update={"start": 0, "end": 1, "generations": 1})
    scores = Detector(pipe, cfg, progress=False).score(reference_prompts)
    if not scores:
        raise UsageError("l_target calibration needs at least one reference prompt")
    return float(np.quantile(np.asarray(scores), quantile))
