"""What the training-time memorization filter (Wen et al., ICLR 2024) costs per fine-tuning step of a UNet.

One optimizer step (forward, MSE loss, backward, AdamW) is timed without the filter, with it batched (the
unconditional pass in the training call: one UNet call on 2B samples) and separate (a second, no-grad
call), alternating in rounds on random inputs. The threshold is fixed so high that no sample is dropped:
only the filter's cost is measured. The VAE encode and the text encoder are not part of the step, so the
filter's share of it is an upper bound of its share of a full fine-tuning step.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from copyguard.common.timing import median_ratio, time_rounds
from copyguard.train.config import FilterConfig
from copyguard.train.mem_filter import MagnitudeFilter, filtered_prediction, masked_loss

__all__ = ["KINDS", "filter_step_costs", "filter_steps"]

KINDS = ("none", "batched", "separate")


def filter_steps(unet: Any, *, batch: int, size: int, lr: float = 1e-6, seed: int = 0) -> dict[str, Callable]:
    """One training step of ``unet`` (on its device; bf16 autocast on a GPU) per kind of :data:`KINDS`, on
    seeded random latents of ``size`` px images (``size // 8`` latents) and random text embeddings."""
    device = unet.device
    cfg = unet.config
    opt = torch.optim.AdamW(unet.parameters(), lr=lr)
    filt = MagnitudeFilter(FilterConfig(enabled=True, threshold=1e9))  # never filters: cost only
    g = torch.Generator("cpu").manual_seed(seed)
    shape = (batch, cfg.in_channels, size // 8, size // 8)
    noisy, target = (torch.randn(*shape, generator=g).to(device) for _ in range(2))
    cond, uncond = (torch.randn(m, 77, cfg.cross_attention_dim, generator=g).to(device) for m in (batch, 1))
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    cuda = device.type == "cuda"

    def step(kind: str) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext():
            if kind == "none":
                pred, mag = unet(noisy, t, encoder_hidden_states=cond).sample, None
            else:
                pred, mag = filtered_prediction(unet, noisy, t, cond, uncond, batched=kind == "batched")
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
        keep = torch.ones(batch, device=device) if mag is None else filt.keep(mag, t)
        masked_loss(per_sample, keep).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {kind: (lambda kind=kind: step(kind)) for kind in KINDS}


def filter_step_costs(
    unet: Any, *, batch: int, size: int, rounds: int, steps: int, stop: Callable[[], bool] | None = None
) -> dict[str, Any]:
    """Step seconds of each kind after one warm-up step each: per round the median of ``steps`` alternating
    steps, over rounds the median; and the median per-round ratio of each filtered kind to no filter.
    ``stop()`` true ends the rounds early (:func:`copyguard.common.timing.time_rounds`)."""
    calls = filter_steps(unet, batch=batch, size=size)
    for fn in calls.values():  # allocations, cuDNN autotuning
        fn()
    times, _ = time_rounds(calls, rounds * steps, str(unet.device), stop=stop)
    per = {
        k: [statistics.median(v[i : i + steps]) for i in range(0, len(v), steps)] for k, v in times.items()
    }
    return {
        "step_s_per_round": per,
        "step_s_median": {k: statistics.median(v) for k, v in per.items()},
        "ratio_batched_vs_none": median_ratio(per["batched"], per["none"]),
        "ratio_separate_vs_none": median_ratio(per["separate"], per["none"]),
    }
