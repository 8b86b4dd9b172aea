"""The lab model: real CLIP tokenizer ids, config presets, metrics, resume, and the tiny model end to end.

The tiny model (``lab_tiny_model``, built once per session on the tiny sample data) is the one later
tests can reuse: its folder loads with ``StableDiffusionPipeline.from_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from copyguard.common.config import apply_overrides, validate
from copyguard.common.errors import UsageError
from copyguard.mitigation.metrics import (
    InceptionFeatures,
    fid_from_features,
    frechet_distance,
    max_cosine,
    max_cosine_to_groups,
    pixel_nl2,
    summarize_nl2,
    summarize_similarity,
)
from copyguard.pipelines.lab.architecture import build_clip_tokenizer
from copyguard.pipelines.lab.config import LAB_PRESET_DEFAULTS, LabConfig
from copyguard.pipelines.lab.data import load_lab_data
from copyguard.pipelines.lab.trainer import train_lab_model

pytest.importorskip("diffusers")


@pytest.fixture(scope="session")
def clip_tokenizer():
    return build_clip_tokenizer()


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("a photo of a cat", [49406, 320, 1125, 539, 320, 2368, 49407]),
        ("Hello world!", [49406, 3306, 1002, 256, 49407]),
        ("", [49406, 49407]),
        # digits split one by one: "4</w>" = 256 + 19, "k</w>" = 256 + 74; "123" -> 1</w> 2</w> 3</w>
        ("4k 123", [49406, 275, 330, 272, 273, 274, 49407]),
    ],
)
def test_tokenizer_matches_clip_ids(clip_tokenizer, text: str, ids: list[int]) -> None:
    assert clip_tokenizer(text).input_ids == ids


def test_tokenizer_pads_like_sd(clip_tokenizer) -> None:
    assert len(clip_tokenizer) == 49408
    assert clip_tokenizer.model_max_length == 77
    out = clip_tokenizer("a cat", padding="max_length", max_length=77).input_ids
    assert len(out) == 77 and out[:4] == [49406, 320, 2368, 49407] and set(out[4:]) == {49407}


def test_preset_override_merges_over_that_preset() -> None:
    data = apply_overrides({}, ["lab.presets.small.unet.steps=5", "lab.preset=tiny"], "lab")
    cfg = validate(LabConfig, data, "lab")
    assert cfg.presets.small.unet.steps == 5
    small = LAB_PRESET_DEFAULTS["small"]
    assert cfg.presets.small.unet.block_out_channels == small["unet"]["block_out_channels"]
    assert cfg.presets.small.vae.steps == small["vae"]["steps"]
    assert cfg.active() == cfg.presets.tiny == LabConfig().presets.tiny


def test_metrics_basics() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(5, 8)).astype(np.float32)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    sims, idx = max_cosine(ref[[3, 1]], ref)
    assert np.allclose(sims, 1.0, atol=1e-6) and idx.tolist() == [3, 1]
    own = max_cosine_to_groups(ref[[0]], ref, ["b"], ["a", "b", "b", "c", "c"])
    assert own[0] == pytest.approx(float(max(ref[1] @ ref[0], ref[2] @ ref[0])), abs=1e-6)
    train = rng.integers(0, 256, size=(60, 8, 8, 3), dtype=np.uint8)
    nl2, nearest = pixel_nl2(train[[7]], train)
    assert nearest[0] == 7 and nl2[0] < 0.1  # an exact copy
    far, _ = pixel_nl2(rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8), train)
    assert (far > 1.6).all()  # a random image is about as far from its nearest as from its 50 nearest
    s = summarize_similarity(np.array([0.1, 0.45, 0.6, 0.9]), (0.5, 0.4))
    assert s["pct_gt_0.5"] == 50.0 and s["pct_gt_0.4"] == 75.0 and s["top1"] == 0.9
    assert summarize_nl2(np.array([1.0, 1.5, 2.0]))["pct_lt_1.6"] == pytest.approx(200 / 3)


def test_frechet_distance_matches_sqrtm() -> None:
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 6)), rng.normal(0.3, 1.5, size=(50, 6))
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(c1 + c2 - 2 * scipy_linalg.sqrtm(c1 @ c2).real)
    assert frechet_distance(a.mean(0), c1, b.mean(0), c2) == pytest.approx(ref, rel=1e-6)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)


def test_inception_features_are_2048d() -> None:
    images = np.random.default_rng(2).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    feats = InceptionFeatures()(images)
    assert feats.shape == (2, 2048) and np.isfinite(feats).all()


def _micro(overrides: list[str] | None = None) -> LabConfig:
    """The tiny preset cut to a few steps: enough to exercise checkpoints and resume in seconds."""
    base = [
        "lab.preset=tiny",
        "lab.threads=1",
        "lab.presets.tiny.vae.steps=4",
        "lab.presets.tiny.unet.steps=6",
        "lab.presets.tiny.unet.warmup_steps=2",
        "lab.presets.tiny.checkpoint_every=2",
    ]
    return validate(LabConfig, apply_overrides({}, base + list(overrides or []), "lab"), "lab")


def _unet_weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "checkpoints" / "unet.pt", map_location="cpu", weights_only=True)["unet"]


@pytest.mark.slow  # a real run killed and resumed, or a full lab/eval run: minutes
def test_resume_continues_like_an_uninterrupted_run(lab_tiny_data: Path, tmp_path: Path) -> None:
    cfg = _micro()
    pattern = str(lab_tiny_data / "*.tar")
    data = load_lab_data(pattern, 32, 0, cfg.seed)
    straight = train_lab_model(cfg, pattern, tmp_path / "a", data=data)
    assert straight.complete
    stopped = train_lab_model(cfg, pattern, tmp_path / "b", data=data, stop_at=("unet", 5))
    assert not stopped.complete
    state = torch.load(tmp_path / "b" / "checkpoints" / "unet.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 4  # the last checkpoint before the interruption
    resumed = train_lab_model(cfg, pattern, tmp_path / "b", data=data, resume=True)
    assert resumed.complete
    a, b = _unet_weights(tmp_path / "a"), _unet_weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    with pytest.raises(UsageError, match="other settings"):
        other = _micro(["lab.presets.tiny.unet.lr=0.5"])
        train_lab_model(other, pattern, tmp_path / "b", data=data, resume=True)


def test_vae_trains_on_aligned_crops_and_encodes_the_full_size(
    lab_tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``vae.crop`` feeds the VAE crop-sized windows in training and ``vae.full_size_steps`` whole images
    (``full_size_batch_size`` of them) in its last steps; the latents still come from full images;
    ``vae.mid_block_attention=false`` builds the VAE without its mid-block attention; the edge and
    perceptual weights reach the loss with an Inception module."""
    from copyguard.pipelines.lab import trainer
    from copyguard.pipelines.lab.vae_loss import InceptionPerceptual

    seen: list[tuple[int, ...]] = []
    built, losses = [], []
    build_vae, vae_loss = trainer.build_vae, trainer.vae_loss

    def spy_vae(preset):
        vae = build_vae(preset)
        vae.encoder.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
        built.append(vae)
        return vae

    def spy_loss(rec, x, kl, **kw):
        losses.append(kw)
        return vae_loss(rec, x, kl, **kw)

    monkeypatch.setattr(trainer, "build_vae", spy_vae)
    monkeypatch.setattr(trainer, "vae_loss", spy_loss)
    cfg = _micro(
        [
            "lab.presets.tiny.vae.crop=16",
            "lab.presets.tiny.vae.mid_block_attention=false",
            "lab.presets.tiny.vae.full_size_steps=1",
            "lab.presets.tiny.vae.full_size_batch_size=3",
            "lab.presets.tiny.vae.edge_weight=0.5",
            "lab.presets.tiny.vae.perceptual_weight=0.25",
        ]
    )
    pattern = str(lab_tiny_data / "*.tar")
    data = load_lab_data(pattern, 32, 0, cfg.seed)
    trainer.train_lab_model(cfg, pattern, tmp_path / "m", data=data, stop_at=("unet", 0))
    spec = cfg.active().vae
    assert spec.steps == 4
    assert seen[:4] == [(spec.batch_size, 3, 16, 16)] * 3 + [
        (3, 3, 32, 32)
    ]  # 3 crop steps, 1 whole-image step
    assert all(shape[-2:] == (32, 32) for shape in seen[4:]) and sum(s[0] for s in seen[4:]) == len(data)
    assert built[0].encoder.mid_block.attentions[0] is None
    assert len(losses) == 4
    assert all(kw["edge_weight"] == 0.5 and kw["perceptual_weight"] == 0.25 for kw in losses)
    assert all(isinstance(kw["perceptual"], InceptionPerceptual) for kw in losses)


def test_random_crops_are_seeded_windows_on_the_latent_grid() -> None:
    from copyguard.pipelines.lab.trainer import _random_crop

    x = torch.arange(6 * 3 * 32 * 32, dtype=torch.float32).reshape(6, 3, 32, 32)
    a = _random_crop(x, 16, 4, torch.Generator().manual_seed(1))
    b = _random_crop(x, 16, 4, torch.Generator().manual_seed(1))
    assert a.shape == (6, 3, 16, 16) and torch.equal(a, b)
    corners = set()
    for i in range(6):
        y, c = divmod(int(a[i, 0, 0, 0] - x[i, 0, 0, 0]), 32)
        assert y % 4 == 0 and c % 4 == 0 and y <= 16 and c <= 16
        torch.testing.assert_close(a[i], x[i, :, y : y + 16, c : c + 16])
        corners.add((y, c))
    assert len(corners) > 1  # each image its own window
    assert _random_crop(x, 0, 4, torch.Generator()) is x and _random_crop(x, 32, 4, torch.Generator()) is x


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lab.presets.tiny.vae.crop=15", "multiple of the VAE's factor 2"),
        ("lab.presets.tiny.vae.crop=64", "exceeds the resolution"),
        ("lab.presets.tiny.resolution=33", "multiple of the VAE's factor"),
        ("lab.presets.tiny.vae.norm_num_groups=24", "not multiples of norm_num_groups"),
        ("lab.presets.tiny.vae.full_size_steps=5", "exceeds steps"),
    ],
)
def test_preset_sizes_that_cannot_work_are_config_errors(override: str, message: str) -> None:
    from copyguard.common.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        _micro([override])


def test_tiny_model_loads_and_samples(lab_tiny_model: Path) -> None:
    from diffusers import StableDiffusionPipeline

    index = json.loads((lab_tiny_model / "model_index.json").read_text())
    assert index["requires_safety_checker"] is False
    pipe = StableDiffusionPipeline.from_pretrained(str(lab_tiny_model))
    assert pipe.safety_checker is None
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    out = pipe(
        "a photo of a cat",
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    assert out.images.shape == (1, size, size, 3) and size == 32
    assert np.isfinite(out.images).all()


def test_tiny_model_memorizes_its_duplicates(lab_tiny_model: Path) -> None:
    mem = json.loads((lab_tiny_model / "memorization.json").read_text())
    unique = mem["by_copies"]["unique"]["sscd_own"]["mean"]
    most = mem["dup_ge25"]["sscd_own"]["mean"]  # the 25-copy pair of the tiny sample data
    assert most > unique + 0.12, (most, unique)
    assert mem["all_dup"]["sscd_own"]["mean"] > unique
    assert mem["magnitude"]["auc"] > 0.9
    card = (lab_tiny_model / "README.md").read_text()
    assert "Memorization" in card and "| unique |" in card
    assert "copies: **" in card and "memorization_by_copies.png" in card
    assert (lab_tiny_model / "memorization.png").is_file()
    assert (lab_tiny_model / "memorization_by_copies.png").is_file()
