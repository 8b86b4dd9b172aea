"""Text-conditional magnitude (Wen et al., ICLR 2024): one batched UNet call equals the two-call definition;
CFG trajectory."""

from __future__ import annotations

import pytest
import torch

from copyguard.mitigation.magnitude import (
    MagnitudeResult,
    cfg_trajectory,
    initial_latents,
    latent_shape,
    text_conditional_magnitude,
)
from copyguard.mitigation.prompts import encode_prompts
from tests.tiny_sd import tiny_pipeline, tiny_unet

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def _inputs(batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    cond = torch.randn(batch, 77, 32, generator=g)
    uncond = torch.randn(1, 77, 32, generator=g)
    return x, cond, uncond


@torch.no_grad()
def test_equals_two_separate_calls(unet) -> None:
    x, cond, uncond = _inputs()
    d = text_conditional_magnitude(unet, x, 500, cond, uncond)
    eps_c = unet(x, 500, encoder_hidden_states=cond).sample
    eps_u = unet(x, 500, encoder_hidden_states=uncond.expand(3, -1, -1)).sample
    manual = torch.sqrt(((eps_c - eps_u) ** 2).sum(dim=(1, 2, 3)))
    assert d.shape == (3,)
    torch.testing.assert_close(d, manual, atol=1e-5, rtol=1e-5)
    assert float(d.min()) > 0


@torch.no_grad()
def test_one_unet_call_on_2b_samples_in_uncond_cond_order(unet) -> None:
    x, cond, uncond = _inputs(batch=2)
    seen = []
    handle = unet.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs), with_kwargs=True)
    try:
        res = text_conditional_magnitude(unet, x, 10, cond, uncond, return_eps=True)
    finally:
        handle.remove()
    assert len(seen) == 1
    ehs = seen[0]["encoder_hidden_states"]
    assert ehs.shape == (4, 77, 32)
    torch.testing.assert_close(ehs[:2], uncond.expand(2, -1, -1))
    torch.testing.assert_close(ehs[2:], cond)
    assert isinstance(res, MagnitudeResult)
    torch.testing.assert_close(
        res.eps_cond, unet(x, 10, encoder_hidden_states=cond).sample, atol=1e-5, rtol=1e-5
    )
    # guided() is ordinary CFG
    torch.testing.assert_close(res.guided(7.5), res.eps_uncond + 7.5 * (res.eps_cond - res.eps_uncond))


@torch.no_grad()
def test_per_sample_timesteps_and_full_uncond_batch(unet) -> None:
    x, cond, uncond = _inputs(batch=3)
    t = torch.tensor([900, 500, 10])
    full_uncond = uncond.expand(3, -1, -1).clone()
    d = text_conditional_magnitude(unet, x, t, cond, full_uncond)
    for i in range(3):
        one = text_conditional_magnitude(unet, x[i : i + 1], int(t[i]), cond[i : i + 1], uncond)
        torch.testing.assert_close(d[i : i + 1], one, atol=1e-5, rtol=1e-5)


def test_gradient_reaches_the_conditional_embedding_only(unet) -> None:
    x, cond, uncond = _inputs(batch=2)
    cond.requires_grad_(True)
    text_conditional_magnitude(unet, x, 500, cond, uncond.detach()).sum().backward()
    assert cond.grad is not None and float(cond.grad.abs().sum()) > 0


def test_shape_errors(unet) -> None:
    x, cond, uncond = _inputs(batch=2)
    with pytest.raises(ValueError, match="cond_emb"):
        text_conditional_magnitude(unet, x, 1, cond[:1], uncond)
    with pytest.raises(ValueError, match="uncond_emb"):
        text_conditional_magnitude(unet, x, 1, cond, torch.zeros(3, 77, 32))
    with pytest.raises(ValueError, match="timesteps"):
        text_conditional_magnitude(unet, x, torch.tensor([1, 2, 3]), cond, uncond)


def test_initial_latents_match_the_pipeline() -> None:
    pipe = tiny_pipeline()
    shape = latent_shape(pipe)
    assert shape == (4, 8, 8)
    assert latent_shape(pipe, height=32, width=48) == (4, 16, 24)
    ours = initial_latents(5, shape, init_noise_sigma=pipe.scheduler.init_noise_sigma)
    theirs = pipe.prepare_latents(
        1, 4, 16, 16, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(5)
    )
    assert torch.equal(ours, theirs)


@torch.no_grad()
def test_cfg_trajectory_follows_the_standard_pipeline() -> None:
    """Our trajectory's x_t equal StableDiffusionPipeline's latents step by step (same seed, CFG 7.5)."""
    pipe = tiny_pipeline()
    steps, prompt = 4, "a red house"
    saved = []

    def keep(p, i, t, kw):
        saved.append(kw["latents"].clone())
        return kw

    pipe(
        prompt,
        num_inference_steps=steps,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(3),
        output_type="latent",
        callback_on_step_end=keep,
    )
    emb = encode_prompts(pipe, [prompt, ""])
    x_T = initial_latents(3, latent_shape(pipe))
    ours = list(
        cfg_trajectory(
            pipe.unet, pipe.scheduler, x_T, emb[:1], emb[1:], guidance_scale=7.5, num_inference_steps=steps
        )
    )
    assert [s.index for s in ours] == list(range(steps))
    assert pipe.scheduler.timesteps.tolist() == [s.timestep.item() for s in ours]
    for i in range(1, steps):
        torch.testing.assert_close(ours[i].model_input, saved[i - 1], atol=1e-5, rtol=1e-5)
    # end=2 stops after two magnitude evaluations
    assert (
        len(
            list(
                cfg_trajectory(
                    pipe.unet,
                    pipe.scheduler,
                    x_T,
                    emb[:1],
                    emb[1:],
                    guidance_scale=7.5,
                    num_inference_steps=steps,
                    end=2,
                )
            )
        )
        == 2
    )
