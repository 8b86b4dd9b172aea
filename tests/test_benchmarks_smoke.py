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

from copyguard.curation.config import ImagesConfig

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks/ is a folder of scripts, not part of the installed package
    sys.path.insert(0, str(ROOT))
bench_curate = importlib.import_module("benchmarks.bench_curate")
bench_faiss = importlib.import_module("benchmarks.bench_faiss")
bench_minhash = importlib.import_module("benchmarks.bench_minhash")
common = importlib.import_module("benchmarks.common")
render = importlib.import_module("benchmarks.render")
render_base = importlib.import_module("benchmarks.render.base")
benchmarks_page = importlib.import_module("benchmarks.render.benchmarks_page")

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
    loaded = render_base.load_results(results)
    assert set(loaded) == {"curate", "minhash", "faiss"} and set(loaded["faiss"]) == {MACHINE}
    text = benchmarks_page.write_benchmarks(results, tmp_path / "benchmarks.md").read_text()
    for heading in ("End-to-end curation", "Caption MinHash", "FAISS image clustering"):
        assert heading in text
    assert "GPU FAISS: not measured" in text and "Reproduce:" in text and "(result file" not in text
    quick = json.loads((results / MACHINE / "faiss.json").read_text()) | {"quick": True}
    (tmp_path / "q" / MACHINE).mkdir(parents=True)
    (tmp_path / "q" / MACHINE / "faiss.json").write_text(json.dumps(quick))
    assert render_base.load_results(tmp_path / "q") == {}  # --quick results stay out of the docs
    assert set(render_base.load_results(tmp_path / "q", include_quick=True)) == {"faiss"}


def test_faiss_config_override_reaches_the_search() -> None:
    r = bench_faiss.bench_size(2500, ImagesConfig(exact_max=1000, nprobe=4), 0, False)
    assert r["production"]["nprobe"] == 4 and r["production_mode"] == "ivf"


def test_results_page_renders_recorded_figures_and_freshness(results: Path, tmp_path: Path) -> None:
    results_page = importlib.import_module("benchmarks.render.results_page")
    page = results_page.write_results(results, tmp_path / "results.md", machine=MACHINE).read_text()
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

    staleness = importlib.import_module("benchmarks.render.staleness")
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


def test_render_regenerates_every_page_from_recorded_json(results: Path, tmp_path: Path) -> None:
    """`python -m benchmarks.render`: the three pages, prose from docs/_partials, no algorithms.md."""
    assert render.main(["--results", str(results), "--machine", MACHINE, "--docs", str(tmp_path)]) == 0
    pages = {p.name: p.read_text() for p in tmp_path.glob("*.md")}
    assert set(pages) == {"benchmarks.md", "results.md", "mitigation.md"}
    assert render_base.partial("benchmarks", "faiss") in pages["benchmarks.md"]  # prose included verbatim
    assert render_base.partial("mitigation", "intro") in pages["mitigation.md"]
    assert "## Evidence" not in pages["mitigation.md"]  # no lab_mitigation.json recorded here
    for text in pages.values():
        assert "algorithms.md" not in text and "python -m benchmarks.render" in text


def test_recorded_docs_match_the_recorded_json(tmp_path: Path) -> None:
    """The committed pages are what the renderer makes of the committed JSON (Freshness aside: it follows
    the working tree)."""
    render.render_all(ROOT / "benchmarks" / "results", "dev-2cpu", tmp_path)
    for name in ("benchmarks.md", "mitigation.md"):
        assert (tmp_path / name).read_text() == (ROOT / "docs" / name).read_text(), name
    fresh = (tmp_path / "results.md").read_text().split("## Freshness")[0]
    assert fresh == (ROOT / "docs" / "results.md").read_text().split("## Freshness")[0]


def test_partials_fill_fields_and_name_missing_sections() -> None:
    text = render_base.partial("results", "mitigation_table", n=32)
    assert "(32 generations per method;" in text and "{n}" not in text
    with pytest.raises(KeyError, match="has no section 'nope'"):
        render_base.partial("results", "nope")


def test_mitigation_page_shows_the_paper_table_once() -> None:
    """One copy of Chen et al.'s SD v1.4 rows, in the evidence table and in docs/results.md's table."""
    paper = importlib.import_module("benchmarks.render.paper")
    assert paper.PAPER_SD["amg-strong"] == (0.34, 0.39, 0.00, 0.00, 100.45)
    assert paper.paper_cell("rt") == "0.61 / 0.84 / 15.07 / 26.75 / 101.69" and paper.paper_cell("x") == "-"
    page = (ROOT / "docs" / "mitigation.md").read_text()
    assert "| 0.91 / 0.93 / 44.85 / 59.23 / 106.41 |" in page


def test_train_evidence_summary_judges_the_filter_goal() -> None:
    """The filter must cut the planted pairs' memorized share by >= 80 % at <= 5 % FID change."""
    train_evidence = importlib.import_module("benchmarks.train_evidence")

    def row(share: float, fid: float | None) -> dict:
        return {"dup_share_over_threshold_pct": share, "fid": fid}

    rows = {"no_filter": row(50.0, 100.0), "filter": row(5.0, 103.0), "curated": row(40.0, 99.0),
            "run_nofilter_s12": row(40.0, 1.0), "run_filter_s12": row(10.0, 1.0)}  # fmt: skip
    s = train_evidence.summarize(rows)
    assert s["memorized_share_relative_cut"] == 0.9 and s["fid_relative_change"] == 0.03 and s["passes"]
    assert s["memorized_share_relative_cut_12_seeds"] == 0.75 and s["passes_12_seeds"] is False
    assert not train_evidence.summarize({**rows, "filter": row(5.0, 110.0)})["passes"]  # FID +10 %
    none = train_evidence.summarize({**rows, "no_filter": row(0.0, 100.0)})
    assert none["memorized_share_relative_cut"] is None and not none["passes"]  # nothing to cut


def test_bench_lab_summary_reads_the_model_card_figures(tmp_path: Path) -> None:
    bench_lab = importlib.import_module("benchmarks.bench_lab")
    bucket = {"prompts": 2, "sscd_own": {"pct_gt_0.4": 75.0, "top1": 0.8}, "nl2": {"min": 1.1}}
    unique = {"prompts": 5, "sscd_own": {"pct_gt_0.4": 1.0}, "nl2": {}}
    mem = {"threshold": 0.4, "eval": {}, "by_copies": {"50": bucket, "unique": unique}, "dup_ge25": bucket,
           "magnitude": {"auc": 1.0}, "fid": {"fid": 3.0}, "calibration": {}, "timings": {}}  # fmt: skip
    (tmp_path / "memorization.json").write_text(json.dumps(mem))
    (tmp_path / "lab_training.json").write_text(json.dumps({"data": {"heldout_keys": ["k"], "n": 3}}))
    s = bench_lab.summarize(tmp_path)
    assert s["share_dup_ge25"] == 75.0 and s["share_unique"] == 1.0
    assert s["by_copies"]["50"] == {"prompts": 2, "pct_gt_0.4": 75.0, "top1": 0.8, "nl2": {"min": 1.1}}
    assert s["training"]["data"] == {"n": 3}  # the held-out keys stay out of the result
