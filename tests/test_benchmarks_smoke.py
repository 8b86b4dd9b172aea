"""The benchmark scripts work: their core functions at tiny sizes, their JSON and the rendered page.

No timing is asserted here (performance figures live in docs/benchmarks.md, never in tests).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from copyguard.curation.curate_config import ImagesConfig

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks/ is a folder of scripts, not part of the installed package
    sys.path.insert(0, str(ROOT))
bench_curate = importlib.import_module("benchmarks.bench_curate")
bench_faiss = importlib.import_module("benchmarks.bench_faiss")
bench_minhash = importlib.import_module("benchmarks.bench_minhash")
common = importlib.import_module("benchmarks.common")
report = importlib.import_module("benchmarks.report")

MACHINE = "smoke"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the three curation benchmarks at tiny sizes and write their JSON, as run_all does."""
    out = tmp_path_factory.mktemp("results")
    runs = {
        "curate": bench_curate.run(MACHINE, "tiny", 1, bench_curate.NULL, breakdown=False, argv=[]),
        "minhash": bench_minhash.run(MACHINE, 120, 1, None, argv=[]),
        "faiss": bench_faiss.run(MACHINE, [1500, 3000], ["images.exact_max=2000"], 200, True, argv=[]),
    }
    for name, result in runs.items():
        common.write_result(result, out, MACHINE, name)
    return out


def _load(results: Path, name: str) -> dict:
    return json.loads((results / MACHINE / f"{name}.json").read_text())


def test_machine_header_records_cpu_load_and_versions() -> None:
    info = common.machine_info("x")
    assert info["cpu_count"] >= 1 and info["cpu_model"] and info["platform"]
    assert "faiss-cpu" in info["versions"] and "apache-beam" in info["versions"]
    header = common.finish(common.begin("demo", "benchmarks.demo", ["--quick"], "x", quick=True))
    assert header["command"] == "python -m benchmarks.demo --quick"
    assert "load_average_at_start" in header["machine"] and "load_average_at_end" in header["machine"]
    assert "_t0" not in header and header["wall_s"] >= 0


def test_synthetic_vectors_have_planted_pairs_in_range() -> None:
    x, pi, pj, info = bench_faiss.synthetic(2000, seed=3)
    assert x.shape == (2000, 512) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)
    cos = (x[pi] * x[pj]).sum(1)
    assert len(pi) == info["planted_pairs"] == 50 and np.all(pi < pj)
    assert cos.min() >= 0.76 - 1e-3 and cos.max() <= 0.98 + 1e-3


def test_curate_benchmark_runs_pipeline_and_pure(results: Path) -> None:
    r = _load(results, "curate")
    (rnd,) = r["rounds"]
    assert rnd["pipeline"]["invariant_holds"] and rnd["pipeline"]["batches"] >= 1
    assert r["data"]["valid_images"] == sum(rnd["pipeline"]["by_status"].values()) - r["data"]["broken"]
    assert {"ratio_median", "passes", "goal_ratio"} <= set(r["summary"])
    assert r["machine"]["load_average_at_end"] is not None


def test_minhash_benchmark_beam_matches_in_memory(results: Path) -> None:
    r = _load(results, "minhash")
    assert r["summary"]["beam_equals_in_memory"] is True
    assert r["captions"]["total"] == 120 and r["captions"]["planted"] > 0
    assert 0.0 <= r["summary"]["in_memory_vs_datasketch"]["recall"] <= 1.0


def test_faiss_benchmark_reports_exact_and_ivf_recall(results: Path) -> None:
    r = _load(results, "faiss")
    small, large = r["sizes"]
    assert small["production_mode"] == "exact" and "ivf_forced" in small
    assert large["production_mode"] == "ivf" and "exact_sample" in large
    assert {"ivf_train_s", "ivf_assign_s", "ivf_join_s", "cluster_s"} <= set(large["production"])
    assert small["planted_edge_recall"] == 1.0  # exact search finds every planted pair


def test_report_renders_every_section(results: Path, tmp_path: Path) -> None:
    loaded = report.load_results(results)
    assert set(loaded) == {"curate", "minhash", "faiss"} and set(loaded["faiss"]) == {MACHINE}
    text = report.write_docs(results, tmp_path / "benchmarks.md").read_text()
    for heading in ("End-to-end curation", "Caption MinHash", "FAISS image clustering"):
        assert heading in text
    assert "GPU FAISS: not measured" in text and "Reproduce:" in text and "(result file" not in text
    quick = json.loads((results / MACHINE / "faiss.json").read_text()) | {"quick": True}
    (tmp_path / "q" / MACHINE).mkdir(parents=True)
    (tmp_path / "q" / MACHINE / "faiss.json").write_text(json.dumps(quick))
    assert report.load_results(tmp_path / "q") == {}  # --quick results stay out of the docs
    assert set(report.load_results(tmp_path / "q", include_quick=True)) == {"faiss"}


def test_faiss_config_override_reaches_the_search() -> None:
    r = bench_faiss.bench_size(2500, ImagesConfig(exact_max=1000, nprobe=4), 0, False)
    assert r["production"]["nprobe"] == 4 and r["production_mode"] == "ivf"


def test_results_page_renders_recorded_figures_and_freshness(results: Path, tmp_path: Path) -> None:
    results_doc = importlib.import_module("benchmarks.results_doc")
    page = results_doc.write_results_doc(results, tmp_path / "results.md", machine=MACHINE).read_text()
    for title in (
        "## Curation",
        "## The lab model",
        "## Detection",
        "## Mitigation",
        "## Costs",
        "## Freshness",
    ):
        assert title in page
    assert "FAISS clustering" in page and "Throughput" in page
    assert f"{MACHINE}/faiss" in page  # every result file is listed with its freshness


def test_staleness_follows_the_code_a_result_measures(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    staleness = importlib.import_module("benchmarks.staleness")
    assert staleness.stale_reason("faiss", {}) == "no commit recorded"
    assert "not in this repository" in staleness.stale_reason("faiss", {"git": {"commit": "f" * 40}})
    parent = subprocess.run(["git", "rev-parse", "HEAD~1"], cwd=ROOT, capture_output=True, text=True)
    if parent.returncode != 0:
        pytest.skip("no git history (shallow clone)")
    changed = subprocess.run(
        ["git", "diff", "--name-only", parent.stdout.strip()], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    monkeypatch.setitem(staleness.SOURCES, "probe", [changed[0]])
    assert "code changed since" in staleness.stale_reason("probe", {"git": {"commit": parent.stdout.strip()}})
    monkeypatch.setitem(staleness.SOURCES, "probe", ["no/such/path/"])
    assert staleness.stale_reason("probe", {"git": {"commit": parent.stdout.strip()}}) is None
