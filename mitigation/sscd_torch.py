"""A differentiable SSCD embedder in torch, for AMG's G_sim (Chen et al., CVPR 2024, eq. 17; SSCD: Pizzi et al., CVPR 2022).

``sigma_t = E(D(x0_hat))^T E(n_0)`` must be differentiated through the embedder E, so E has to be a torch
module. :func:`load_torch_sscd` builds one of three kinds (the same kinds as
:func:`copyguard.curation.embedders.load_embedder`):

- ``sscd-onnx`` / ``sscd-distilled-onnx``: the packaged ONNX graph (found by
  :func:`~copyguard.curation.embedders.sscd_onnx_path`, or ``path``) converted to torch by
  :mod:`copyguard.mitigation.onnx_to_torch`. ``sscd.onnx`` is QDQ-quantized (int8 per-channel weights,
  uint8 activations); its weights are dequantized to float32 and its activation quantization is simulated
  (``qdq="fake"``: exact rounding forward, straight-through gradient). Descriptors match onnxruntime's at
  cosine >= 0.99 (tests/test_sscd_torch.py). The converted graph is cached in memory per file, never
  written anywhere. The module keeps the ONNX kind as its ``name``, so a training index built with the
  ONNX embedder accepts it.
- ``torchscript``: Meta's ``sscd_disc_mixup.torchscript.pt`` (or any TorchScript module mapping ImageNet-
  normalized float NCHW to ``[N, D]``) from a local path.

:meth:`TorchSSCD.forward` takes float RGB ``[B, 3, H, W]`` in [0, 1] of any size, resizes differentiably to
``input_size`` (bicubic, antialiased, like the PIL resize of the curation embedders), applies the model's
own normalization and returns L2-normalized ``[B, D]`` rows. :meth:`TorchSSCD.embed` is the curation
embedder interface (uint8 HWC arrays -> numpy), from :class:`~copyguard.curation.embedders.BaseEmbedder`.
The model has no trainable parameters: gradients reach only the input.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from copyguard.common.errors import UsageError
from copyguard.curation.embedders import (
    DEFAULT_INPUT_SIZE,
    EMBEDDER_KINDS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BaseEmbedder,
    sscd_onnx_path,
)
from copyguard.mitigation.onnx_to_torch import QDQ_MODES, OnnxGraph, OnnxGraphModule, convert_onnx

__all__ = ["RESIZE_MODES", "TORCH_SSCD_KINDS", "TorchSSCD", "load_torch_sscd"]

logger = logging.getLogger(__name__)

TORCH_SSCD_KINDS = EMBEDDER_KINDS
RESIZE_MODES = ("bicubic", "bilinear")
_PROBE_SIZE = 64  # the load-time probe (output width, differentiability) runs at this size


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


@functools.lru_cache(maxsize=4)
def _cached_graph(path: str, mtime_ns: int, size: int) -> OnnxGraph:
    """The converted graph of ``path``; the stat fields make an edited file convert again."""
    del mtime_ns, size
    try:
        return convert_onnx(path)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"could not convert {path} to torch: {_first_line(exc)}") from None


class TorchSSCD(BaseEmbedder, torch.nn.Module):
    """A differentiable SSCD descriptor (see the module docstring); build it with :func:`load_torch_sscd`.

    ``input_format``: ``"onnx"`` feeds the core float NHWC pixels in [0, 255] (the packaged graphs cast
    their uint8 input to float and normalize inside), ``"imagenet"`` feeds ImageNet-normalized float NCHW
    (Meta's TorchScript files).
    """

    def __init__(
        self,
        core: torch.nn.Module,
        *,
        name: str,
        path: str | Path,
        input_format: str,
        input_size: int = DEFAULT_INPUT_SIZE,
        resize: str = "bicubic",
        antialias: bool = True,
        runtime: str = "torch",
    ) -> None:
        torch.nn.Module.__init__(self)
        if input_format not in ("onnx", "imagenet"):
            raise UsageError(f"input_format must be 'onnx' or 'imagenet', got {input_format!r}")
        if resize not in RESIZE_MODES:
            raise UsageError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        if int(input_size) < 32:
            raise UsageError(f"input_size must be at least 32, got {input_size}")
        self.core = core
        self.name = name
        self.path = Path(path)
        self.input_format = input_format
        self.input_size = int(input_size)
        self.resize_mode = resize
        self.antialias = bool(antialias)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        size = self.input_size
        self.preprocessing = {
            "resize": f"bicubic to {size}x{size}, aspect not kept (embed: PIL antialiased; forward: "
            f"torch {resize}{', antialiased' if antialias else ''}, differentiable)",
            "input": "float32 RGB in [0, 1]",
            "normalization": "inside the ONNX graph (ImageNet mean/std)"
            if input_format == "onnx"
            else {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "output": "L2-normalized",
            "runtime": runtime,
        }
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """Float ``[B, 3, H, W]`` in [0, 1] -> float32 ``[B, 3, S, S]`` on the model's device, clamped to [0, 1]."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise UsageError(f"TorchSSCD takes float RGB images [B, 3, H, W] in [0, 1], got {shape}")
        x = images.to(device=self.device, dtype=torch.float32)
        size = (self.input_size, self.input_size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(
                x, size=size, mode=self.resize_mode, align_corners=False, antialias=self.antialias
            )
        return x.clamp(0.0, 1.0)

    def descriptors(self, pixels: torch.Tensor) -> torch.Tensor:
        """Float ``[B, 3, S, S]`` in [0, 1], already at the input size -> unit ``[B, D]`` (no resize)."""
        if self.input_format == "onnx":
            out = self.core((pixels * 255.0).permute(0, 2, 3, 1))
        else:
            out = self.core((pixels - self.mean) / self.std)
        return self._unit_rows(out)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Float RGB ``[B, 3, H, W]`` in [0, 1] (any size) -> L2-normalized ``[B, D]``; differentiable."""
        return self.descriptors(self.resize(images))

    def _unit_rows(self, out: Any) -> torch.Tensor:
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UsageError(f"{self.path}: expected an [N, D] output, got {shape}")
        return F.normalize(out.float(), dim=1, eps=1e-12)

    # BaseEmbedder hooks: embed() resizes with PIL exactly like the ONNX embedder, then runs _forward.
    def _build(self) -> Any:
        return self.core

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        with torch.no_grad():
            if self.input_format == "onnx":
                out = self._unit_rows(self.core(x.float()))  # the graph's own Cast of uint8 pixels
            else:
                out = self.descriptors(x.permute(0, 3, 1, 2).float() / 255.0)
        return out.cpu().numpy()

    def _probe_dim(self) -> int:
        return self._probe()

    def _probe(self) -> int:
        """Run a small forward and backward pass: the output width, and proof that gradients reach the input."""
        size = min(_PROBE_SIZE, self.input_size)  # the models are fully convolutional up to the pooling
        x = torch.full((1, 3, size, size), 0.5, device=self.device, requires_grad=True)
        try:
            with torch.enable_grad():
                out = self.descriptors(x)
                needs = out.requires_grad
                grad = torch.autograd.grad(out[0, 0], x, allow_unused=True)[0] if needs else None
        except UsageError:
            raise
        except Exception as exc:
            raise UsageError(
                f"{self.path}: the torch SSCD model failed on a probe image: {_first_line(exc)}"
            ) from None
        if grad is None or not bool(torch.isfinite(grad).all()):
            raise UsageError(f"{self.path}: the torch SSCD model is not differentiable w.r.t. its input")
        return int(out.shape[-1])

    def __repr__(self) -> str:
        return f"TorchSSCD(name={self.name!r}, input_size={self.input_size}, path='{self.path}')"


def _load_core(kind: str, path: Path, qdq: str) -> tuple[torch.nn.Module, str, str]:
    if kind == "torchscript":
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise UsageError(f"{path} is not a loadable TorchScript file: {_first_line(exc)}") from None
        for param in module.parameters():
            param.requires_grad_(False)
        return module.eval(), "imagenet", "torch.jit"
    if qdq not in QDQ_MODES:
        raise UsageError(f"qdq must be one of {', '.join(QDQ_MODES)}, got {qdq!r}")
    stat = path.stat()
    graph = _cached_graph(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    return OnnxGraphModule(graph, qdq=qdq), "onnx", f"torch (converted from ONNX, qdq={qdq})"


def load_torch_sscd(
    kind: str = "sscd-onnx",
    path: str | Path | None = None,
    input_size: int = DEFAULT_INPUT_SIZE,
    *,
    qdq: str = "fake",
    resize: str = "bicubic",
    antialias: bool = True,
    device: str | torch.device = "cpu",
) -> TorchSSCD:
    """Build the differentiable SSCD of ``kind`` (see the module docstring); raises ``UsageError`` if unusable.

    ``path`` overrides the packaged ONNX file for the ONNX kinds and is required for ``torchscript``.
    ``qdq`` picks how the int8 graph's activation quantization is simulated (``fake`` or ``clamp``),
    ``resize``/``antialias`` the differentiable resize of :meth:`TorchSSCD.forward`. A small probe pass
    checks the output width and that gradients reach the input, so a bad model fails here, not in AMG.
    """
    if kind not in TORCH_SSCD_KINDS:
        raise UsageError(f"unknown SSCD kind {kind!r}; choose one of {', '.join(TORCH_SSCD_KINDS)}")
    if kind == "torchscript":
        if path is None:
            raise UsageError("the torchscript SSCD needs a path to an SSCD .torchscript.pt file")
        model_path = Path(path)
    else:
        model_path = sscd_onnx_path(kind) if path is None else Path(path)
    if not model_path.is_file():
        raise UsageError(f"SSCD model not found: {model_path}")
    core, input_format, runtime = _load_core(kind, model_path, qdq)
    name = f"torchscript:{model_path.name.split('.')[0]}" if kind == "torchscript" else kind
    model = TorchSSCD(
        core,
        name=name,
        path=model_path,
        input_format=input_format,
        input_size=input_size,
        resize=resize,
        antialias=antialias,
        runtime=runtime,
    )
    try:
        model = model.to(device)
    except Exception as exc:
        raise UsageError(
            f"cannot move the torch SSCD model to device {device!r}: {_first_line(exc)}"
        ) from None
    _ = model.dim  # the probe
    logger.info("torch SSCD %s ready (%d-d, input %d px)", name, model.dim, model.input_size)
    return model
