"""Anti-Memorization Guidance (AMG) math as pure functions on tensors (Chen et al., CVPR 2024, eq. 10-17).

Per sampling step, with ``eps_hat`` the classifier-free guidance (CFG) prediction::

    x0_hat  = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
    eps_hat <- eps_hat + 1{sigma_t > lambda_t} (G_spe + G_dup + G_sim)               (eq. 10)
    s1 = max(min(c1 sigma, s0 - 1), 0);       G_spe = -s1 (eps_p - eps_0)            (eq. 13, 14)
    s2 = max(min(c2 sigma, s0 - s1 - 1), 0);  G_dup = -s2 (eps_yN - eps_0)           (eq. 15, 16)
    G_sim = c3 sqrt(1 - abar_t) grad_{x_t} sigma_t                                   (eq. 17)

with the refinements of Chen et al.'s public Stable Diffusion code (the "paper" preset): G_spe whenever
sigma > 0, ``lambda_t = 0.3 + 0.1 exp(-0.005 t)`` for G_dup and G_sim, ``c2 = (s0 - 1 - s1) / 0.3``, G_dup
held on for 10 steps once triggered, and ``c3 = 100 (sigma - 0.3) exp((1000 - t) / 170)``. Every constant
comes from :class:`AMGConfig`.

Sign conventions (tested):

- sigma is a *similarity*: higher means closer to the nearest training image n_0. Object level it is the
  SSCD cosine ``E(D(x0_hat))^T E(n_0)`` in [-1, 1]. Pixel level it is the *negated* normalized L2,
  ``sigma = -nL2``, so that "memorized if nL2 < thr_t" reads "sigma > lambda_t" with ``lambda_t = -thr_t``:
  the public code's pixel schedule ``thr_t = 1.95 - 0.45 exp(-0.025 t)`` is ``lambda_t`` with base -1.95,
  amplitude 0.45, rate 0.025. The scales use ``sigma - sigma_zero`` where ``sigma_zero`` is the value meaning
  "no similarity" (0 for SSCD; ``-1/alpha`` = -2 for nL2, the nL2 of a sample as far from n_0 as from its
  kNN).
- G_sim points *up* the gradient of sigma in epsilon space. Because x0_hat subtracts eps, adding G_sim to
  eps_hat moves x0_hat, and the DDIM update of x_t, *down* the gradient: sigma falls.
- All scales are clamped at >= 0, so guidance never pulls towards the training image.

The detection gate (copyguard's addition, issue 5) decides per image and step whether sigma is computed
at all: :func:`initial_flags`, :func:`checks_due`, :func:`after_check`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from copyguard.common.errors import UsageError

if TYPE_CHECKING:
    from copyguard.curation.index import TrainingIndex
    from copyguard.mitigation.config import AMGConfig

__all__ = [
    "SigmaResult",
    "StepPlan",
    "after_check",
    "checks_due",
    "dedup_scale",
    "despecification_scale",
    "eps_from_model_output",
    "g_dup",
    "g_sim",
    "g_spe",
    "initial_flags",
    "lambda_schedule",
    "magnitude_from_eps",
    "model_output_from_eps",
    "nl2_sigma",
    "plan_step",
    "predict_x0",
    "sigma_and_grad",
    "similarity_scale",
    "spe_gate",
    "sscd_sigma",
    "update_dup_hold",
]


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-image scalars ``[B]`` shaped to broadcast against ``like`` ``[B, ...]``."""
    return v.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.ndim - 1)))


def _as_tensor(x: float | torch.Tensor) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float32)


# -- x0_hat and parameterizations -------------------------------------------------------------------------
def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: float | torch.Tensor) -> torch.Tensor:
    """``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (Chen et al., CVPR 2024)."""
    ab = _as_tensor(alpha_bar).to(x_t.device, torch.float32)
    return ((x_t - torch.sqrt(1 - ab).to(x_t.dtype) * eps) / torch.sqrt(ab).to(x_t.dtype)).to(x_t.dtype)


def eps_from_model_output(
    output: torch.Tensor, x_t: torch.Tensor, alpha_bar: float, prediction_type: str
) -> torch.Tensor:
    """The noise prediction behind a UNet output: identity for ``epsilon``, ``a v + b x_t`` for ``v_prediction``."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        a, b = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
        return a * output + b * x_t
    raise UsageError(f"AMG needs an epsilon- or v-prediction model, not prediction_type={prediction_type!r}")


def model_output_from_eps(
    eps: torch.Tensor, x_t: torch.Tensor, alpha_bar: float, prediction_type: str
) -> torch.Tensor:
    """Inverse of :func:`eps_from_model_output` (``v = a eps - b x0_hat``)."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        a, b = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
        return a * eps - b * (x_t - b * eps) / a
    raise UsageError(f"AMG needs an epsilon- or v-prediction model, not prediction_type={prediction_type!r}")


def magnitude_from_eps(eps_cond: torch.Tensor, eps_uncond: torch.Tensor) -> torch.Tensor:
    """``d = ||eps(x, e_p) - eps(x, e_0)||_2`` per sample over all latent elements, ``[B]`` float32
    (Wen et al., ICLR 2024).

    The same quantity as ``copyguard.mitigation.magnitude.text_conditional_magnitude`` computes, taken
    from the UNet outputs the sampler's own first CFG pass already has.
    """
    return (eps_cond.float() - eps_uncond.float()).flatten(1).norm(dim=1)


# -- schedules and scales ---------------------------------------------------------------------------------
def lambda_schedule(t: float | torch.Tensor, base: float, amp: float, rate: float) -> torch.Tensor:
    """``lambda_t = base + amp exp(-rate t)``; Chen et al.'s public SD code uses 0.3, 0.1, 0.005 (pixel level
    -1.95, 0.45, 0.025)."""
    return base + amp * torch.exp(-rate * _as_tensor(t).float())


def despecification_scale(sigma: torch.Tensor, c1: float, s0: float, sigma_zero: float = 0.0) -> torch.Tensor:
    """Eq. 13: ``s1 = max(min(c1 (sigma - sigma_zero), s0 - 1), 0)``; the public SD code's constants give
    ``max(min(6.5, 13 sigma), 0)``."""
    return torch.clamp(c1 * (sigma - sigma_zero), max=s0 - 1).clamp(min=0.0)


def dedup_scale(
    sigma: torch.Tensor,
    s1: torch.Tensor,
    s0: float,
    c2: float | None = None,
    c2_ref: float = 0.3,
    sigma_zero: float = 0.0,
) -> torch.Tensor:
    """Eq. 15: ``s2 = max(min(c2 (sigma - sigma_zero), s0 - s1 - 1), 0)``.

    ``c2=None`` is the public SD code's form ``s2 = max(min(6.5 - s1, (6.5 - s1) / 0.3 sigma), 0)``, i.e.
    ``c2 = (s0 - 1 - s1) / c2_ref``: s2 takes the whole remaining budget once sigma reaches ``c2_ref``.
    ``s1`` is the G_spe scale actually applied (0 where G_spe is off), so ``s0 - s1 - s2 >= 1`` always.
    """
    room = s0 - 1 - s1
    coef = room / c2_ref if c2 is None else torch.full_like(room, float(c2))
    return torch.minimum(coef * (sigma - sigma_zero), room).clamp(min=0.0)


def similarity_scale(
    sigma: torch.Tensor, t: float | torch.Tensor, scale: float, offset: float, tau: float, t_ref: float
) -> torch.Tensor:
    """c3 of eq. 17 in the public SD code's form ``scale (sigma - offset) exp((t_ref - t) / tau)``, clamped at
    >= 0."""
    t = _as_tensor(t).to(sigma.device).float()
    return (scale * (sigma - offset) * torch.exp((t_ref - t) / tau)).clamp(min=0.0)


def g_spe(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
    """Eq. 14, despecification: ``-s1 (eps(x_t, e_p) - eps(x_t, e_0))``."""
    return -_col(s1, eps_cond) * (eps_cond - eps_uncond)


def g_dup(eps_dup: torch.Tensor, eps_uncond: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """Eq. 16, caption deduplication: ``-s2 (eps(x_t, e_yN) - eps(x_t, e_0))``."""
    return -_col(s2, eps_dup) * (eps_dup - eps_uncond)


def g_sim(grad: torch.Tensor, alpha_bar: float | torch.Tensor, c3: torch.Tensor) -> torch.Tensor:
    """Eq. 17, dissimilarity: ``c3 sqrt(1 - abar_t) grad_{x_t} sigma_t`` (added to eps: sigma falls)."""
    ab = float(alpha_bar)
    return _col(c3, grad) * math.sqrt(1 - ab) * grad


# -- gating -------------------------------------------------------------------------------------------------
def spe_gate(sigma: torch.Tensor, lambda_t: torch.Tensor, mode: str, sigma_zero: float = 0.0) -> torch.Tensor:
    """Where G_spe applies: ``positive`` (the public SD code: whenever sigma > sigma_zero) or
    ``lambda`` (eq. 10).

    NaN sigma (not computed) is never on.
    """
    if mode == "positive":
        return sigma > sigma_zero
    if mode == "lambda":
        return sigma > lambda_t
    raise UsageError(f"unknown spe_gate {mode!r}; choose positive or lambda")


def update_dup_hold(
    remaining: torch.Tensor, trigger: torch.Tensor, hold: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """G_dup hold (as in Chen et al.'s public SD code): on at a trigger and for ``hold - 1`` further steps
    (``hold`` steps in all).

    ``remaining`` counts the steps still owed after the current one. Returns ``(on, remaining_next)``.
    """
    on = trigger | (remaining > 0)
    nxt = torch.where(trigger, torch.full_like(remaining, hold - 1), (remaining - 1).clamp(min=0))
    return on, nxt


@dataclass(frozen=True)
class StepPlan:
    """What fires at one step, per image (``[B]`` tensors): G_spe and G_dup scales, G_sim candidates."""

    lambda_t: float
    spe_on: torch.Tensor
    s1: torch.Tensor
    dup_trigger: torch.Tensor
    dup_on: torch.Tensor
    s2: torch.Tensor
    dup_remaining: torch.Tensor
    sim_candidate: torch.Tensor


def plan_step(
    sigma: torch.Tensor,
    t: float,
    s0: float,
    cfg: AMGConfig,
    *,
    fresh: torch.Tensor,
    dup_remaining: torch.Tensor,
    has_dup_caption: torch.Tensor,
) -> StepPlan:
    """One step's gating (eq. 10 plus the details of Chen et al.'s public SD code), as a pure function.

    A term counts as on only with a positive scale: once s1 reaches s0 - 1 (sigma >= 0.5 in the paper
    preset) eq. 15 leaves s2 = 0, and G_dup costs no UNet call although its hold keeps running.

    ``sigma`` ``[B]`` is the latest similarity per image (NaN where never computed); ``fresh`` marks images
    whose sigma was computed at this step (only they can get G_sim, which needs a new gradient);
    ``has_dup_caption`` marks images whose nearest training image has a duplicated caption y_N.
    """
    lam = float(lambda_schedule(float(t), cfg.lambda_base, cfg.lambda_amp, cfg.lambda_rate))
    sig = torch.nan_to_num(sigma.float(), nan=-math.inf)  # NaN -> never above any threshold
    known = ~torch.isnan(sigma)
    zero = torch.zeros_like(sig)
    spe_on = known & spe_gate(sig, torch.tensor(lam), cfg.spe_gate, cfg.sigma_zero) & cfg.use_spe
    s1 = torch.where(
        spe_on, despecification_scale(torch.where(known, sig, zero), cfg.c1, s0, cfg.sigma_zero), zero
    )
    spe_on = spe_on & (s1 > 0)
    above = known & (sig > lam)
    trigger = above & has_dup_caption & cfg.use_dup
    dup_on, remaining = update_dup_hold(dup_remaining, trigger, cfg.dup_hold_steps)
    dup_on = dup_on & known & cfg.use_dup
    s2_all = dedup_scale(torch.where(known, sig, zero), s1, s0, cfg.c2, cfg.c2_ref, cfg.sigma_zero)
    dup_on = dup_on & (s2_all > 0)  # held but with no budget left (s1 = s0 - 1): no UNet call
    s2 = torch.where(dup_on, s2_all, zero)
    sim_candidate = above & fresh & cfg.use_sim
    return StepPlan(lam, spe_on, s1, trigger, dup_on, s2, remaining, sim_candidate)


def initial_flags(magnitude: torch.Tensor | None, threshold: float | None, batch: int) -> torch.Tensor:
    """Detection gate (issue 5): an image is checked at all only if its first-step magnitude exceeds the
    calibrated ``threshold`` (Wen et al., ICLR 2024). ``threshold=None`` (ungated) flags every image."""
    if threshold is None:
        return torch.ones(batch, dtype=torch.bool)
    if magnitude is None:
        raise UsageError("the detection gate needs the first-step magnitude (classifier-free guidance on)")
    return magnitude.detach().cpu().float() > threshold


def checks_due(step: int, active: torch.Tensor, check_every: int) -> torch.Tensor:
    """Images whose sigma is computed at ``step``: still active, on every ``check_every``-th step."""
    return active & (step % check_every == 0)


def after_check(
    active: torch.Tensor, checked: torch.Tensor, sigma: torch.Tensor, recheck_sigma: float | None
) -> torch.Tensor:
    """Keep checking an image only while its latest sigma stays above the ``recheck_sigma`` floor."""
    if recheck_sigma is None:
        return active
    low = checked & ~(torch.nan_to_num(sigma.float(), nan=-math.inf) > recheck_sigma)
    return active & ~low


# -- similarity sigma_t (Chen et al., CVPR 2024) ------------------------------------------------------------
@dataclass
class SigmaResult:
    """sigma per image ``[n]`` (differentiable when computed with grad), nearest training key and row."""

    sigma: torch.Tensor
    keys: list[str | None]
    rows: list[int]


def _module_device_dtype(module: Any) -> tuple[torch.device, torch.dtype]:
    if isinstance(module, torch.nn.Module):
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def sscd_sigma(images: torch.Tensor, embedder: Any, index: TrainingIndex) -> SigmaResult:
    """Object level: ``sigma = E(img)^T E(n_0)`` with n_0 the nearest training image in ``index``.

    ``images`` float ``[n, 3, H, W]`` in [0, 1]. A torch ``embedder`` (float images -> unit ``[n, dim]``,
    e.g. ``TorchSSCD``) keeps the graph, so sigma is differentiable w.r.t. ``images``; any other
    :class:`~copyguard.curation.embedders.ImageEmbedder` (ONNX) gives a constant sigma.
    """
    if isinstance(embedder, torch.nn.Module):
        device, dtype = _module_device_dtype(embedder)
        q = embedder(images.to(device=device, dtype=dtype)).float()
        q = F.normalize(q, dim=-1)
        found = index.nearest(q.detach().cpu().numpy(), k=1)
        rows = [int(r) for r in found.indices[:, 0]]
        n0 = torch.from_numpy(index.reconstruct(rows)).to(q.device)
        sigma = (q * n0).sum(-1).to(images.device)
    else:
        arr = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        found = index.nearest(embedder.embed(list(arr)), k=1)
        rows = [int(r) for r in found.indices[:, 0]]
        sigma = torch.from_numpy(np.asarray(found.similarities[:, 0], dtype=np.float32)).to(images.device)
    return SigmaResult(sigma, [None if k is None else str(k) for k in found.keys[:, 0]], rows)


def nl2_sigma(
    images: torch.Tensor,
    reference: torch.Tensor,
    k: int = 50,
    alpha: float = 0.5,
    keys: Sequence[str] | None = None,
    chunk: int = 4096,
) -> SigmaResult:
    """Pixel level: ``sigma = -nL2 = -l2(x, n_0) / (alpha mean_{z in kNN_k(x)} l2(x, z))``.

    ``images`` float ``[n, 3, h, w]`` and ``reference`` ``[M, 3, H, W]`` in [0, 1] (uint8 is scaled); the
    images are resized (bilinear) to the reference size. L2 is over the flattened [0, 1] pixels and the kNN
    set includes n_0, as in :func:`copyguard.mitigation.metrics.pixel_nl2`. The neighbours are searched
    without a graph, then the k distances are recomputed differentiably.
    """
    ref = reference.float() / 255.0 if reference.dtype == torch.uint8 else reference
    if ref.ndim != 4 or ref.shape[1] != 3 or len(ref) == 0:
        raise UsageError(f"pixel_reference must be a non-empty [M, 3, H, W] tensor, got {tuple(ref.shape)}")
    if images.shape[-2:] != ref.shape[-2:]:
        images = F.interpolate(images, size=ref.shape[-2:], mode="bilinear", align_corners=False)
    x = images.flatten(1).float()
    r = ref.flatten(1).to(device=x.device, dtype=torch.float32)
    kk = max(1, min(int(k), len(r)))
    with torch.no_grad():
        dists = torch.cat([torch.cdist(x.detach(), r[i : i + chunk]) for i in range(0, len(r), chunk)], dim=1)
        idx = dists.topk(kk, dim=1, largest=False).indices  # [n, k], nearest first
    d = (x[:, None, :] - r[idx]).norm(dim=-1)  # [n, k], differentiable
    nl2 = d[:, 0] / (alpha * d.mean(dim=1)).clamp(min=1e-12)
    rows = [int(i) for i in idx[:, 0]]
    names = [keys[i] if keys is not None else str(i) for i in rows]
    return SigmaResult(-nl2, names, rows)


def sigma_and_grad(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar: float,
    decode: Callable[[torch.Tensor], torch.Tensor],
    similarity: Callable[[torch.Tensor], SigmaResult],
) -> tuple[SigmaResult, torch.Tensor]:
    """sigma at ``x0_hat(x_t, eps)`` and ``grad_{x_t} sigma`` through ``decode`` and the embedder only.

    ``eps`` is treated as a constant (as in Chen et al., CVPR 2024: no backward through the UNet), so the
    gradient is ``grad_{x0_hat} sigma / sqrt(abar_t)``. ``decode`` maps latents x0_hat to images in [0, 1].
    Parameters of the modules get no ``.grad`` (``torch.autograd.grad`` w.r.t. ``x_t`` only).
    """
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        result = similarity(decode(predict_x0(x, eps.detach(), alpha_bar)))
        (grad,) = torch.autograd.grad(result.sigma.sum(), x)
    result.sigma = result.sigma.detach()
    return result, grad
