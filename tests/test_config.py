"""Config loading: YAML + --set overrides, validated; every mistake is one line naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

from copyguard.curation.config import StrictModel, load_config
from copyguard.curation.errors import ConfigError


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
