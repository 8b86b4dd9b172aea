"""Shared fixtures. Heavy artefacts (sample data, the tiny lab model) are built once per session."""

from __future__ import annotations

import os

import pytest

from tests.conftest_lab import lab_tiny_data_fixture, lab_tiny_model_fixture  # noqa: F401  (session fixtures)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def torch_single_thread():
    """Tiny models run much faster on one thread (and do not stall when the cores are busy)."""
    from tests.tiny_sd import torch_threads

    with torch_threads(1):
        yield
