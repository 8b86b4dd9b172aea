"""How fast the lab model trains and is measured on a device: one ``run_lab_model`` on freshly built sample
data, with its settings, stage timings, steps and images per second, and the memorization it reaches.

Used by the GPU benchmark (``benchmarks/bench_gpu.py``, section ``lab_gpu``); any device works.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from copyguard.common.timing import timed
from copyguard.pipelines.lab.config import LabConfig, SampleDataConfig
from copyguard.pipelines.lab.run import run_lab_model
from copyguard.pipelines.lab.sample_data import build_sample_data

__all__ = ["measure_lab_run"]


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(float(x), nd)


def measure_lab_run(
    preset: str, data_preset: str, device: str, overrides: dict[str, Any], on_settings: Any = None
) -> dict[str, Any]:
    """Build ``data_preset`` sample data, train and measure lab preset ``preset`` (``overrides`` merged into it,
    e.g. ``{"unet": {"steps": 400}}``) on ``device``; ``on_settings(record)`` is called once the settings are
    known (to save a partial record before the long run)."""
    rec: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="copyguard_lab_run_") as name:
        tmp = Path(name)
        sec, data = timed(lambda: build_sample_data(SampleDataConfig(preset=data_preset), tmp / "data"))
        rec["sample_data"] = {"preset": data_preset, "samples": data.get("samples"), "seconds": _r(sec, 2)}
        cfg = LabConfig(preset=preset, device=device, presets={preset: overrides})
        active = cfg.active()
        batches = {"vae": active.vae.batch_size, "unet": active.unet.batch_size}
        rec["settings"] = {"preset": preset, "overrides": overrides, "resolution": active.resolution,
                           "vae_batch": batches["vae"], "unet_batch": batches["unet"],
                           "mixed_precision": cfg.mixed_precision, "deterministic": cfg.deterministic}  # fmt: skip
        if on_settings is not None:
            on_settings(rec)
        sec, out = timed(lambda: run_lab_model(cfg, str(tmp / "data" / "*.tar"), tmp / "model"), device)
    rec["run_s"] = _r(sec, 2)
    timings, mem = out["training"].get("timings") or {}, out["memorization"]
    rec.update(timings_s={k: _r(v) for k, v in timings.items()}, params=out["training"].get("params"))
    for stage, batch in batches.items():
        steps, secs = (overrides.get(stage) or {}).get("steps"), timings.get(f"{stage}_s")
        if steps and secs:
            rec[f"{stage}_steps_per_s"] = _r(steps / secs)
            rec[f"{stage}_images_per_s"] = _r(steps * batch / secs, 1)
    rec["memorization_evaluated"] = mem is not None
    if mem is not None:
        rec["memorization"] = {
            k: v for k, v in mem.items() if k in ("timings", "by_copies", "auc", "summary")
        }
        evaluation = overrides.get("eval") or {}
        if (gen := (mem.get("timings") or {}).get("generate_s")) and evaluation.get("seeds"):
            rec["eval_generated_images_per_s"] = _r(
                evaluation["seeds"] * evaluation["unique_prompts"] / gen, 2
            )
    return rec
