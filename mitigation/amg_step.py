"""One AMG sampling run's per-step state and trace (Chen et al., CVPR 2024, eq. 10-17).

:class:`AMGRun` holds what the guidance needs across steps of one ``StableDiffusionAMGPipeline.__call__``
(the nearest training image of each image, y_N, the G_dup hold, the gate) and computes the guided noise
prediction of a step; :class:`AMGTrace` records sigma and which term fired at every step, per image. The
math itself is in :mod:`copyguard.mitigation.guidance`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from copyguard.common.errors import UsageError
from copyguard.curation.index import TrainingIndex
from copyguard.mitigation import guidance as G
from copyguard.mitigation.config import AMGConfig

__all__ = ["AMGRun", "AMGTrace"]

logger = logging.getLogger("copyguard.mitigation.pipeline_amg")


def _f(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


@dataclass
class AMGTrace:
    """Per image: one entry per sampling step in every list (sigma NaN where it was not computed)."""

    prompt_index: int
    magnitude: float | None = None  # first-step text-conditional magnitude (Wen et al., ICLR 2024)
    flagged: bool = True  # passed the detection gate (always True when ungated)
    gated_out: bool = False  # the gate skipped this image entirely
    timesteps: list[int] = field(default_factory=list)
    checked: list[bool] = field(default_factory=list)  # sigma computed at this step
    sigma: list[float] = field(default_factory=list)  # sigma of the CFG x0_hat
    sigma_sim: list[float] = field(default_factory=list)  # sigma recomputed before G_sim
    lambda_t: list[float] = field(default_factory=list)
    nearest_key: list[str | None] = field(default_factory=list)  # n_0 per check
    g_spe: list[bool] = field(default_factory=list)
    g_dup: list[bool] = field(default_factory=list)
    g_sim: list[bool] = field(default_factory=list)
    s1: list[float] = field(default_factory=list)
    s2: list[float] = field(default_factory=list)
    c3: list[float] = field(default_factory=list)
    y_n: list[str | None] = field(default_factory=list)  # caption of G_dup where it fired

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN -> None), for the generate job's per-image record."""
        out: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            if isinstance(value, list):
                value = [_f(v) if isinstance(v, float) else v for v in value]
            elif isinstance(value, float):
                value = _f(value)
            out[name] = value
        return out

    @property
    def max_sigma(self) -> float | None:
        vals = [s for s in self.sigma if not math.isnan(s)]
        return max(vals) if vals else None


class AMGRun:
    """State of one AMG sampling run over a batch of B images (the pipeline's per-call helper)."""

    def __init__(
        self,
        pipe: Any,  # the StableDiffusionAMGPipeline running this call
        cfg: AMGConfig,
        similarity: Callable[[torch.Tensor], G.SigmaResult],
        index: TrainingIndex | None,
        batch: int,
        images_per_prompt: int,
        s0: float,
        unet_kwargs: dict[str, Any],
    ) -> None:
        self.pipe, self.cfg, self.similarity, self.index = pipe, cfg, similarity, index
        self.B, self.s0, self.unet_kwargs = batch, s0, unet_kwargs
        self.traces = [AMGTrace(prompt_index=b // images_per_prompt) for b in range(batch)]
        self.active = torch.ones(batch, dtype=torch.bool)
        self.last_sigma = torch.full((batch,), math.nan)
        self.dup_remaining = torch.zeros(batch, dtype=torch.long)
        self.y_candidate: list[str | None] = [None] * batch
        self.y_used: list[str | None] = [None] * batch
        self._yn_cache: dict[str, torch.Tensor] = {}
        self.stats = {"checks": 0, "decodes": 0, "grads": 0, "dup_unet_images": 0}
        sched = pipe.scheduler
        self.prediction_type = sched.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise UsageError(f"AMG needs an epsilon- or v-prediction scheduler, not {self.prediction_type!r}")
        if getattr(sched, "alphas_cumprod", None) is None:
            raise UsageError(f"AMG needs a scheduler with alphas_cumprod; {type(sched).__name__} has none")
        self.alphas_cumprod = sched.alphas_cumprod.detach().double().cpu()

    # -- helpers ------------------------------------------------------------------------------------------
    def alpha_bar(self, t: torch.Tensor | float) -> float:
        """abar_t, linearly interpolated for non-integer timesteps (e.g. Euler's linspace spacing)."""
        tf = float(t)
        lo = int(math.floor(tf))
        hi = min(lo + 1, len(self.alphas_cumprod) - 1)
        w = tf - lo
        return float((1 - w) * self.alphas_cumprod[lo] + w * self.alphas_cumprod[hi])

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """VAE-decode latents to float images in [0, 1] (the decoder D of Chen et al., CVPR 2024)."""
        vae = self.pipe.vae
        z = x0 / vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        if shift:
            z = z + shift
        self.stats["decodes"] += len(x0)
        image = vae.decode(z.to(vae.dtype), return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def _sigma(
        self, x_t: torch.Tensor, eps: torch.Tensor, ab: float, with_grad: bool
    ) -> tuple[G.SigmaResult, torch.Tensor | None]:
        """sigma (and its gradient) for a subset, in chunks of ``max_batch`` images."""
        parts, grads = [], []
        for i in range(0, len(x_t), self.cfg.max_batch):
            xs, es = x_t[i : i + self.cfg.max_batch], eps[i : i + self.cfg.max_batch]
            if with_grad:
                res, grad = G.sigma_and_grad(xs, es, ab, self.decode, self.similarity)
                grads.append(grad)
                self.stats["grads"] += len(xs)
            else:
                res = self.similarity(self.decode(G.predict_x0(xs, es, ab)))
            parts.append(res)
        sigma = torch.cat([p.sigma.detach().float().cpu() for p in parts])
        merged = G.SigmaResult(sigma, [k for p in parts for k in p.keys], [r for p in parts for r in p.rows])
        return merged, (torch.cat(grads) if with_grad else None)

    def _dup_caption(self, key: str | None) -> str | None:
        if key is None or self.index is None:
            return None
        try:
            return self.index.duplicated_caption(key, self.cfg.dup_min_count)
        except UsageError:  # pixel keys that are not in the index
            return None

    def _yn_embedding(self, caption: str, device: torch.device) -> torch.Tensor:
        if caption not in self._yn_cache:
            emb, _ = self.pipe.encode_prompt(caption, device, 1, False, clip_skip=self.pipe.clip_skip)
            self._yn_cache[caption] = emb
        return self._yn_cache[caption]

    # -- one step -----------------------------------------------------------------------------------------
    def start(self, magnitude: torch.Tensor | None) -> None:
        """Step 0: record magnitudes and apply the detection gate."""
        flags = G.initial_flags(magnitude, self.cfg.gate_threshold if self.cfg.gated else None, self.B)
        self.active = flags.clone()
        for b, tr in enumerate(self.traces):
            tr.magnitude = None if magnitude is None else float(magnitude[b])
            tr.flagged = bool(flags[b])
            tr.gated_out = not bool(flags[b])

    def guide(
        self,
        step: int,
        t: torch.Tensor,
        x_t: torch.Tensor,
        out_cfg: torch.Tensor,
        out_cond: torch.Tensor,
        out_uncond: torch.Tensor,
    ) -> torch.Tensor:
        """The guided model output for step ``step`` (``out_cfg`` itself when nothing fires)."""
        cfg, B = self.cfg, self.B
        if not self.active.any() and not (self.dup_remaining > 0).any():  # gated out / done: no work
            nan = torch.full((B,), math.nan)
            self._record(t, None, torch.zeros(B, dtype=torch.bool), nan, nan, [None] * B, torch.zeros(B))
            return out_cfg
        ab = self.alpha_bar(t)
        pt = self.prediction_type
        eps_hat = G.eps_from_model_output(out_cfg, x_t, ab, pt)
        checked = G.checks_due(step, self.active, cfg.check_every)
        sigma_now = torch.full((B,), math.nan)
        keys: list[str | None] = [None] * B
        first_grad = None
        idx = checked.nonzero().flatten()
        if len(idx):
            with_grad = cfg.use_sim and not cfg.recompute_sigma
            res, first_grad = self._sigma(x_t[idx], eps_hat[idx], ab, with_grad)
            self.stats["checks"] += len(idx)
            sigma_now[idx] = res.sigma
            self.last_sigma[idx] = res.sigma
            for j, b in enumerate(idx.tolist()):
                keys[b] = res.keys[j]
                self.y_candidate[b] = self._dup_caption(res.keys[j])
        usable = self.active | checked
        self.active = G.after_check(self.active, checked, sigma_now, cfg.recheck_sigma)
        sig = torch.where(usable, self.last_sigma, torch.full_like(self.last_sigma, math.nan))
        has_yn = torch.tensor([c is not None for c in self.y_candidate], dtype=torch.bool)
        plan = G.plan_step(
            sig,
            float(t),
            self.s0,
            cfg,
            fresh=checked,
            dup_remaining=self.dup_remaining,
            has_dup_caption=has_yn,
        )
        self.dup_remaining = plan.dup_remaining
        for b in plan.dup_trigger.nonzero().flatten().tolist():
            self.y_used[b] = self.y_candidate[b]

        guided, fired = eps_hat, False
        if plan.spe_on.any():
            eps_c = G.eps_from_model_output(out_cond, x_t, ab, pt)
            eps_u = G.eps_from_model_output(out_uncond, x_t, ab, pt)
            guided = guided + G.g_spe(eps_c, eps_u, plan.s1.to(x_t.device))
            fired = True
        dup_idx = plan.dup_on.nonzero().flatten()
        if len(dup_idx):
            guided = guided.clone()
            guided[dup_idx] += self._g_dup(dup_idx, t, x_t, out_uncond, ab, plan.s2)
            fired = True
        sim_sigma = torch.full((B,), math.nan)
        c3 = torch.zeros(B)
        sim_idx = plan.sim_candidate.nonzero().flatten()
        if len(sim_idx):
            if cfg.recompute_sigma:
                res2, grad = self._sigma(x_t[sim_idx], guided[sim_idx], ab, True)
                sim_sigma[sim_idx] = res2.sigma
            else:
                pos = {b: j for j, b in enumerate(idx.tolist())}
                grad = first_grad[[pos[b] for b in sim_idx.tolist()]]
                sim_sigma[sim_idx] = sigma_now[sim_idx]
            on = sim_sigma[sim_idx] > plan.lambda_t
            scale = G.similarity_scale(
                sim_sigma[sim_idx], float(t), cfg.c3_scale, cfg.c3_offset, cfg.c3_tau, cfg.c3_t_ref
            )
            c3[sim_idx] = torch.where(on, scale, torch.zeros_like(scale))
            if on.any():
                guided = guided.clone()
                guided[sim_idx] += G.g_sim(grad.to(guided.dtype), ab, c3[sim_idx])
                fired = True
        self._record(t, plan, checked, sigma_now, sim_sigma, keys, c3)
        if not fired:
            return out_cfg
        return G.model_output_from_eps(guided, x_t, ab, pt)

    def _g_dup(
        self,
        dup_idx: torch.Tensor,
        t: torch.Tensor,
        x_t: torch.Tensor,
        out_uncond: torch.Tensor,
        ab: float,
        s2: torch.Tensor,
    ) -> torch.Tensor:
        """Eq. 16 for the images in ``dup_idx``: one UNet call on their x_t with e_yN."""
        device = x_t.device
        emb = torch.cat([self._yn_embedding(self.y_used[b], device) for b in dup_idx.tolist()])
        kwargs = dict(self.unet_kwargs)
        if kwargs.get("timestep_cond") is not None:
            kwargs["timestep_cond"] = kwargs["timestep_cond"][dup_idx.to(device)]
        x = x_t[dup_idx.to(device)]
        out = self.pipe.unet(x, t, encoder_hidden_states=emb.to(x.dtype), return_dict=False, **kwargs)[0]
        self.stats["dup_unet_images"] += len(dup_idx)
        pt = self.prediction_type
        eps_dup = G.eps_from_model_output(out, x, ab, pt)
        eps_u = G.eps_from_model_output(out_uncond[dup_idx.to(device)], x, ab, pt)
        return G.g_dup(eps_dup, eps_u, s2[dup_idx].to(device))

    def _record(
        self,
        t: torch.Tensor,
        plan: G.StepPlan | None,
        checked: torch.Tensor,
        sigma: torch.Tensor,
        sim_sigma: torch.Tensor,
        keys: list[str | None],
        c3: torch.Tensor,
    ) -> None:
        """Append this step to every image's trace (``plan=None``: nothing was due or held)."""
        B = self.B
        lam = (
            plan.lambda_t
            if plan is not None
            else float(
                G.lambda_schedule(float(t), self.cfg.lambda_base, self.cfg.lambda_amp, self.cfg.lambda_rate)
            )
        )
        no, zero = [False] * B, [0.0] * B
        cols = {
            "checked": checked.tolist(),
            "sigma": sigma.tolist(),
            "sigma_sim": sim_sigma.tolist(),
            "nearest_key": keys,
            "g_spe": plan.spe_on.tolist() if plan is not None else no,
            "g_dup": plan.dup_on.tolist() if plan is not None else no,
            "g_sim": (c3 > 0).tolist(),
            "s1": plan.s1.tolist() if plan is not None else zero,
            "s2": plan.s2.tolist() if plan is not None else zero,
            "c3": c3.tolist(),
        }
        step_t = int(round(float(t)))
        for b, tr in enumerate(self.traces):
            tr.timesteps.append(step_t)
            tr.lambda_t.append(lam)
            for name, col in cols.items():
                getattr(tr, name).append(col[b])
            tr.y_n.append(self.y_used[b] if cols["g_dup"][b] else None)
