"""Tests that kill the mutants of ``mitigation/magnitude.py`` that survived ``make mutate`` (docs/testing.md,
"Mutation testing"): :func:`latent_shape` on fake pipelines (sizes, the VAE factor and its fallbacks)."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from copyguard.mitigation.magnitude import latent_shape


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
