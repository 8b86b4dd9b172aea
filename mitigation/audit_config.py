"""``configs/audit.yaml`` (section ``audit``): the settings of ``copyguard audit``.

Detection (algorithms.md §2): the threshold is, in order of precedence,

1. ``detect_threshold`` when set (a fixed, model-specific value);
2. calibrated on ``--reference-prompts`` so that at most ``detect.target_fpr`` of them are flagged;
3. otherwise the **documented default**: ``median + fallback_mads * 1.4826 * MAD`` of the audited prompts'
   own scores, i.e. prompts whose first-step magnitude is a robust outlier among them (§2 has no universal
   threshold: magnitudes do not carry over between models). With ``fallback_mads = 3`` about 0.1% of a
   normal score distribution lies above it; it needs memorized prompts to be a minority of the file.

Generation: every prompt gets ``seeds`` images without mitigation ("none") and with each of
``mitigations`` (default: AMG, ``paper`` preset, §6.3). Similarity (§7): ``sscd`` (cosine to the nearest
training image through the curation job's index) or ``nl2`` (pixel level, needs ``train_images``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from copyguard.curation.config import StrictModel
from copyguard.mitigation.amg_config import AMGConfig
from copyguard.mitigation.detect import DetectConfig
from copyguard.mitigation.prompt_opt import PromptOptConfig

__all__ = ["AuditConfig", "AuditMitigation", "DEFAULT_FAIL_ON"]

AuditMitigation = Literal["prompt-opt", "amg", "gni", "rt", "cwr", "rna"]
DEFAULT_FAIL_ON = ["share_above_0.5>1", "top1>0.8"]


class AuditConfig(StrictModel):
    """Settings of the audit; see the module docstring. Gate conditions: :mod:`.audit_gate`."""

    detect: DetectConfig = Field(default_factory=DetectConfig, description="§2 scoring; target_fpr")
    detect_threshold: float | None = Field(None, description="fixed detection threshold (skips calibration)")
    fallback_mads: float = Field(3.0, gt=0, description="no references: median + k * 1.4826 * MAD")
    explain_top: int = Field(8, ge=1, description="tokens listed per flagged prompt in the report")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3], min_length=1, description="per prompt")
    mitigations: list[AuditMitigation] = Field(
        default_factory=lambda: ["amg"], description="generated besides 'none' (no mitigation)"
    )
    num_inference_steps: int = Field(50, ge=1, description="DDIM steps")
    guidance_scale: float = Field(7.5, gt=1.0, description="CFG scale s0")
    height: int | None = Field(None, ge=8, description="null: the model's native size")
    width: int | None = Field(None, ge=8, description="null: the model's native size")
    batch_size: int = Field(4, ge=1, description="prompts generated per call; results saved per batch")
    baseline_seed: int = Field(0, ge=0, description="seed of the baselines' random edits")
    amg: AMGConfig = Field(default_factory=AMGConfig, description="AMG constants (paper preset)")
    prompt_opt: PromptOptConfig = Field(default_factory=PromptOptConfig)
    similarity: Literal["sscd", "nl2"] = Field("sscd", description="§7 similarity to training images")
    embedder: Literal["sscd-onnx", "sscd-distilled-onnx", "torchscript"] | None = Field(
        None, description="image embedder for similarity; null: the kind that built the index"
    )
    embedder_path: str | None = Field(None, description="model file for the embedder (torchscript: required)")
    train_images: str | None = Field(
        None, description="training shards (glob); null: the curate job's OUT/shards next to the index"
    )
    nl2_k: int = Field(50, ge=1, description="kNN size of nL2 (§6.1)")
    nl2_alpha: float = Field(0.5, gt=0, description="alpha of nL2 (§6.1)")
    fid_max_real: int = Field(2000, ge=2, description="real images read for FID at most")
    clip_model: str | None = Field(None, description="local CLIP folder (transformers) for prompt alignment")
    gate_on: str = Field("none", description="setting the gate's unprefixed metrics refer to")
    fail_on: list[str] = Field(default_factory=lambda: list(DEFAULT_FAIL_ON), description="gate conditions")
    report_flagged_max: int = Field(50, ge=0, description="flagged prompts shown in detail in report.html")

    @field_validator("mitigations")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("mitigations must not repeat")
        return value

    @property
    def settings(self) -> list[str]:
        """``none`` followed by the configured mitigations: every generation setting of the audit."""
        return ["none", *self.mitigations]
