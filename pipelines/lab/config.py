"""``LabConfig``: the settings of ``copyguard lab-model`` (``configs/lab.yaml``, section ``lab``).

Three presets size the model and its training: ``tiny`` (tests, a few minutes on 2 CPU cores), ``small``
(the demo and the lab results, ~20 CPU minutes) and ``gpu`` (64 px, larger, for a GPU machine). A preset
given partly in YAML or by ``--set lab.presets.small.unet.steps=900`` is merged over that preset's own
defaults, so one override never resets the rest of a preset.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field, model_validator

from copyguard.curation.config import StrictModel

__all__ = [
    "EvalSpec",
    "LabConfig",
    "PRESET_NAMES",
    "PresetConfig",
    "Presets",
    "SchedulerSpec",
    "TextEncoderSpec",
    "UnetSpec",
    "VaeSpec",
]

PRESET_NAMES = ("tiny", "small", "gpu")


class VaeSpec(StrictModel):
    """AutoencoderKL size and its training (L1 reconstruction + ``kl_weight`` * KL)."""

    block_out_channels: list[int]
    layers_per_block: int = Field(1, ge=1)
    latent_channels: int = Field(4, ge=1)
    norm_num_groups: int = Field(32, ge=1)
    steps: int = Field(ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    kl_weight: float = Field(1e-6, ge=0)


class TextEncoderSpec(StrictModel):
    """CLIPTextModel size (vocabulary and 77 positions are fixed by CLIP)."""

    hidden_size: int = Field(64, ge=8)
    intermediate_size: int = Field(128, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)


class UnetSpec(StrictModel):
    """UNet2DConditionModel size and the joint UNet + text-encoder training."""

    block_out_channels: list[int]
    down_block_types: list[str]
    up_block_types: list[str]
    layers_per_block: int = Field(1, ge=1)
    attention_head_dim: int = Field(4, ge=1)
    norm_num_groups: int = Field(32, ge=1)
    steps: int = Field(ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    ema_decay: float = Field(0.995, ge=0, lt=1)
    caption_dropout: float = Field(0.1, ge=0, le=1)
    offset_noise: float = Field(0.1, ge=0)


class SchedulerSpec(StrictModel):
    """Noise schedule (epsilon prediction)."""

    num_train_timesteps: int = Field(1000, ge=10)
    beta_start: float = Field(0.00085, gt=0)
    beta_end: float = Field(0.012, gt=0)
    beta_schedule: Literal["scaled_linear", "linear", "squaredcos_cap_v2"] = "scaled_linear"
    timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading"


class EvalSpec(StrictModel):
    """The memorization measurement: prompts, sampling, thresholds, FID."""

    seeds: int = Field(4, ge=1)
    steps: int = Field(25, ge=1)
    guidance_scale: float = Field(7.5, ge=1)
    unique_prompts: int = Field(50, ge=1)
    threshold: float = Field(0.4, gt=0, lt=1)
    fid_images: int = Field(0, ge=0)
    batch_size: int = Field(32, ge=1)
    calibration_images: int = Field(64, ge=2)
    nearest_train: bool = False


class PresetConfig(StrictModel):
    """One preset: resolution, data handling, component sizes, training lengths, evaluation."""

    resolution: int = Field(32, ge=8)
    heldout: int = Field(0, ge=0)
    checkpoint_every: int = Field(200, ge=1)
    vae: VaeSpec
    text_encoder: TextEncoderSpec
    unet: UnetSpec
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)


_TWO_LEVELS = {
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
}

PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {
        "resolution": 32,
        "heldout": 0,
        "checkpoint_every": 100,
        "vae": {"block_out_channels": [32, 64], "steps": 300, "batch_size": 8, "lr": 5e-3},
        "text_encoder": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 2},
        "unet": {
            "block_out_channels": [32, 64],
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "attention_head_dim": 2,
            "steps": 700,
            "batch_size": 16,
            "lr": 3e-3,
            "ema_decay": 0.99,
        },
        "eval": {"seeds": 4, "steps": 20, "unique_prompts": 16, "fid_images": 0, "calibration_images": 32},
    },
    "small": {
        "resolution": 32,
        "heldout": 200,
        "checkpoint_every": 500,
        "vae": {"block_out_channels": [32, 64], "steps": 1500, "batch_size": 8, "lr": 5e-3},
        "text_encoder": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 2},
        "unet": {
            "block_out_channels": [32, 64],
            **_TWO_LEVELS,
            "attention_head_dim": 2,
            "steps": 3400,
            "batch_size": 16,
            "lr": 2e-3,
            "ema_decay": 0.995,
        },
        "eval": {"seeds": 4, "steps": 25, "unique_prompts": 50, "fid_images": 200},
    },
    "gpu": {
        "resolution": 64,
        "heldout": 500,
        "checkpoint_every": 1000,
        "vae": {"block_out_channels": [64, 128, 256], "steps": 3000, "batch_size": 64, "lr": 5e-4},
        "text_encoder": {"hidden_size": 256, "intermediate_size": 1024, "num_layers": 4, "num_heads": 4},
        "unet": {
            "block_out_channels": [128, 256, 256],
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "layers_per_block": 2,
            "attention_head_dim": 8,
            "steps": 2500,
            "batch_size": 64,
            "lr": 3e-4,
            "warmup_steps": 200,
            "ema_decay": 0.998,
        },
        "eval": {"seeds": 4, "steps": 50, "unique_prompts": 200, "threshold": 0.5, "fid_images": 1000},
    },
}


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _preset_default(name: str) -> Any:
    return lambda: PresetConfig.model_validate(PRESET_DEFAULTS[name])


class Presets(StrictModel):
    """The three presets; partial values merge over each preset's defaults."""

    tiny: PresetConfig = Field(default_factory=_preset_default("tiny"))
    small: PresetConfig = Field(default_factory=_preset_default("small"))
    gpu: PresetConfig = Field(default_factory=_preset_default("gpu"))

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name in PRESET_NAMES:
            given = data.get(name)
            if isinstance(given, dict):
                merged[name] = _deep_merge(PRESET_DEFAULTS[name], given)
        return merged


class LabConfig(StrictModel):
    """Top level of ``configs/lab.yaml``.

    ``threads`` = 0 picks the CPU thread count from the machine's load (all cores when idle, fewer when
    other processes compete: oversubscribed OpenMP threads slow small models down several-fold).
    """

    preset: Literal["tiny", "small", "gpu"] = "small"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(0, ge=0)
    deterministic: bool = True
    mixed_precision: Literal["no", "bf16"] = "no"
    presets: Presets = Field(default_factory=Presets)

    def active(self) -> PresetConfig:
        """The selected preset's settings."""
        return getattr(self.presets, self.preset)
