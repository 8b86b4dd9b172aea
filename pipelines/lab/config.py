"""The lab stage's config schemas: ``copyguard lab-model`` and ``copyguard sample-data``.

``LabConfig`` is ``configs/lab.yaml`` (section ``lab``). Three presets size the model and its training:
``tiny`` (tests, a few minutes on 2 CPU cores), ``small`` (the demo and the lab results, ~20 CPU minutes) and
``gpu`` (64 px, larger, for a GPU machine).

``SampleDataConfig`` is ``configs/sample_data.yaml`` (section ``sample_data``): how many samples of each
planted kind the builder (:mod:`copyguard.pipelines.lab.sample_data`) writes, in two presets ``tiny`` and
``small``.

A preset given partly in YAML or by ``--set lab.presets.small.unet.steps=900`` is merged over that preset's
own defaults, so one override never resets the rest of a preset. Schemas only: this module imports pydantic,
the standard library and :mod:`copyguard.common`, never torch or diffusers.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from copyguard.common.config import StrictModel

__all__ = [
    "LAB_PRESET_DEFAULTS",
    "LAB_PRESET_NAMES",
    "EvalConfig",
    "LabConfig",
    "LabPresetConfig",
    "LabPresets",
    "SampleDataConfig",
    "SampleDataPresetConfig",
    "SampleDataPresets",
    "SchedulerConfig",
    "TextEncoderConfig",
    "UnetConfig",
    "VaeConfig",
]

LAB_PRESET_NAMES = ("tiny", "small", "gpu")


# ------------------------------------------------------------------------------------------ lab model
class VaeConfig(StrictModel):
    """AutoencoderKL size and its training (L1 + MSE reconstruction + ``kl_weight`` * KL, plus the edge and
    perceptual terms of :mod:`copyguard.pipelines.lab.vae_loss` when their weights are set).

    ``crop`` > 0 trains on random ``crop`` x ``crop`` windows of the training images (the VAE is
    convolutional, so it then encodes the full size at a fraction of the cost per step); the last
    ``full_size_steps`` steps then train on whole images, ``full_size_batch_size`` of them (0: ``batch_size``);
    ``mid_block_attention`` is diffusers' ``mid_block_add_attention`` (off for crop training: an attention
    layer trained on small windows would see a different token count at the full size).
    """

    block_out_channels: list[int]
    layers_per_block: int = Field(1, ge=1)
    latent_channels: int = Field(4, ge=1)
    norm_num_groups: int = Field(32, ge=1)
    mid_block_attention: bool = True
    steps: int = Field(ge=0)
    batch_size: int = Field(32, ge=1)
    crop: int = Field(0, ge=0)
    full_size_steps: int = Field(0, ge=0)
    full_size_batch_size: int = Field(0, ge=0)
    lr: float = Field(1e-3, gt=0)
    kl_weight: float = Field(1e-6, ge=0)
    edge_weight: float = Field(0.0, ge=0)
    perceptual_weight: float = Field(0.0, ge=0)

    @property
    def factor(self) -> int:
        """The downsampling factor: one halving per block after the first (f = 8 for SD's four)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @model_validator(mode="after")
    def _fits(self) -> VaeConfig:
        if self.crop and self.crop % self.factor:
            raise ValueError(f"crop ({self.crop}) must be a multiple of the VAE's factor {self.factor}")
        if self.full_size_steps > self.steps:
            raise ValueError(f"full_size_steps ({self.full_size_steps}) exceeds steps ({self.steps})")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"block_out_channels {bad} are not multiples of norm_num_groups {self.norm_num_groups}"
            )
        return self


class TextEncoderConfig(StrictModel):
    """CLIPTextModel size (vocabulary and 77 positions are fixed by CLIP)."""

    hidden_size: int = Field(64, ge=8)
    intermediate_size: int = Field(128, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)


class UnetConfig(StrictModel):
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


class SchedulerConfig(StrictModel):
    """Noise schedule (epsilon prediction)."""

    num_train_timesteps: int = Field(1000, ge=10)
    beta_start: float = Field(0.00085, gt=0)
    beta_end: float = Field(0.012, gt=0)
    beta_schedule: Literal["scaled_linear", "linear", "squaredcos_cap_v2"] = "scaled_linear"
    timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading"


class EvalConfig(StrictModel):
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


class LabPresetConfig(StrictModel):
    """One preset: resolution, data handling, component sizes, training lengths, evaluation."""

    resolution: int = Field(32, ge=8)
    heldout: int = Field(0, ge=0)
    checkpoint_every: int = Field(200, ge=1)
    vae: VaeConfig
    text_encoder: TextEncoderConfig
    unet: UnetConfig
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _sizes(self) -> LabPresetConfig:
        if self.resolution % self.vae.factor:
            raise ValueError(
                f"resolution ({self.resolution}) must be a multiple of the VAE's factor {self.vae.factor}"
            )
        if self.vae.crop > self.resolution:
            raise ValueError(f"vae.crop ({self.vae.crop}) exceeds the resolution ({self.resolution})")
        return self


_TWO_LEVELS = {
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
}

LAB_PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
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


def _merge_presets(data: Any, defaults: dict[str, dict[str, Any]]) -> Any:
    """A ``presets`` section with every partly given preset deep-merged over that preset's defaults."""
    if not isinstance(data, dict):
        return data
    merged = dict(data)
    for name, default in defaults.items():
        if isinstance(data.get(name), dict):
            merged[name] = _deep_merge(default, data[name])
    return merged


def _preset_default(name: str) -> Any:
    return lambda: LabPresetConfig.model_validate(LAB_PRESET_DEFAULTS[name])


class LabPresets(StrictModel):
    """The three presets; partial values merge over each preset's defaults."""

    tiny: LabPresetConfig = Field(default_factory=_preset_default("tiny"))
    small: LabPresetConfig = Field(default_factory=_preset_default("small"))
    gpu: LabPresetConfig = Field(default_factory=_preset_default("gpu"))

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any) -> Any:
        return _merge_presets(data, LAB_PRESET_DEFAULTS)


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
    presets: LabPresets = Field(default_factory=LabPresets)

    def active(self) -> LabPresetConfig:
        """The selected preset's settings."""
        return getattr(self.presets, self.preset)


# ---------------------------------------------------------------------------------------- sample data
class SampleDataPresetConfig(StrictModel):
    """How many samples of each kind a preset plants."""

    unique: int = Field(ge=0, description="samples with their own image and caption")
    image_groups: int = Field(ge=0, description="groups per image kind (image_exact and each edit kind)")
    image_group_min: int = Field(2, ge=2, description="smallest image group (original included)")
    image_group_max: int = Field(4, ge=2, description="largest image group")
    caption_groups: int = Field(ge=0, description="groups per caption kind")
    caption_group_min: int = Field(2, ge=2, description="smallest caption group (original included)")
    caption_group_max: int = Field(4, ge=2, description="largest caption group")
    dup_counts: list[int] = Field(description="copies of each dup_pair group (each count >= 2)")
    dup_groups_per_count: int = Field(ge=0, description="dup_pair groups for each count")
    dup_reencoded: int = Field(1, ge=0, description="copies per dup_pair group re-encoded at another quality")
    template_groups: int = Field(ge=0, description="template_caption groups")
    template_min: int = Field(8, ge=2, description="fewest images under one templated caption")
    template_max: int = Field(12, ge=2, description="most images under one templated caption")
    broken_per_kind: int = Field(ge=0, le=400, description="samples of each broken kind")
    samples_per_shard: int = Field(ge=1, description="valid samples per shard")
    image_size: int = Field(64, ge=16, le=1024, description="side of the square base images (px)")
    large_image_size: int = Field(
        0, ge=0, le=1024, description="hard preset: side of the large base images (0: 224 px)"
    )

    @field_validator("dup_counts")
    @classmethod
    def _counts(cls, value: list[int]) -> list[int]:
        if any(count < 2 for count in value):
            raise ValueError("every dup count must be >= 2")
        return value

    @field_validator("image_group_max", "caption_group_max", "template_max")
    @classmethod
    def _max_not_below_min(cls, value: int, info: ValidationInfo) -> int:
        low_name = info.field_name.replace("_max", "_min") if info.field_name else ""
        low = info.data.get(low_name)
        if low is not None and value < low:
            raise ValueError(f"must be >= {low_name} ({low})")
        return value


_SAMPLE_TINY = SampleDataPresetConfig(
    unique=150,
    image_groups=3,
    image_group_max=3,
    caption_groups=3,
    caption_group_max=3,
    dup_counts=[2, 5, 10, 25],
    dup_groups_per_count=1,
    template_groups=3,
    template_max=10,
    broken_per_kind=3,
    samples_per_shard=100,
)
_SAMPLE_SMALL = SampleDataPresetConfig(
    unique=700,
    image_groups=25,
    image_group_max=5,
    caption_groups=25,
    dup_counts=[2, 5, 10, 25, 50],
    dup_groups_per_count=4,
    dup_reencoded=2,
    template_groups=12,
    broken_per_kind=10,
    samples_per_shard=500,
)

# Every copy-edit family at 64 and 224 px plus caption pairs (pipelines/lab/sample_hard.py); even seeds
# build the tuning half, odd seeds the held-out half.
_SAMPLE_HARD = SampleDataPresetConfig(
    unique=120,
    image_groups=4,
    image_group_max=3,
    caption_groups=60,
    dup_counts=[],
    dup_groups_per_count=0,
    template_groups=0,
    broken_per_kind=0,
    samples_per_shard=500,
    large_image_size=224,
)


class SampleDataPresets(StrictModel):
    """The presets; a config that sets only some counts of one keeps the others' defaults."""

    tiny: SampleDataPresetConfig = _SAMPLE_TINY
    small: SampleDataPresetConfig = _SAMPLE_SMALL
    hard: SampleDataPresetConfig = _SAMPLE_HARD

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        defaults = {"tiny": _SAMPLE_TINY, "small": _SAMPLE_SMALL, "hard": _SAMPLE_HARD}
        return _merge_presets(data, {name: preset.model_dump() for name, preset in defaults.items()})


class SampleDataConfig(StrictModel):
    """``configs/sample_data.yaml``: the ``sample-data`` builder's knobs."""

    preset: Literal["tiny", "small", "hard"] = Field("small", description="which entry of presets to build")
    seed: int = Field(0, ge=0, description="same seed, same bytes")
    image_size: int = Field(
        0, ge=0, le=1024, description="side of the square base images (px); 0: the preset's image_size"
    )
    jpeg_quality: int = Field(90, ge=50, le=100, description="JPEG quality of the base images")
    presets: SampleDataPresets = SampleDataPresets()

    @field_validator("image_size")
    @classmethod
    def _size(cls, value: int) -> int:
        if 0 < value < 16:
            raise ValueError("must be 0 (the preset's) or >= 16")
        return value

    @property
    def counts(self) -> SampleDataPresetConfig:
        """The selected preset's counts."""
        return getattr(self.presets, self.preset)

    @property
    def size(self) -> int:
        """Side of the base images: ``image_size`` if set, else the preset's."""
        return self.image_size or self.counts.image_size
