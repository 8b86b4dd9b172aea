"""A Beam RunInference ``ModelHandler`` around copyguard's pluggable image embedders (Pizzi et al., CVPR 2022).

Elements are ``(key, image_bytes)``; results are ``(key, PredictionResult(example=None, inference=vec))``
with the L2-normalized descriptor. Decoding and resizing happen inside the batch call, so no decoded
pixels travel between steps. The model is loaded once per worker process (and shared across threads).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from copyguard.curation.config import ImagesConfig
from copyguard.curation.embedders import ImageEmbedder, load_embedder

__all__ = ["EmbedderModelHandler"]


class EmbedderModelHandler(ModelHandler[bytes, PredictionResult, ImageEmbedder]):
    """Batches of encoded images -> SSCD (or other) descriptors, one ``PredictionResult`` per image."""

    def __init__(self, cfg: ImagesConfig, max_pixels: int) -> None:
        self.cfg = cfg
        self.max_pixels = max_pixels

    def load_model(self) -> ImageEmbedder:
        return load_embedder(
            self.cfg.embedder,
            path=self.cfg.embedder_path,
            input_size=self.cfg.input_size,
            device=self.cfg.device,
        )

    def run_inference(
        self,
        batch: Sequence[bytes],
        model: ImageEmbedder,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        vectors = model.embed_bytes(list(batch), max_pixels=self.max_pixels)
        return [PredictionResult(None, np.asarray(v, dtype=np.float32)) for v in vectors]

    def batch_elements_kwargs(self) -> dict[str, int]:
        # Fixed-size batches: left to itself, BatchElements starts at 1 and settles at ~4-17 images (its
        # overhead target is met early), and SSCD is ~10% slower per image at those sizes than at 64
        # (benchmarks/bench_curate.py). Only a bundle's last batch is smaller.
        return {"min_batch_size": self.cfg.batch_size, "max_batch_size": self.cfg.batch_size}

    def share_model_across_processes(self) -> bool:
        return False

    def get_metrics_namespace(self) -> str:
        return "copyguard_embedder"
