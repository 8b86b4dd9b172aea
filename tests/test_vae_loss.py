"""The lab VAE's loss terms: the edge term sees each direction's lost contrast, the perceptual term scores
blur far above a brightness shift, and both reach the total with their weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata

from copyguard.pipelines.lab.vae_loss import InceptionPerceptual, edge_l1, vae_loss


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    ims = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    arr = np.stack([np.asarray(Image.fromarray(im).resize((64, 64), Image.Resampling.BOX)) for im in ims])
    return torch.from_numpy(arr.copy()).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@pytest.fixture(scope="module")
def perceptual() -> InceptionPerceptual:
    return InceptionPerceptual()


def _blur(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def test_edge_term_sees_each_direction_and_ignores_a_brightness_shift() -> None:
    ramp = torch.linspace(-1, 1, 16)
    stripes = torch.zeros(1, 3, 16, 16)
    stripes[..., :, ::2] = 0.8  # contrast along x only
    flat = torch.full_like(stripes, 0.4)  # the same mean, no contrast
    assert edge_l1(flat, stripes) > 0.5
    assert edge_l1(flat.transpose(-1, -2), stripes.transpose(-1, -2)) > 0.5  # contrast along y only
    x = ramp.view(1, 1, 1, 16) * ramp.view(1, 1, 16, 1) * torch.ones(1, 3, 1, 1)
    assert edge_l1(x + 0.3, x) < 1e-6
    assert edge_l1(x, x) == 0


def test_perceptual_distance_scores_blur_far_above_a_brightness_shift(
    photos: torch.Tensor, perceptual: InceptionPerceptual
) -> None:
    blur, bright = _blur(photos), (photos + 0.15).clamp(-1, 1)
    assert (blur - photos).abs().mean() < (bright - photos).abs().mean()  # pixels say the shift is worse
    d_blur, d_bright = perceptual(blur, photos).item(), perceptual(bright, photos).item()
    assert d_blur > 10 * d_bright > 0
    assert perceptual(photos, photos).item() == 0
    # Unit-normalized activations: each stage adds at most 4 (the squared distance of opposite unit vectors).
    noise = torch.rand(photos.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert 0.5 < perceptual(noise, photos).item() <= 4 * len(perceptual.layers)


def test_perceptual_gradient_reaches_the_reconstruction_only(
    photos: torch.Tensor, perceptual: InceptionPerceptual
) -> None:
    rec = _blur(photos).requires_grad_(True)
    target = photos.clone().requires_grad_(True)
    perceptual(rec, target).backward()
    assert rec.grad is not None and rec.grad.abs().sum() > 0
    assert target.grad is None  # the target's features are constants
    assert all(p.grad is None for p in perceptual.parameters())


def test_perceptual_works_below_the_inception_stem_size(
    photos: torch.Tensor, perceptual: InceptionPerceptual
) -> None:
    crop = photos[..., :16, :16]
    assert perceptual(_blur(crop), crop).item() > 0


def test_unknown_perceptual_stage_is_an_error() -> None:
    with pytest.raises(ValueError, match="no stage"):
        InceptionPerceptual(layers=("conv_99",))


def test_loss_adds_each_term_with_its_weight(photos: torch.Tensor, perceptual: InceptionPerceptual) -> None:
    rec, kl = _blur(photos), torch.tensor([2.0, 4.0, 6.0, 8.0])
    pixels = (rec - photos).abs().mean() + F.mse_loss(rec, photos)
    torch.testing.assert_close(vae_loss(rec, photos, kl, kl_weight=0.5), pixels + 0.5 * 5.0)
    with_edge = vae_loss(rec, photos, kl, kl_weight=0.0, edge_weight=2.0)
    torch.testing.assert_close(with_edge, pixels + 2.0 * edge_l1(rec, photos))
    with_perc = vae_loss(rec, photos, kl, kl_weight=0.0, perceptual_weight=3.0, perceptual=perceptual)
    torch.testing.assert_close(with_perc, pixels + 3.0 * perceptual(rec, photos))
    with pytest.raises(ValueError, match="perceptual module"):
        vae_loss(rec, photos, kl, kl_weight=0.0, perceptual_weight=1.0)
