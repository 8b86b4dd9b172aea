"""Wiring of detection (Wen et al., ICLR 2024) and attribution along the sampling trajectory.

- Attribution (Wen et al.): the trajectory the significance is measured along is ordinary CFG,
  ``eps_0 + s0 (eps_p - eps_0)``; the public code's pitfall swaps cond and uncond there (anti-guidance).
  The scores are compared with a plain reference written here, at steps after the first (at the first step
  the trajectory has not moved, so the order cannot show).
- The magnitude with schedulers whose ``scale_model_input`` is not the identity (Euler, KDPM2: the UNet
  input is ``x / sqrt(sigma^2 + 1)``), and with DPM++ 2M (DPMSolverMultistep: its ``scale_model_input`` IS
  the identity in diffusers, so it checks the trajectory, not the scaling). Every test before used DDIM,
  where the scaling is the identity too.
- Calibration direction: the threshold comes from non-memorized prompts and flags the memorized ones.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, KDPM2DiscreteScheduler

from copyguard.mitigation.attribution import token_attribution
from copyguard.mitigation.config import DetectConfig
from copyguard.mitigation.detect import Detector, roc_metrics
from tests.tiny_sd import LATENT, TRIGGER, WORDS, cached_trigger_pipeline, tiny_pipeline

pytestmark = pytest.mark.usefixtures("torch_single_thread")

S0 = 7.5
PROMPT = "a small red house on the river"


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(seed=1)


def embed(pipe, prompts: list[str]) -> torch.Tensor:
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    return pipe.text_encoder(ids.input_ids)[0]


def x_T(pipe, scheduler, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((1, 4, LATENT, LATENT), generator=gen) * float(scheduler.init_noise_sigma)


def trajectory(pipe, scheduler, e_p, e_0, steps: int, end: int, *, swapped: bool = False):
    """Plain CFG sampling: yields ``(i, t, unet_input)``; ``swapped`` exchanges cond and uncond."""
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(steps)
    x = x_T(pipe, sched)
    e_c, e_u = (e_0, e_p) if swapped else (e_p, e_0)
    for i, t in enumerate(sched.timesteps[:end]):
        inp = sched.scale_model_input(x, t)
        yield i, t, inp
        with torch.no_grad():
            eps_u = pipe.unet(inp, t, encoder_hidden_states=e_u).sample
            eps_c = pipe.unet(inp, t, encoder_hidden_states=e_c).sample
            x = sched.step(eps_u + S0 * (eps_c - eps_u), t, x).prev_sample


# -- attribution -------------------------------------------------------------------------------------------
def reference_significance(pipe, prompt: str, steps: int, start: int, end: int, swapped: bool = False):
    """Token significance ``||d/de_i mean_n ||eps(x_t, e) - eps(x_t, e_0)||_2||_2`` averaged over the steps
    [start, end)."""
    with torch.no_grad():
        e_p, e_0 = embed(pipe, [prompt]), embed(pipe, [""])
    total = torch.zeros(77)
    for i, t, inp in trajectory(pipe, pipe.scheduler, e_p, e_0, steps, end, swapped=swapped):
        if i < start:
            continue
        e = e_p.clone().requires_grad_(True)
        diff = (
            pipe.unet(inp, t, encoder_hidden_states=e).sample
            - pipe.unet(inp, t, encoder_hidden_states=e_0).sample
        )
        (grad,) = torch.autograd.grad(diff.flatten(1).norm(dim=1).mean(), e)
        total += grad[0].norm(dim=-1)
    return total / (end - start)


@pytest.mark.parametrize(
    ("steps", "start", "end", "scheduler"),
    [
        (4, 2, 4, None),  # scored at steps 2 and 3 of 4: the trajectory has moved twice
        (5, 1, 3, "euler"),  # a window inside the trajectory, with x_T scaled by sigma_max
    ],
)
def test_attribution_follows_the_guided_not_the_anti_guided_trajectory(pipe, steps, start, end, scheduler):
    if scheduler is not None:
        sched = SCHEDULERS[scheduler].from_config(pipe.scheduler.config)
        pipe = type(pipe)(**{**pipe.components, "scheduler": sched})
        assert pipe.scheduler.init_noise_sigma > 10
    cfg = DetectConfig(num_inference_steps=steps, start=start, end=end, guidance_scale=S0)
    got = token_attribution(pipe, PROMPT, cfg)
    n_real = len(PROMPT.split())  # every word is one token of the tiny vocabulary
    assert [s.token for s in got] == PROMPT.split()
    want = reference_significance(pipe, PROMPT, steps, start, end)[1 : 1 + n_real]
    swapped = reference_significance(pipe, PROMPT, steps, start, end, swapped=True)[1 : 1 + n_real]
    scores = torch.tensor([s.score for s in got])
    assert torch.allclose(scores, want, rtol=1e-3, atol=1e-6 * float(want.max()))
    assert not torch.allclose(swapped, want, rtol=2e-2)  # the order is visible at these steps


# -- scale_model_input -----------------------------------------------------------------------------------
SCHEDULERS = {
    "euler": EulerDiscreteScheduler,
    "kdpm2": KDPM2DiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_magnitude_is_measured_on_the_scaled_model_input(pipe, name):
    pipe = copy.copy(pipe)  # a shallow copy with its own scheduler
    pipe.scheduler = SCHEDULERS[name].from_config(pipe.scheduler.config)
    steps, end = 4, 3
    cfg = DetectConfig(num_inference_steps=steps, start=0, end=end, guidance_scale=S0)
    got = Detector(pipe, cfg, progress=False).magnitudes([PROMPT])[0, 0]
    with torch.no_grad():
        e_p, e_0 = embed(pipe, [PROMPT]), embed(pipe, [""])
        want = []
        for _, t, inp in trajectory(pipe, pipe.scheduler, e_p, e_0, steps, end):
            diff = pipe.unet(inp, t, encoder_hidden_states=e_p).sample - pipe.unet(inp, t, e_0).sample
            want.append(float(diff.flatten().norm()))
        # by hand at x_T: Euler-type schedulers feed x_T / sqrt(sigma_max^2 + 1) to the UNet
        sched = copy.deepcopy(pipe.scheduler)
        sched.set_timesteps(steps)
        t0, x = sched.timesteps[0], x_T(pipe, sched)
        if name != "dpmpp_2m":
            sigma = float(sched.sigmas[0])
            assert sigma > 10  # far from the identity
            inp = x / math.sqrt(sigma**2 + 1)
        else:
            inp = x  # DPM++ works on x_t directly (identity scaling, init_noise_sigma 1)
        diff = pipe.unet(inp, t0, encoder_hidden_states=e_p).sample - pipe.unet(inp, t0, e_0).sample
        by_hand = float(diff.flatten().norm())
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert got[0] == pytest.approx(by_hand, rel=1e-4)


# -- calibration direction -------------------------------------------------------------------------------
def test_calibration_on_plain_prompts_flags_the_memorized_ones():
    """On the trigger model (tests/tiny_sd.py) prompts with the trigger token play memorized prompts."""
    pipe = cached_trigger_pipeline()
    words = [w for w in WORDS if w != TRIGGER]
    rng = np.random.default_rng(0)
    plain = [" ".join(rng.choice(words, size=int(rng.integers(2, 6)), replace=False)) for _ in range(20)]
    memorized = [f"{p} {TRIGGER}" for p in plain[:6]]
    detector = Detector(pipe, DetectConfig(target_fpr=0.1), progress=False)
    threshold = detector.calibrate(plain)
    ref_scores, mem_scores = detector.score(plain), detector.score(memorized)
    # the threshold sits at the top of the reference scores: at most 10% of them above it
    assert sum(s > threshold for s in ref_scores) <= 2
    assert threshold >= np.percentile(ref_scores, 85)
    assert detector.flag(mem_scores) == [True] * len(memorized)
    assert sum(detector.flag(ref_scores)) <= 2
    assert roc_metrics(mem_scores, ref_scores)["auc"] > 0.95  # higher score = memorized
