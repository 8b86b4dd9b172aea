"""Every ``configs/*.yaml`` validates against its job's schema and equals the schema's defaults."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from copyguard.common.config import load_config

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = {
    "curate": "copyguard.curation.config:CurateConfig",
    "sample_data": "copyguard.pipelines.lab.config:SampleDataConfig",
    "lab": "copyguard.pipelines.lab.config:LabConfig",
    "detect": "copyguard.mitigation.config:DetectConfig",
    "generate": "copyguard.mitigation.config:GenerateConfig",
    "audit": "copyguard.mitigation.config:AuditConfig",
    "train": "copyguard.train.config:TrainConfig",
}


def _schema(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def test_every_config_file_has_a_schema() -> None:
    files = {p.stem for p in (ROOT / "configs").glob("*.yaml")}
    assert files <= set(SCHEMAS), f"configs without a schema entry here: {sorted(files - set(SCHEMAS))}"


@pytest.mark.parametrize("job", sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_yaml_equals_schema_defaults(job: str) -> None:
    schema = _schema(SCHEMAS[job])
    path = ROOT / "configs" / f"{job}.yaml"
    assert list(yaml.safe_load(path.read_text())) == [job]
    assert load_config(schema, job, path, []) == schema()
