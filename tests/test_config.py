"""Config loading: YAML + --set overrides, validated; every mistake is one line naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field, ValidationError

from copyguard.common.config import StrictModel, load_config
from copyguard.common.errors import ConfigError


class MinHash(StrictModel):
    threshold: float = Field(0.7, ge=0.0, le=1.0)
    num_perm: int = Field(128, ge=16)


class Job(StrictModel):
    seed: int = 0
    mode: Literal["keep", "cap", "drop"] = "cap"
    sizes: list[int] = [2, 5]
    minhash: MinHash = MinHash()


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_defaults_file_and_overrides(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "job:\n  seed: 3\n  minhash:\n    threshold: 0.8\n")
    cfg = load_config(Job, "job", path, ["job.minhash.num_perm=256", "job.sizes=[1, 2, 3]", "job.mode=drop"])
    assert cfg.seed == 3 and cfg.minhash.threshold == 0.8 and cfg.minhash.num_perm == 256
    assert cfg.sizes == [1, 2, 3] and cfg.mode == "drop"
    assert load_config(Job, "job", None, []) == Job()  # no file anywhere: schema defaults


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("job:\n  sed: 1\n", [], "unknown key 'job.sed'"),
        ("job:\n  minhash:\n    threshhold: 0.5\n", [], "unknown key 'job.minhash.threshhold'"),
        (
            "job: {}\n",
            ["job.minhash.threshold=1.5"],
            "job.minhash.threshold: Input should be less than or equal to 1",
        ),
        ("job: {}\n", ["job.mode=sometimes"], "job.mode: Input should be 'keep', 'cap' or 'drop'"),
        ("job: {}\n", ["job.seed=abc"], "job.seed: Input should be a valid integer"),
        ("job: {}\n", ["seed=1"], "override key 'seed' must start with 'job.'"),
        ("job: {}\n", ["job.seed"], "override 'job.seed' must look like job.key=value"),
        ("job:\n  seed: 1\n", ["job.seed.x=1"], "'seed' is not a section"),
        ("other:\n  seed: 1\n", [], "must have exactly one top-level key 'job'"),
        ("job: [1, 2\n", [], "is not valid YAML (line"),
        ("job: 5\n", [], "'job' must be a mapping"),
    ],
)
def test_mistakes_name_the_key(tmp_path: Path, text: str, overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(Job, "job", _yaml(tmp_path, text), overrides)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(Job, "job", tmp_path / "nope.yaml", [])


# ------------------------------------------------------------------------------ the stages' schema modules
SCHEMA_MODULES = (
    "copyguard.curation.config",
    "copyguard.mitigation.config",
    "copyguard.train.config",
    "copyguard.pipelines.lab.config",
)
HEAVY = ("torch", "diffusers", "apache_beam", "faiss")


def _heavy_after_import(module: str) -> list[str]:
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [m for m in done.stdout.strip().split(",") if m]


@pytest.mark.parametrize("module", SCHEMA_MODULES)
def test_schema_modules_stay_light(module: str) -> None:
    """A schema module imports pydantic, the standard library and copyguard.common only: no ML stack."""
    assert _heavy_after_import(module) == []


def test_light_import_check_sees_a_heavy_import() -> None:
    """The check above really detects a heavy module (guards against a check that always passes)."""
    assert "torch" in _heavy_after_import("copyguard.mitigation.detect")


def test_one_list_of_mitigation_names() -> None:
    """GenerateConfig takes exactly MITIGATIONS; the audit takes every one of them but "none"."""
    from copyguard.mitigation.config import MITIGATIONS, AuditConfig, GenerateConfig

    assert MITIGATIONS[0] == "none" and len(set(MITIGATIONS)) == len(MITIGATIONS)
    for name in MITIGATIONS:
        assert GenerateConfig(mitigation=name).mitigation == name
    with pytest.raises(ValidationError):
        GenerateConfig(mitigation="amg-paper")
    assert AuditConfig(mitigations=list(MITIGATIONS[1:])).settings == list(MITIGATIONS)
    with pytest.raises(ValidationError):
        AuditConfig(mitigations=["none"])


def test_amg_presets_fill_values_and_name_custom() -> None:
    """Every named AMG preset validates; ``name: strong`` fills the strong constants; an override of a
    named preset through :meth:`AMGConfig.preset` relabels it ``custom``."""
    from copyguard.mitigation.config import AMG_PRESET_NAMES, AMG_PRESETS, AMGConfig, preset_values

    assert (*AMG_PRESETS, "custom") == AMG_PRESET_NAMES
    strong = AMGConfig(name="strong")
    assert strong.c1 == pytest.approx(19.5) and strong.lambda_base == pytest.approx(0.25)
    assert AMGConfig(name="strong", c1=1.0).c1 == 1.0  # explicit values win over the preset
    assert AMGConfig.preset("paper", c1=2.0).name == "custom"
    assert AMGConfig.preset("paper", gated=True).name == "paper"  # not a preset constant
    assert AMGConfig() == AMGConfig(**preset_values("paper"))
    with pytest.raises(ConfigError, match="unknown AMG preset"):
        preset_values("mild")


def test_lab_and_sample_data_presets_merge_partial_values() -> None:
    """One override inside a preset keeps the rest of that preset (both preset schemas)."""
    from copyguard.pipelines.lab.config import LabConfig, SampleDataConfig

    lab = load_config(LabConfig, "lab", None, ["lab.presets.small.unet.steps=7"])
    assert lab.presets.small.unet.steps == 7
    assert lab.presets.small.unet.block_out_channels == LabConfig().presets.small.unet.block_out_channels
    data = load_config(SampleDataConfig, "sample_data", None, ["sample_data.presets.tiny.unique=9"])
    assert data.presets.tiny.unique == 9
    assert data.presets.tiny.dup_counts == SampleDataConfig().presets.tiny.dup_counts
