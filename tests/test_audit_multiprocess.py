"""``copyguard audit`` on two processes (issue 15): ``accelerate launch --num_processes 2 -m copyguard.pipelines
audit ...`` must write the same ``report.json`` (detection, metrics, per-prompt scores and similarities, gate)
as one process, on the tiny lab model and index of :mod:`tests.test_audit` (its ``setup`` fixture).

``accelerate launch --cpu --num_processes 2`` starts one process in accelerate 1.x (multi-CPU means mpirun),
so the tests launch with the torchrun launcher (``--multi_gpu``) and ``ACCELERATE_USE_CPU=true``; the audit
initialises its state for the CPU itself (``--device cpu``), so two CPU workers split the prompts
(:func:`test_two_cpu_processes_split_the_audit`). :func:`test_two_processes_give_the_same_report_as_one`
checks the split itself (fixed prompt batches shared over the ranks, rank 0 measures and gates).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from copyguard.pipelines.cli import main
from tests.test_audit import setup  # noqa: F401  (module fixture: the tiny lab model, index, prompts)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 400
PROBE = """
import os
if os.environ.get("CG_AUDIT_CPU_STATE") and "LOCAL_RANK" in os.environ:
    from accelerate import PartialState
    PartialState(cpu=True)
"""
GATE = ["--fail-on", "top1>1.5", "--fail-on", "flagged>100"]


def launch(argv: list[str], probe: Path | None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "true",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(
            [*([str(probe)] if probe else []), str(ROOT), os.environ.get("PYTHONPATH", "")]
        ),
    }
    if probe:
        env["CG_AUDIT_CPU_STATE"] = "1"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        "-m", "copyguard.pipelines", *argv,
    ]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)


def comparable(out: Path) -> dict:
    """The parts of report.json that must not depend on the number of processes."""
    report = json.loads((out / "report.json").read_text())
    prompts = [
        {
            "prompt": r["prompt"],
            "flagged": r["flagged"],
            "score": r["score"],
            "generations": {
                s: [(g["seed"], g["nearest_key"], g["similarity"]) for g in gens]
                for s, gens in sorted(r["generations"].items())
            },
        }
        for r in report["prompts"]
    ]
    keep = ("detection", "metrics", "gate")
    return {"prompts": prompts, **{k: report[k] for k in keep}, "processes": report["timing"]["processes"]}


@pytest.fixture(scope="module")
def single(setup, tmp_path_factory) -> dict:  # noqa: F811
    out = tmp_path_factory.mktemp("audit_single") / "out"
    from tests.tiny_sd import torch_threads

    with torch_threads(1):
        assert main([*setup["base"], "--output", str(out), *GATE]) == 0
    return comparable(out)


def approx_equal(a, b, rel: float = 1e-4) -> bool:
    """Equal structures, floats within ``rel`` (two processes run the same prompt batches, same seeds)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(approx_equal(a[k], b[k], rel) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(approx_equal(x, y, rel) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=rel, abs=1e-6, nan_ok=True)
    return a == b


def test_two_processes_give_the_same_report_as_one(setup, single, tmp_path) -> None:  # noqa: F811
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(PROBE)
    out = tmp_path / "out"
    proc = launch([*setup["base"], "--output", str(out), *GATE], probe)
    assert proc.returncode == 0, proc.stderr[-4000:]
    multi = comparable(out)
    assert single["processes"] == 1 and multi["processes"] == 2
    assert (out / "results.1.jsonl").is_file()  # rank 1 generated its share
    assert single["gate"]["passed"] is True
    for key in ("prompts", "detection", "metrics", "gate"):
        assert approx_equal(multi[key], single[key]), (key, multi[key], single[key])


def test_two_cpu_processes_split_the_audit(setup, tmp_path) -> None:  # noqa: F811
    out = tmp_path / "out"
    proc = launch([*setup["base"], "--output", str(out), *GATE], None)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert comparable(out)["processes"] == 2
