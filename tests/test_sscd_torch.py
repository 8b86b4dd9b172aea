"""The differentiable torch SSCD (Chen et al., CVPR 2024; Pizzi et al., CVPR 2022): ONNX conversion matches onnxruntime, gradients work."""

from __future__ import annotations

import io
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from skimage import data

from copyguard.common.errors import UsageError
from copyguard.curation.embedders import embedder_info, load_embedder
from copyguard.mitigation.onnx_to_torch import OnnxGraphModule, convert_onnx
from copyguard.mitigation.sscd_torch import TorchSSCD, load_torch_sscd

ONNX_KINDS = ("sscd-onnx", "sscd-distilled-onnx")
# Minimum cosine between torch and onnxruntime descriptors of the same image (measured: >= 0.998 for the
# int8 sscd.onnx with fake quantization, 1.0 for the fp16 student).
MIN_COSINE = {"sscd-onnx": 0.99, "sscd-distilled-onnx": 0.999}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Shared, oversubscribed CI cores: a 2-thread pool stalls on every small op.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _jpeg(image: np.ndarray, quality: int = 60) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def _photos() -> list[np.ndarray]:
    astronaut, coffee, chelsea = data.astronaut(), data.coffee(), data.chelsea()
    return [astronaut, coffee, chelsea, astronaut[60:400, 100:480]]  # the last one a crop


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255.0


@pytest.fixture(scope="module", params=ONNX_KINDS)
def pair(request: pytest.FixtureRequest):
    """(kind, torch model, onnxruntime embedder) at 320 px."""
    return request.param, load_torch_sscd(request.param), load_embedder(request.param, threads=1)


@pytest.mark.parametrize("size", [64, 320])
def test_torch_matches_onnxruntime(pair, size: int) -> None:
    kind, model, ort_embedder = pair
    model.input_size = ort_embedder.input_size = size
    try:
        ours, ref = model.embed(_photos()), ort_embedder.embed(_photos())
    finally:
        model.input_size = ort_embedder.input_size = 320
    cosines = (ours * ref).sum(axis=1)
    assert cosines.min() >= MIN_COSINE[kind], cosines
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # Similarity judgments agree: the pairwise cosine matrices are close.
    np.testing.assert_allclose(ours @ ours.T, ref @ ref.T, atol=0.03)


def test_forward_agrees_with_onnx_and_judges_copies(pair) -> None:
    kind, model, ort_embedder = pair
    astronaut, coffee = data.astronaut(), data.coffee()
    images = [astronaut, _jpeg(astronaut), coffee]
    with torch.no_grad():  # forward(): torch's differentiable resize from the full-size images
        ours = torch.cat([model(_tensor(image)) for image in images]).numpy()
    ref = ort_embedder.embed(images)
    assert ours.shape == (3, 512)
    assert (ours * ref).sum(axis=1).min() >= MIN_COSINE[kind] - 0.02
    assert ours[0] @ ours[1] > 0.75 and ref[0] @ ref[1] > 0.75  # a JPEG re-encode is a copy
    assert ours[0] @ ours[2] < 0.3 and ref[0] @ ref[2] < 0.3  # different photos are not
    assert abs(ours[0] @ ours[1] - ref[0] @ ref[1]) < 0.02


@pytest.mark.parametrize("kind", ONNX_KINDS)
def test_gradient_lowers_similarity(kind: str) -> None:
    model = load_torch_sscd(kind, input_size=128)
    assert list(model.parameters()) == []  # gradients reach the input only
    astronaut = data.astronaut()
    target = model(_tensor(astronaut)).detach()
    x = _tensor(_jpeg(astronaut)).requires_grad_(True)
    sigma = (model(x) * target).sum()
    (grad,) = torch.autograd.grad(sigma, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():
        stepped = (x - 2.0 / 255.0 * grad.sign()).clamp(0.0, 1.0)
        after = (model(stepped) * target).sum()
    assert after < sigma.detach() - 0.02, (float(sigma), float(after))


def test_metadata_matches_the_onnx_embedder_and_conversion_is_cached() -> None:
    model = load_torch_sscd("sscd-distilled-onnx", input_size=224)
    assert isinstance(model, TorchSSCD) and isinstance(model, torch.nn.Module)
    info, ort_info = embedder_info(model), embedder_info(load_embedder("sscd-distilled-onnx", input_size=224))
    assert (info["name"], info["dim"], info["input_size"]) == ("sscd-distilled-onnx", 512, 224)
    assert info["weights"] == ort_info["weights"]
    assert load_torch_sscd("sscd-distilled-onnx").core.graph is model.core.graph


def test_forward_rejects_bad_input() -> None:
    model = load_torch_sscd("sscd-distilled-onnx", input_size=64)
    with pytest.raises(UsageError, match=r"\[B, 3, H, W\]"):
        model(torch.rand(3, 64, 64))
    assert model(torch.rand(2, 3, 40, 90, dtype=torch.float64)).shape == (2, 512)


def _save_script(module: torch.nn.Module, path) -> str:
    torch.jit.script(module).save(str(path))
    return str(path)


class _TinyEmbedder(torch.nn.Module):
    def __init__(self, detach: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.fc = torch.nn.Linear(8, 16)
        self.detach = detach

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))
        return out.detach() if self.detach else out


def test_torchscript_kind(tmp_path) -> None:
    path = _save_script(_TinyEmbedder(), tmp_path / "tiny.torchscript.pt")
    model = load_torch_sscd("torchscript", path, input_size=48)
    assert (model.name, model.dim, model.input_size) == ("torchscript:tiny", 16, 48)
    assert not any(p.requires_grad for p in model.parameters())
    images = torch.rand(2, 3, 48, 48, requires_grad=True)
    out = model(images)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(
            _TinyEmbedder()((images - mean[:, None, None]) / std[:, None, None])
        )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad(out[:, 0].sum(), images)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    photos = [data.coffee(), data.chelsea()]
    reference = load_embedder("torchscript", path, input_size=48).embed(photos)
    np.testing.assert_allclose(model.embed(photos), reference, atol=1e-5)


def test_torchscript_that_is_not_differentiable_fails_clearly(tmp_path) -> None:
    path = _save_script(_TinyEmbedder(detach=True), tmp_path / "detached.pt")
    with pytest.raises(UsageError, match="not differentiable"):
        load_torch_sscd("torchscript", path)


def test_usage_errors(tmp_path) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a model")
    cases = [
        (dict(kind="clip"), "unknown SSCD kind"),
        (dict(kind="torchscript"), "needs a path"),
        (dict(kind="torchscript", path=tmp_path / "missing.pt"), "not found"),
        (dict(kind="torchscript", path=bogus), "not a loadable TorchScript"),
        (dict(kind="sscd-onnx", path=bogus), "not a readable ONNX model"),
        (dict(kind="sscd-distilled-onnx", qdq="exact"), "qdq must be"),
        (dict(kind="sscd-distilled-onnx", input_size=16), "at least 32"),
        (dict(kind="sscd-distilled-onnx", resize="lanczos"), "resize must be"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UsageError, match=message):
            load_torch_sscd(**kwargs)


# --- the generic converter on a small hand-built QDQ graph -------------------------------------------------


def _qdq_graph(op_after: str = "Relu") -> onnx.ModelProto:
    """x -> QDQ -> Conv(int8 per-channel weights, asymmetric pads) -> QDQ (zero point 0: the implicit Relu)
    -> MaxPool -> Reshape -> Gemm -> ReduceL2 / Div: the op mix of the packaged SSCD graph."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "s_in"),
        numpy_helper.from_array(np.array(128, np.uint8), "z_in"),
        numpy_helper.from_array(rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8), "w_q"),
        numpy_helper.from_array(np.array([0.01, 0.02, 0.015, 0.03], np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_z"),
        numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b"),
        numpy_helper.from_array(np.array(0.05, np.float32), "s_act"),
        numpy_helper.from_array(np.array(0, np.uint8), "z_act"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "flat"),
        numpy_helper.from_array(rng.normal(size=(5, 64)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s_in", "z_in"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s_in", "z_in"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], axis=0),
        helper.make_node("Conv", ["xd", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[0, 0, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "s_act", "z_act"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "s_act", "z_act"], ["cd"]),
        helper.make_node(op_after, ["cd"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1]),
        helper.make_node("Reshape", ["p", "flat"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["g"], transB=1),
        helper.make_node("ReduceL2", ["g"], ["n"], axes=[1], keepdims=1),
        helper.make_node("Div", ["g", "n"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_converter_matches_onnxruntime_reference_semantics(tmp_path) -> None:
    path = tmp_path / "qdq.onnx"
    onnx.save(_qdq_graph(), str(path))
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )  # the reference op semantics
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).uniform(-2.5, 2.5, (3, 3, 8, 8)).astype(np.float32)
    ref = session.run(None, {"x": x})[0]
    graph = convert_onnx(path)
    assert "FakeQuant" in [node.op for node in graph.nodes]
    assert not {"QuantizeLinear", "DequantizeLinear"} & {node.op for node in graph.nodes}
    with torch.no_grad():
        fake = OnnxGraphModule(graph, qdq="fake")(torch.from_numpy(x)).numpy()
        clamp = OnnxGraphModule(graph, qdq="clamp")(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(fake, ref, atol=1e-5)
    assert (clamp * ref).sum(axis=1).min() > 0.95  # no rounding: close, not exact
    grad_in = torch.from_numpy(x).requires_grad_(True)
    OnnxGraphModule(graph)(grad_in)[:, 0].sum().backward()
    assert torch.isfinite(grad_in.grad).all() and grad_in.grad.abs().sum() > 0


def test_converter_rejects_unsupported_ops_and_missing_onnx(tmp_path, monkeypatch) -> None:
    path = tmp_path / "softmax.onnx"
    onnx.save(_qdq_graph("Softmax"), str(path))
    with pytest.raises(UsageError, match="not supported by the torch converter: Softmax"):
        convert_onnx(path)
    model = _qdq_graph()
    conv = next(node for node in model.graph.node if node.op_type == "Conv")
    del conv.attribute[:]
    conv.attribute.extend([helper.make_attribute("auto_pad", "SAME_UPPER")])
    onnx.save(model, str(path))
    with pytest.raises(UsageError, match="auto_pad=SAME_UPPER is not supported"):
        convert_onnx(path)
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the package were not installed
    with pytest.raises(UsageError, match="needs the `onnx` package"):
        convert_onnx(path)
