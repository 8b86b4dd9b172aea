"""The training stage's config schemas: ``copyguard train`` (``configs/train.yaml``, section ``train``).

Schemas only: this module imports pydantic, the standard library and :mod:`copyguard.common` (plus the
curation schemas), never torch. The command-line arguments live in :mod:`copyguard.train.args`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from copyguard.common.config import StrictModel
from copyguard.curation.config import DEFAULT_MAX_PIXELS

__all__ = [
    "LORA_TARGETS",
    "DataConfig",
    "FilterConfig",
    "LoraConfig",
    "TrainConfig",
    "ValidationConfig",
]

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class DataConfig(StrictModel):
    """The WebDataset stream: image transforms, caption dropout, shuffling, workers."""

    resolution: int | None = Field(None, ge=8, description="training size in px (None: the model's own)")
    center_crop: bool = Field(True, description="center crop (false: a seeded random crop)")
    random_flip: bool = Field(False, description="horizontal flip with probability 0.5")
    caption_dropout: float = Field(0.1, ge=0, le=1, description="share of captions replaced by ''")
    shuffle_buffer: int = Field(256, ge=0, description="samples in the shuffle buffer (0: no shuffle)")
    workers: int = Field(0, ge=0, description="DataLoader worker processes")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="decompression-bomb limit per image")
    max_member_bytes: int = Field(64 << 20, ge=1024, description="larger tar members are skipped unread")
    max_caption_bytes: int = Field(8 << 10, ge=16, description="longer captions are skipped unread")
    max_metadata_bytes: int = Field(1 << 20, ge=16, description="larger .json members are skipped unread")


class LoraConfig(StrictModel):
    """LoRA on the UNet attention projections (peft)."""

    rank: int = Field(4, ge=1)
    alpha: float = Field(4.0, gt=0)
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_TARGETS))


class FilterConfig(StrictModel):
    """The training-time memorization filter (Wen et al., ICLR 2024: magnitude filtering), on by default.

    ``threshold`` fixed, or (when None) calibrated from the magnitudes seen over the first ``calibrate_steps``
    optimizer steps (nothing is filtered while calibrating) by ``rule``: ``mad`` (default) sets
    ``median + mads * 1.4826 * MAD``, which drops (almost) nothing from data without a memorization signal
    on a model whose magnitudes do not drift after calibration (a fine-tune on new data drifts: measured in
    docs/training.md) and adapts to the model's scale; ``percentile`` sets the ``percentile``, which always drops its share
    (1% at p99) whatever the data (measured on the lab model: docs/training.md). ``timestep_buckets`` N > 1
    calibrates one threshold per equal-width bucket of ``[0, num_train_timesteps)`` (the magnitude's scale
    depends on ``t``) and compares each sample with its own bucket's (default 10); 1 is the paper's single
    threshold. A fixed ``threshold`` stays one number. ``recalibrate_every`` R > 0 (calibrated thresholds only)
    recomputes the thresholds every R optimizer steps from the magnitudes of the last ``calibrate_steps``
    steps, so the rule follows the magnitudes as a fine-tune moves them (default 20: measured on a lab model that
    memorizes, it cut memorization as much as one calibration and dropped fewer clean samples, docs/training.md);
    0 keeps the first calibration. ``batched``: true makes one UNet call on the
    concatenated (uncond, cond) batch of 2B (the paper's form); false runs the unconditional half as a
    separate no-grad call. ``auto`` (default) batches on CUDA and runs the no-grad call elsewhere: on a
    compute-bound CPU the batched call's backward over 2B samples costs more than one extra no-grad forward
    (measured 1.49x vs 1.15x the unfiltered step; docs/training.md).
    """

    enabled: bool = True
    threshold: float | None = Field(None, gt=0)
    rule: Literal["mad", "percentile"] = "mad"
    mads: float = Field(4.0, gt=0)
    percentile: float = Field(99.0, gt=0, lt=100)
    calibrate_steps: int = Field(20, ge=1)
    recalibrate_every: int = Field(20, ge=0)
    timestep_buckets: int = Field(10, ge=1)
    batched: bool | Literal["auto"] = "auto"

    def use_batched(self, device_type: str) -> bool:
        """Whether to make the single batched call on a device of type ``device_type``."""
        return device_type == "cuda" if self.batched == "auto" else bool(self.batched)


class ValidationConfig(StrictModel):
    """Images for fixed prompts every ``every`` steps (0: never), saved and sent to the tracker."""

    prompts: list[str] = Field(default_factory=list)
    every: int = Field(0, ge=0)
    steps: int = Field(20, ge=1)
    guidance_scale: float = Field(7.5, ge=0)
    seed: int = Field(0, ge=0)


class TrainConfig(StrictModel):
    """Fine-tuning settings (full UNet or LoRA; text encoder and VAE frozen)."""

    seed: int = Field(0, ge=0)
    mode: Literal["full", "lora"] = "lora"
    max_steps: int = Field(500, ge=1, description="optimizer steps")
    batch_size: int = Field(16, ge=1, description="samples per micro-batch and process")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(1e-4, gt=0)
    lr_scheduler: Literal[
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
    ] = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(1e-2, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    ema: bool = False
    ema_decay: float = Field(0.9999, gt=0, lt=1)
    checkpoint_every: int = Field(100, ge=1)
    checkpoints_keep: int = Field(2, ge=1, description="newest checkpoints kept")
    log_every: int = Field(10, ge=1)
    report_to: Literal["tensorboard", "wandb", "all"] = Field(
        "tensorboard", description="experiment tracker(s) of accelerate; 'all': every installed one"
    )
    threads: int = Field(0, ge=0, description="CPU torch threads (0: all when idle, else 1)")
    data: DataConfig = DataConfig()
    lora: LoraConfig = LoraConfig()
    filter: FilterConfig = FilterConfig()
    validation: ValidationConfig = ValidationConfig()
    # Test hook, documented in docs/training.md: multiply the loss of this optimizer step (1-based) by NaN, to
    # check that a non-finite loss stops the run cleanly. Never set it for real training.
    debug_nan_at_step: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.lr_warmup_steps >= self.max_steps and self.lr_warmup_steps:
            raise ValueError("lr_warmup_steps must be below max_steps")
        return self
