"""Interrupted curation runs (issue 16): ``_INCOMPLETE``/``_SUCCESS`` markers, ``--resume``, and a SIGKILL at a
random point followed by ``--resume`` giving the uninterrupted run's outputs byte for byte.

``COPYGUARD_FAULT_SEED`` replays a kill point."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from copyguard.common.errors import UsageError
from copyguard.curation.index_shards import load_index
from copyguard.pipelines.cli import main
from tests.curate_fixtures import build_inputs

PIXELS = ["--set", "curate.io.max_pixels=20000"]
REPO = Path(__file__).resolve().parents[1]


def _argv(inputs: Path, out: Path) -> list[str]:
    return ["curate", "--input", str(inputs / "*.tar"), "--output", str(out), *PIXELS]


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "copyguard.pipelines", *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a kill reaches the whole job, workers included
    )


def _snapshot(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` (hidden leftovers included); without ``_SUCCESS``'s finish time and the
    report's run facts (start time, output path), the only fields that differ between two clean runs."""
    files = {}
    for path in sorted(out.rglob("*")):
        if path.is_dir():
            continue
        data = path.read_bytes()
        if path.name == "_SUCCESS":
            marker = json.loads(data)
            marker.pop("finished")
            data = json.dumps(marker, sort_keys=True).encode()
        elif path.name == "report.json":
            report = json.loads(data)
            report.pop("run")
            data = json.dumps(report, sort_keys=True).encode()
        elif path.name == "report.html":
            head, _, rest = data.decode().partition("<h2>Run facts</h2>")
            data = (head + rest.partition("<h2>")[2]).encode()
        files[str(path.relative_to(out))] = data
    return files


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One uninterrupted run through the real command line, and how long it took."""
    root = tmp_path_factory.mktemp("resume")
    build_inputs(root / "in")
    out = root / "clean"
    started = time.monotonic()
    proc = _start(_argv(root / "in", out))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    # quiet: nothing a user cannot act on; progress from the Beam counters; the outputs named at the end
    assert "faiss.loader" not in stderr and "Using yield and return" not in stderr, stderr[-2000:]
    assert "totals: " in stderr and "samples read" in stderr and str(out / "report.html") in stderr
    return {"root": root, "out": out, "seconds": time.monotonic() - started}


def _unfinished_copy(clean: dict, name: str) -> Path:
    """The clean output as a killed run would leave it: complete-looking, ``_INCOMPLETE``, no ``_SUCCESS``."""
    out = clean["root"] / name
    shutil.copytree(clean["out"], out)
    (out / "_SUCCESS").unlink()
    (out / "_INCOMPLETE").write_text('{"started": "2026-01-01T00:00:00Z"}\n')
    return out


def test_a_finished_run_writes_success_last_and_its_index_loads(clean: dict) -> None:
    out = clean["out"]
    assert not (out / "_INCOMPLETE").exists()
    marker = json.loads((out / "_SUCCESS").read_text())
    report = json.loads((out / "report.json").read_text())
    assert marker["inputs"] == report["inputs"] and marker["by_status"] == report["by_status"]
    assert (out / "_SUCCESS").stat().st_mtime_ns >= (out / "report.json").stat().st_mtime_ns
    assert len(load_index(str(out / "index"))) == report["by_status"]["kept"]


def test_load_refuses_the_index_of_an_unfinished_run(clean: dict) -> None:
    out = _unfinished_copy(clean, "unfinished_load")
    for directory in (str(out / "index"), str(out / "index") + "/"):
        with pytest.raises(UsageError) as err:
            load_index(directory)
        message = str(err.value)
        assert "\n" not in message and "unfinished curation run" in message and "--resume" in message
    # A saved index with no curation markers around it keeps loading.
    elsewhere = clean["root"] / "standalone"
    shutil.copytree(clean["out"] / "index", elsewhere)
    assert len(load_index(str(elsewhere))) == len(load_index(str(clean["out"] / "index")))


def test_rerun_on_an_unfinished_output_without_resume_is_refused(
    clean: dict, capsys: pytest.CaptureFixture
) -> None:
    out = _unfinished_copy(clean, "unfinished_rerun")
    before = _snapshot(out)
    assert main(_argv(clean["root"] / "in", out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err and "unfinished" in err
    assert _snapshot(out) == before  # nothing touched


def test_resume_on_a_finished_output_does_nothing(clean: dict, capsys: pytest.CaptureFixture) -> None:
    out = clean["root"] / "finished_copy"
    shutil.copytree(clean["out"], out)
    mtimes = {str(p): p.stat().st_mtime_ns for p in out.rglob("*")}
    before = _snapshot(out)
    assert main([*_argv(clean["root"] / "in", out), "--resume"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [f"{out}: already complete"]
    assert {str(p): p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes
    assert _snapshot(out) == before


@pytest.mark.slow  # a real run killed and resumed, or a full lab/eval run: minutes
def test_sigkill_at_a_random_point_then_resume_equals_an_uninterrupted_run(clean: dict) -> None:
    seed = int(os.environ.get("COPYGUARD_FAULT_SEED", random.randrange(2**32)))
    delay = random.Random(seed).uniform(0.5, max(0.6, clean["seconds"]))
    out = clean["root"] / f"killed_{seed}"
    argv = _argv(clean["root"] / "in", out)
    proc = _start(argv)
    try:
        proc.wait(timeout=delay)
        killed = False  # finished before the kill point
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # it may have finished just now
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        killed = proc.returncode == -signal.SIGKILL
    proc.communicate()
    context = (
        f"COPYGUARD_FAULT_SEED={seed} (kill after {delay:.2f}s of {clean['seconds']:.2f}s, killed={killed})"
    )
    if killed and out.exists() and any(out.iterdir()):
        # A killed run never looks finished: no _SUCCESS without report.json, and its index is refused.
        assert (out / "_INCOMPLETE").exists() or (out / "_SUCCESS").exists(), context
        if (out / "_INCOMPLETE").exists() and (out / "index" / "index.json").exists():
            with pytest.raises(UsageError):
                load_index(str(out / "index"))
    resumed = _start([*argv, "--resume"])
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, f"{context}: {stderr[-2000:]}"
    assert _snapshot(out) == _snapshot(clean["out"]), context
