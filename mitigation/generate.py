"""Generation with a chosen mitigation: the shared core of ``copyguard generate`` and the audit.

Mitigations: ``none`` (plain CFG sampling), ``prompt-opt`` (Wen et al., ICLR 2024), ``amg``
(Anti-Memorization Guidance, Chen et al., CVPR 2024, with the training-set index), and the baselines
``gni``, ``rt``, ``cwr``, ``rna`` (Somepalli et al., NeurIPS 2023). Every image gets
its own seeded generator, so an image depends on its prompt and seed only, never on batching.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from copyguard.common.errors import UsageError
from copyguard.mitigation.baselines import baseline_pipeline_kwargs
from copyguard.mitigation.config import GenerateConfig
from copyguard.mitigation.prompt_opt import optimize_prompts

__all__ = ["GeneratedImage", "generate_images"]

log = logging.getLogger(__name__)


@dataclass
class GeneratedImage:
    prompt_index: int
    prompt: str
    seed: int
    image: Any  # PIL.Image
    record: dict[str, Any] = field(default_factory=dict)


def _generators(seed: int, n: int) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed) for _ in range(n)]


def generate_images(
    pipe: Any,
    prompts: Sequence[str],
    cfg: GenerateConfig,
    *,
    index: Any = None,
    embedder: Any = None,
) -> Iterator[GeneratedImage]:
    """Yield one :class:`GeneratedImage` per (prompt, seed), prompts in order, seeds within a prompt batch.

    ``pipe`` must be a :class:`~copyguard.mitigation.pipeline_amg.StableDiffusionAMGPipeline` for ``amg``
    (any SD pipeline otherwise); ``index`` is the curation job's training-set index (required for ``amg``).
    ``prompt-opt`` needs ``cfg.prompt_opt.l_target`` (calibrate it with
    :func:`copyguard.mitigation.prompt_opt.calibrate_l_target`).
    """
    if cfg.mitigation == "amg" and index is None:
        raise UsageError("mitigation 'amg' needs the training-set index (--index OUT/index)")
    if cfg.mitigation == "prompt-opt" and cfg.prompt_opt.l_target is None:
        raise UsageError("mitigation 'prompt-opt' needs l_target (set it, or calibrate on reference prompts)")
    common = {
        "num_inference_steps": cfg.num_inference_steps,
        "guidance_scale": cfg.guidance_scale,
        "height": cfg.height,
        "width": cfg.width,
        "output_type": "pil",
    }
    rng = np.random.default_rng(cfg.baseline_seed)
    for start in range(0, len(prompts), cfg.batch_size):
        batch = list(prompts[start : start + cfg.batch_size])
        for seed in cfg.seeds:
            kwargs: dict[str, Any] = dict(common, generator=_generators(seed, len(batch)))
            extra: list[dict[str, Any]] = [{} for _ in batch]
            if cfg.mitigation in ("none", "amg"):
                kwargs["prompt"] = batch
            elif cfg.mitigation == "prompt-opt":
                result = optimize_prompts(
                    pipe,
                    batch,
                    seed,
                    l_target=cfg.prompt_opt.l_target,
                    config=cfg.prompt_opt,
                    num_inference_steps=cfg.num_inference_steps,
                    height=cfg.height,
                    width=cfg.width,
                )
                kwargs["prompt_embeds"] = result.prompt_embeds
                extra = [{"prompt_opt": vars(r)} for r in result.records]
            else:
                kwargs.update(baseline_pipeline_kwargs(pipe, cfg.mitigation, batch, rng))
                if "prompt" in kwargs:
                    extra = [{"effective_prompt": p} for p in kwargs["prompt"]]
            if cfg.mitigation == "amg":
                out = pipe(**kwargs, amg=cfg.amg, index=index, embedder=embedder)
                traces = out.traces or [None] * len(batch)
                for i, trace in enumerate(traces):
                    extra[i]["amg"] = trace.to_dict() if trace is not None else None
            else:
                with torch.no_grad():
                    out = pipe(**kwargs)
            for i, image in enumerate(out.images):
                record = {
                    "prompt": batch[i],
                    "prompt_index": start + i,
                    "seed": seed,
                    "mitigation": cfg.mitigation,
                }
                record.update(extra[i])
                yield GeneratedImage(start + i, batch[i], seed, image, record)
