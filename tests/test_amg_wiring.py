"""Wiring of AMG inside ``StableDiffusionAMGPipeline``: eq. 10-17 of Chen et al., CVPR 2024, one step, by hand.

The pure functions of :mod:`copyguard.mitigation.guidance` are tested elsewhere; these tests check that the
pipeline feeds them the right tensors. Everything that decides the first step is controlled here:

- the UNet's noise prediction is a known linear function, ``eps(x, e) = K x + W e[:, :8].mean(1)``, so
  ``eps(x_t, e_p)``, ``eps(x_t, e_0)`` and ``eps(x_t, e_yN)`` are computed exactly in the test;
- the index holds a vector built from the first step's query so that sigma (the SSCD cosine of the CFG
  ``x0_hat`` to its nearest training vector) takes a chosen value, plus a far distractor;
- ``scheduler.step`` is wrapped to record the guided epsilon it receives.

:func:`reference_step` is eq. 10-17 written out plainly (its own x0_hat, VAE decode, embedder, brute-force
nearest neighbour and autograd gradient). Each term is checked for sign, amount (also a hand-computed value),
gate and, for G_sim, the source of the recomputed sigma. docs/testing.md lists the bugs these tests catch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from copyguard.curation.index import TrainingIndex
from copyguard.mitigation.config import AMGConfig
from copyguard.mitigation.pipeline_amg import StableDiffusionAMGPipeline
from tests.tiny_sd import HIDDEN, LATENT, tiny_pipeline

pytestmark = pytest.mark.usefixtures("torch_single_thread")

S0 = 7.5  # CFG scale s0
STEPS = 2  # DDIM timesteps [501, 1]: the checked first step is t = 501
PROMPT = "a photo of the cat"
DUP_CAPTION = "a painting of the old city"
K = 0.1  # x-dependence of the fake UNet


class FakeUNetForward:
    """``eps(x, t, e) = K x + W mean(e[:, :8])``: linear, independent of t, different for every prompt."""

    def __init__(self, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.w = torch.randn(HIDDEN, 4 * LATENT * LATENT, generator=gen) / math.sqrt(HIDDEN)
        self.calls = 0

    def eps(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        text = (e.float()[:, :8].mean(1) @ self.w).view(-1, 4, LATENT, LATENT)
        return K * x + text.to(x.dtype)

    def __call__(self, sample, timestep, encoder_hidden_states, *args, return_dict=True, **kwargs):
        self.calls += 1
        out = self.eps(sample, encoder_hidden_states)
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)


class LinearSSCD(torch.nn.Module):
    """A differentiable stand-in for TorchSSCD: images [n, 3, 16, 16] in [0, 1] -> unit [n, 32]."""

    name = "linear-sscd"
    input_size = 16
    dim = 32

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.register_buffer("proj", torch.randn(3 * 16 * 16, self.dim, generator=gen))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize((images.float() - 0.5).flatten(1) @ self.proj, dim=1)


@pytest.fixture(scope="module")
def pipe() -> StableDiffusionAMGPipeline:
    std = tiny_pipeline()
    p = StableDiffusionAMGPipeline(**std.components)
    p.set_progress_bar_config(disable=True)
    p.unet.forward = FakeUNetForward()
    return p


@pytest.fixture(scope="module")
def embedder() -> LinearSSCD:
    return LinearSSCD()


@pytest.fixture(scope="module")
def x_T() -> torch.Tensor:
    return torch.randn(1, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(11))


@pytest.fixture(scope="module")
def first_t(pipe) -> int:
    pipe.scheduler.set_timesteps(STEPS)
    return int(pipe.scheduler.timesteps[0])


# -- the plain reference ----------------------------------------------------------------------------------
def decode(pipe, x0: torch.Tensor) -> torch.Tensor:
    """The decoder D of Chen et al., CVPR 2024: VAE-decode latents to images in [0, 1]."""
    image = pipe.vae.decode(x0 / pipe.vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1)


def x0_hat(x: torch.Tensor, eps: torch.Tensor, ab: float) -> torch.Tensor:
    return (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)


def query(pipe, embedder, x: torch.Tensor, eps: torch.Tensor, ab: float) -> torch.Tensor:
    return F.normalize(embedder(decode(pipe, x0_hat(x, eps, ab))), dim=-1)


def sigma_and_grad(pipe, embedder, vectors: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, ab: float):
    """sigma = max cosine of E(D(x0_hat)) over the index vectors, and d sigma / d x_t with eps constant."""
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        sigma = (query(pipe, embedder, xg, eps.detach(), ab) @ vectors.T).max(dim=1).values
        (grad,) = torch.autograd.grad(sigma.sum(), xg)
    return float(sigma.detach()), grad


@dataclass
class Ref:
    t: int
    ab: float
    lam: float
    eps_u: torch.Tensor
    eps_c: torch.Tensor
    eps_dup: torch.Tensor
    eps_hat: torch.Tensor
    sigma: float
    s1: float
    s2: float
    eps1: torch.Tensor  # eps_hat + G_spe + G_dup
    sigma2: float
    c3: float
    g_sim: torch.Tensor
    guided: torch.Tensor


def embeddings(pipe) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    e_p, e_0 = pipe.encode_prompt(PROMPT, "cpu", 1, True)
    e_yn, _ = pipe.encode_prompt(DUP_CAPTION, "cpu", 1, False)
    return e_p, e_0, e_yn


@torch.no_grad()
def reference_step(pipe, embedder, vectors, x, t, *, use_spe, use_dup, use_sim, has_yn, c2=None) -> Ref:
    """Eq. 10-17 with the public SD code's constants for one image at timestep ``t`` (DDIM: x_t = latents)."""
    fake = pipe.unet.forward
    e_p, e_0, e_yn = embeddings(pipe)
    ab = float(pipe.scheduler.alphas_cumprod[t])
    eps_u, eps_c, eps_dup = fake.eps(x, e_0), fake.eps(x, e_p), fake.eps(x, e_yn)
    eps_hat = eps_u + S0 * (eps_c - eps_u)  # ordinary CFG
    sigma, _ = sigma_and_grad(pipe, embedder, vectors, x, eps_hat, ab)  # sigma of the CFG x0_hat
    lam = 0.3 + 0.1 * math.exp(-0.005 * t)  # lambda_t of the public SD code
    s1 = max(min(13 * sigma, S0 - 1), 0.0) if (use_spe and sigma > 0) else 0.0  # eq. 13, G_spe if sigma > 0
    g_spe = -s1 * (eps_c - eps_u)  # eq. 14
    s2 = 0.0
    if use_dup and has_yn and sigma > lam:  # eq. 10 gate for G_dup
        coef = (S0 - 1 - s1) / 0.3 if c2 is None else c2
        s2 = max(min(coef * sigma, S0 - 1 - s1), 0.0)  # eq. 15
    g_dup = -s2 * (eps_dup - eps_u)  # eq. 16
    eps1 = eps_hat + g_spe + g_dup
    sigma2, c3, g_sim = float("nan"), 0.0, torch.zeros_like(x)
    if use_sim and sigma > lam:
        sigma2, grad = sigma_and_grad(pipe, embedder, vectors, x, eps1, ab)  # recomputed after G_spe/G_dup
        if sigma2 > lam:
            c3 = max(100 * (sigma2 - 0.3) * math.exp((1000 - t) / 170), 0.0)
            g_sim = c3 * math.sqrt(1 - ab) * grad  # eq. 17
    return Ref(
        t, ab, lam, eps_u, eps_c, eps_dup, eps_hat, sigma, s1, s2, eps1, sigma2, c3, g_sim, eps1 + g_sim
    )


# -- index with a chosen sigma ----------------------------------------------------------------------------
def index_for_sigma(pipe, embedder, x, t, target: float, *, yn_count: int = 30):
    """A two-row index: ``n_0`` at cosine ``target`` to the first step's CFG query, and a far distractor."""
    fake = pipe.unet.forward
    e_p, e_0, _ = embeddings(pipe)
    with torch.no_grad():
        eps_u, eps_c = fake.eps(x, e_0), fake.eps(x, e_p)
        q = query(pipe, embedder, x, eps_u + S0 * (eps_c - eps_u), float(pipe.scheduler.alphas_cumprod[t]))[0]
    gen = torch.Generator().manual_seed(5)
    u = torch.randn(q.shape, generator=gen)
    u = F.normalize(u - (u @ q) * q, dim=0)
    n0 = target * q + math.sqrt(1 - target**2) * u
    far = F.normalize(-q + 0.2 * u, dim=0)
    vectors = torch.stack([n0, far])
    entries = [
        {"key": "train00", "caption": "c0", "dup_caption": DUP_CAPTION, "dup_caption_count": yn_count},
        {"key": "train01", "caption": "c1"},
    ]
    info = {"name": embedder.name, "dim": embedder.dim, "input_size": embedder.input_size}
    return TrainingIndex.build(vectors.numpy().astype(np.float32), entries, info), vectors


def run_first_step(pipe, embedder, index, x, monkeypatch, **cfg):
    """Sample STEPS steps with AMG; returns (model output the scheduler got at step 0, trace, stats)."""
    seen = []
    original = pipe.scheduler.step

    def recording_step(model_output, t, sample, *args, **kwargs):
        seen.append((model_output.detach().clone(), int(t), sample.detach().clone()))
        return original(model_output, t, sample, *args, **kwargs)

    monkeypatch.setattr(pipe.scheduler, "step", recording_step)
    amg = AMGConfig.preset("paper", **cfg) if cfg else AMGConfig.preset("paper")
    out = pipe(
        PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=S0,
        latents=x.clone(),
        output_type="latent",
        amg=amg,
        index=index,
        embedder=embedder,
    )
    monkeypatch.undo()
    assert len(seen) == STEPS
    model_output, t, sample = seen[0]
    assert torch.equal(sample, x)  # DDIM: x_T itself
    return model_output, out.traces[0], out.amg_stats, t


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> bool:
    return bool(torch.allclose(a, b, rtol=rel, atol=rel * float(b.abs().max())))


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


# -- G_spe (eq. 13-14) ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("sigma", "s1"), [(0.2, 13 * 0.2), (0.8, S0 - 1)])  # plain and clamped at s0 - 1
def test_g_spe_pushes_against_the_prompt_direction_by_s1(
    pipe, embedder, x_T, first_t, monkeypatch, sigma, s1
):
    index, vectors = index_for_sigma(pipe, embedder, x_T, first_t, sigma)
    got, trace, _, t = run_first_step(pipe, embedder, index, x_T, monkeypatch, use_dup=False, use_sim=False)
    ref = reference_step(
        pipe, embedder, vectors, x_T, t, use_spe=True, use_dup=False, use_sim=False, has_yn=True
    )
    assert trace.sigma[0] == pytest.approx(sigma, abs=1e-4)  # sigma of the CFG x0_hat
    assert trace.g_spe[0] and trace.s1[0] == pytest.approx(s1, rel=1e-3)
    delta = got - ref.eps_hat
    by_hand = -s1 * (ref.eps_c - ref.eps_u)  # eq. 14 with s1 by hand
    assert cos(delta, ref.eps_c - ref.eps_u) == pytest.approx(-1.0, abs=1e-5)  # sign: away from the prompt
    assert close(delta, by_hand, rel=1e-3)  # amount
    assert close(got, ref.guided)
    if s1 == S0 - 1:  # the whole CFG push removed: guided == eps(x_t, e_p)
        assert close(got, ref.eps_c, rel=1e-3)


def test_g_spe_is_off_for_non_positive_sigma(pipe, embedder, x_T, first_t, monkeypatch):
    index, _ = index_for_sigma(pipe, embedder, x_T, first_t, -0.2)
    got, trace, _, t = run_first_step(pipe, embedder, index, x_T, monkeypatch, use_dup=False, use_sim=False)
    ref_eps_hat = reference_step(
        pipe, embedder, torch.zeros(1, 32), x_T, t, use_spe=False, use_dup=False, use_sim=False, has_yn=False
    ).eps_hat
    assert trace.sigma[0] == pytest.approx(-0.2, abs=1e-4)
    assert not trace.g_spe[0] and trace.s1[0] == 0
    assert close(got, ref_eps_hat, rel=1e-6)  # plain CFG


# -- G_dup (eq. 15-16) ------------------------------------------------------------------------------------
def test_g_dup_pushes_against_the_duplicated_caption_by_s2(pipe, embedder, x_T, first_t, monkeypatch):
    sigma, c2 = 0.35, 5.0
    index, vectors = index_for_sigma(pipe, embedder, x_T, first_t, sigma)
    got, trace, stats, t = run_first_step(
        pipe, embedder, index, x_T, monkeypatch, use_spe=False, use_sim=False, c2=c2
    )
    ref = reference_step(
        pipe, embedder, vectors, x_T, t, use_spe=False, use_dup=True, use_sim=False, has_yn=True, c2=c2
    )
    assert sigma > ref.lam
    assert trace.g_dup[0] and trace.y_n[0] == DUP_CAPTION and stats["dup_unet_images"] >= 1
    assert trace.s2[0] == pytest.approx(c2 * sigma, rel=1e-3)  # eq. 15 by hand: 1.75
    delta = got - ref.eps_hat
    direction = ref.eps_dup - ref.eps_u  # eps(x_t, e_yN) - eps(x_t, e_0)
    assert cos(delta, direction) == pytest.approx(-1.0, abs=1e-5)
    assert close(delta, -c2 * sigma * direction, rel=1e-3)
    assert close(got, ref.guided)


def test_g_dup_takes_the_budget_left_by_g_spe(pipe, embedder, x_T, first_t, monkeypatch):
    """Paper preset: s1 = 13 sigma, s2 = s0 - 1 - s1 once sigma >= 0.3; both terms in one step."""
    sigma = 0.35
    index, vectors = index_for_sigma(pipe, embedder, x_T, first_t, sigma)
    got, trace, _, t = run_first_step(pipe, embedder, index, x_T, monkeypatch, use_sim=False)
    ref = reference_step(
        pipe, embedder, vectors, x_T, t, use_spe=True, use_dup=True, use_sim=False, has_yn=True
    )
    s1, s2 = 13 * sigma, S0 - 1 - 13 * sigma
    assert (trace.s1[0], trace.s2[0]) == (pytest.approx(s1, rel=1e-3), pytest.approx(s2, rel=1e-2))
    by_hand = ref.eps_hat - s1 * (ref.eps_c - ref.eps_u) - s2 * (ref.eps_dup - ref.eps_u)
    assert close(got, by_hand, rel=1e-2)
    assert close(got, ref.guided)


@pytest.mark.parametrize(("sigma", "yn_count"), [(0.25, 30), (0.35, 5)])
def test_g_dup_is_off_below_lambda_or_without_y_n(pipe, embedder, x_T, first_t, monkeypatch, sigma, yn_count):
    """sigma <= lambda_t (~0.308 at t = 501), or a y_N with fewer than 21 duplicates: no G_dup."""
    index, vectors = index_for_sigma(pipe, embedder, x_T, first_t, sigma, yn_count=yn_count)
    got, trace, stats, t = run_first_step(
        pipe, embedder, index, x_T, monkeypatch, use_spe=False, use_sim=False
    )
    ref = reference_step(
        pipe, embedder, vectors, x_T, t, use_spe=False, use_dup=True, use_sim=False, has_yn=yn_count > 20
    )
    assert ref.s2 == 0
    assert not trace.g_dup[0] and stats["dup_unet_images"] == 0
    assert close(got, ref.eps_hat, rel=1e-6)


# -- G_sim (eq. 17) ---------------------------------------------------------------------------------------
def test_g_sim_moves_x0_hat_away_from_n0_by_c3(pipe, embedder, x_T, first_t, monkeypatch):
    sigma = 0.45
    index, vectors = index_for_sigma(pipe, embedder, x_T, first_t, sigma)
    got, trace, stats, t = run_first_step(
        pipe, embedder, index, x_T, monkeypatch, use_spe=False, use_dup=False
    )
    ref = reference_step(
        pipe, embedder, vectors, x_T, t, use_spe=False, use_dup=False, use_sim=True, has_yn=True
    )
    assert trace.g_sim[0] and stats["grads"] >= 1
    c3 = 100 * (sigma - 0.3) * math.exp((1000 - t) / 170)  # by hand (nothing before G_sim: sigma2 == sigma)
    assert trace.c3[0] == pytest.approx(c3, rel=1e-3) and ref.c3 == pytest.approx(c3, rel=1e-3)
    _, grad = sigma_and_grad(pipe, embedder, vectors, x_T, ref.eps_hat, ref.ab)
    delta = got - ref.eps_hat
    assert cos(delta, grad) == pytest.approx(1.0, abs=1e-4)  # up the gradient of sigma in eps space ...
    assert close(delta, c3 * math.sqrt(1 - ref.ab) * grad, rel=1e-3)
    assert close(got, ref.guided, rel=1e-3)
    with torch.no_grad():  # ... so x0_hat moves down it: sigma falls (first order)
        d_x0 = x0_hat(x_T, got, ref.ab) - x0_hat(x_T, ref.eps_hat, ref.ab)
    assert float((d_x0 * grad).sum()) < 0


def test_g_sim_is_off_at_or_below_lambda(pipe, embedder, x_T, first_t, monkeypatch):
    index, _ = index_for_sigma(pipe, embedder, x_T, first_t, 0.28)
    got, trace, stats, t = run_first_step(
        pipe, embedder, index, x_T, monkeypatch, use_spe=False, use_dup=False
    )
    ref = reference_step(
        pipe, embedder, torch.zeros(1, 32), x_T, t, use_spe=False, use_dup=False, use_sim=False, has_yn=False
    )
    assert ref.lam > 0.28 and not trace.g_sim[0] and stats["grads"] == 0
    assert close(got, ref.eps_hat, rel=1e-6)


def test_g_sim_uses_sigma_recomputed_from_the_guided_epsilon(pipe, embedder, x_T, first_t, monkeypatch):
    """As in Chen et al.'s public SD code, sigma is recomputed after G_spe/G_dup and before G_sim, i.e. at
    x0_hat(eps_hat + G_spe + G_dup)."""
    sigma = 0.45
    index, vectors = index_for_sigma(pipe, embedder, x_T, first_t, sigma)
    got, trace, _, t = run_first_step(pipe, embedder, index, x_T, monkeypatch, use_dup=False)
    ref = reference_step(
        pipe, embedder, vectors, x_T, t, use_spe=True, use_dup=False, use_sim=True, has_yn=True
    )
    assert abs(ref.sigma2 - sigma) > 0.02  # the setup tells the two sources apart
    assert trace.sigma[0] == pytest.approx(sigma, abs=1e-4)  # first sigma: the CFG x0_hat
    assert trace.sigma_sim[0] == pytest.approx(ref.sigma2, abs=1e-4)  # second: the guided x0_hat
    assert trace.c3[0] == pytest.approx(ref.c3, rel=1e-3)
    assert close(got, ref.guided, rel=1e-3)
    # the unguided source would give another G_sim
    _, grad_unguided = sigma_and_grad(pipe, embedder, vectors, x_T, ref.eps_hat, ref.ab)
    c3_unguided = 100 * (sigma - 0.3) * math.exp((1000 - t) / 170)
    wrong = ref.eps1 + c3_unguided * math.sqrt(1 - ref.ab) * grad_unguided
    assert not close(got, wrong, rel=1e-2)


def test_all_three_terms_together_match_the_reference(pipe, embedder, x_T, first_t, monkeypatch):
    index, vectors = index_for_sigma(pipe, embedder, x_T, first_t, 0.4)
    got, trace, _, t = run_first_step(pipe, embedder, index, x_T, monkeypatch)
    ref = reference_step(
        pipe, embedder, vectors, x_T, t, use_spe=True, use_dup=True, use_sim=True, has_yn=True
    )
    assert trace.g_spe[0] and trace.g_dup[0]
    assert trace.g_sim[0] == (ref.c3 > 0)
    assert close(got, ref.guided, rel=1e-3)
