"""A small ONNX-graph interpreter in torch: run a (QDQ-quantized or fp16) ONNX model differentiably.

AMG's G_sim (Chen et al., CVPR 2024, eq. 17) needs gradients through the SSCD embedder, and the packaged SSCD
models (Pizzi et al., CVPR 2022) are ONNX files, which onnxruntime cannot differentiate. :func:`convert_onnx`
maps the graph onto torch functional ops:

- Every node whose inputs are all constant (initializers, ``Constant`` nodes, and what depends only on
  them: weight ``DequantizeLinear``, fp16 -> fp32 ``Cast``) is evaluated once at conversion time; the
  folded float32 tensors become buffers of the module (no parameters, so nothing but the input gets a
  gradient).
- The remaining nodes run in order in :meth:`OnnxGraphModule.forward`. Quantized activations are kept
  as float tensors holding integer values: ``QuantizeLinear`` -> ``DequantizeLinear`` pairs become fake
  quantization. With ``qdq="fake"`` (default) the rounding is exact in the forward pass and a straight-through
  estimator in the backward pass; ``qdq="clamp"`` skips the rounding (saturation only). Saturation must be
  kept either way: a QDQ-quantized graph drops its ``Relu`` nodes and relies on a zero point of 0 to clip
  negatives.

Only the ops these graphs use are supported (see ``_OPS``); anything else raises ``UsageError`` at
conversion time, never a wrong result at run time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from copyguard.common.errors import UsageError

__all__ = ["OnnxGraph", "OnnxGraphModule", "convert_onnx", "supported_ops"]

logger = logging.getLogger(__name__)

QDQ_MODES = ("fake", "clamp")
# ONNX TensorProto element types -> torch dtypes (those a graph of ours may cast to).
_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 6: torch.int32, 7: torch.int64, 10: torch.float16}
_QRANGE = {torch.uint8: (0.0, 255.0), torch.int8: (-128.0, 127.0), torch.int32: (-(2.0**31), 2.0**31 - 1)}

Op = Callable[[list[Any], dict[str, Any], str], Any]


@dataclass(frozen=True)
class _Node:
    op: str
    inputs: tuple[str, ...]  # "" marks an omitted optional input
    outputs: tuple[str, ...]
    attrs: dict[str, Any]


@dataclass(frozen=True)
class OnnxGraph:
    """A converted graph: folded constants (CPU tensors) and the nodes left to run, in order."""

    input_name: str
    output_name: str
    constants: dict[str, torch.Tensor]
    nodes: tuple[_Node, ...]
    source: str


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


class _FakeQuant(torch.autograd.Function):
    """A fused per-tensor ``QuantizeLinear -> DequantizeLinear``: ``clamp(round(x / s), lo, hi) * s``.

    One allocation in the forward pass (the chain of separate ops costs several, which dominated the
    run time); the backward pass is the straight-through estimator, zero where the value saturated.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, scale: float, lo: float, hi: float, rounding: bool
    ) -> torch.Tensor:
        q = x / scale
        if rounding:
            q.round_()
        mask = (q >= lo) & (q <= hi) if ctx.needs_input_grad[0] else None
        ctx.save_for_backward(mask)
        return q.clamp_(lo, hi).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:
        (mask,) = ctx.saved_tensors
        return (grad * mask if mask is not None else None), None, None, None, None


def _fake_quant(args: list[Any], attrs: dict[str, Any], qdq: str) -> torch.Tensor:
    return _FakeQuant.apply(args[0], attrs["scale"], attrs["lo"], attrs["hi"], qdq == "fake")


def _bcast(param: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    """A per-axis (1-d) quantization parameter reshaped to broadcast along ``axis`` of an ``ndim`` tensor."""
    if param.ndim == 0:
        return param
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return param.reshape(shape)


def _quantize(args: list[Any], attrs: dict[str, Any], qdq: str) -> torch.Tensor:
    x, scale = args[0], args[1]
    zero = args[2] if len(args) > 2 and args[2] is not None else torch.zeros((), dtype=torch.uint8)
    lo, hi = _QRANGE.get(zero.dtype, (None, None))
    if lo is None:
        raise UsageError(f"QuantizeLinear to {zero.dtype} is not supported")
    axis = int(attrs.get("axis", 1))
    scale, zp = _bcast(scale.float(), x.ndim, axis), _bcast(zero.float(), x.ndim, axis)
    q = x / scale
    q = _round_ste(q) if qdq == "fake" else q
    return torch.clamp(q + zp, lo, hi)


def _dequantize(args: list[Any], attrs: dict[str, Any], _qdq: str) -> torch.Tensor:
    x, scale = args[0], args[1]
    zero = args[2] if len(args) > 2 and args[2] is not None else None
    axis = int(attrs.get("axis", 1))
    out = x.float()
    if zero is not None:
        out = out - _bcast(zero.float(), x.ndim, axis)
    return out * _bcast(scale.float(), x.ndim, axis)


def _sym_padding(pads: Sequence[int], x: torch.Tensor, value: float) -> tuple[torch.Tensor, list[int]]:
    """ONNX ``pads`` (begins then ends) -> a torch padding argument, padding explicitly when asymmetric."""
    k = len(pads) // 2
    begins, ends = list(pads[:k]), list(pads[k:])
    if begins == ends:
        return x, begins
    torch_pads: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends), strict=True):
        torch_pads += [b, e]
    return F.pad(x, torch_pads, value=value), [0] * k


def _conv(args: list[Any], attrs: dict[str, Any], _qdq: str) -> torch.Tensor:
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    k = w.ndim - 2
    if k == 2:  # channels-last runs 1.3x (ResNet) to 2x (depthwise) faster on CPU; a no-op when already so
        x = x.contiguous(memory_format=torch.channels_last)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[k]
    x, padding = _sym_padding(attrs.get("pads", [0] * 2 * k), x, 0.0)
    return fn(
        x,
        w,
        bias,
        stride=attrs.get("strides", [1] * k),
        padding=padding,
        dilation=attrs.get("dilations", [1] * k),
        groups=int(attrs.get("group", 1)),
    )


def _maxpool(args: list[Any], attrs: dict[str, Any], _qdq: str) -> torch.Tensor:
    x = args[0]
    kernel = attrs["kernel_shape"]
    k = len(kernel)
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[k]
    x, padding = _sym_padding(attrs.get("pads", [0] * 2 * k), x, float("-inf"))
    return fn(
        x,
        kernel,
        stride=attrs.get("strides", [1] * k),
        padding=padding,
        dilation=attrs.get("dilations", [1] * k),
        ceil_mode=bool(attrs.get("ceil_mode", 0)),
    )


def _gemm(args: list[Any], attrs: dict[str, Any], _qdq: str) -> torch.Tensor:
    a, b = args[0], args[1]
    a = a.transpose(0, 1) if attrs.get("transA", 0) else a
    b = b.transpose(0, 1) if attrs.get("transB", 0) else b
    out = float(attrs.get("alpha", 1.0)) * (a @ b)
    if len(args) > 2 and args[2] is not None:
        out = out + float(attrs.get("beta", 1.0)) * args[2]
    return out


def _axes(args: list[Any], attrs: dict[str, Any]) -> list[int] | None:
    if len(args) > 1 and args[1] is not None:  # opset 18: axes as an input
        return [int(a) for a in args[1].tolist()]
    axes = attrs.get("axes")
    return None if axes is None else [int(a) for a in axes]


def _reduce(kind: str) -> Op:
    def run(args: list[Any], attrs: dict[str, Any], _qdq: str) -> torch.Tensor:
        x = args[0]
        axes = _axes(args, attrs)
        dims = axes if axes else list(range(x.ndim))
        keep = bool(attrs.get("keepdims", 1))
        if kind == "mean":
            return x.mean(dim=dims, keepdim=keep)
        return torch.linalg.vector_norm(x, ord=2, dim=dims, keepdim=keep)

    return run


def _reshape(args: list[Any], attrs: dict[str, Any], _qdq: str) -> torch.Tensor:
    x, shape = args[0], [int(s) for s in args[1].tolist()]
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _clip(args: list[Any], attrs: dict[str, Any], _qdq: str) -> torch.Tensor:
    lo = args[1] if len(args) > 1 else attrs.get("min")
    hi = args[2] if len(args) > 2 else attrs.get("max")
    return torch.clamp(args[0], min=lo, max=hi)


def _cast(args: list[Any], attrs: dict[str, Any], _qdq: str) -> torch.Tensor:
    to = int(attrs["to"])
    if to not in _DTYPES:
        raise UsageError(f"Cast to ONNX type {to} is not supported")
    return args[0].to(_DTYPES[to])


def _constant(args: list[Any], attrs: dict[str, Any], _qdq: str) -> torch.Tensor:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in attrs:
            return torch.from_numpy(np.array(attrs[key]))
    raise UsageError(f"Constant node with attributes {sorted(attrs)} is not supported")


_OPS: dict[str, Op] = {
    "Add": lambda a, _at, _q: a[0] + a[1],
    "Sub": lambda a, _at, _q: a[0] - a[1],
    "Mul": lambda a, _at, _q: a[0] * a[1],
    "Div": lambda a, _at, _q: a[0] / a[1],
    "Pow": lambda a, _at, _q: torch.pow(a[0], a[1]),
    "Relu": lambda a, _at, _q: F.relu(a[0]),
    "Sigmoid": lambda a, _at, _q: torch.sigmoid(a[0]),
    "Transpose": lambda a, at, _q: a[0].permute(*at.get("perm", reversed(range(a[0].ndim)))),
    "Shape": lambda a, at, _q: torch.tensor(
        a[0].shape[at.get("start", 0) : at.get("end")], dtype=torch.int64
    ),
    "FakeQuant": _fake_quant,  # ours: a fused QDQ pair (see _fuse_qdq)
    "Expand": lambda a, _at, _q: a[0].expand(torch.broadcast_shapes(a[0].shape, tuple(a[1].tolist()))),
    "Identity": lambda a, _at, _q: a[0],
    "Cast": _cast,
    "Clip": _clip,
    "Constant": _constant,
    "Conv": _conv,
    "DequantizeLinear": _dequantize,
    "Gemm": _gemm,
    "MaxPool": _maxpool,
    "QuantizeLinear": _quantize,
    "ReduceL2": _reduce("l2"),
    "ReduceMean": _reduce("mean"),
    "Reshape": _reshape,
}


_ONNX_OPS = sorted(set(_OPS) - {"FakeQuant"})


def supported_ops() -> list[str]:
    """The ONNX op types :func:`convert_onnx` can map (default domain)."""
    return list(_ONNX_OPS)


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper, numpy_helper

    attrs = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if attr.type == attr.TENSOR:
            value = numpy_helper.to_array(value)
        attrs[attr.name] = value
    return attrs


def _tensor(array: np.ndarray) -> torch.Tensor:
    if array.dtype == np.uint16 or array.dtype.kind not in "fiub":  # bfloat16 and friends
        raise UsageError(f"initializer dtype {array.dtype} is not supported")
    return torch.from_numpy(np.array(array, copy=True))


def _scalar(constants: dict[str, torch.Tensor], name: str) -> torch.Tensor | None:
    tensor = constants.get(name)
    return tensor if tensor is not None and tensor.numel() == 1 else None


def _fuse_qdq(nodes: list[_Node], constants: dict[str, torch.Tensor]) -> list[_Node]:
    """Replace each per-tensor ``DequantizeLinear(QuantizeLinear(x))`` with one ``FakeQuant`` node."""
    producers = {out: node for node in nodes for out in node.outputs}
    fused = []
    for node in nodes:
        quant = producers.get(node.inputs[0]) if node.op == "DequantizeLinear" else None
        if quant is None or quant.op != "QuantizeLinear" or len(quant.inputs) < 3 or len(node.inputs) < 3:
            fused.append(node)
            continue
        q_scale, q_zero = _scalar(constants, quant.inputs[1]), _scalar(constants, quant.inputs[2])
        d_scale, d_zero = _scalar(constants, node.inputs[1]), _scalar(constants, node.inputs[2])
        same = None not in (q_scale, q_zero, d_scale, d_zero) and q_zero.dtype == d_zero.dtype in _QRANGE
        if not same or float(q_scale) != float(d_scale) or int(q_zero) != int(d_zero):
            fused.append(node)
            continue
        qmin, qmax = _QRANGE[q_zero.dtype]
        attrs = {"scale": float(q_scale), "lo": qmin - int(q_zero), "hi": qmax - int(q_zero)}
        fused.append(_Node("FakeQuant", (quant.inputs[0],), node.outputs, attrs))
    return fused


def _prune(nodes: list[_Node], output: str) -> list[_Node]:
    """Drop the nodes the output does not depend on (e.g. a ``QuantizeLinear`` whose pair was fused)."""
    needed, kept = {output}, []
    for node in reversed(nodes):
        if any(out in needed for out in node.outputs):
            kept.append(node)
            needed.update(name for name in node.inputs if name)
    return kept[::-1]


def _check_node(node: _Node, path: Path) -> None:
    auto_pad = node.attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad not in ("NOTSET", "VALID"):  # VALID means no padding, which ``pads`` then says too
        raise UsageError(
            f"{path}: {node.op} with auto_pad={auto_pad} is not supported by the torch converter"
        )


def convert_onnx(path: str | Path) -> OnnxGraph:
    """Parse ``path`` (one input, one output) and fold its constant part; raises ``UsageError`` if unsupported."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise UsageError(
            "converting an ONNX model to torch needs the `onnx` package: pip install onnx"
        ) from None
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise UsageError(f"{path} is not a readable ONNX model: {str(exc).strip()[:200]}") from None
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise UsageError(
            f"{path}: expected one input and one output, got {len(inputs)} and {len(graph.output)}"
        )
    unsupported = sorted(
        {n.op_type for n in graph.node if n.domain not in ("", "ai.onnx") or n.op_type not in _ONNX_OPS}
    )
    if unsupported:
        raise UsageError(f"{path}: ONNX ops not supported by the torch converter: {', '.join(unsupported)}")

    constants = {init.name: _tensor(numpy_helper.to_array(init)) for init in graph.initializer}
    nodes: list[_Node] = []
    for proto in graph.node:
        node = _Node(proto.op_type, tuple(proto.input), tuple(proto.output), _attributes(proto))
        _check_node(node, path)
        if all(name == "" or name in constants for name in node.inputs):
            args = [constants[name] if name else None for name in node.inputs]
            with torch.no_grad():
                out = _OPS[node.op](args, node.attrs, "fake")
            constants[node.outputs[0]] = out.float() if out.dtype == torch.float16 else out
        else:
            nodes.append(node)
    nodes = _prune(_fuse_qdq(nodes, constants), graph.output[0].name)
    used = {name for node in nodes for name in node.inputs}
    extra_outputs = {name for node in nodes for name in node.outputs[1:] if name} & (
        used | {graph.output[0].name}
    )
    if extra_outputs:  # only the first output of a node is computed
        raise UsageError(f"{path}: second node outputs are not supported: {', '.join(sorted(extra_outputs))}")
    conv_weights = {node.inputs[1] for node in nodes if node.op == "Conv"}
    constants = {
        name: tensor.contiguous(memory_format=torch.channels_last)
        if name in conv_weights and tensor.ndim == 4
        else tensor.contiguous()
        for name, tensor in constants.items()
        if name in used
    }
    logger.debug("converted %s: %d runtime nodes, %d constants", path.name, len(nodes), len(constants))
    return OnnxGraph(inputs[0], graph.output[0].name, constants, tuple(nodes), str(path))


class OnnxGraphModule(torch.nn.Module):
    """Runs an :class:`OnnxGraph` on torch tensors; differentiable w.r.t. its input (see the module docstring).

    The graph input is fed as given (a float tensor where the ONNX model takes uint8 is fine when the
    graph casts it to float first, as SSCD's graphs do).
    """

    def __init__(self, graph: OnnxGraph, qdq: str = "fake") -> None:
        super().__init__()
        if qdq not in QDQ_MODES:
            raise UsageError(f"qdq must be one of {', '.join(QDQ_MODES)}, got {qdq!r}")
        self.qdq = qdq
        self.graph = graph
        self._buffer_names: dict[str, str] = {}
        for i, (name, tensor) in enumerate(graph.constants.items()):
            self.register_buffer(f"c{i}", tensor, persistent=False)
            self._buffer_names[name] = f"c{i}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, Any] = {name: getattr(self, attr) for name, attr in self._buffer_names.items()}
        env[self.graph.input_name] = x
        for node in self.graph.nodes:
            args = [env[name] if name else None for name in node.inputs]
            env[node.outputs[0]] = _OPS[node.op](args, node.attrs, self.qdq)
        return env[self.graph.output_name]

    def extra_repr(self) -> str:
        return f"source={Path(self.graph.source).name!r}, nodes={len(self.graph.nodes)}, qdq={self.qdq!r}"
