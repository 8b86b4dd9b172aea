"""AMG settings (algorithms.md §6): one pydantic schema, three presets, every constant a config value.

Presets (``name``), each for both sigma modes (``sigma_mode``):

- ``paper``: exactly the §6.3 constants of the public SD code (c1 = 13, G_spe whenever sigma > 0,
  ``s2 = max(min(6.5 - s1, (6.5 - s1) / 0.3 sigma), 0)``, ``lambda_t = 0.3 + 0.1 exp(-0.005 t)``, G_dup held
  10 steps, ``c3 = 100 (sigma - 0.3) exp((1000 - t) / 170)``, sigma recomputed before G_sim, check every
  step). y_N needs more than 20 supporting duplicates (``dup_min_count = 21``, "more than 20 of the 1000
  nearest neighbours" in the public code). With ``sigma_mode="nl2"`` the §6.3 pixel threshold
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

Cost knobs (copyguard's detection-gated mode, issue 5): with ``gated`` on, sigma (VAE decoding, SSCD, the
index search) is computed only for images whose first-step text-conditional magnitude (§2) exceeds
``gate_threshold``; ``check_every`` spaces the checks, and an image stops being checked once its sigma
falls to ``recheck_sigma`` or below. Between checks G_spe/G_dup reuse the last sigma; G_sim needs a fresh one.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from copyguard.curation.config import StrictModel
from copyguard.curation.errors import ConfigError

__all__ = ["PRESET_NAMES", "AMGConfig", "preset_values"]

PRESET_NAMES = ("paper", "strong", "custom")

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
    if name not in PRESET_NAMES:
        raise ConfigError(f"unknown AMG preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
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
    """Anti-Memorization Guidance settings; see the module docstring and algorithms.md §6."""

    name: Literal["paper", "strong", "custom"] = Field("paper", description="preset the values came from")
    sigma_mode: Literal["sscd", "nl2"] = Field("sscd", description="object level SSCD cosine or pixel -nL2")
    use_spe: bool = Field(True, description="G_spe, despecification (eq. 14)")
    use_dup: bool = Field(True, description="G_dup, caption deduplication (eq. 16)")
    use_sim: bool = Field(True, description="G_sim, dissimilarity (eq. 17; needs a differentiable embedder)")
    # sigma (§6.1)
    sigma_zero: float = Field(0.0, description="sigma meaning 'no similarity'; scales use sigma - sigma_zero")
    nl2_k: int = Field(50, ge=1, description="kNN size of nL2")
    nl2_alpha: float = Field(0.5, gt=0, description="alpha of nL2")
    # lambda_t = lambda_base + lambda_amp exp(-lambda_rate t) (§6.3)
    lambda_base: float = 0.3
    lambda_amp: float = 0.1
    lambda_rate: float = Field(0.005, ge=0)
    # G_spe (eq. 13-14)
    c1: float = Field(13.0, ge=0)
    spe_gate: Literal["positive", "lambda"] = Field(
        "positive", description="positive: whenever sigma > sigma_zero (§6.3); lambda: sigma > lambda_t"
    )
    # G_dup (eq. 15-16, §6.2)
    c2: float | None = Field(None, ge=0, description="None: the §6.3 form c2 = (s0 - 1 - s1) / c2_ref")
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
    gate_threshold: float | None = Field(None, description="calibrated first-step magnitude threshold (§2)")
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
        if name not in PRESET_NAMES or mode not in ("sscd", "nl2"):
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
