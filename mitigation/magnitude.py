"""Text-conditional magnitude (Wen et al., ICLR 2024) and the CFG trajectory it is measured along.

``d_t(p) = || eps(x_t, e_p) - eps(x_t, e_0) ||_2``, the L2 norm over all latent elements, not divided by
their number. One function serves detection, token attribution, prompt optimization and the trainer's
filter (all four from Wen et al.): it makes ONE UNet call on the concatenated ``(uncond, cond)`` batch of 2B
samples, so measuring costs exactly one CFG evaluation.

For a v-prediction model the "eps" here is the model output (the v difference); the score is still a
monotone signal, but thresholds never carry over between models anyway (Wen et al., ICLR 2024).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "MAD_SCALE",
    "robust_threshold",
    "MagnitudeResult",
    "TrajectoryStep",
    "cfg_trajectory",
    "initial_latents",
    "latent_shape",
    "text_conditional_magnitude",
]


@dataclass
class MagnitudeResult:
    """``magnitude`` [B] (``d_t``) and the two halves of the UNet output, each [B, C, H, W]."""

    magnitude: torch.Tensor
    eps_cond: torch.Tensor
    eps_uncond: torch.Tensor

    def guided(self, guidance_scale: float) -> torch.Tensor:
        """Ordinary CFG: ``eps_hat = eps_0 + s0 * (eps_p - eps_0)``."""
        return self.eps_uncond + guidance_scale * (self.eps_cond - self.eps_uncond)


def _timestep_batch(timesteps: int | float | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(timesteps, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"timesteps must be a scalar or have shape [{batch}], got {tuple(t.shape)}")
    return t


def text_conditional_magnitude(
    unet: Any,
    latents: torch.Tensor,
    timesteps: int | float | torch.Tensor,
    cond_emb: torch.Tensor,
    uncond_emb: torch.Tensor,
    *,
    return_eps: bool = False,
) -> torch.Tensor | MagnitudeResult:
    """Text-conditional magnitude ``||eps(x_t, e_p) - eps(x_t, e_0)||_2`` per sample, from one UNet call on 2B
    inputs.

    ``latents`` [B, C, H, W] (already ``scale_model_input``-ed for schedulers that need it), ``timesteps``
    a scalar or [B], ``cond_emb`` [B, 77, D], ``uncond_emb`` [B or 1, 77, D]. The batch is ordered
    ``(uncond, cond)``, as diffusers' pipelines order it. Returns the magnitude [B] (float32), or with
    ``return_eps`` a :class:`MagnitudeResult`. Gradients flow unless the caller disables them; detach
    ``uncond_emb`` (or run the uncond half elsewhere) if only the conditional branch should carry them.
    """
    batch = latents.shape[0]
    if cond_emb.shape[0] != batch:
        raise ValueError(f"cond_emb has batch {cond_emb.shape[0]}, latents {batch}")
    if uncond_emb.shape[0] not in (1, batch):
        raise ValueError(f"uncond_emb must have batch 1 or {batch}, got {uncond_emb.shape[0]}")
    uncond = uncond_emb.expand(batch, *uncond_emb.shape[1:]) if uncond_emb.shape[0] == 1 else uncond_emb
    t = _timestep_batch(timesteps, batch, latents.device)
    out = unet(
        torch.cat([latents, latents]),
        torch.cat([t, t]),
        encoder_hidden_states=torch.cat([uncond.to(cond_emb.dtype), cond_emb]),
    ).sample
    eps_uncond, eps_cond = out.chunk(2)
    magnitude = (eps_cond.float() - eps_uncond.float()).flatten(1).norm(dim=1)
    if return_eps:
        return MagnitudeResult(magnitude, eps_cond, eps_uncond)
    return magnitude


def latent_shape(pipe: Any, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
    """``(C, H/f, W/f)`` of the pipeline's latents; defaults to the UNet's ``sample_size`` grid.

    ``f`` is the VAE's downsampling factor, ``2 ** (len(vae.config.block_out_channels) - 1)`` (8 for SD).
    """
    cfg = pipe.unet.config
    size = cfg.sample_size
    h = w = size if isinstance(size, int) else None
    if isinstance(size, (list, tuple)):
        h, w = size
    if height is not None or width is not None:
        vae = getattr(pipe, "vae", None)
        f = getattr(pipe, "vae_scale_factor", None)
        if f is None:
            f = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        h = height // f if height is not None else h
        w = width // f if width is not None else w
    return int(cfg.in_channels), int(h), int(w)


def initial_latents(
    seed: int,
    shape: Sequence[int],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    init_noise_sigma: float = 1.0,
) -> torch.Tensor:
    """``x_T`` [1, C, H, W] for one seed, drawn on the CPU as diffusers' ``randn_tensor`` draws it.

    The same seed gives the same ``x_T`` on any device, and it equals what ``pipe(prompt, generator=
    torch.Generator().manual_seed(seed))`` starts from for one image.
    """
    gen = torch.Generator("cpu").manual_seed(int(seed))
    x = torch.randn((1, *shape), generator=gen, dtype=dtype).to(device)
    return x * init_noise_sigma


@dataclass
class TrajectoryStep:
    """One step of a CFG trajectory: index ``i``, timestep ``t``, the UNet input and the magnitude."""

    index: int
    timestep: torch.Tensor
    model_input: torch.Tensor
    result: MagnitudeResult


def cfg_trajectory(
    unet: Any,
    scheduler: Any,
    x_T: torch.Tensor,
    cond_emb: torch.Tensor,
    uncond_emb: torch.Tensor,
    *,
    guidance_scale: float,
    num_inference_steps: int,
    end: int | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[TrajectoryStep]:
    """Sample with ordinary CFG and yield every step's magnitude, for steps ``0 .. end - 1``.

    Works with any diffusers scheduler (``set_timesteps`` / ``scale_model_input`` / ``step``); a private copy
    of ``scheduler`` is used so the caller's state is untouched. The magnitude call IS the CFG pair, so
    measuring costs nothing beyond sampling; no denoising step is taken after the last yielded step (with
    ``end = 1`` this is one UNet call pair at ``x_T``). ``generator`` feeds stochastic schedulers (DDPM,
    ancestral samplers); DDIM runs with eta = 0 as in the pipeline. Call under ``torch.no_grad()`` for
    detection.
    """
    sched = copy.deepcopy(scheduler)
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(sched.step).parameters else {}
    sched.set_timesteps(num_inference_steps, device=x_T.device)
    timesteps = sched.timesteps
    stop = len(timesteps) if end is None else min(end, len(timesteps))
    x = x_T
    for i in range(stop):
        t = timesteps[i]
        model_input = sched.scale_model_input(x, t)
        result = text_conditional_magnitude(unet, model_input, t, cond_emb, uncond_emb, return_eps=True)
        assert isinstance(result, MagnitudeResult)
        yield TrajectoryStep(i, t, model_input, result)
        if i + 1 < stop:
            x = sched.step(result.guided(guidance_scale), t, x, **step_kwargs).prev_sample


MAD_SCALE = 1.4826
"""MAD x 1.4826 estimates the standard deviation of normally distributed data (Hampel, 1974)."""


def robust_threshold(values: Sequence[float] | np.ndarray, mads: float) -> float:
    """``median + mads * 1.4826 * MAD`` of ``values``: a cut-off set by the bulk of the data, not its tail.

    On data without outliers it flags almost nothing (about 0.1% of normal data at ``mads = 3``, none at 6)
    whatever the scale of the values, unlike a percentile, which always flags its share; outliers barely
    move it (the median and MAD ignore up to half of the data). A constant sample (MAD 0) gives its value.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("robust_threshold of no values")
    med = float(np.median(v))
    return med + mads * MAD_SCALE * float(np.median(np.abs(v - med)))
