"""A cache of lab models and their sample data, shared by ``make demo`` and ``make bench``.

Training the ``small`` lab model takes 15-20 CPU minutes, so the demo and the benchmarks build it once and
reuse it. A cached model lives in ``CACHE/lab-<preset>-s<seed>-<key>/`` where ``key`` fingerprints the
preset's settings and the copyguard version: a change of recipe trains a new model instead of silently
reusing a stale one. The sample data it was trained on lives next to it in ``CACHE/data-<preset>-s<seed>-<key>/``
(keyed the same way by the sample-data settings).
A folder counts as finished only once its ``.done`` marker exists; an interrupted training resumes from its
checkpoints on the next call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from copyguard.common.runtime import package_version

if TYPE_CHECKING:
    from copyguard.pipelines.lab.config import SampleDataConfig

__all__ = [
    "DEFAULT_CACHE",
    "cached_index",
    "cached_lab_model",
    "cached_sample_data",
    "lab_key",
    "lab_setup",
    "sample_data_dir",
]

log = logging.getLogger(__name__)
DEFAULT_CACHE = Path(os.environ.get("COPYGUARD_CACHE", ".cache/copyguard"))
DONE = ".done"


def _key(body: dict, length: int) -> str:
    """A fingerprint of ``body`` (JSON-able settings) and the copyguard version."""
    blob = json.dumps({**body, "version": package_version("copyguard") or "0"}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _sample_data_config(preset: str, seed: int) -> SampleDataConfig:
    from copyguard.common.config import load_config
    from copyguard.pipelines.lab.config import SampleDataConfig

    overrides = [f"sample_data.preset={preset}", f"sample_data.seed={seed}"]
    return load_config(SampleDataConfig, "sample_data", None, overrides)


def _data_dir(cfg: SampleDataConfig, cache: Path) -> Path:
    key = _key({"settings": cfg.model_dump(mode="json")}, 8)
    return Path(cache) / f"data-{cfg.preset}-s{cfg.seed}-{key}"


def sample_data_dir(preset: str, seed: int = 0, cache: Path = DEFAULT_CACHE) -> Path:
    """Where the cached sample data of ``preset`` lives: ``data-<preset>-s<seed>-<key>``, ``key``
    fingerprinting the builder's settings (image size included) and the copyguard version."""
    return _data_dir(_sample_data_config(preset, seed), cache)


def cached_sample_data(preset: str, seed: int = 0, cache: Path = DEFAULT_CACHE) -> Path:
    """``copyguard sample-data --preset preset --seed seed`` in the cache (built on first use)."""
    from copyguard.pipelines.lab.sample_data import build_sample_data

    cfg = _sample_data_config(preset, seed)
    out = _data_dir(cfg, cache)
    if not (out / DONE).is_file():
        log.info("building sample data %s (seed %d) in %s", preset, seed, out)
        build_sample_data(cfg, out, overwrite=True)
        (out / DONE).touch()
    return out


def lab_key(preset: str, seed: int = 0) -> str:
    """A fingerprint of the lab preset's settings, the seed and the copyguard version."""
    from copyguard.pipelines.lab.config import LabConfig

    settings = LabConfig(preset=preset, seed=seed).active().model_dump(mode="json")
    return _key({"settings": settings, "seed": seed}, 12)


def cached_lab_model(preset: str, seed: int = 0, cache: Path = DEFAULT_CACHE) -> tuple[Path, Path]:
    """The lab model of ``preset`` trained on its sample data, from the cache or trained now.

    Returns ``(model_dir, data_dir)``. The sample data preset is the lab preset (``gpu`` uses ``small``).
    """
    from copyguard.pipelines.lab.config import LabConfig
    from copyguard.pipelines.lab.run import run_lab_model

    data = cached_sample_data("small" if preset == "gpu" else preset, seed, cache)
    model = Path(cache) / f"lab-{preset}-s{seed}-{lab_key(preset, seed)}"
    if (model / DONE).is_file():
        log.info("reusing the cached %s lab model %s", preset, model)
        return model, data
    log.info("training the %s lab model into %s (cached for later runs)", preset, model)
    resume = (model / "checkpoints").is_dir()
    run_lab_model(LabConfig(preset=preset, seed=seed), str(data / "*.tar"), model, resume=resume)
    (model / DONE).touch()
    return model, data


def cached_index(preset: str, seed: int = 0, cache: Path = DEFAULT_CACHE) -> Path:
    """The training-set index of ``copyguard curate`` on the cached sample data (curated on first use)."""
    from copyguard.pipelines.curate import run as curate_run

    data = cached_sample_data("small" if preset == "gpu" else preset, seed, cache)
    out = Path(cache) / f"curated-{preset}-s{seed}"
    if not (out / DONE).is_file():
        log.info("curating %s into %s (cached for later runs)", data, out)
        curate_run(["--input", str(data / "*.tar"), "--output", str(out), "--overwrite"])
        (out / DONE).touch()
    return out / "index"


def lab_setup(preset: str = "small", seed: int = 0, cache: Path = DEFAULT_CACHE) -> tuple[Path, str, Path]:
    """``(model_dir, data_glob, index_dir)`` of the cached lab model: what the lab benchmarks run on."""
    model, data = cached_lab_model(preset, seed, cache)
    return model, str(data / "*.tar"), cached_index(preset, seed, cache)
