"""Find and load a Stable Diffusion model, safely and with clear errors; nothing is ever downloaded.

:func:`resolve_model_source` accepts three kinds of ``--model`` (shared by training and detect/generate/
audit):

- ``folder``: a local diffusers folder (``model_index.json`` + component subfolders), e.g. copyguard's lab
  models;
- ``hub_cache``: a Hub id ``org/name`` that is already in the local Hugging Face cache (``HF_HUB_CACHE``,
  else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``), looked up with
  ``snapshot_download(..., local_files_only=True)``; an id that is not there is a one-line usage error;
- ``single_file``: one ``.safetensors`` SD checkpoint in the original (LDM) layout, loaded with
  ``from_single_file(..., local_files_only=True)``. diffusers needs a diffusers config for it: a local folder
  or cached Hub id given as ``config`` (``--model_config``), else the repo diffusers infers from the weights
  (e.g. ``stable-diffusion-v1-5/stable-diffusion-v1-5``), which must then be in the local cache. copyguard
  passes that config folder explicitly, so diffusers' fallback of downloading a missing config never runs.

Pickle checkpoints (``.ckpt``, ``.pt``, ``.bin``) are refused: loading them can run arbitrary code.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from copyguard.common.errors import UsageError
from copyguard.common.runtime import resolve_device

__all__ = ["ModelSource", "default_device", "load_sd_pipeline", "resolve_model_source", "single_file_config"]

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_PICKLE = (".ckpt", ".pt", ".pth", ".bin")
SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass(frozen=True)
class ModelSource:
    """Where a model spec points: ``kind`` and the local ``path`` (a folder, or the ``.safetensors`` file)."""

    kind: Literal["folder", "hub_cache", "single_file"]
    path: Path
    spec: str


def hub_cache_dir() -> str | None:
    """The Hugging Face hub cache as the environment says now (``HF_HUB_CACHE``, ``HF_HOME/hub``), or None
    for huggingface_hub's default. Read at call time, unlike ``huggingface_hub.constants``."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return os.environ[name]
    home = os.environ.get("HF_HOME")
    return str(Path(home) / "hub") if home else None


def _from_hub_cache(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=hub_cache_dir()))
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        raise UsageError(
            f"{repo_id}: not in the local Hugging Face cache; copyguard never downloads: "
            f"run `huggingface-cli download {repo_id}` first"
        ) from None


def resolve_model_source(spec: str | Path) -> ModelSource:
    """Classify ``spec`` (a folder, a cached Hub id or a ``.safetensors`` file); raises :class:`UsageError`
    (one line) when it is none of these. Never touches the network."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        return ModelSource("folder", path, text)
    if path.is_file():
        if path.suffix.lower() == ".safetensors":
            return ModelSource("single_file", path, text)
        if path.suffix.lower() in _PICKLE:
            raise UsageError(
                f"{text}: pickle checkpoints are not loaded (unsafe); convert it to .safetensors"
            )
        raise UsageError(f"{text}: not a .safetensors checkpoint")
    if _HUB_ID.fullmatch(text) and not text.startswith("."):
        return ModelSource("hub_cache", _from_hub_cache(text), text)
    raise UsageError(
        f"{text}: model folder not found (no model_index.json), and not a .safetensors file or a Hub id "
        "'org/name'"
    )


def single_file_config(path: Path, config: str | None) -> Path:
    """The local diffusers folder that configures the single-file checkpoint ``path``: ``config`` (a folder
    or a cached Hub id) when given, else the repo diffusers infers from the weights, from the local cache."""
    if config is not None:
        source = resolve_model_source(config)
        if source.kind == "single_file":
            raise UsageError(f"--model_config {config}: must be a diffusers folder or a cached Hub id")
        return source.path
    from diffusers.loaders.single_file_utils import fetch_diffusers_config, load_single_file_checkpoint

    try:
        repo = fetch_diffusers_config(load_single_file_checkpoint(str(path), local_files_only=True))[
            "pretrained_model_name_or_path"
        ]
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{path}: not a Stable Diffusion checkpoint ({_first_line(exc)})") from None
    try:
        return _from_hub_cache(repo)
    except UsageError:
        raise UsageError(
            f"{path}: its diffusers config {repo} is not in the local Hugging Face cache and copyguard never "
            f"downloads: pass --model_config DIR (a diffusers folder of the same architecture) or run "
            f"`huggingface-cli download {repo} --include '*.json' '*.txt'` first"
        ) from None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def default_device(device: str | None = None) -> str:
    """``device`` if given (checked: a CUDA device without CUDA is a usage error), else ``cuda`` when
    available, else ``cpu`` (:func:`copyguard.common.runtime.resolve_device`)."""
    return str(resolve_device(device or "auto"))


def check_sd_folder(folder: Path) -> None:
    """Raise :class:`UsageError` unless ``folder`` is a diffusers Stable Diffusion folder."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise UsageError(f"{folder} is not a diffusers model folder (no model_index.json)")
    try:
        parts = json.loads(index.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{index} is not valid JSON: {exc}") from None
    missing = [name for name in SD_PARTS if name not in parts]
    if missing:
        raise UsageError(f"{folder} is not a Stable Diffusion folder: missing {', '.join(missing)}")


def load_sd_pipeline(
    path: str | Path,
    device: str | None = None,
    pipeline_cls: Any = None,
    ddim: bool = True,
    model_config: str | None = None,
) -> Any:
    """Load the model ``path`` (see :func:`resolve_model_source`) as ``pipeline_cls`` (default
    ``StableDiffusionPipeline``) on ``device``, DDIM scheduler; ``model_config`` configures a single file.

    Raises :class:`UsageError` (one line) for a missing model, a folder that is not a diffusers Stable
    Diffusion model, a Hub id not in the local cache, or weights that fail to load.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    pipeline_cls = pipeline_cls or StableDiffusionPipeline
    source = resolve_model_source(path)
    common = {"safety_checker": None, "requires_safety_checker": False, "local_files_only": True}
    if source.kind == "single_file":
        config = single_file_config(source.path, model_config)
        check_sd_folder(config)
    else:
        check_sd_folder(source.path)
    device = default_device(device)
    try:
        if source.kind == "single_file":
            pipe = pipeline_cls.from_single_file(str(source.path), config=str(config), **common)
        else:
            pipe = pipeline_cls.from_pretrained(str(source.path), **common)
    except (OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError) as exc:
        raise UsageError(f"cannot load the model {source.spec}: {_first_line(exc)}") from None
    if ddim:
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
