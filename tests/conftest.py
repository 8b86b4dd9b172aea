"""Shared fixtures. Heavy artefacts (sample data, the tiny lab model) are built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest_lab import lab_tiny_data_fixture, lab_tiny_model_fixture  # noqa: F401  (session fixtures)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# Fixtures whose first use costs minutes: every test that asks for one is ``slow`` (``make test`` runs the
# others in under 15 minutes; ``make test-slow`` these).
SLOW_FIXTURES = frozenset({"lab_tiny_model"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny SD pipeline in diffusers format (``tests/tiny_sd.py``, built in a second), for tests
    that load, fine-tune or resume any SD folder: the trained lab model would cost minutes and add nothing."""
    from tests.tiny_sd import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd") / "sd")


@pytest.fixture(scope="module")
def torch_single_thread():
    """Tiny models run much faster on one thread (and do not stall when the cores are busy)."""
    from tests.tiny_sd import torch_threads

    with torch_threads(1):
        yield
