"""Session fixtures for the lab model: the tiny sample data and the tiny lab model built on it (once).

Import them into a test module (``from tests.conftest_lab import lab_tiny_data_fixture,
lab_tiny_model_fixture``; they register as ``lab_tiny_data`` and ``lab_tiny_model``) or into
``tests/conftest.py`` to share one build across all modules of a session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Development speed-up only (CI never sets it): a folder where the tiny sample data and lab model are kept
# between pytest sessions. Delete it after changing the lab-model or sample-data code.
CACHE_ENV = "COPYGUARD_TEST_CACHE"


def _cached(name: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool]:
    """The folder for ``name`` and whether it already holds a finished build."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        return tmp_path_factory.mktemp(name), False
    out = Path(root) / name
    return out, (out / ".done").is_file()


@pytest.fixture(scope="session", name="lab_tiny_data")
def lab_tiny_data_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``copyguard sample-data --preset tiny`` written to a session folder."""
    from copyguard.pipelines.lab.config import SampleDataConfig
    from copyguard.pipelines.lab.sample_data import build_sample_data

    out, done = _cached("lab_tiny_data", tmp_path_factory)
    if not done:
        build_sample_data(SampleDataConfig(preset="tiny"), out)
        (out / ".done").touch()
    return out


@pytest.fixture(scope="session", name="lab_tiny_model")
def lab_tiny_model_fixture(lab_tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``tiny`` lab model trained and measured on :func:`lab_tiny_data` (a diffusers folder)."""
    import torch

    from copyguard.pipelines.lab.config import LabConfig
    from copyguard.pipelines.lab.run import run_lab_model

    out, done = _cached("lab_tiny_model", tmp_path_factory)
    if done:
        return out
    threads = torch.get_num_threads()
    try:
        run_lab_model(LabConfig(preset="tiny"), str(lab_tiny_data / "*.tar"), out)
    finally:
        torch.set_num_threads(threads)
    (out / ".done").touch()
    return out
