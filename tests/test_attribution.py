"""Token attribution (Wen et al., ICLR 2024) on a toy model where the token "trigger" drives the
text-conditional term.

The model is :func:`tests.tiny_sd.trigger_pipeline` (see its docstring for the construction): removing the
trigger halves a prompt's magnitude, removing any other word barely moves it, so the attribution must rank
the trigger first, and removing the top-scored token must lower the magnitude more than removing a
low-scored one.
"""

from __future__ import annotations

import pytest
import torch

from copyguard.mitigation.attribution import (
    TokenScore,
    explain,
    real_token_positions,
    token_attribution,
    token_significance,
    top_tokens,
)
from copyguard.mitigation.config import DetectConfig
from copyguard.mitigation.detect import Detector
from copyguard.mitigation.magnitude import initial_latents
from copyguard.mitigation.prompts import encode_prompts
from tests.tiny_sd import cached_trigger_pipeline, tiny_pipeline

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def pipe():
    return cached_trigger_pipeline()


def _without(prompt: str, index: int) -> str:
    words = prompt.split()
    return " ".join(words[:index] + words[index + 1 :])


@pytest.mark.parametrize(
    "prompt", ["a red trigger house on the street", "the old man with a trigger dog in the city"]
)
def test_removing_the_top_token_lowers_the_magnitude_most(pipe, prompt: str) -> None:
    scores = token_attribution(pipe, prompt)
    assert [s.token for s in scores] == prompt.split()  # real tokens only, BOS/EOS/padding dropped
    top = max(range(len(scores)), key=lambda i: scores[i].score)
    low = min(range(len(scores)), key=lambda i: scores[i].score)
    assert scores[top].token == "trigger"
    assert scores[top].score > 10 * sorted(s.score for s in scores)[-2]
    det = Detector(pipe, DetectConfig(), progress=False)
    full, no_top, no_low = det.score([prompt, _without(prompt, top), _without(prompt, low)])
    assert full - no_top > 1.0  # the trigger carries about half the magnitude
    assert full - no_top > 5 * abs(full - no_low)
    assert no_top < no_low


def test_multi_step_and_several_latents(pipe) -> None:
    cfg = DetectConfig(num_inference_steps=10, end=3, generations=2)
    scores = token_attribution(pipe, "trigger zebra on the river", cfg)
    assert top_tokens(scores, 1)[0].token == "trigger"
    first_step = token_attribution(pipe, "trigger zebra on the river")  # default: first step, one latent
    assert [s.score for s in scores] != pytest.approx([s.score for s in first_step], rel=1e-3)
    assert explain(pipe, ["a trigger", "blue sky"], progress=False)[1] == token_attribution(pipe, "blue sky")


def test_significance_is_the_gradient_norm_of_the_mean_magnitude() -> None:
    """Hand computation with two separate UNet calls and autograd (the order of e and e_0 is the sampler's)."""
    pipe = tiny_pipeline()
    with torch.no_grad():
        emb = encode_prompts(pipe, ["a red house", ""])
    x = torch.cat([initial_latents(0, (4, 8, 8)), initial_latents(1, (4, 8, 8))])
    sig = token_significance(pipe.unet, [(x, 981), (x * 0.5, 501)], emb[:1], emb[1:])
    expected = torch.zeros(77)
    for xt, t in [(x, 981), (x * 0.5, 501)]:
        e = emb[:1].clone().requires_grad_(True)
        eps_c = pipe.unet(xt, t, encoder_hidden_states=e.expand(2, -1, -1)).sample
        eps_u = pipe.unet(xt, t, encoder_hidden_states=emb[1:].expand(2, -1, -1)).sample
        (eps_c - eps_u).flatten(1).norm(dim=1).mean().backward()
        expected += e.grad[0].norm(dim=-1) / 2
    torch.testing.assert_close(sig, expected, atol=1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match=r"^token_significance needs at least one \(x_t, t\) step$"):
        token_significance(pipe.unet, [], emb[:1], emb[1:])


def test_real_token_positions_and_top_tokens() -> None:
    assert real_token_positions([0, 5, 6, 9, 9, 9], eos_token_id=9) == [1, 2]
    assert real_token_positions([0, 9, 9], eos_token_id=9) == []
    pipe = tiny_pipeline()
    long = " ".join(["cat"] * 100)
    assert len(token_attribution(pipe, long)) == 75  # truncated to 77 with BOS and EOS
    ranked = top_tokens([TokenScore("a", 0.1), TokenScore("b", 0.3), TokenScore("c", 0.2)], k=2)
    assert [t.token for t in ranked] == ["b", "c"]


def test_byte_fragments_of_a_character_show_their_bpe_symbols() -> None:
    """``é`` is two byte tokens in the tiny vocabulary, neither decodable alone: each shows its BPE symbol,
    without the end-of-word marker."""
    from copyguard.mitigation.attribution import _token_text

    tok = tiny_pipeline().tokenizer
    ids = tok("a café").input_ids[1:-1]
    assert [_token_text(tok, i) for i in ids] == ["a", "ca", "f", "\u00c3", "\u00a9"]
