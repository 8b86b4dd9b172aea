"""Prompt-embedding optimization (Wen et al., ICLR 2024) on the toy memorizing model
(tests.tiny_sd.trigger_pipeline)."""

from __future__ import annotations

import copy

import pytest
import torch

from copyguard.common.errors import UsageError
from copyguard.mitigation.config import DetectConfig, PromptOptConfig
from copyguard.mitigation.detect import Detector
from copyguard.mitigation.magnitude import initial_latents, latent_shape, text_conditional_magnitude
from copyguard.mitigation.prompt_opt import (
    calibrate_l_target,
    optimize_embeddings,
    optimize_prompts,
)
from copyguard.mitigation.prompts import encode_prompts
from tests.tiny_sd import cached_trigger_pipeline

STEPS = 4  # sampling steps of the generations below (the optimization uses their first timestep)
NEG = [
    "a red house",
    "a small cat",
    "the old man with a dog",
    "mountain in the night",
    "blue sky",
    "a photo of the city",
]


pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def pipe():
    return cached_trigger_pipeline()


def test_l_target_is_the_median_first_step_magnitude(pipe) -> None:
    scores = Detector(pipe, DetectConfig(), progress=False).score(NEG)
    assert calibrate_l_target(pipe, NEG) == pytest.approx(sorted(scores)[2] / 2 + sorted(scores)[3] / 2)
    # the step window of a multi-step detection config is forced back to the first step
    assert calibrate_l_target(pipe, NEG, detect_config=DetectConfig(end=5, generations=3)) == pytest.approx(
        calibrate_l_target(pipe, NEG)
    )


def test_loss_drops_bos_stays_and_max_iterations(pipe) -> None:
    l_target = calibrate_l_target(pipe, NEG)
    prompts = ["a red trigger house", "trigger"]
    res = optimize_prompts(pipe, prompts, seeds=0, l_target=l_target, num_inference_steps=STEPS)
    with torch.no_grad():
        original = encode_prompts(pipe, prompts)
    for r in res.records:
        assert r.iterations == 10 and not r.reached_target  # the toy trigger is too strong for 10 steps
        assert r.final_loss < 0.5 * r.initial_loss
        assert r.initial_loss > 4.0
    assert torch.equal(res.prompt_embeds[:, 0], original[:, 0])  # BOS untouched (gradient zeroed)
    assert float((res.prompt_embeds[:, 1:] - original[:, 1:]).abs().max()) > 0.05


def test_the_configured_iteration_budget_is_used(pipe) -> None:
    """``PromptOptConfig.max_iters`` reaches the optimizer (the default is 10)."""
    res = optimize_prompts(pipe, ["trigger"], seeds=0, l_target=0.0, num_inference_steps=STEPS,
                           config=PromptOptConfig(max_iters=3))  # fmt: skip
    assert res.records[0].iterations == 3 and not res.records[0].reached_target


def test_early_stop_at_the_target(pipe) -> None:
    res = optimize_prompts(pipe, ["a red trigger house"], seeds=0, l_target=3.0, num_inference_steps=STEPS)
    (r,) = res.records
    assert 1 <= r.iterations < 10 and r.reached_target and r.final_loss <= 3.0 < r.initial_loss
    # already below the target: zero iterations, embedding returned unchanged
    res = optimize_prompts(pipe, ["a red house"], seeds=0, l_target=100.0, num_inference_steps=STEPS)
    assert res.records[0].iterations == 0
    with torch.no_grad():
        assert torch.equal(res.prompt_embeds, encode_prompts(pipe, ["a red house"]))


def test_batch_equals_one_prompt_at_a_time(pipe) -> None:
    prompts, seeds = ["a red trigger house", "trigger", "blue sky"], [0, 1, 2]
    both = optimize_prompts(pipe, prompts, seeds=seeds, l_target=2.5, num_inference_steps=STEPS)
    assert len({r.iterations for r in both.records}) > 1  # rows stop at different iterations
    for i, (p, s) in enumerate(zip(prompts, seeds, strict=True)):
        one = optimize_prompts(pipe, [p], seeds=s, l_target=2.5, num_inference_steps=STEPS)
        assert one.records[0].iterations == both.records[i].iterations
        assert one.records[0].final_loss == pytest.approx(both.records[i].final_loss, rel=1e-3)
        # Adam's sign-like steps amplify float noise on near-zero gradients (padding rows): compare the mean
        assert float((one.prompt_embeds[0] - both.prompt_embeds[i]).abs().mean()) < 1e-5


def test_generation_with_optimized_embeddings_and_same_seed(pipe) -> None:
    prompt, seed = "a red trigger house", 3
    res = optimize_prompts(pipe, [prompt], seeds=seed, l_target=2.0, num_inference_steps=STEPS)
    with torch.no_grad():
        e_0 = encode_prompts(pipe, [""])

    def generate(**kw):
        return pipe(
            **kw,
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(seed),
            output_type="latent",
        ).images

    plain = generate(prompt=prompt)
    same = generate(prompt_embeds=encode_prompts(pipe, [prompt]).detach(), negative_prompt_embeds=e_0)
    assert torch.equal(plain, same)  # prompt_embeds= path is the pipeline's own
    mitigated = generate(prompt_embeds=res.prompt_embeds, negative_prompt_embeds=e_0)
    assert mitigated.shape == plain.shape and float((mitigated - plain).abs().mean()) > 1e-3
    # the recorded final loss is the first-step magnitude at the pipeline's own x_T
    pipe.scheduler.set_timesteps(STEPS)
    x_T = initial_latents(seed, latent_shape(pipe))
    with torch.no_grad():
        d = text_conditional_magnitude(pipe.unet, x_T, pipe.scheduler.timesteps[0], res.prompt_embeds, e_0)
    assert float(d) == pytest.approx(res.records[0].final_loss, rel=1e-5)


def test_direct_api_and_errors(pipe) -> None:
    with torch.no_grad():
        emb = encode_prompts(pipe, ["trigger", ""])
    x = initial_latents(0, (4, 8, 8))
    res = optimize_embeddings(pipe.unet, x, 981, emb[:1], emb[1:], l_target=0.0, max_iters=0)
    assert res.records[0].iterations == 0 and torch.equal(res.prompt_embeds, emb[:1])
    with pytest.raises(UsageError, match="^2 prompts but 1 seeds$"):
        optimize_prompts(pipe, ["a", "b"], seeds=[0], l_target=1.0)
    with pytest.raises(UsageError, match="^l_target calibration needs at least one reference prompt$"):
        calibrate_l_target(pipe, [])


def test_x_T_is_drawn_in_the_unets_dtype(pipe) -> None:
    """In a float64 pipeline the starting latents are float64 too (float32 ones would fail in the UNet), and
    the loss is the one a float64 x_T gives."""
    pipe64 = copy.deepcopy(pipe)
    pipe64.unet.to(torch.float64)
    pipe64.text_encoder.to(torch.float64)
    res = optimize_prompts(pipe64, ["trigger"], seeds=0, l_target=0.0, num_inference_steps=STEPS,
                           config=PromptOptConfig(max_iters=0))  # fmt: skip
    with torch.no_grad():
        emb = encode_prompts(pipe64, ["trigger", ""])
        pipe64.scheduler.set_timesteps(STEPS)
        x_T = initial_latents(0, latent_shape(pipe64), dtype=torch.float64)
        d = text_conditional_magnitude(pipe64.unet, x_T, pipe64.scheduler.timesteps[0], emb[:1], emb[1:])
    assert res.prompt_embeds.dtype == torch.float64
    assert float(d) == pytest.approx(res.records[0].initial_loss, rel=1e-9)
    assert PromptOptConfig() == PromptOptConfig(lr=0.05, max_iters=10, weight_decay=0.01)


def test_weight_decay_reaches_adamw_and_defaults_to_the_config(pipe) -> None:
    """``optimize_embeddings``' default weight decay is 0.01 (the config's); another one changes the result."""
    with torch.no_grad():
        emb = encode_prompts(pipe, ["trigger", ""])
    x = initial_latents(0, (4, 8, 8))

    def run(**kw):
        return optimize_embeddings(pipe.unet, x, 981, emb[:1], emb[1:], l_target=0.0, max_iters=3, **kw)

    assert torch.equal(run().prompt_embeds, run(weight_decay=0.01).prompt_embeds)
    assert not torch.allclose(run(weight_decay=0.0).prompt_embeds, run(weight_decay=5.0).prompt_embeds)
    res = optimize_prompts(pipe, ["trigger"], seeds=0, l_target=0.0, num_inference_steps=STEPS,
                           config=PromptOptConfig(max_iters=3, weight_decay=5.0))  # fmt: skip
    assert not torch.allclose(res.prompt_embeds, run(weight_decay=0.01).prompt_embeds)


def test_x_T_is_scaled_by_the_schedulers_initial_sigma(pipe) -> None:
    """With Euler (sigma_max ~ 14.6) x_T is ``randn * init_noise_sigma`` and the UNet sees it scaled back."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    euler = StableDiffusionPipeline(
        **{**pipe.components, "scheduler": EulerDiscreteScheduler.from_config(pipe.scheduler.config)}
    )
    res = optimize_prompts(euler, ["trigger"], seeds=0, l_target=0.0, num_inference_steps=STEPS,
                           config=PromptOptConfig(max_iters=0))  # fmt: skip
    sched = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(STEPS)
    t = sched.timesteps[0]
    x_T = initial_latents(0, latent_shape(euler), init_noise_sigma=float(sched.init_noise_sigma))
    with torch.no_grad():
        emb = encode_prompts(euler, ["trigger", ""])
        d = text_conditional_magnitude(euler.unet, sched.scale_model_input(x_T, t), t, emb[:1], emb[1:])
    assert sched.init_noise_sigma > 10
    assert float(d) == pytest.approx(res.records[0].initial_loss, rel=1e-5)
