"""The detection, mitigation, cost and plot sections of ``docs/results.md`` (see results_doc.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["costs_section", "detection_section", "mitigation_section", "plots_section"]

CPU = "dev-2cpu"
Results = dict[str, dict[str, dict[str, Any]]]


def _missing(title: str, command: str) -> str:
    return f"## {title}\n\nNot measured yet: run `{command}`.\n"


def detection_section(res: Results, machine: str = CPU) -> str:
    return _missing("Detection", "python -m benchmarks.lab_mitigation")


def mitigation_section(res: Results, machine: str = CPU) -> str:
    return _missing("Mitigation", "python -m benchmarks.lab_mitigation")


def costs_section(res: Results, machine: str = CPU) -> str:
    return _missing("Costs", "python -m benchmarks.bench_mitigation")


def plots_section(res: Results, img_dir: Path, machine: str = CPU) -> str:
    return _missing("Plots", "make bench")
