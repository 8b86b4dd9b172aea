"""Tests that kill the mutants of ``mitigation/magnitude.py`` that survived ``make mutate`` (docs/testing.md,
"Mutation testing"): :func:`latent_shape` on fake pipelines (sizes, the VAE factor and its fallbacks);
:func:`cfg_trajectory`'s generator and its number of denoising steps."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest
import torch
from diffusers import DDPMScheduler

from copyguard.mitigation.magnitude import cfg_trajectory, latent_shape
from tests.tiny_sd import LATENT, tiny_pipeline


def _pipe(sample_size, *, blocks: int | None = 3, factor: int | None = None):
    pipe = NS(unet=NS(config=NS(sample_size=sample_size, in_channels=4)))
    if blocks is not None:
        pipe.vae = NS(config=NS(block_out_channels=[1] * blocks))
    if factor is not None:
        pipe.vae_scale_factor = factor
    return pipe


def test_default_grid_from_the_unet_sample_size() -> None:
    assert latent_shape(_pipe(12)) == (4, 12, 12)
    assert latent_shape(_pipe((6, 10))) == (4, 6, 10)  # a (height, width) sample size
    assert latent_shape(_pipe([6, 10]), height=None, width=None) == (4, 6, 10)


@pytest.mark.parametrize(
    ("pipe", "f"),
    [
        (_pipe(12, blocks=3), 4),  # 2 ** (3 - 1) from the VAE's blocks
        (_pipe(12, blocks=5), 16),
        (_pipe(12, blocks=3, factor=2), 2),  # the pipeline's vae_scale_factor wins
        (_pipe(12, blocks=None), 8),  # no VAE: SD's 8
    ],
)
def test_height_and_width_use_the_vae_factor(pipe, f: int) -> None:
    assert latent_shape(pipe, height=96, width=144) == (4, 96 // f, 144 // f)
    assert latent_shape(pipe, height=96) == (4, 96 // f, 12)  # width stays the UNet's
    assert latent_shape(pipe, width=144) == (4, 12, 144 // f)


def test_height_not_divisible_floors() -> None:
    assert latent_shape(_pipe(12, blocks=3), height=99, width=97) == (4, 24, 24)


# -- cfg_trajectory ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(seed=1)


def _embeddings(pipe) -> tuple[torch.Tensor, torch.Tensor]:
    ids = pipe.tokenizer(["a small red house", ""], padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        emb = pipe.text_encoder(ids.input_ids)[0]
    return emb[:1], emb[1:]


def _last_input(pipe, scheduler, *, end: int, generator: torch.Generator | None) -> torch.Tensor:
    e_p, e_0 = _embeddings(pipe)
    x_T = torch.randn((1, 4, LATENT, LATENT), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        steps = list(cfg_trajectory(pipe.unet, scheduler, x_T, e_p, e_0, guidance_scale=7.5,
                                    num_inference_steps=6, end=end, generator=generator))  # fmt: skip
    assert [s.index for s in steps] == list(range(min(end, 6)))
    return steps[-1].model_input


def test_a_stochastic_scheduler_draws_its_noise_from_the_given_generator(pipe) -> None:
    """DDPM adds fresh noise at every step: with the caller's generator the trajectory is reproducible
    whatever the global RNG does; a step that ignores the generator draws from the global RNG instead."""
    sched = DDPMScheduler(num_train_timesteps=1000)
    torch.manual_seed(1)
    a = _last_input(pipe, sched, end=3, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(2)
    b = _last_input(pipe, sched, end=3, generator=torch.Generator().manual_seed(7))
    c = _last_input(pipe, sched, end=3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


class _CountingDDPM(DDPMScheduler):
    steps_taken = 0

    def step(self, *args, **kwargs):
        type(self).steps_taken += 1
        return super().step(*args, **kwargs)


@pytest.mark.parametrize("end", [1, 2, 4, 6, 9])
def test_no_denoising_step_after_the_last_measured_one(pipe, end: int) -> None:
    """``end`` measured steps need ``end - 1`` denoising steps between them (none after the last); ``end``
    past the schedule measures every one of its 6 steps."""
    _CountingDDPM.steps_taken = 0
    _last_input(pipe, _CountingDDPM(num_train_timesteps=1000), end=end, generator=None)
    assert _CountingDDPM.steps_taken == min(end, 6) - 1
