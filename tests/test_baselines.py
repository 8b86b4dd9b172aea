"""Mitigation baselines (Somepalli et al., NeurIPS 2023): seeded, deterministic, and doing what they say;
usable with the standard pipeline."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from copyguard.common.errors import UsageError
from copyguard.mitigation.baselines import (
    BASELINES,
    apply_baseline,
    baseline_pipeline_kwargs,
    gaussian_noise_embedding,
    random_number_addition,
    random_tokens,
    repeat_caption_words,
)
from tests.tiny_sd import tiny_pipeline, tiny_tokenizer

PROMPT = "a photo of the old house by the river"


pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _is_subsequence(short: list[str], long: list[str]) -> bool:
    it = iter(long)
    return all(w in it for w in short)


def _inserted(new: str) -> list[str]:
    out = list(new.split())
    for w in PROMPT.split():
        out.remove(w)
    return out


def test_random_tokens() -> None:
    tok = tiny_tokenizer()
    new = random_tokens(PROMPT, _rng(), tok)
    assert new == random_tokens(PROMPT, _rng(), tok)
    assert new != random_tokens(PROMPT, _rng(1), tok)
    words = new.split()
    assert len(words) == len(PROMPT.split()) + 4 and _is_subsequence(PROMPT.split(), words)
    specials = {tok.bos_token, tok.eos_token}
    for w in _inserted(new):
        assert w and w not in specials and tok(w).input_ids[1] not in tok.all_special_ids
    assert len(random_tokens(PROMPT, _rng(), tok, count=7).split()) == len(PROMPT.split()) + 7


def test_caption_word_repetition() -> None:
    new = repeat_caption_words(PROMPT, _rng(3))
    assert new == repeat_caption_words(PROMPT, _rng(3))
    words = new.split()
    assert len(words) == len(PROMPT.split()) + 4 and _is_subsequence(PROMPT.split(), words)
    extra = Counter(words) - Counter(PROMPT.split())
    assert sum(extra.values()) == 4 and set(extra) <= set(PROMPT.split())
    assert len({repeat_caption_words(PROMPT, _rng(s)) for s in range(10)}) > 5
    assert repeat_caption_words("", _rng()) == ""


def test_random_number_addition() -> None:
    new = random_number_addition(PROMPT, _rng(5))
    assert new == random_number_addition(PROMPT, _rng(5))
    (number,) = _inserted(new)
    assert number.isdigit() and 0 <= int(number) < 100_000
    assert _is_subsequence(PROMPT.split(), new.split())
    numbers = [int(_inserted(random_number_addition(PROMPT, _rng(s)))[0]) for s in range(50)]
    assert len(set(numbers)) > 45 and max(numbers) > 10_000


def test_gaussian_noise_injection() -> None:
    emb = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(0))
    before = emb.clone()
    noisy = gaussian_noise_embedding(emb, _rng(1))
    assert torch.equal(emb, before) and noisy.shape == emb.shape
    assert torch.equal(noisy, gaussian_noise_embedding(emb, _rng(1)))
    delta = (noisy - emb).flatten()
    assert abs(float(delta.std()) - 0.1) < 0.01 and abs(float(delta.mean())) < 0.01
    assert abs(float((gaussian_noise_embedding(emb, _rng(1), scale=0.5) - emb).std()) - 0.5) < 0.05


def test_apply_baseline_interface_and_errors() -> None:
    tok = tiny_tokenizer()
    emb = torch.zeros(1, 77, 32)
    for name in BASELINES:
        a = apply_baseline(name, PROMPT, emb, _rng(9), tok)
        b = apply_baseline(name.upper(), PROMPT, emb, _rng(9), tok)
        assert a.prompt == b.prompt
        if name == "gni":
            assert (
                a.prompt == PROMPT
                and a.prompt_embeds is not None
                and torch.equal(a.prompt_embeds, b.prompt_embeds)
            )
        else:
            assert a.prompt != PROMPT and a.prompt_embeds is None
    with pytest.raises(UsageError, match="unknown baseline"):
        apply_baseline("xyz", PROMPT, emb, _rng(), tok)
    with pytest.raises(UsageError, match="gni"):
        apply_baseline("gni", PROMPT, None, _rng(), tok)
    with pytest.raises(UsageError, match="tokenizer"):
        apply_baseline("rt", PROMPT, None, _rng())


def test_baselines_run_with_the_standard_pipeline() -> None:
    pipe = tiny_pipeline()
    prompts = ["a red house", "the cat on a tree"]

    def generate(**kw):
        return pipe(
            **kw, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="latent"
        ).images

    plain = generate(prompt=prompts)
    for name in BASELINES:
        kw = baseline_pipeline_kwargs(pipe, name, prompts, _rng(2))
        assert kw.keys() == ({"prompt_embeds", "negative_prompt_embeds"} if name == "gni" else {"prompt"})
        out = generate(**kw)
        assert out.shape == plain.shape and not torch.equal(out, plain)
        again = generate(**baseline_pipeline_kwargs(pipe, name, prompts, _rng(2)))
        assert torch.equal(out, again)
