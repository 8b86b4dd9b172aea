"""Load a Stable Diffusion folder (diffusers format) from a local path, safely and with clear errors.

Works for SD-1.x/2.x-style folders, including copyguard's lab models. Nothing is downloaded: the loaders run
with ``local_files_only=True`` and weights load from safetensors where the folder has them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from copyguard.curation.errors import UsageError

__all__ = ["default_device", "load_sd_pipeline"]

log = logging.getLogger(__name__)


def default_device(device: str | None = None) -> str:
    """``device`` if given, else ``cuda`` when available, else ``cpu``."""
    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"--device {device} requested but no CUDA GPU is available")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_sd_pipeline(
    path: str | Path, device: str | None = None, pipeline_cls: Any = None, ddim: bool = True
) -> Any:
    """Load ``path`` as ``pipeline_cls`` (default ``StableDiffusionPipeline``) on ``device``, DDIM scheduler.

    Raises :class:`UsageError` (one line) for a missing folder, a folder that is not a diffusers Stable
    Diffusion model, or weights that fail to load.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipeline_cls = pipeline_cls or StableDiffusionPipeline
    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(f"model folder not found: {folder}")
    index = folder / "model_index.json"
    if not index.is_file():
        raise UsageError(f"{folder} is not a diffusers model folder (no model_index.json)")
    try:
        parts = json.loads(index.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{index} is not valid JSON: {exc}") from None
    missing = [
        name for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if name not in parts
    ]
    if missing:
        raise UsageError(f"{folder} is not a Stable Diffusion folder: missing {', '.join(missing)}")
    device = default_device(device)
    try:
        pipe = pipeline_cls.from_pretrained(
            str(folder), safety_checker=None, requires_safety_checker=False, local_files_only=True
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot load the model in {folder}: {first}") from None
    if ddim:
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
