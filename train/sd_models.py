"""The Stable Diffusion components a fine-tuning run loads, and text encoding.

The model is a local diffusers folder, a Hub id already in the local Hugging Face cache, or one
``.safetensors`` checkpoint (:mod:`copyguard.mitigation.sd_loader`). Nothing is downloaded: every
``from_pretrained``/``from_single_file`` runs with ``local_files_only=True`` and weights load from safetensors
only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from copyguard.common.errors import UsageError
from copyguard.mitigation.sd_loader import check_sd_folder, resolve_model_source, single_file_config

__all__ = ["SUBFOLDERS", "encode_text", "load_models"]

SUBFOLDERS = ("tokenizer", "text_encoder", "vae", "unet", "scheduler")


def load_models(model: str | Path, model_config: str | None = None) -> dict[str, Any]:
    """Tokenizer, text encoder, VAE, UNet and the DDPM training scheduler of ``model``, plus ``source_dir``:
    the local diffusers folder holding its ``model_index.json`` and sampler (for the full fine-tune's output).

    ``model`` is a local diffusers folder, a Hub id in the local Hugging Face cache or a single ``.safetensors``
    checkpoint configured by ``model_config`` (:func:`copyguard.mitigation.sd_loader.resolve_model_source`).
    """
    source = resolve_model_source(model)
    if source.kind == "single_file":
        return _load_single_file(source.path, single_file_config(source.path, model_config))
    model_dir = source.path
    if not (model_dir / "model_index.json").is_file():
        raise UsageError(f"--model {model}: not a diffusers model folder (no model_index.json)")
    missing = [name for name in SUBFOLDERS if not (model_dir / name).is_dir()]
    if missing:
        raise UsageError(f"--model {model}: a diffusers folder without {', '.join(missing)}")
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    local = {"local_files_only": True}
    try:
        return {
            "tokenizer": CLIPTokenizer.from_pretrained(str(model_dir / "tokenizer"), **local),
            "text_encoder": CLIPTextModel.from_pretrained(
                str(model_dir / "text_encoder"), use_safetensors=True, **local
            ),
            "vae": AutoencoderKL.from_pretrained(str(model_dir / "vae"), use_safetensors=True, **local),
            "unet": UNet2DConditionModel.from_pretrained(
                str(model_dir / "unet"), use_safetensors=True, **local
            ),
            "scheduler": DDPMScheduler.from_pretrained(str(model_dir / "scheduler"), **local),
            "source_dir": model_dir,
        }
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"--model {model}: cannot load the SD components ({str(exc).splitlines()[0]})"
        ) from None


def _load_single_file(path: Path, config: Path) -> dict[str, Any]:
    """The components of the single-file checkpoint ``path``, configured by the diffusers folder ``config``."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    check_sd_folder(config)
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(path), config=str(config), local_files_only=True, safety_checker=None,
            requires_safety_checker=False,
        )  # fmt: skip
    except (OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError) as exc:
        raise UsageError(f"--model {path}: cannot load the single-file checkpoint ({_first(exc)})") from None
    models = {name: getattr(pipe, name) for name in ("tokenizer", "text_encoder", "vae", "unet")}
    models["scheduler"] = DDPMScheduler.from_config(pipe.scheduler.config)
    models["source_dir"] = config
    return models


def _first(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def encode_text(models: dict[str, Any], captions: list[str], device: torch.device) -> torch.Tensor:
    """CLIP text embeddings of ``captions`` (padded to the tokenizer's max length), without gradients."""
    tok = models["tokenizer"]
    ids = tok(
        captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        return models["text_encoder"](ids.input_ids.to(device))[0]
