"""AMG math (Chen et al., CVPR 2024, eq. 10-17), its gating and the AMGConfig presets: pure functions, no pipeline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from pydantic import ValidationError

from copyguard.common.config import load_config
from copyguard.common.errors import ConfigError, UsageError
from copyguard.curation.index import TrainingIndex
from copyguard.mitigation import guidance as G
from copyguard.mitigation.config import AMGConfig, preset_values
from copyguard.mitigation.metrics import pixel_nl2


class ToySSCD(torch.nn.Module):
    """Differentiable stand-in for TorchSSCD: float [B, 3, H, W] in [0, 1] -> unit [B, dim]; counts calls."""

    name = "toy-sscd"
    input_size = 8
    preprocessing = {"resize": "bilinear 8x8", "output": "L2-normalized"}

    def __init__(self, dim: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.dim = dim
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("proj", torch.randn(3 * 8 * 8, dim, generator=gen))
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += len(images)
        x = F.interpolate(images.float(), size=(8, 8), mode="bilinear", align_corners=False)
        return F.normalize((x - 0.5).flatten(1) @ self.proj, dim=1)

    def embed(self, images) -> np.ndarray:  # the curation embedder interface (uint8 HWC)
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            return self(x).numpy()


def toy_index(embedder: ToySSCD, images: torch.Tensor, **entry_fields) -> TrainingIndex:
    with torch.no_grad():
        emb = embedder(images).numpy()
    entries = [
        {"key": f"train{i:02d}", "caption": f"caption {i}", **entry_fields} for i in range(len(images))
    ]
    return TrainingIndex.build(emb, entries, {"name": embedder.name, "dim": embedder.dim, "input_size": 8})


class ToyDecoder(torch.nn.Module):
    """Latents [n, 4, 4, 4] -> images [n, 3, 8, 8] in (0, 1): a fixed linear map and a sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.weight = torch.nn.Parameter(torch.randn(64, 192, generator=gen) / 8)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(z.flatten(1) @ self.weight).view(-1, 3, 8, 8)


PAPER = AMGConfig.preset("paper")


# -- eq. 13 and eq. 15 ----------------------------------------------------------------------------------------
def test_eq13_clamp_matches_paper_form():
    sigma = torch.tensor([-0.3, 0.0, 0.1, 0.2, 0.5, 0.9])
    s1 = G.despecification_scale(sigma, c1=13, s0=7.5)
    # the constants of Chen et al.'s public SD code: max(min(6.5, 13 s), 0)
    paper = torch.clamp(torch.minimum(torch.tensor(6.5), 13 * sigma), min=0)
    assert torch.allclose(s1, paper)
    assert s1.tolist() == pytest.approx([0, 0, 1.3, 2.6, 6.5, 6.5])
    # the upper clamp is s0 - 1, so CFG never turns into negative guidance
    assert G.despecification_scale(torch.tensor([1.0]), c1=13, s0=3.0).item() == pytest.approx(2.0)


def test_eq15_clamp_paper_form_and_budget():
    sigma = torch.linspace(-0.5, 1.0, 61)
    s1 = G.despecification_scale(sigma, 13, 7.5)
    s2 = G.dedup_scale(sigma, s1, 7.5)  # c2=None: the public SD code's form
    paper = torch.clamp(torch.minimum(6.5 - s1, (6.5 - s1) / 0.3 * sigma), min=0)
    assert torch.allclose(s2, paper)
    assert bool((7.5 - s1 - s2 >= 1 - 1e-6).all())  # eq. 15 keeps s0 - s1 - s2 >= 1
    assert bool((s2 >= 0).all())
    # constant c2: max(min(c2 sigma, s0 - s1 - 1), 0)
    s1c = torch.tensor([0.0, 0.0, 5.0, 7.0])
    s2c = G.dedup_scale(torch.tensor([0.1, 0.9, 0.9, 0.9]), s1c, 7.5, c2=5.0)
    assert s2c.tolist() == pytest.approx([0.5, 4.5, 1.5, 0.0])


def test_similarity_scale_paper_c3():
    sig = torch.tensor([0.5, 0.5, 0.2])
    c3 = G.similarity_scale(sig, torch.tensor([1000.0, 830.0, 1000.0]), 100, 0.3, 170, 1000)
    assert c3.tolist() == pytest.approx([20.0, 20.0 * math.e, 0.0], rel=1e-5)  # clamped, never negative


# -- gating -----------------------------------------------------------------------------------------------------
def test_lambda_schedule():
    lam = G.lambda_schedule(torch.tensor([0.0, 500.0, 1000.0]), 0.3, 0.1, 0.005)
    assert lam.tolist() == pytest.approx([0.4, 0.3 + 0.1 * math.exp(-2.5), 0.3 + 0.1 * math.exp(-5)])
    assert bool((lam[:-1] > lam[1:]).all())
    # pixel level: nL2 threshold 1.95 - 0.45 exp(-0.025 t) as lambda on sigma = -nL2
    nl2 = AMGConfig.preset("paper", sigma_mode="nl2")
    for t in (0.0, 40.0, 900.0):
        lam_t = G.lambda_schedule(t, nl2.lambda_base, nl2.lambda_amp, nl2.lambda_rate).item()
        assert lam_t == pytest.approx(-(1.95 - 0.45 * math.exp(-0.025 * t)))


def _plan(sigma, t=500.0, cfg=PAPER, fresh=None, remaining=None, has_yn=None):
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    n = len(sigma)
    return G.plan_step(
        sigma,
        t,
        7.5,
        cfg,
        fresh=torch.ones(n, dtype=torch.bool) if fresh is None else fresh,
        dup_remaining=torch.zeros(n, dtype=torch.long) if remaining is None else remaining,
        has_dup_caption=torch.ones(n, dtype=torch.bool) if has_yn is None else has_yn,
    )


def test_gating_spe_whenever_positive_dup_sim_above_lambda():
    # t = 500: lambda ~ 0.308
    plan = _plan([-0.1, 0.05, 0.2, 0.35, float("nan")])
    assert plan.spe_on.tolist() == [False, True, True, True, False]  # G_spe whenever sigma > 0
    assert plan.dup_on.tolist() == [False, False, False, True, False]  # G_dup, G_sim only above lambda_t
    assert plan.sim_candidate.tolist() == [False, False, False, True, False]
    assert plan.s1[1].item() == pytest.approx(0.65)
    assert plan.s2[:3].tolist() == [0, 0, 0]
    # eq. 10 form: G_spe gated by lambda too
    plan = _plan([0.05, 0.35], cfg=AMGConfig.preset("custom", spe_gate="lambda"))
    assert plan.spe_on.tolist() == [False, True]
    # no y_N: no G_dup; a stale sigma (not fresh) gets no G_sim
    plan = _plan([0.4, 0.4], has_yn=torch.tensor([False, True]), fresh=torch.tensor([True, False]))
    assert plan.dup_on.tolist() == [False, True]
    assert plan.sim_candidate.tolist() == [True, False]
    # every term off: nothing fires
    off = AMGConfig.preset("paper", use_spe=False, use_dup=False, use_sim=False)
    plan = _plan([0.9], cfg=off)
    assert not (plan.spe_on.any() or plan.dup_on.any() or plan.sim_candidate.any())
    assert plan.s1.item() == 0 and plan.s2.item() == 0


def test_g_dup_holds_for_ten_steps():
    remaining = torch.zeros(1, dtype=torch.long)
    on_steps = []
    for step in range(16):
        sigma = 0.4 if step == 2 else 0.1  # above lambda once, at step 2
        plan = _plan([sigma], remaining=remaining)
        remaining = plan.dup_remaining
        if plan.dup_on.item():
            on_steps.append(step)
            assert plan.s2.item() > 0
    assert on_steps == list(range(2, 12))
    # held, but s1 = s0 - 1 leaves no budget (eq. 15): G_dup does not fire
    plan = _plan([0.6])
    assert plan.dup_trigger.item() and not plan.dup_on.item() and plan.dup_remaining.item() == 9
    # a second trigger during the hold restarts it
    on, rem = G.update_dup_hold(torch.tensor([4]), torch.tensor([True]), 10)
    assert on.item() and rem.item() == 9


def test_detection_gate_functions():
    flags = G.initial_flags(torch.tensor([1.0, 5.0, 3.0]), 2.5, 3)
    assert flags.tolist() == [False, True, True]
    assert G.initial_flags(None, None, 2).tolist() == [True, True]
    with pytest.raises(UsageError):
        G.initial_flags(None, 1.0, 2)
    active = torch.tensor([True, True, False])
    assert G.checks_due(0, active, 2).tolist() == [True, True, False]
    assert G.checks_due(1, active, 2).tolist() == [False, False, False]
    assert G.checks_due(4, active, 2).tolist() == [True, True, False]  # every check_every-th step
    assert G.checks_due(6, active, 3).tolist() == [True, True, False]
    assert G.checks_due(4, active, 3).tolist() == [False, False, False]
    after = G.after_check(active, torch.tensor([True, True, False]), torch.tensor([0.05, 0.4, math.nan]), 0.1)
    assert after.tolist() == [False, True, False]  # stops checking once sigma <= recheck_sigma
    assert G.after_check(active, active, torch.tensor([0.0, 0.0, 0.0]), None).tolist() == active.tolist()


# -- G_spe / G_dup / G_sim terms --------------------------------------------------------------------------------
def test_spe_and_dup_terms():
    eps_c, eps_u, eps_d = torch.randn(3, 2, 4, 2, 2).unbind(0)
    s = torch.tensor([0.0, 2.0])
    assert torch.equal(G.g_spe(eps_c, eps_u, s)[0], torch.zeros(4, 2, 2))
    assert torch.allclose(G.g_spe(eps_c, eps_u, s)[1], -2.0 * (eps_c[1] - eps_u[1]))
    assert torch.allclose(G.g_dup(eps_d, eps_u, s)[1], -2.0 * (eps_d[1] - eps_u[1]))
    # CFG + G_spe with s1 = s0 - 1 leaves the plain conditional prediction
    cfg = eps_u + 7.5 * (eps_c - eps_u)
    assert torch.allclose(
        cfg + G.g_spe(eps_c, eps_u, torch.full((2,), 6.5)), eps_u + (eps_c - eps_u), atol=1e-5
    )


def test_x0_and_v_prediction_round_trip():
    x, eps = torch.randn(2, 2, 4, 3, 3).unbind(0)
    ab = 0.37
    x0 = G.predict_x0(x, eps, ab)
    assert torch.allclose(math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps, x, atol=1e-5)
    v = G.model_output_from_eps(eps, x, ab, "v_prediction")
    assert torch.allclose(v, math.sqrt(ab) * eps - math.sqrt(1 - ab) * x0, atol=1e-5)
    assert torch.allclose(G.eps_from_model_output(v, x, ab, "v_prediction"), eps, atol=1e-5)
    with pytest.raises(UsageError):
        G.eps_from_model_output(v, x, ab, "sample")


def test_magnitude_from_eps():
    a, b = torch.randn(2, 3, 4, 2, 2).unbind(0)
    mag = G.magnitude_from_eps(a, b)
    assert mag.shape == (3,)
    assert mag[1].item() == pytest.approx(float(torch.sqrt(((a[1] - b[1]) ** 2).sum())), rel=1e-5)


def _toy_setup(seed: int = 0):
    torch.manual_seed(seed)
    embedder, decoder = ToySSCD(), ToyDecoder()
    target = torch.randn(1, 4, 4, 4)
    train = torch.cat([decoder(target).detach(), torch.rand(5, 3, 8, 8)])
    index = toy_index(embedder, train)
    ab = 0.5
    eps = torch.randn(1, 4, 4, 4)
    x_t = math.sqrt(ab) * target + math.sqrt(1 - ab) * eps
    eps_hat = eps + 0.4 * torch.randn(1, 4, 4, 4)  # x0_hat near, not at, the training image
    return embedder, decoder, index, x_t, eps_hat, ab


def test_sign_of_g_sim_lowers_sigma():
    embedder, decoder, index, x_t, eps_hat, ab = _toy_setup()

    def similarity(images):
        return G.sscd_sigma(images, embedder, index)

    res, grad = G.sigma_and_grad(x_t, eps_hat, ab, decoder, similarity)
    assert res.keys == ["train00"] and 0.5 < res.sigma.item() < 0.999
    assert decoder.weight.grad is None  # only x_t gets a gradient
    gsim = G.g_sim(grad, ab, torch.tensor([1.0]))
    step = 1e-2 / gsim.norm()

    def sigma_at(eps):
        with torch.no_grad():
            return similarity(decoder(G.predict_x0(x_t, eps, ab))).sigma.item()

    base = sigma_at(eps_hat)
    assert base == pytest.approx(res.sigma.item(), abs=1e-6)
    assert sigma_at(eps_hat + step * gsim) < base  # eps_hat += G_sim moves x0_hat away from n_0
    assert sigma_at(eps_hat - step * gsim) > base
    # the DDIM update with the guided eps moves x_{t-1} down the gradient of sigma
    sched = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False
    )
    sched.set_timesteps(50)
    t = sched.timesteps[10]
    plain = sched.step(eps_hat, t, x_t).prev_sample
    guided = sched.step(eps_hat + step * gsim, t, x_t).prev_sample
    assert float(((guided - plain) * grad).sum()) < 0


def test_sscd_sigma_non_differentiable_embedder_matches_index():
    embedder, decoder, index, x_t, eps_hat, ab = _toy_setup()

    class Onnxish:  # an ImageEmbedder that is not a torch module
        name, dim, input_size = "toy-sscd", 32, 8

        def embed(self, images):
            return embedder.embed(images)

    images = decoder(G.predict_x0(x_t, eps_hat, ab)).detach()
    res = G.sscd_sigma(images, Onnxish(), index)
    quant = (images * 255).round() / 255  # the ONNX path sees uint8 pixels
    ref = G.sscd_sigma(quant, embedder, index)
    assert res.keys == ref.keys and res.sigma.item() == pytest.approx(ref.sigma.item(), abs=1e-5)
    assert not res.sigma.requires_grad


def test_nl2_sigma_matches_metrics_and_sign():
    gen = torch.Generator().manual_seed(3)
    ref = torch.rand(20, 3, 8, 8, generator=gen)
    imgs = torch.cat(
        [ref[4:5] + 0.01 * torch.randn(1, 3, 8, 8, generator=gen), torch.rand(2, 3, 8, 8, generator=gen)]
    )
    keys = [f"r{i}" for i in range(20)]
    res = G.nl2_sigma(imgs.clone().requires_grad_(True), ref, k=5, alpha=0.5, keys=keys)
    nl2, nearest = pixel_nl2(imgs.numpy(), ref.numpy(), k=5, alpha=0.5)
    assert np.allclose(-res.sigma.detach().numpy(), nl2, atol=1e-4)  # sigma = -nL2
    assert res.rows == nearest.tolist() and res.keys[0] == "r4"
    assert res.sigma[0] > res.sigma[1] and res.sigma[0] > res.sigma[2]  # the near copy is the most similar
    assert res.sigma.requires_grad
    # images of another size are resized to the reference size; uint8 references are scaled
    small = G.nl2_sigma(F.interpolate(imgs, size=(16, 16)), (ref * 255).round().to(torch.uint8), k=5)
    assert small.rows[0] == 4
    with pytest.raises(UsageError):
        G.nl2_sigma(imgs, torch.zeros(0, 3, 8, 8))


# -- config ---------------------------------------------------------------------------------------------------
def test_paper_preset_is_section_6_3():
    p = AMGConfig.preset("paper")
    assert p == AMGConfig()  # schema defaults are the paper preset
    assert (p.c1, p.spe_gate, p.c2, p.c2_ref) == (13.0, "positive", None, 0.3)
    assert (p.lambda_base, p.lambda_amp, p.lambda_rate) == (0.3, 0.1, 0.005)
    assert (p.dup_hold_steps, p.c3_scale, p.c3_offset, p.c3_tau, p.c3_t_ref) == (
        10,
        100.0,
        0.3,
        170.0,
        1000.0,
    )
    assert p.recompute_sigma and p.check_every == 1 and not p.gated and p.enabled
    assert p.dup_min_count == 21


def test_strong_and_custom_presets():
    strong = AMGConfig.preset("strong")
    paper = AMGConfig.preset("paper")
    assert strong.name == "strong" and strong.c1 > paper.c1 and strong.c3_scale > paper.c3_scale
    assert strong.lambda_base < paper.lambda_base
    assert AMGConfig(name="strong") == strong  # a YAML section with only `name: strong`
    custom = AMGConfig.preset("paper", c1=5.0)
    assert custom.name == "custom" and custom.c1 == 5.0 and custom.c3_scale == 100.0
    assert AMGConfig.preset("paper", gated=True).name == "paper"  # cost knobs are not preset constants
    nl2 = AMGConfig.preset("strong", sigma_mode="nl2")
    assert nl2.sigma_zero == -2.0 and nl2.lambda_base == pytest.approx(-2.0)
    assert preset_values("custom") == preset_values("paper")
    with pytest.raises(ConfigError):
        AMGConfig.preset("wild")
    with pytest.raises(ValidationError):
        AMGConfig(c1=-1)
    with pytest.raises(ValidationError):
        AMGConfig(unknown=1)
    assert json.loads(strong.model_dump_json())["name"] == "strong"


def test_config_loads_from_yaml(tmp_path):
    path = tmp_path / "amg.yaml"
    path.write_text("amg:\n  name: strong\n  gated: true\n  gate_threshold: 3.5\n")
    cfg = load_config(AMGConfig, "amg", path, ["amg.check_every=2"])
    assert cfg.c3_scale == AMGConfig.preset("strong").c3_scale and cfg.gate_threshold == 3.5
    assert cfg.check_every == 2
    with pytest.raises(ConfigError, match="amg.c1"):
        load_config(AMGConfig, "amg", path, ["amg.c1=-3"])


def test_spe_gate_modes_and_unknown_mode():
    sigma, lam = torch.tensor([0.2, 0.6, math.nan]), torch.tensor([0.5, 0.5, 0.5])
    assert G.spe_gate(sigma, lam, "positive").tolist() == [True, True, False]
    assert G.spe_gate(sigma, lam, "lambda").tolist() == [False, True, False]
    with pytest.raises(UsageError, match="unknown spe_gate 'always'; choose positive or lambda"):
        G.spe_gate(sigma, lam, "always")


class StrictSSCD(ToySSCD):
    """A toy torch embedder that takes its images in its own dtype only (as a half-precision model would)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == self.proj.dtype, f"{images.dtype} images for a {self.proj.dtype} embedder"
        x = F.interpolate(images, size=(8, 8), mode="bilinear", align_corners=False)
        return F.normalize((x - 0.5).flatten(1) @ self.proj, dim=1)


def test_sscd_sigma_feeds_the_embedder_its_own_dtype():
    """Images reach a torch embedder in the embedder's dtype (float64 here) and sigma comes back in float32
    on the images' device, equal to the float32 embedder's."""
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    emb32 = ToySSCD(seed=4)
    emb64 = StrictSSCD(seed=4).double()
    index = toy_index(emb32, torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(5)))
    res64 = G.sscd_sigma(images, emb64, index)
    res32 = G.sscd_sigma(images, emb32, index)
    assert res64.sigma.dtype == torch.float32
    assert res64.keys == res32.keys
    torch.testing.assert_close(res64.sigma, res32.sigma, rtol=1e-5, atol=1e-6)
