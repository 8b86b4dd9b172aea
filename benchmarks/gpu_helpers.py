"""Helpers of ``benchmarks/bench_gpu.py``: deadlines, synchronized timing, the SD 1.5 test pipeline, a tiny index."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
UNIQUE = "a photo of a small red house by the river"
REFS = [
    f"a photo of a {w} {n}" for w in ("red", "blue", "old", "small") for n in ("cat", "dog", "tree", "car")
]
# --smoke: SD 1.5's block layout at toy widths (every other value is SD 1.5's).
SMOKE_UNET = {"block_out_channels": (32, 32, 64, 64), "layers_per_block": 1}
SMOKE_VAE = {"block_out_channels": (32, 32, 64, 64), "layers_per_block": 1}


# ------------------------------------------------------------------------------------------ helpers
class Deadline:
    """A section's own time budget (seconds from now)."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def expired(self, margin: float = 0.0) -> bool:
        return self.left() <= margin


def _log(msg: str) -> None:
    print(f"[bench_gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _err(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def _sync(device: Any) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _times(fn: Callable[[], Any], device: Any, repeats: int, dl: Deadline) -> list[float]:
    """Seconds of up to ``repeats`` synchronized calls (at least one), stopping early at the deadline."""
    out: list[float] = []
    for _ in range(max(1, repeats)):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
        if dl.expired(margin=2 * out[-1]):
            break
    return out


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


@contextlib.contextmanager
def _synced_timing(module: Any, device: Any) -> Iterator[None]:
    """Replace ``module._timed`` (bench_mitigation's timer) by one that synchronizes CUDA around the call:
    the CFG UNet call it times returns an unsynchronized tensor."""
    original = module._timed

    def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        return time.perf_counter() - t0, out

    module._timed = timed
    try:
        yield
    finally:
        module._timed = original


@contextlib.contextmanager
def _smoke_configs(smoke: bool) -> Iterator[None]:
    """In ``--smoke``, build_sd15_arch builds SD 1.5's layout at toy widths (its config dicts patched)."""
    from benchmarks import bench_mitigation as bm

    if not smoke:
        yield
        return
    saved = bm.SD15_UNET, bm.SD15_VAE
    bm.SD15_UNET, bm.SD15_VAE = {**bm.SD15_UNET, **SMOKE_UNET}, {**bm.SD15_VAE, **SMOKE_VAE}
    try:
        yield
    finally:
        bm.SD15_UNET, bm.SD15_VAE = saved


def _tokenizer_dir() -> str:
    """SD v1's CLIP tokenizer (rebuilt by the lab from open-clip-torch's BPE file) in a temporary folder."""
    # _write_bpe_files is private to the lab; imported as save_pipeline uses it (vocab.json + merges.txt).
    from copyguard.pipelines.lab.architecture import _write_bpe_files, build_clip_tokenizer

    folder = Path(tempfile.mkdtemp(prefix="bench_gpu_tok_"))
    build_clip_tokenizer().save_pretrained(str(folder))
    _write_bpe_files(folder)
    return str(folder)


def _sd15_pipe(p: dict[str, Any]) -> Any:
    """SD 1.5's architecture with random weights on ``p["device"]`` (its weights created there directly on
    CUDA: a CPU init of the 860 M-parameter UNet takes seconds; the scheduler is rebuilt on the CPU)."""
    import torch

    from benchmarks.bench_mitigation import build_sd15_arch

    device, tok = p["device"], _tokenizer_dir()
    with _smoke_configs(p["smoke"]):
        if device.startswith("cuda"):
            try:
                with torch.device(device):
                    pipe = build_sd15_arch(tok, device)
                from diffusers import DDIMScheduler

                pipe.scheduler = DDIMScheduler.from_config(dict(pipe.scheduler.config))
                return pipe
            except Exception as exc:  # fall back to the plain CPU init
                _log(f"direct CUDA init failed ({_err(exc)}): building on the CPU")
        return build_sd15_arch(tok, device)


def _params(module: Any) -> int:
    return sum(x.numel() for x in module.parameters())


def _tiny_index(rows: int, input_size: int = 320, seed: int = 0) -> Any:
    """A random exact index of ``rows`` unit 512-d vectors labelled as sscd-onnx descriptors at
    ``input_size`` px (AMG loads its torch SSCD at that size), every row with a duplicated caption (so G_dup
    has a y_N wherever it fires)."""
    import numpy as np

    from copyguard.curation.index import TrainingIndex

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((rows, 512)).astype(np.float32)
    entries = [
        {"key": f"k{i:06d}", "caption": f"training caption {i}", "dup_caption": "a photo of a cat",
         "dup_caption_count": 25, "image_group_size": 25}
        for i in range(rows)
    ]  # fmt: skip
    return TrainingIndex.build(vectors, entries, {"name": "sscd-onnx", "dim": 512, "input_size": input_size})


def _no_gpu_faiss() -> str:
    """Why FAISS sees no GPU here, in one line."""
    import ctypes

    import torch

    libs = []
    for lib in ("libcudart.so.12", "libcublas.so.12"):
        try:
            ctypes.CDLL(lib)
            libs.append(f"{lib} found")
        except OSError:
            libs.append(f"{lib} missing")
    return (
        "the faiss that loads is the CPU build (faiss-cpu); the GPU wheels (faiss-gpu-cu12 48 MB, faiss-gpu "
        f"135 MB, faiss-gpu-cuvs) link the CUDA 12 runtime ({', '.join(libs)}; nvidia-cublas-cu12 is ~400 MB, "
        f"too big to carry) while torch here is built for CUDA {torch.version.cuda}"
    )
