"""Helpers of the fine-tuning loop (:mod:`copyguard.train.finetune`): loading the frozen SD components,
checkpoint lookup, the EMA, resumable JSON-lines logs.

Checkpoints hold only safe formats: accelerate's ``model.safetensors`` and its optimizer/scheduler/RNG files
(loaded with ``weights_only``), ``trainer_state.json`` (step, config, filter state) and ``ema.safetensors``.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

import torch

from copyguard.curation.errors import UsageError
from copyguard.train.finetune_config import TrainConfig

__all__ = [
    "EMA_FILE",
    "RESUME_KEYS",
    "STATE_FILE",
    "Ema",
    "encode_text",
    "find_checkpoint",
    "flat_config",
    "load_models",
    "peak_rss_mib",
    "truncate_jsonl",
]

STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
LORA_FILE = "pytorch_lora_weights.safetensors"
# Settings a checkpoint depends on: resuming with other values would not continue the same run.
RESUME_KEYS = ("seed", "mode", "batch_size", "grad_accum", "lr", "lr_scheduler", "lora", "filter", "ema")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def find_checkpoint(out: Path, resume: str) -> Path | None:
    """``latest`` -> the newest ``RUN_DIR/checkpoints/step-*`` (None if there is none), else that folder."""
    if resume != "latest":
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise UsageError(f"--resume {resume}: not a checkpoint folder (no {STATE_FILE})")
        return path
    found = sorted((out / "checkpoints").glob("step-*[0-9]")) if (out / "checkpoints").is_dir() else []
    found = [p for p in found if (p / STATE_FILE).is_file()]
    return found[-1] if found else None


class Ema:
    """EMA of the trainable parameters (decay warms up as ``min(decay, (1 + s) / (10 + s))``)."""

    def __init__(self, named: list[tuple[str, torch.nn.Parameter]], decay: float) -> None:
        self.decay = decay
        self.shadow = {n: p.detach().clone().float() for n, p in named}

    @torch.no_grad()
    def update(self, named: list[tuple[str, torch.nn.Parameter]], step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for n, p in named:
            self.shadow[n].mul_(d).add_(p.detach().float(), alpha=1 - d)

    @torch.no_grad()
    def copy_to(self, named: list[tuple[str, torch.nn.Parameter]]) -> None:
        for n, p in named:
            p.copy_(self.shadow[n].to(p.dtype))


def load_models(model_dir: Path) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if not (model_dir / "model_index.json").is_file():
        raise UsageError(f"--model {model_dir}: not a diffusers model folder (no model_index.json)")
    try:
        return {
            "tokenizer": CLIPTokenizer.from_pretrained(str(model_dir / "tokenizer")),
            "text_encoder": CLIPTextModel.from_pretrained(
                str(model_dir / "text_encoder"), use_safetensors=True
            ),
            "vae": AutoencoderKL.from_pretrained(str(model_dir / "vae"), use_safetensors=True),
            "unet": UNet2DConditionModel.from_pretrained(str(model_dir / "unet"), use_safetensors=True),
            "scheduler": DDPMScheduler.from_pretrained(str(model_dir / "scheduler")),
        }
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"--model {model_dir}: cannot load the SD components ({str(exc).splitlines()[0]})"
        ) from None


def encode_text(models: dict[str, Any], captions: list[str], device: torch.device) -> torch.Tensor:
    tok = models["tokenizer"]
    ids = tok(
        captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        return models["text_encoder"](ids.input_ids.to(device))[0]


def flat_config(cfg: TrainConfig) -> dict[str, Any]:
    def walk(prefix: str, d: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(walk(f"{prefix}{k}.", v))
            elif isinstance(v, (int, float, str, bool)):
                out[f"{prefix}{k}"] = v
        return out

    return walk("", cfg.model_dump())


def truncate_jsonl(path: Path, before_step: int) -> None:
    keep = []
    if before_step and path.is_file():
        keep = [
            ln + "\n"
            for ln in path.read_text().splitlines()
            if ln.strip() and json.loads(ln)["step"] <= before_step
        ]
    path.write_text("".join(keep), encoding="utf-8")
