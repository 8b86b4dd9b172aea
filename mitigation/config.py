"""The mitigation stage's config schemas: detection, prompt optimization, AMG, generation and the audit.

Schemas only: this module imports pydantic, the standard library and :mod:`copyguard.common`, so the CLI
and the config tests read and validate every mitigation setting without importing torch or diffusers.

Mitigation methods: :data:`MITIGATIONS` is the one list of their names; ``none`` (plain CFG sampling),
``prompt-opt`` (prompt-embedding optimization, Wen et al., ICLR 2024, Sec. 4), ``amg`` (Anti-Memorization
Guidance, Chen et al., CVPR 2024, eq. 10-17) and the baselines ``gni``, ``rt``, ``cwr``, ``rna`` (Somepalli
et al., NeurIPS 2023). Everything else (CLI choices, audit settings, benchmark variants) derives from it.

AMG presets (``AMGConfig.name``, :data:`AMG_PRESETS`), each for both sigma modes (``sigma_mode``):

- ``paper``: exactly the constants of Chen et al.'s public SD code (c1 = 13, G_spe whenever sigma > 0,
  ``s2 = max(min(6.5 - s1, (6.5 - s1) / 0.3 sigma), 0)``, ``lambda_t = 0.3 + 0.1 exp(-0.005 t)``, G_dup held
  10 steps, ``c3 = 100 (sigma - 0.3) exp((1000 - t) / 170)``, sigma recomputed before G_sim, check every
  step). y_N needs more than 20 supporting duplicates (``dup_min_count = 21``, "more than 20 of the 1000
  nearest neighbours" in the public code). With ``sigma_mode="nl2"`` the paper's pixel-level threshold
  ``1.95 - 0.45 exp(-0.025 t)`` becomes ``lambda_t = -1.95 + 0.45 exp(-0.025 t)`` (sigma = -nL2),
  ``sigma_zero = -1/alpha = -2`` and ``c3_offset = -1.95`` (copyguard's mapping of the SD constants onto the
  nL2 scale; the paper publishes only the threshold).
- ``strong``: the paper's "Strong" setting differs from "Main" only in unpublished guidance scales, so
  copyguard's strong preset is documented here: c1 = 19.5 (G_spe saturates at sigma = 1/3 instead of 1/2),
  lambda lowered by 0.05 (G_dup/G_sim trigger earlier), c3 scale x3 with its offset lowered by 0.1 (a larger
  dissimilarity push that already acts just above lambda).
- ``custom``: the paper values as a base with explicit values on top.

``AMGConfig(name="strong")`` (or ``name: strong`` in a YAML section) fills every value not given explicitly
from that preset; :meth:`AMGConfig.preset` does the same and relabels a named preset ``custom`` when an
override changes it. The schema defaults are the ``paper``/``sscd`` preset.

AMG cost knobs (copyguard's detection-gated mode): with ``gated`` on, sigma (VAE decoding, SSCD, the index
search) is computed only for images whose first-step text-conditional magnitude (Wen et al., eq. 1) exceeds
``gate_threshold``; ``check_every`` spaces the checks, and an image stops being checked once its sigma
falls to ``recheck_sigma`` or below. Between checks G_spe/G_dup reuse the last sigma; G_sim needs a fresh one.

Audit detection threshold (:class:`AuditConfig`), in order of precedence:

1. ``detect_threshold`` when set (a fixed, model-specific value);
2. calibrated on ``--reference-prompts`` so that at most ``detect.target_fpr`` of them are flagged;
3. otherwise the **documented default**: ``median + fallback_mads * 1.4826 * MAD`` of the audited prompts'
   own scores, i.e. prompts whose first-step magnitude is a robust outlier among them (Wen et al. give no
   universal threshold: magnitudes do not carry over between models). With ``fallback_mads = 3`` about 0.1%
   of a normal score distribution lies above it; it needs memorized prompts to be a minority of the file.

Audit generation: every prompt gets ``seeds`` images without mitigation ("none") and with each of
``mitigations`` (default: AMG, ``paper`` preset). Similarity: ``sscd`` (cosine to the nearest training image
through the curation job's index) or ``nl2`` (pixel level, needs ``train_images``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from copyguard.common.config import StrictModel
from copyguard.common.errors import ConfigError

__all__ = [
    "AMG_PRESETS",
    "AMG_PRESET_NAMES",
    "DEFAULT_FAIL_ON",
    "MITIGATIONS",
    "AMGConfig",
    "AuditConfig",
    "DetectConfig",
    "GenerateConfig",
    "PromptOptConfig",
    "preset_values",
]

# THE list of mitigation method names (see the module docstring); keep "none" first.
MITIGATIONS: tuple[str, ...] = ("none", "prompt-opt", "amg", "gni", "rt", "cwr", "rna")
Mitigation = Literal[MITIGATIONS]  # type: ignore[valid-type]
# What the audit generates besides "none".
AuditMitigation = Literal[tuple(m for m in MITIGATIONS if m != "none")]  # type: ignore[valid-type]

# The named AMG presets; "custom" is the paper preset with explicit values on top.
AMG_PRESETS: tuple[str, ...] = ("paper", "strong")
AMG_PRESET_NAMES: tuple[str, ...] = (*AMG_PRESETS, "custom")
AmgPresetName = Literal[AMG_PRESET_NAMES]  # type: ignore[valid-type]

DEFAULT_FAIL_ON = ["share_above_0.5>1", "top1>0.8"]


# --------------------------------------------------------------------------------------------- detection
class DetectConfig(StrictModel):
    """``configs/detect.yaml`` (section ``detect``): text-conditional magnitude (Wen et al., ICLR 2024, eq. 1).

    Steps are indices into the sampling trajectory; the score averages ``d_t`` over ``[start, end)`` and
    over ``generations`` seeds.
    """

    num_inference_steps: int = Field(50, ge=1, description="length of the (DDIM or other) trajectory")
    start: int = Field(0, ge=0, description="first scored step (inclusive)")
    end: int | None = Field(1, ge=1, description="last scored step (exclusive); null = all steps")
    generations: int = Field(1, ge=1, description="n: initial latents (seeds) per prompt")
    seed: int = Field(0, ge=0, description="generation j uses seed + j")
    guidance_scale: float = Field(7.5, ge=0.0, description="CFG scale s0 of the trajectory")
    batch_size: int = Field(8, ge=1, description="prompts per UNet call (the call holds 2x as many)")
    height: int | None = Field(None, ge=8, description="image height; null = the UNet's sample size")
    width: int | None = Field(None, ge=8, description="image width; null = the UNet's sample size")
    target_fpr: float = Field(0.01, gt=0.0, lt=1.0, description="calibration: share of reference flagged")

    @model_validator(mode="after")
    def _check_window(self) -> DetectConfig:
        end = self.resolved_end
        if not self.start < end <= self.num_inference_steps:
            raise ValueError(
                f"need 0 <= start < end <= num_inference_steps, got start={self.start} end={self.end} "
                f"num_inference_steps={self.num_inference_steps}"
            )
        return self

    @property
    def resolved_end(self) -> int:
        """The exclusive last scored step, ``num_inference_steps`` when ``end`` is null."""
        return self.num_inference_steps if self.end is None else self.end

    @property
    def seeds(self) -> list[int]:
        """The seed of each generation: ``seed + j``."""
        return [self.seed + j for j in range(self.generations)]


# ------------------------------------------------------------------------------------------ prompt-opt
class PromptOptConfig(StrictModel):
    """Prompt-embedding optimization constants (Wen et al., ICLR 2024, Sec. 4: AdamW, lr 0.05, 10 steps).

    ``l_target`` null means "calibrate it" (the caller must then pass one).
    """

    lr: float = Field(0.05, gt=0.0)
    max_iters: int = Field(10, ge=0)
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW's default decoupled weight decay")
    l_target: float | None = Field(None, ge=0.0)
    calibration_quantile: float = Field(
        0.5, gt=0.0, lt=1.0, description="of non-memorized first-step magnitudes"
    )


# ------------------------------------------------------------------------------------------------- AMG
_PAPER_SSCD: dict[str, Any] = {
    "sigma_zero": 0.0,
    "lambda_base": 0.3,
    "lambda_amp": 0.1,
    "lambda_rate": 0.005,
    "c1": 13.0,
    "spe_gate": "positive",
    "c2": None,
    "c2_ref": 0.3,
    "dup_hold_steps": 10,
    "dup_min_count": 21,
    "c3_scale": 100.0,
    "c3_offset": 0.3,
    "c3_tau": 170.0,
    "c3_t_ref": 1000.0,
    "recompute_sigma": True,
}
_PIXEL: dict[str, Any] = {
    "sigma_zero": -2.0,
    "lambda_base": -1.95,
    "lambda_amp": 0.45,
    "lambda_rate": 0.025,
    "c3_offset": -1.95,
}


def preset_values(name: str, sigma_mode: str = "sscd") -> dict[str, Any]:
    """The constants of preset ``name`` (``custom`` = ``paper``) for ``sigma_mode`` (``sscd`` or ``nl2``)."""
    if name not in AMG_PRESET_NAMES:
        raise ConfigError(f"unknown AMG preset {name!r}; choose one of {', '.join(AMG_PRESET_NAMES)}")
    if sigma_mode not in ("sscd", "nl2"):
        raise ConfigError(f"unknown AMG sigma_mode {sigma_mode!r}; choose sscd or nl2")
    values = {**_PAPER_SSCD, **(_PIXEL if sigma_mode == "nl2" else {})}
    if name == "strong":
        values.update(
            c1=1.5 * values["c1"],
            lambda_base=values["lambda_base"] - 0.05,
            c3_scale=3 * values["c3_scale"],
            c3_offset=values["c3_offset"] - 0.1,
        )
    return values


class AMGConfig(StrictModel):
    """Anti-Memorization Guidance settings (Chen et al., CVPR 2024, eq. 10-17); presets: module docstring."""

    name: AmgPresetName = Field("paper", description="preset the values came from")
    sigma_mode: Literal["sscd", "nl2"] = Field("sscd", description="object level SSCD cosine or pixel -nL2")
    use_spe: bool = Field(True, description="G_spe, despecification (eq. 14)")
    use_dup: bool = Field(True, description="G_dup, caption deduplication (eq. 16)")
    use_sim: bool = Field(True, description="G_sim, dissimilarity (eq. 17; needs a differentiable embedder)")
    # sigma: SSCD cosine or pixel-level -nL2 to the nearest training image
    sigma_zero: float = Field(0.0, description="sigma meaning 'no similarity'; scales use sigma - sigma_zero")
    nl2_k: int = Field(50, ge=1, description="kNN size of nL2")
    nl2_alpha: float = Field(0.5, gt=0, description="alpha of nL2")
    # lambda_t = lambda_base + lambda_amp exp(-lambda_rate t) (paper preset: 0.3 + 0.1 exp(-0.005 t))
    lambda_base: float = 0.3
    lambda_amp: float = 0.1
    lambda_rate: float = Field(0.005, ge=0)
    # G_spe (eq. 13-14)
    c1: float = Field(13.0, ge=0)
    spe_gate: Literal["positive", "lambda"] = Field(
        "positive",
        description="positive: whenever sigma > sigma_zero (public code); lambda: sigma > lambda_t",
    )
    # G_dup (eq. 15-16; y_N from the duplicates of the nearest training image)
    c2: float | None = Field(
        None, ge=0, description="None: the public code's form c2 = (s0 - 1 - s1) / c2_ref"
    )
    c2_ref: float = Field(0.3, gt=0)
    dup_hold_steps: int = Field(10, ge=1, description="steps G_dup stays on once triggered")
    dup_min_count: int = Field(21, ge=1, description="duplicates needed for a y_N (index.duplicated_caption)")
    # G_sim (eq. 17): c3 = c3_scale (sigma - c3_offset) exp((c3_t_ref - t) / c3_tau), clamped >= 0
    c3_scale: float = Field(100.0, ge=0)
    c3_offset: float = 0.3
    c3_tau: float = Field(170.0, gt=0)
    c3_t_ref: float = 1000.0
    recompute_sigma: bool = Field(True, description="recompute sigma after G_spe/G_dup, before G_sim")
    # cost: detection-gated mode
    gated: bool = Field(False, description="check only prompts whose first-step magnitude > gate_threshold")
    gate_threshold: float | None = Field(
        None, description="calibrated first-step magnitude threshold (Wen et al.)"
    )
    check_every: int = Field(1, ge=1, description="compute sigma every n-th step")
    recheck_sigma: float | None = Field(None, description="stop checking an image once sigma <= this")
    max_batch: int = Field(4, ge=1, description="images decoded/embedded at once for sigma and G_sim")
    strict_embedder: bool = Field(
        False, description="require the embedder's name and input size to equal the index's"
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        name = data.get("name", "paper")
        mode = data.get("sigma_mode", "sscd")
        if name not in AMG_PRESET_NAMES or mode not in ("sscd", "nl2"):
            return data  # the field validators report it
        return {**preset_values(name, mode), **data}

    @classmethod
    def preset(cls, name: str = "paper", sigma_mode: str = "sscd", **overrides: Any) -> AMGConfig:
        """Preset ``name`` for ``sigma_mode`` with ``overrides``; a changed named preset becomes ``custom``."""
        base = preset_values(name, sigma_mode)
        if name != "custom" and any(k in base and base[k] != v for k, v in overrides.items()):
            name = "custom"
        return cls(**{**base, **overrides, "name": name, "sigma_mode": sigma_mode})

    @property
    def enabled(self) -> bool:
        """Whether any guidance term is on (all off reproduces the standard pipeline bit for bit)."""
        return self.use_spe or self.use_dup or self.use_sim


# ------------------------------------------------------------------------------------------ generation
class GenerateConfig(StrictModel):
    """``configs/generate.yaml`` (section ``generate``): ``copyguard generate`` with one mitigation."""

    mitigation: Mitigation = Field("none", description="none | prompt-opt | amg | gni | rt | cwr | rna")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="one image per seed")
    num_inference_steps: int = Field(50, ge=1, description="DDIM steps (the papers use 50)")
    guidance_scale: float = Field(7.5, gt=1.0, description="CFG scale s0")
    height: int | None = Field(None, ge=8, description="null: the model's native size")
    width: int | None = Field(None, ge=8, description="null: the model's native size")
    batch_size: int = Field(4, ge=1, description="prompts per sampling call")
    baseline_seed: int = Field(0, ge=0, description="seed of the baselines' random edits")
    amg: AMGConfig = Field(default_factory=AMGConfig)
    prompt_opt: PromptOptConfig = Field(default_factory=PromptOptConfig)


# ----------------------------------------------------------------------------------------------- audit
class AuditConfig(StrictModel):
    """``configs/audit.yaml`` (section ``audit``): ``copyguard audit``; see the module docstring.

    Gate conditions: :mod:`copyguard.mitigation.audit_gate`.
    """

    detect: DetectConfig = Field(default_factory=DetectConfig, description="first-step detection; target_fpr")
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
    similarity: Literal["sscd", "nl2"] = Field("sscd", description="similarity to training images")
    embedder: Literal["sscd-onnx", "sscd-distilled-onnx", "torchscript"] | None = Field(
        None, description="image embedder for similarity; null: the kind that built the index"
    )
    embedder_path: str | None = Field(None, description="model file for the embedder (torchscript: required)")
    train_images: str | None = Field(
        None, description="training shards (glob); null: the curate job's OUT/shards next to the index"
    )
    nl2_k: int = Field(50, ge=1, description="kNN size of nL2 (Chen et al.)")
    nl2_alpha: float = Field(0.5, gt=0, description="alpha of nL2 (Chen et al.)")
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
