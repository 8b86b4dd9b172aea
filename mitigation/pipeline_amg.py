"""``StableDiffusionAMGPipeline``: Stable Diffusion with Anti-Memorization Guidance (Chen et al., CVPR 2024).

A subclass of diffusers' ``StableDiffusionPipeline`` (so ``from_pretrained`` loads any SD-1.x/2.x-style
folder) whose ``__call__`` takes the usual arguments plus ``amg`` (:class:`AMGConfig`), ``index`` (the
curation job's :class:`TrainingIndex`), ``embedder`` (a differentiable torch SSCD, e.g. from
:func:`copyguard.mitigation.sscd_torch.load_torch_sscd`) and, for pixel-level sigma, ``pixel_reference``.

Per step (eq. 10): the CFG prediction eps_hat; x0_hat; sigma of x0_hat (VAE-decoded, SSCD cosine to the
nearest training image n_0 from the index, or -nL2 against ``pixel_reference``); G_spe and G_dup from the
UNet outputs (G_dup costs one UNet call on e_yN, with y_N from ``index.duplicated_caption``); sigma
recomputed, then G_sim with the gradient through the VAE decoder and the embedder only (eps_hat constant);
the scheduler step with the guided prediction. The math and the gating are in
:mod:`copyguard.mitigation.guidance`.

Detection-gated mode (``amg.gated``): the first step's CFG pair is computed by
:func:`~copyguard.mitigation.magnitude.text_conditional_magnitude` (one UNet call, as without AMG), and
images whose magnitude is at most ``amg.gate_threshold`` are never decoded or searched: they sample exactly
as the standard pipeline does. With ``amg=None`` or every term off the output equals
``StableDiffusionPipeline``'s bit for bit.

The output adds ``traces`` (one :class:`AMGTrace` per image: sigma and what fired at every step) and
``amg_stats`` (work counters for benchmarks).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_output import StableDiffusionPipelineOutput
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
    rescale_noise_cfg,
    retrieve_timesteps,
)

from copyguard.common.errors import UsageError
from copyguard.curation.index import TrainingIndex
from copyguard.mitigation import guidance as G
from copyguard.mitigation.amg_step import AMGRun, AMGTrace
from copyguard.mitigation.config import AMGConfig
from copyguard.mitigation.magnitude import text_conditional_magnitude

__all__ = ["AMGTrace", "StableDiffusionAMGPipeline", "StableDiffusionAMGPipelineOutput"]

logger = logging.getLogger(__name__)


@dataclass
class StableDiffusionAMGPipelineOutput(StableDiffusionPipelineOutput):
    """``images`` and ``nsfw_content_detected`` as usual, plus AMG ``traces`` and ``amg_stats`` (None when off)."""

    traces: list[AMGTrace] | None = None
    amg_stats: dict[str, int] | None = None


class StableDiffusionAMGPipeline(StableDiffusionPipeline):
    """Stable Diffusion with Anti-Memorization Guidance; see the module docstring."""

    # -- setup --------------------------------------------------------------------------------------------
    def _resolve_embedder(self, cfg: AMGConfig, index: TrainingIndex, embedder: Any) -> Any:
        """The embedder for SSCD sigma: the given one, else a torch SSCD for the index's embedder kind
        (loaded once per pipeline and kind, on the pipeline's device)."""
        kind = str(index.info.get("embedder", {}).get("name", "?"))
        if embedder is None:
            size = int(index.info.get("embedder", {}).get("input_size", 320))
            cache = self.__dict__.setdefault("_amg_embedders", {})
            if (kind, size) in cache:
                embedder = cache[(kind, size)]
            else:
                try:
                    from copyguard.mitigation.sscd_torch import load_torch_sscd

                    embedder = load_torch_sscd(kind=kind, input_size=size, device=self._execution_device)
                except (ImportError, UsageError) as exc:
                    if cfg.use_sim:
                        raise UsageError(
                            f"AMG's G_sim needs a differentiable torch SSCD embedder and none could be loaded "
                            f"for the index's embedder {kind!r} ({exc}); pass embedder=load_torch_sscd(...) "
                            "or set use_sim=false"
                        ) from None
                    from copyguard.curation.embedders import load_embedder

                    embedder = load_embedder(kind, input_size=size)
                cache[(kind, size)] = embedder
        if cfg.use_sim and not isinstance(embedder, torch.nn.Module):
            name = getattr(embedder, "name", type(embedder).__name__)
            raise UsageError(
                f"AMG's G_sim needs a differentiable torch embedder, but {name!r} is not a torch module "
                "(ONNX is not differentiable); pass embedder=load_torch_sscd(...) or set use_sim=false"
            )
        return embedder

    def _similarity(
        self,
        cfg: AMGConfig,
        index: TrainingIndex | None,
        embedder: Any,
        pixel_reference: torch.Tensor | None,
        pixel_keys: Sequence[str] | None,
    ) -> Callable[[torch.Tensor], G.SigmaResult]:
        if cfg.sigma_mode == "sscd":
            if index is None:
                raise UsageError(
                    "AMG with sigma_mode=sscd needs the training-set index: "
                    "index=copyguard.curation.load_index('OUT/index') (written by the curate job)"
                )
            emb = self._resolve_embedder(cfg, index, embedder)
            info = {
                "name": getattr(emb, "name", type(emb).__name__),
                "dim": int(emb.dim),
                "input_size": getattr(emb, "input_size", None),
            }
            index.check_compatible(info, strict=cfg.strict_embedder)
            return lambda images: G.sscd_sigma(images, emb, index)
        if pixel_reference is None:
            raise UsageError(
                "AMG with sigma_mode=nl2 needs pixel_reference (the training images as a tensor)"
            )
        if pixel_keys is not None and len(pixel_keys) != len(pixel_reference):
            raise UsageError(
                f"pixel_keys has {len(pixel_keys)} keys for {len(pixel_reference)} pixel_reference images"
            )
        keys = list(pixel_keys) if pixel_keys is not None else None
        ref = pixel_reference.to(self._execution_device)
        return lambda images: G.nl2_sigma(images, ref, cfg.nl2_k, cfg.nl2_alpha, keys)

    # -- sampling -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        *,
        amg: AMGConfig | None = None,
        index: TrainingIndex | None = None,
        embedder: Any = None,
        pixel_reference: torch.Tensor | None = None,
        pixel_keys: Sequence[str] | None = None,
    ) -> StableDiffusionAMGPipelineOutput | tuple:
        """Generate with AMG. Arguments as ``StableDiffusionPipeline.__call__`` (no IP-adapter, no callbacks),
        plus ``amg`` (None: plain sampling), ``index``, ``embedder`` (torch SSCD; None: loaded for the index's
        embedder kind), ``pixel_reference`` ``[M, 3, H, W]`` in [0, 1] and optional ``pixel_keys`` (nl2 mode).
        """
        if not height or not width:
            size = self.unet.config.sample_size
            h, w = (size, size) if isinstance(size, int) else size
            height, width = h * self.vae_scale_factor, w * self.vae_scale_factor
        self.check_inputs(
            prompt,
            height,
            width,
            None,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            None,
            None,
            None,
        )
        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False
        if prompt is not None and isinstance(prompt, str):
            batch_size = 1
        elif prompt is not None:
            batch_size = len(prompt)
        else:
            batch_size = prompt_embeds.shape[0]
        device = self._execution_device
        amg_on = amg is not None and amg.enabled
        if amg_on:
            if not self.do_classifier_free_guidance:
                raise UsageError(
                    "AMG needs classifier-free guidance (guidance_scale > 1): eq. 13-16 use eps(x_t, e_0)"
                )
            if amg.gated and amg.gate_threshold is None:
                raise UsageError(
                    "gated AMG needs gate_threshold (calibrate it with `copyguard detect --reference-prompts`)"
                )
            similarity = self._similarity(amg, index, embedder, pixel_reference, pixel_keys)

        lora_scale = (cross_attention_kwargs or {}).get("scale")
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt,
            device,
            num_images_per_prompt,
            self.do_classifier_free_guidance,
            negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            lora_scale=lora_scale,
            clip_skip=self.clip_skip,
        )
        cond_embeds = prompt_embeds
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, device, timesteps, sigmas
        )
        n_images = batch_size * num_images_per_prompt
        latents = self.prepare_latents(
            n_images,
            self.unet.config.in_channels,
            height,
            width,
            prompt_embeds.dtype,
            device,
            generator,
            latents,
        )
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            scale = torch.tensor(self.guidance_scale - 1).repeat(n_images)
            timestep_cond = self.get_guidance_scale_embedding(
                scale, embedding_dim=self.unet.config.time_cond_proj_dim
            ).to(device=device, dtype=latents.dtype)
        unet_kwargs = {
            "timestep_cond": timestep_cond,
            "cross_attention_kwargs": self.cross_attention_kwargs,
            "added_cond_kwargs": None,
        }
        run = None
        if amg_on:
            run = AMGRun(
                self, amg, similarity, index, n_images, num_images_per_prompt, guidance_scale, unet_kwargs
            )
        # the shared magnitude function takes no extra UNet inputs; use it when the UNet needs none
        shared_magnitude = timestep_cond is None and not self.cross_attention_kwargs

        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                cfg_on = self.do_classifier_free_guidance
                model_input = torch.cat([latents] * 2) if cfg_on else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                if run is not None and i == 0 and shared_magnitude:
                    res = text_conditional_magnitude(
                        self.unet,
                        model_input[:n_images],
                        t,
                        cond_embeds,
                        negative_prompt_embeds,
                        return_eps=True,
                    )
                    out_uncond, out_cond, magnitude = res.eps_uncond, res.eps_cond, res.magnitude
                else:
                    out = self.unet(
                        model_input, t, encoder_hidden_states=prompt_embeds, return_dict=False, **unet_kwargs
                    )[0]
                    out_uncond, out_cond = out.chunk(2) if cfg_on else (None, out)
                    magnitude = (
                        G.magnitude_from_eps(out_cond, out_uncond) if run is not None and i == 0 else None
                    )
                if cfg_on:
                    noise_pred = out_uncond + self.guidance_scale * (out_cond - out_uncond)
                else:
                    noise_pred = out_cond
                if cfg_on and self.guidance_rescale > 0.0:
                    noise_pred = rescale_noise_cfg(
                        noise_pred, out_cond, guidance_rescale=self.guidance_rescale
                    )
                if run is not None:
                    if i == 0:
                        run.start(magnitude)
                    noise_pred = run.guide(i, t, model_input[:n_images], noise_pred, out_cond, out_uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[
                    0
                ]
                progress_bar.update()

        if output_type != "latent":
            image = self.vae.decode(
                latents / self.vae.config.scaling_factor, return_dict=False, generator=generator
            )[0]
            image, has_nsfw_concept = self.run_safety_checker(image, device, prompt_embeds.dtype)
        else:
            image, has_nsfw_concept = latents, None
        do_denormalize = (
            [True] * image.shape[0] if has_nsfw_concept is None else [not n for n in has_nsfw_concept]
        )
        image = self.image_processor.postprocess(
            image, output_type=output_type, do_denormalize=do_denormalize
        )
        self.maybe_free_model_hooks()
        traces = run.traces if run is not None else None
        stats = dict(run.stats) if run is not None else None
        if not return_dict:
            return image, has_nsfw_concept, traces
        return StableDiffusionAMGPipelineOutput(
            images=image, nsfw_content_detected=has_nsfw_concept, traces=traces, amg_stats=stats
        )
