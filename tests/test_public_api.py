"""Each stage package re-exports its public API lazily: every listed name resolves, nothing heavy on import."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = ("copyguard.curation", "copyguard.mitigation", "copyguard.train", "copyguard.pipelines")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves_to_its_module_object(package: str) -> None:
    pkg = importlib.import_module(package)
    assert pkg.__all__ and pkg.__doc__
    for name in pkg.__all__:
        value = getattr(pkg, name)
        assert getattr(importlib.import_module(value.__module__), name) is value, name
        assert name in pkg.__doc__, f"{package}.__doc__ does not list {name}"
        assert name in dir(pkg)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        pkg.no_such_name  # noqa: B018


def test_named_imports_of_the_documented_api() -> None:
    from copyguard.curation import TrainingIndex
    from copyguard.mitigation import Detector, StableDiffusionAMGPipeline, run_audit
    from copyguard.pipelines import run_curation
    from copyguard.train import MagnitudeFilter, run_training

    assert run_audit.__module__ == "copyguard.mitigation.audit"
    assert run_curation.__module__ == "copyguard.pipelines.curate"
    assert {TrainingIndex.__name__, Detector.__name__, StableDiffusionAMGPipeline.__name__} == {
        "TrainingIndex", "Detector", "StableDiffusionAMGPipeline"}  # fmt: skip
    assert callable(run_training) and MagnitudeFilter.__module__ == "copyguard.train.mem_filter"


def test_submodules_are_not_shadowed_by_exports() -> None:
    import copyguard.pipelines.curate as curate_module

    assert hasattr(curate_module, "run") and hasattr(curate_module, "run_curation")


_LIGHT = """
import sys
import {package}
heavy = sorted(m for m in ("torch", "apache_beam", "diffusers") if m in sys.modules)
own = sorted(m for m in sys.modules if m.startswith("{package}."))
print(heavy, own)
"""


@pytest.mark.parametrize("package", PACKAGES)
def test_importing_a_stage_package_imports_no_framework(package: str) -> None:
    code = _LIGHT.format(package=package)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[] []", res.stdout
