"""Mitigation baselines of Somepalli et al. (NeurIPS 2023), as prompt / embedding transforms.

- ``gni``: Gaussian noise on the text embedding, ``e + scale * N(0, I)`` (scale 0.1), every position.
- ``rt``: ``count`` (4) random tokens from the tokenizer's vocabulary (special tokens excluded), each
  inserted as a word at a random word position.
- ``cwr``: ``count`` (4) times, a random word of the caption is repeated at a random word position.
- ``rna``: a random integer in ``[0, 100000)`` inserted as a word at a random word position.

Text baselines rewrite the prompt (the pipeline encodes it as usual); ``gni`` changes the embedding (pass
``prompt_embeds=``). Everything draws from the given ``numpy.random.Generator``: the same seed gives the same
output on any device. Words are whitespace-separated, so the rewritten prompt has single spaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from copyguard.common.errors import UsageError
from copyguard.mitigation.prompts import encode_prompts

__all__ = [
    "BASELINES",
    "BaselineResult",
    "apply_baseline",
    "baseline_pipeline_kwargs",
    "gaussian_noise_embedding",
    "random_number_addition",
    "random_tokens",
    "repeat_caption_words",
]

BASELINES = ("gni", "rt", "cwr", "rna")


def _insert(words: list[str], word: str, rng: np.random.Generator) -> list[str]:
    pos = int(rng.integers(0, len(words) + 1))
    return [*words[:pos], word, *words[pos:]]


def gaussian_noise_embedding(
    prompt_embeds: torch.Tensor, rng: np.random.Generator, scale: float = 0.1
) -> torch.Tensor:
    """GNI (Somepalli et al., NeurIPS 2023): ``prompt_embeds + scale * N(0, I)``, the noise drawn by numpy
    (device independent)."""
    noise = rng.standard_normal(tuple(prompt_embeds.shape)).astype(np.float32)
    delta = torch.from_numpy(noise).to(device=prompt_embeds.device, dtype=torch.float32) * scale
    return (prompt_embeds.float() + delta).to(prompt_embeds.dtype)


def _vocab_word(tokenizer: Any, rng: np.random.Generator, specials: set[int]) -> str:
    size = len(tokenizer)
    for _ in range(100):
        token_id = int(rng.integers(0, size))
        if token_id in specials:
            continue
        word = "".join(tokenizer.decode([token_id]).split())
        if word and word.isprintable() and "\ufffd" not in word:
            return word
    raise UsageError("random tokens: the tokenizer yields no printable non-special tokens")


def random_tokens(prompt: str, rng: np.random.Generator, tokenizer: Any, count: int = 4) -> str:
    """RT (Somepalli et al., NeurIPS 2023): ``count`` random vocabulary tokens, each inserted at a random word
    position."""
    specials = set(getattr(tokenizer, "all_special_ids", []))
    words = prompt.split()
    for _ in range(count):
        words = _insert(words, _vocab_word(tokenizer, rng, specials), rng)
    return " ".join(words)


def repeat_caption_words(prompt: str, rng: np.random.Generator, count: int = 4) -> str:
    """CWR (Somepalli et al., NeurIPS 2023): ``count`` times, a random caption word (original words only)
    repeated at a random position."""
    words = prompt.split()
    if not words:
        return prompt
    original = list(words)
    for _ in range(count):
        words = _insert(words, original[int(rng.integers(0, len(original)))], rng)
    return " ".join(words)


def random_number_addition(prompt: str, rng: np.random.Generator, high: int = 100_000) -> str:
    """RNA (Somepalli et al., NeurIPS 2023): a random integer in ``[0, high)`` inserted at a random word
    position."""
    return " ".join(_insert(prompt.split(), str(int(rng.integers(0, high))), rng))


@dataclass
class BaselineResult:
    """The prompt to encode, or (``gni``) the original prompt and the embedding to pass instead."""

    prompt: str
    prompt_embeds: torch.Tensor | None


def apply_baseline(
    name: str,
    prompt: str,
    prompt_embeds: torch.Tensor | None,
    rng: np.random.Generator,
    tokenizer: Any = None,
    **params: Any,
) -> BaselineResult:
    """One mitigation baseline (Somepalli et al., NeurIPS 2023) on one prompt. ``gni`` needs ``prompt_embeds``
    (returned noisy); ``rt`` needs the tokenizer; text baselines return ``prompt_embeds=None`` (encode the new
    prompt). ``params`` go to the transform (``scale``, ``count``, ``high``)."""
    name = name.lower()
    if name == "gni":
        if prompt_embeds is None:
            raise UsageError("baseline gni needs the prompt embedding")
        return BaselineResult(prompt, gaussian_noise_embedding(prompt_embeds, rng, **params))
    if name == "rt":
        if tokenizer is None:
            raise UsageError("baseline rt needs the tokenizer")
        return BaselineResult(random_tokens(prompt, rng, tokenizer, **params), None)
    if name == "cwr":
        return BaselineResult(repeat_caption_words(prompt, rng, **params), None)
    if name == "rna":
        return BaselineResult(random_number_addition(prompt, rng, **params), None)
    raise UsageError(f"unknown baseline '{name}' (choose from {', '.join(BASELINES)})")


def baseline_pipeline_kwargs(
    pipe: Any, name: str, prompts: Sequence[str], rng: np.random.Generator, **params: Any
) -> dict[str, Any]:
    """Keyword arguments for ``pipe(**kwargs, generator=...)`` with baseline ``name`` applied to ``prompts``.

    Text baselines give ``{"prompt": [...]}``; ``gni`` gives ``{"prompt_embeds", "negative_prompt_embeds"}``
    (the empty prompt's embedding, as the pipeline would use). Prompts draw from ``rng`` in order.
    """
    prompts = list(prompts)
    if name.lower() != "gni":
        return {
            "prompt": [apply_baseline(name, p, None, rng, pipe.tokenizer, **params).prompt for p in prompts]
        }
    device = pipe.unet.device
    with torch.no_grad():
        emb = encode_prompts(pipe, [*prompts, ""], device)
    noisy = torch.cat(
        [apply_baseline("gni", p, emb[i : i + 1], rng, **params).prompt_embeds for i, p in enumerate(prompts)]  # type: ignore[misc]
    )
    return {"prompt_embeds": noisy, "negative_prompt_embeds": emb[-1:].expand(len(prompts), -1, -1).clone()}
