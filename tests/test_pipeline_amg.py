"""StableDiffusionAMGPipeline on a tiny SD folder: bit-for-bit when off, gating, traces, G_spe/G_dup/G_sim."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from copyguard.common.errors import UsageError
from copyguard.mitigation.config import AMGConfig
from copyguard.mitigation.pipeline_amg import StableDiffusionAMGPipeline, StableDiffusionAMGPipelineOutput
from tests.test_guidance import ToySSCD, toy_index
from tests.tiny_sd import save_tiny_pipeline

STEPS = 3
PROMPTS = ["a photo of the cat", "a red house on the street"]
DUP_CAPTION = "a painting of the old city"


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread; several threads spin-wait badly on a busy shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    folder = save_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd"))
    std = StableDiffusionPipeline.from_pretrained(folder)
    amg = StableDiffusionAMGPipeline.from_pretrained(folder)
    for pipe in (std, amg):
        pipe.set_progress_bar_config(disable=True)
    return std, amg


@pytest.fixture(scope="module")
def baseline(pipes) -> np.ndarray:
    std, _ = pipes
    return std(PROMPTS, num_inference_steps=STEPS, generator=_gen(), output_type="np").images


@pytest.fixture(scope="module")
def train_images(baseline) -> torch.Tensor:
    """The baseline outputs play memorized training images, plus four unrelated ones."""
    memorized = torch.from_numpy(baseline).permute(0, 3, 1, 2).float()
    return torch.cat([memorized, torch.rand(4, 3, 16, 16, generator=_gen(7))])


@pytest.fixture()
def embedder() -> ToySSCD:
    return ToySSCD()


@pytest.fixture()
def index(train_images):
    idx = toy_index(ToySSCD(), train_images, dup_caption=DUP_CAPTION, dup_caption_count=30)
    return idx


def _run(pipe, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    return pipe(PROMPTS, generator=_gen(), output_type="np", **kwargs)


def test_from_pretrained_gives_the_subclass(pipes):
    _, amg = pipes
    assert type(amg) is StableDiffusionAMGPipeline


def test_all_guidance_off_is_bit_for_bit(pipes, baseline, index, embedder):
    _, amg = pipes
    plain = _run(amg)
    assert isinstance(plain, StableDiffusionAMGPipelineOutput) and plain.traces is None
    assert np.array_equal(plain.images, baseline)
    off = AMGConfig.preset("paper", use_spe=False, use_dup=False, use_sim=False)
    assert np.array_equal(_run(amg, amg=off, index=index, embedder=embedder).images, baseline)
    assert embedder.calls == 0


def _count_calls(monkeypatch, obj, name):
    calls = []
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapper)
    return calls


def test_gated_unflagged_prompts_skip_decoding_and_search(pipes, baseline, index, embedder, monkeypatch):
    _, amg = pipes
    searches = _count_calls(monkeypatch, index, "nearest")
    decodes = _count_calls(monkeypatch, amg.vae, "decode")
    cfg = AMGConfig.preset("paper", gated=True, gate_threshold=1e9)
    out = _run(amg, amg=cfg, index=index, embedder=embedder)
    assert np.array_equal(out.images, baseline)  # unflagged: exactly the standard sampler
    assert (len(searches), embedder.calls, len(decodes)) == (0, 0, 1)  # the one decode is the final image
    assert out.amg_stats == {"checks": 0, "decodes": 0, "grads": 0, "dup_unet_images": 0}
    for trace in out.traces:
        assert trace.gated_out and not trace.flagged and trace.magnitude > 0
        assert len(trace.sigma) == len(trace.g_spe) == len(trace.timesteps) == STEPS
        assert not any(trace.checked)


def test_gated_mode_is_per_image(pipes, baseline, index, embedder):
    _, amg = pipes
    probe = _run(
        amg, amg=AMGConfig.preset("paper", gated=True, gate_threshold=1e9), index=index, embedder=embedder
    )
    mags = [t.magnitude for t in probe.traces]
    hi = int(np.argmax(mags))
    cfg = AMGConfig.preset("paper", gated=True, gate_threshold=float(np.mean(mags)))
    out = _run(amg, amg=cfg, index=index, embedder=embedder)
    flagged, other = out.traces[hi], out.traces[1 - hi]
    assert flagged.flagged and all(flagged.checked) and not other.flagged and not any(other.checked)
    assert out.amg_stats["checks"] == STEPS
    assert np.array_equal(out.images[1 - hi], baseline[1 - hi])
    assert not np.array_equal(out.images[hi], baseline[hi])


def test_paper_preset_guides_away_from_the_training_image(pipes, baseline, index, embedder):
    _, amg = pipes
    out = _run(amg, amg=AMGConfig.preset("paper"), index=index, embedder=embedder)
    for b, trace in enumerate(out.traces):
        assert trace.prompt_index == b and trace.flagged and not trace.gated_out
        for name in (
            "timesteps",
            "checked",
            "sigma",
            "sigma_sim",
            "lambda_t",
            "nearest_key",
            "g_spe",
            "g_dup",
        ):
            assert len(getattr(trace, name)) == STEPS, name
        assert len(trace.g_sim) == len(trace.s1) == len(trace.s2) == len(trace.c3) == len(trace.y_n) == STEPS
        assert all(trace.checked) and set(trace.nearest_key) <= set(index.keys)
        assert trace.sigma[0] > 0.5  # x0_hat starts out close to a (memorized) training image
        assert all(trace.g_spe) and any(trace.g_sim)
    json.dumps([t.to_dict() for t in out.traces])  # JSON-ready for the generate job
    assert out.amg_stats["grads"] > 0
    final = embedder(torch.from_numpy(out.images).permute(0, 3, 1, 2))
    train = embedder(torch.from_numpy(baseline).permute(0, 3, 1, 2))
    sims = (final * train).sum(-1)
    assert bool((sims < 0.95).all())  # the unguided images are the training images (cosine 1)


def test_g_dup_uses_the_index_caption(pipes, index, embedder):
    _, amg = pipes
    cfg = AMGConfig.preset("custom", c1=0.5, use_sim=False, lambda_base=0.0, lambda_amp=0.0, dup_min_count=21)
    out = _run(amg, amg=cfg, index=index, embedder=embedder)
    assert out.amg_stats["dup_unet_images"] > 0 and out.amg_stats["grads"] == 0
    fired = [y for t in out.traces for y, on in zip(t.y_n, t.g_dup, strict=True) if on]
    assert fired and set(fired) == {DUP_CAPTION}
    # too few duplicates for y_N: no G_dup at all
    out = _run(amg, amg=cfg.model_copy(update={"dup_min_count": 31}), index=index, embedder=embedder)
    assert out.amg_stats["dup_unet_images"] == 0 and not any(any(t.g_dup) for t in out.traces)


def test_check_every_and_recheck_floor(pipes, index, embedder):
    _, amg = pipes
    out = _run(
        amg, amg=AMGConfig.preset("paper", check_every=2, use_sim=False), index=index, embedder=embedder
    )
    assert [t.checked for t in out.traces] == [[True, False, True]] * 2
    assert all(
        t.g_spe[1] and t.sigma[1] != t.sigma[1] for t in out.traces
    )  # stale sigma reused; NaN in trace
    out = _run(
        amg, amg=AMGConfig.preset("paper", recheck_sigma=0.999, use_sim=False), index=index, embedder=embedder
    )
    assert [t.checked for t in out.traces] == [[True, False, False]] * 2
    assert out.amg_stats["checks"] == 2


def test_pixel_level_nl2_mode(pipes, train_images):
    _, amg = pipes
    keys = [f"img{i}" for i in range(len(train_images))]
    cfg = AMGConfig.preset("paper", sigma_mode="nl2", nl2_k=3)
    out = _run(amg, amg=cfg, pixel_reference=train_images, pixel_keys=keys)
    for trace in out.traces:
        assert all(s < 0 for s in trace.sigma)  # sigma = -nL2
        assert trace.nearest_key[0] in ("img0", "img1")  # a memorized image, not one of the noise images
        assert trace.sigma[0] > trace.lambda_t[0] and trace.g_sim[0]  # starts as a copy (nL2 ~ 0.1)
        assert trace.sigma[-1] < trace.lambda_t[-1]  # ends above the nL2 threshold: not memorized
    with pytest.raises(UsageError, match="pixel_reference"):
        _run(amg, amg=cfg)


def test_usage_errors(pipes, index, embedder):
    _, amg = pipes

    class Onnxish:
        name, dim, input_size = "toy-sscd", 32, 8

        def embed(self, images):
            return embedder.embed(images)

    with pytest.raises(UsageError) as err:
        _run(amg, amg=AMGConfig(), index=index, embedder=Onnxish())
    assert str(err.value) == (
        "AMG's G_sim needs a differentiable torch embedder, but 'toy-sscd' is not a torch module (ONNX is not "
        "differentiable); pass embedder=load_torch_sscd(...) or set use_sim=false"
    )
    with pytest.raises(UsageError, match="G_sim needs a differentiable"):
        _run(amg, amg=AMGConfig(), index=index)  # the index's embedder kind has no torch SSCD
    with pytest.raises(UsageError) as err:
        _run(amg, amg=AMGConfig(), embedder=embedder)
    assert str(err.value) == (
        "AMG with sigma_mode=sscd needs the training-set index: "
        "index=copyguard.curation.load_index('OUT/index') (written by the curate job)"
    )
    with pytest.raises(UsageError, match="gate_threshold"):
        _run(amg, amg=AMGConfig(gated=True), index=index, embedder=embedder)
    with pytest.raises(UsageError, match="classifier-free guidance"):
        _run(amg, amg=AMGConfig(), index=index, embedder=embedder, guidance_scale=1.0)
    # without G_sim a non-differentiable embedder is fine
    out = _run(amg, amg=AMGConfig(use_sim=False), index=index, embedder=Onnxish(), num_inference_steps=2)
    assert out.amg_stats["checks"] == 4 and out.amg_stats["grads"] == 0


def test_batch_with_images_per_prompt_and_tuple_output(pipes, index, embedder):
    _, amg = pipes
    images, nsfw, traces = amg(
        PROMPTS,
        num_images_per_prompt=2,
        num_inference_steps=2,
        generator=_gen(),
        output_type="np",
        return_dict=False,
        amg=AMGConfig(use_sim=False),
        index=index,
        embedder=embedder,
    )
    assert images.shape == (4, 16, 16, 3) and nsfw is None
    assert [t.prompt_index for t in traces] == [0, 0, 1, 1]
    assert all(len(t.sigma) == 2 for t in traces)


@pytest.mark.parametrize("kind", ["euler", "v_prediction"])
def test_other_schedulers_and_v_prediction(pipes, index, embedder, kind):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    _, amg = pipes
    if kind == "euler":
        scheduler = EulerDiscreteScheduler.from_config(amg.scheduler.config)
    else:
        scheduler = DDIMScheduler.from_config(amg.scheduler.config, prediction_type="v_prediction")
    pipe = StableDiffusionAMGPipeline(**{**amg.components, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    plain = StableDiffusionPipeline(**{**amg.components, "scheduler": scheduler})
    plain.set_progress_bar_config(disable=True)
    ref = plain(PROMPTS, num_inference_steps=2, generator=_gen(), output_type="np").images
    off = AMGConfig(use_spe=False, use_dup=False, use_sim=False)
    assert np.array_equal(_run(pipe, amg=off, num_inference_steps=2).images, ref)
    out = _run(pipe, amg=AMGConfig(), index=index, embedder=embedder, num_inference_steps=2)
    assert np.isfinite(out.images).all() and not np.array_equal(out.images, ref)
    assert all(t.g_spe[0] for t in out.traces)


# -- the embedder for SSCD sigma, resolved from the index ---------------------------------------------------
class _LoaderSpy:
    """Stands in for ``load_torch_sscd`` / ``load_embedder``: records each call, returns ``result`` (or raises
    it when it is an exception)."""

    def __init__(self, result):
        self.result, self.calls = result, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def test_the_index_embedder_is_loaded_once_per_pipeline(pipes, index, monkeypatch):
    """Without ``embedder=`` the pipeline loads the torch SSCD the index names (its kind and input size, on
    the pipeline's device) once, and samples as with that embedder passed in."""
    _, amg = pipes
    spy = _LoaderSpy(ToySSCD())
    monkeypatch.setattr("copyguard.mitigation.sscd_torch.load_torch_sscd", spy)
    monkeypatch.delitem(amg.__dict__, "_amg_embedders", raising=False)
    first = _run(amg, amg=AMGConfig(), index=index, num_inference_steps=2)
    second = _run(amg, amg=AMGConfig(), index=index, num_inference_steps=2)
    assert spy.calls == [((), {"kind": "toy-sscd", "input_size": 8, "device": amg._execution_device})]
    given = _run(amg, amg=AMGConfig(), index=index, embedder=ToySSCD(), num_inference_steps=2)
    np.testing.assert_array_equal(first.images, given.images)
    np.testing.assert_array_equal(second.images, given.images)
    monkeypatch.delitem(amg.__dict__, "_amg_embedders", raising=False)


def test_without_a_torch_sscd_g_sim_fails_and_the_rest_uses_the_curation_embedder(pipes, index, monkeypatch):
    _, amg = pipes

    class Onnxish:
        name, dim, input_size = "toy-sscd", 32, 8

        def embed(self, images):
            return ToySSCD().embed(images)

    monkeypatch.setattr("copyguard.mitigation.sscd_torch.load_torch_sscd", _LoaderSpy(UsageError("no port")))
    fallback = _LoaderSpy(Onnxish())
    monkeypatch.setattr("copyguard.curation.embedders.load_embedder", fallback)
    monkeypatch.delitem(amg.__dict__, "_amg_embedders", raising=False)
    with pytest.raises(UsageError) as err:
        _run(amg, amg=AMGConfig(), index=index, num_inference_steps=2)
    assert str(err.value) == (
        "AMG's G_sim needs a differentiable torch SSCD embedder and none could be loaded for the index's "
        "embedder 'toy-sscd' (no port); pass embedder=load_torch_sscd(...) or set use_sim=false"
    )
    assert fallback.calls == []
    out = _run(amg, amg=AMGConfig(use_sim=False), index=index, num_inference_steps=2)
    assert fallback.calls == [(("toy-sscd",), {"input_size": 8})]
    assert out.amg_stats["checks"] == 4 and out.amg_stats["grads"] == 0
    monkeypatch.delitem(amg.__dict__, "_amg_embedders", raising=False)


def test_the_embedder_is_checked_against_the_index(pipes, index, caplog):
    """A torch embedder of another input size is refused with ``strict_embedder`` and only logged without it;
    one without a ``name`` is named by its class."""
    _, amg = pipes
    other_size = ToySSCD()
    other_size.input_size = 16
    with pytest.raises(UsageError, match="input_size=8, the embedder has 16"):
        _run(
            amg, amg=AMGConfig(strict_embedder=True), index=index, embedder=other_size, num_inference_steps=2
        )
    with caplog.at_level("WARNING", logger="copyguard.curation.index"):
        out = _run(amg, amg=AMGConfig(), index=index, embedder=other_size, num_inference_steps=2)
    assert out.amg_stats["checks"] == 4
    assert "the index was built with input_size=8, the embedder has 16" in caplog.text

    class Unnamed(torch.nn.Module):
        dim, input_size = 32, 8

        def __init__(self) -> None:
            super().__init__()
            self.inner = ToySSCD()

        def forward(self, images):
            return self.inner(images)

    with pytest.raises(UsageError, match="name='toy-sscd', the embedder has 'Unnamed'"):
        _run(amg, amg=AMGConfig(strict_embedder=True), index=index, embedder=Unnamed(), num_inference_steps=2)
