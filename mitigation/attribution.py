"""Token attribution: which prompt tokens drive the text-conditional magnitude (Wen et al., ICLR 2024).

For the prompt embedding ``e`` [77, D] and a batch of ``n`` latents ``x_t`` along the prompt's own CFG
trajectory, ``L(e) = ||eps(x_t, e) - eps(x_t, e_0)||_2`` (averaged over the batch) and
``significance_i = ||dL/de_i||_2``, averaged over the chosen steps (Wen et al., ICLR 2024). ``e_i`` is the
text encoder's output at token position ``i``. Only real tokens are reported (BOS, EOS and padding dropped).

Order pitfall: Wen et al.'s public code swaps the unconditional and text embeddings here, which anti-guides
the trajectory. This module goes through :func:`~copyguard.mitigation.magnitude.cfg_trajectory` and
:func:`~copyguard.mitigation.magnitude.text_conditional_magnitude`, whose ``(uncond, cond)`` order and CFG
formula are the ones sampling uses; gradients reach only the conditional half (``e_0`` is detached).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from copyguard.common.runtime import progress_bar
from copyguard.mitigation.config import DetectConfig
from copyguard.mitigation.magnitude import (
    cfg_trajectory,
    initial_latents,
    latent_shape,
    text_conditional_magnitude,
)
from copyguard.mitigation.prompts import encode_prompts, tokenize_prompts

__all__ = [
    "TokenScore",
    "explain",
    "real_token_positions",
    "token_attribution",
    "token_significance",
    "top_tokens",
]


class TokenScore(NamedTuple):
    """A real token of the prompt (as text) and its attribution significance."""

    token: str
    score: float


def token_significance(
    unet: Any,
    steps: Sequence[tuple[torch.Tensor, torch.Tensor | int]],
    cond_emb: torch.Tensor,
    uncond_emb: torch.Tensor,
) -> torch.Tensor:
    """Token significance [77] of every token position of ``cond_emb`` [1, 77, D].

    ``steps`` holds ``(x_t, t)`` pairs, ``x_t`` [n, C, H, W] being the UNet inputs (already scaled) of n
    latents at timestep ``t``. Per step: ``L = mean_n ||eps(x_t, e) - eps(x_t, e_0)||_2`` and the L2 norm of
    ``dL/de`` over the embedding dimension; the result is their mean over the steps (float32, CPU).
    """
    if not steps:
        raise ValueError("token_significance needs at least one (x_t, t) step")
    e = cond_emb.detach().clone().requires_grad_(True)
    e_0 = uncond_emb.detach()
    total = torch.zeros(cond_emb.shape[1], dtype=torch.float32)
    for x_t, t in steps:
        n = x_t.shape[0]
        loss = text_conditional_magnitude(unet, x_t.detach(), t, e.expand(n, -1, -1), e_0).mean()
        (grad,) = torch.autograd.grad(loss, e)
        total += grad[0].float().norm(dim=-1).cpu()
    return total / len(steps)


def real_token_positions(ids: Sequence[int], eos_token_id: int) -> list[int]:
    """Positions of the real tokens: after BOS (position 0), before the first EOS (padding follows it)."""
    positions = []
    for i in range(1, len(ids)):
        if ids[i] == eos_token_id:
            break
        positions.append(i)
    return positions


def _token_text(tokenizer: Any, token_id: int) -> str:
    """The token as text; byte fragments of a multi-byte character keep their BPE symbol."""
    text = tokenizer.decode([token_id]).strip()
    if text and "\ufffd" not in text:
        return text
    return tokenizer.convert_ids_to_tokens(token_id).replace("</w>", "")


def token_attribution(pipe: Any, prompt: str, config: DetectConfig | None = None) -> list[TokenScore]:
    """Attribution scores of ``prompt``'s real tokens, in prompt order, as ``(token, score)`` pairs.

    The steps ``[start, end)``, the ``generations`` latents (seeds ``seed + j``), the trajectory length and
    CFG scale come from ``config`` (a :class:`DetectConfig`, default: first step, one latent), so the
    explanation matches the detection it explains. The ``n`` latents go through the UNet as one batch.
    """
    cfg = config or DetectConfig()
    device, dtype = pipe.unet.device, pipe.unet.dtype
    shape = latent_shape(pipe, cfg.height, cfg.width)
    sigma = float(getattr(pipe.scheduler, "init_noise_sigma", 1.0))
    x_T = torch.cat(
        [initial_latents(s, shape, device=device, dtype=dtype, init_noise_sigma=sigma) for s in cfg.seeds]
    )
    n = x_T.shape[0]
    with torch.no_grad():
        emb = encode_prompts(pipe, [prompt, ""], device).to(dtype)
        e_p, e_0 = emb[:1], emb[1:]
        steps = [
            (step.model_input, step.timestep)
            for step in cfg_trajectory(
                pipe.unet,
                pipe.scheduler,
                x_T,
                e_p.expand(n, -1, -1),
                e_0,
                guidance_scale=cfg.guidance_scale,
                num_inference_steps=cfg.num_inference_steps,
                end=cfg.resolved_end,
                generator=torch.Generator("cpu").manual_seed(cfg.seed),
            )
            if step.index >= cfg.start
        ]
    significance = token_significance(pipe.unet, steps, e_p, e_0)
    ids = tokenize_prompts(pipe.tokenizer, [prompt])[0].tolist()
    return [
        TokenScore(_token_text(pipe.tokenizer, ids[i]), float(significance[i]))
        for i in real_token_positions(ids, pipe.tokenizer.eos_token_id)
    ]


def top_tokens(scores: Sequence[TokenScore], k: int = 5) -> list[TokenScore]:
    """The ``k`` highest-scored tokens, best first (ties keep prompt order)."""
    return sorted(scores, key=lambda s: -s.score)[:k]


def explain(
    pipe: Any, prompts: Sequence[str], config: DetectConfig | None = None, *, progress: bool = True
) -> list[list[TokenScore]]:
    """:func:`token_attribution` for each prompt (one forward+backward per scored step and prompt)."""
    return [
        token_attribution(pipe, p, config)
        for p in progress_bar(prompts, desc="attribution", unit="prompt", enabled=progress)
    ]
