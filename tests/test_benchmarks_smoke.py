"""The benchmark scripts work: their core functions at tiny sizes, their JSON and the rendered page.

No timing is asserted here (performance figures live in docs/benchmarks.md, never in tests).
"""

from __future__ import annotations

import importlib
import io
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

MACHINE = "smoke"


@pytest.fixture(scope="module")
def curate_reports() -> tuple[dict, dict | None]:
    """bench_curate at tiny size with the trivial embedder: its curate report and its dedup report."""
    return bench_curate.run(MACHINE, "tiny", 1, bench_curate.NULL, breakdown=False, argv=[])


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, curate_reports: tuple[dict, dict | None]) -> Path:
    """Run the three curation benchmarks at tiny sizes and write their JSON, as run_all does."""
    out = tmp_path_factory.mktemp("results")
    common.write_result(curate_reports[0], out, MACHINE, "curate")
    where = ["--machine", MACHINE, "--out", str(out)]
    assert bench_minhash.main(["--captions", "120", "--repeats", "1", "--csv", "", *where]) == 0
    faiss_args = ["--sizes", "1500,3000", "--set", "images.exact_max=2000", "--exact-sample", "200"]
    assert bench_faiss.main([*faiss_args, *where]) == 0
    return out


def _load(results: Path, name: str) -> dict:
    return json.loads((results / MACHINE / f"{name}.json").read_text())


def test_machine_header_records_cpu_load_and_versions(tmp_path: Path) -> None:
    header = common.finish(common.begin("demo", "benchmarks.demo", ["--quick", "a b"], "x y", quick=True))
    info = header["machine"]
    assert info["tag"] == "x y" and info["cpu_count"] >= 1 and info["cpu_model"] and info["platform"]
    assert "faiss-cpu" in info["versions"] and "apache-beam" in info["versions"]
    assert header["command"] == "python -m benchmarks.demo --quick 'a b'" and header["quick"] is True
    assert header["git"]["commit"] and isinstance(header["git"]["dirty"], bool)  # run from the checkout
    assert "load_average_at_start" in info and "load_average_at_end" in info
    assert "_t0" not in header and header["wall_s"] >= 0
    path = common.write_result(header, tmp_path, "x y", "demo")
    assert path == tmp_path / "x-y" / "demo.json" and json.loads(path.read_text()) == header


def test_synthetic_vectors_have_planted_pairs_in_range() -> None:
    from copyguard.pipelines.lab.synthetic import pair_codes, pair_recall, planted_descriptors

    x, pi, pj, info = planted_descriptors(2000, seed=3)
    assert x.shape == (2000, 512) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)
    cos = (x[pi] * x[pj]).sum(1)
    assert len(pi) == info["planted_pairs"] == 50 and np.all(pi < pj)
    assert cos.min() >= 0.76 - 1e-3 and cos.max() <= 0.98 + 1e-3
    assert np.array_equal(planted_descriptors(2000, seed=3)[0], x)  # the seed fixes the data
    assert not np.array_equal(planted_descriptors(2000, seed=4)[0], x)
    planted = pair_codes(pj, pi, 2000)  # unordered: the same codes either way round
    assert (
        pair_recall(pair_codes(pi, pj, 2000)[:25], planted) == 0.5
        and pair_recall(planted[:0], planted[:0]) == 1.0
    )


def test_synthetic_captions_plant_near_duplicates_reproducibly() -> None:
    from copyguard.pipelines.lab.synthetic import planted_captions, synthetic_caption, synthetic_key

    keys, captions, info = planted_captions(300, None, seed=2)
    assert len(keys) == len(set(keys)) == len(captions) == info["total"] == 300
    assert info["planted"] >= 75 and info["real"] + info["planted"] == 300
    assert planted_captions(300, None, seed=2)[1] == captions != planted_captions(300, None, seed=3)[1]
    assert synthetic_key(7) == "s000000007" and synthetic_caption(7) != synthetic_caption(8)
    assert len(synthetic_caption(7).split()) == 6


def test_curate_benchmark_runs_pipeline_and_pure(results: Path) -> None:
    r = _load(results, "curate")
    (rnd,) = r["rounds"]
    assert rnd["pipeline"]["invariant_holds"] and rnd["pipeline"]["batches"] >= 1
    assert r["data"]["valid_images"] == sum(rnd["pipeline"]["by_status"].values()) - r["data"]["broken"]
    assert {"ratio_median", "passes", "goal_ratio"} <= set(r["summary"])
    assert r["machine"]["load_average_at_end"] is not None


def test_curate_benchmark_scores_its_manifest_against_the_ground_truth(curate_reports: tuple) -> None:
    curate, dedup = curate_reports
    assert dedup["benchmark"] == "dedup" and dedup["data"]["samples"] == curate["data"]["inputs"]
    assert dedup["curate"]["by_status"] == curate["rounds"][-1]["pipeline"]["by_status"]
    assert {"captions", "images", "joint"} <= set(dedup["scores"]) and dedup["goal"] == {"f1_min": 0.95}
    assert dedup["summary"]["captions"]["f1"] >= 0.9  # caption groups do not depend on the trivial embedder
    assert dedup["scores"]["images"]["true_pairs"] > 0


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
    """docs/benchmarks.md: each benchmark's prose, its figures from the JSON, and where they come from."""
    loaded = render.load_results(results)
    assert set(loaded) == {"curate", "minhash", "faiss"} and set(loaded["faiss"]) == {MACHINE}
    text = render.write_benchmarks(results, tmp_path / "benchmarks.md").read_text()
    for heading in ("End-to-end curation", "Caption MinHash", "FAISS image clustering"):
        assert heading in text
    faiss, captions = _load(results, "faiss"), _load(results, "minhash")["captions"]
    exact, ivf = faiss["sizes"]
    assert f"| {ivf['n']:,} | ivf | {ivf['production']['nlist']} / {ivf['production']['nprobe']} |" in text
    assert f"| {exact['n']:,} | exact | - |" in text  # a cell whose fields are all missing reads -
    assert f"{captions['total']} ({captions['real']} + {captions['planted']})" in text
    assert f"*Source: `benchmarks/results/{MACHINE}/faiss.json`" in text and "Reproduce: `python -m" in text
    assert "No results yet" not in text and "{" not in text  # every placeholder filled
    quick = json.loads((results / MACHINE / "faiss.json").read_text()) | {"quick": True}
    (tmp_path / "q" / MACHINE).mkdir(parents=True)
    (tmp_path / "q" / MACHINE / "faiss.json").write_text(json.dumps(quick))
    assert render.load_results(tmp_path / "q") == {}  # --quick results stay out of the docs
    assert set(render.load_results(tmp_path / "q", include_quick=True)) == {"faiss"}
    empty = render.write_benchmarks(tmp_path / "q", tmp_path / "empty.md").read_text()
    assert "No results yet: run `make bench`." in empty and "CPU results not yet recorded" in empty


def test_faiss_config_override_reaches_the_search() -> None:
    r = bench_faiss.bench_size(2500, ImagesConfig(exact_max=1000, nprobe=4), 0, False)
    assert r["production"]["nprobe"] == 4 and r["production_mode"] == "ivf"


def test_results_page_renders_recorded_figures_and_freshness(results: Path, tmp_path: Path) -> None:
    """docs/results.md: the recorded figures, the command for each result not recorded, stale results flagged."""
    from copyguard.common.fmt import cell

    stale = json.loads((results / MACHINE / "faiss.json").read_text())
    stale.pop("git", None)
    (tmp_path / "r" / MACHINE).mkdir(parents=True)
    (tmp_path / "r" / MACHINE / "faiss.json").write_text(json.dumps(stale))
    page = render.write_results(tmp_path / "r", tmp_path / "results.md", machine=MACHINE).read_text()
    for title in (
        "## Curation",
        "## The lab model",
        "## Detection",
        "## Mitigation",
        "## Costs",
        "## Freshness",
    ):
        assert title in page
    exact, ivf = stale["sizes"]
    assert f"| {exact['n']:,} | exact | {cell(exact['production']['total_s'])} |" in page
    assert f"({ivf['exact_sample']['rows']} rows) |" in page
    lab = "python -m copyguard.pipelines.lab."
    assert f"## The lab model\n\nNot measured yet: run `{lab}model_summary`." in page
    assert f"## Detection\n\nNot measured yet: run `{lab}mitigation_evidence`." in page
    assert "## Costs\n\nNot measured yet: run `python -m benchmarks.bench_mitigation" in page
    assert "run `make bench`" not in page and page.count("## Costs") == 1  # measured sections: no such line
    assert f"| {MACHINE}/faiss | - | {stale['started'][:16]} | **stale**: no commit recorded |" in page
    assert "{" not in page


def test_staleness_follows_the_code_a_result_measures(monkeypatch: pytest.MonkeyPatch) -> None:
    """A result is stale when its commit is unknown or git shows a change to the code it measures: the
    paths in SOURCES or the script its recorded command runs."""
    import subprocess

    assert render.stale_reason("faiss", {}) == "no commit recorded"
    assert "not in this repository" in render.stale_reason("faiss", {"git": {"commit": "f" * 40}})
    # the parent of the newest commit that changed a script (HEAD~1 alone may be a docs-only commit)
    newest = subprocess.run(["git", "log", "-1", "--format=%H", "--", "benchmarks/*.py", "pipelines/*.py"],
                            cwd=ROOT, capture_output=True, text=True).stdout.strip()  # fmt: skip
    parent = subprocess.run(["git", "rev-parse", f"{newest}~1"], cwd=ROOT, capture_output=True, text=True)
    if not newest or parent.returncode != 0:
        pytest.skip("no git history (shallow clone)")
    commit = {"git": {"commit": parent.stdout.strip()}}
    changed = subprocess.run(
        ["git", "diff", "--name-only", commit["git"]["commit"]], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    monkeypatch.setitem(render.SOURCES, "probe", changed[0])
    assert "code changed since" in render.stale_reason("probe", commit)
    monkeypatch.setitem(render.SOURCES, "probe", "no/such/path/")
    assert render.stale_reason("probe", commit) is None
    script = next(p for p in changed if p.endswith(".py") and p.startswith(("benchmarks/", "pipelines/")))
    module = script[:-3].replace("/", ".")
    module = module if module.startswith("benchmarks.") else f"copyguard.{module}"
    assert script in render.stale_reason("probe", {**commit, "command": f"python -m {module} --quick"})


def test_render_regenerates_every_page_from_recorded_json(results: Path, tmp_path: Path) -> None:
    """`python -m benchmarks.render`: the three pages, prose from docs/_partials, no algorithms.md."""
    assert render.main(["--results", str(results), "--machine", MACHINE, "--docs", str(tmp_path)]) == 0
    pages = {p.name: p.read_text() for p in tmp_path.glob("*.md")}
    assert set(pages) == {"benchmarks.md", "results.md", "mitigation.md"}
    prose = render._sections("benchmarks")["faiss"][0]
    assert prose.startswith("## FAISS image clustering") and prose in pages["benchmarks.md"]  # verbatim
    assert render._sections("mitigation")["intro"][0] in pages["mitigation.md"]
    assert "## Evidence" not in pages["mitigation.md"] and "## Costs" not in pages["mitigation.md"]
    for text in pages.values():
        assert "algorithms.md" not in text and "python -m benchmarks.render" in text and "§" not in text


def test_recorded_docs_match_the_recorded_json(tmp_path: Path) -> None:
    """The committed pages are what the renderer makes of the committed JSON (Freshness aside: it follows
    the working tree)."""
    render.render_all(ROOT / "benchmarks" / "results", "dev-2cpu", tmp_path)
    for name in ("benchmarks.md", "mitigation.md"):
        assert (tmp_path / name).read_text() == (ROOT / "docs" / name).read_text(), name
    fresh = (tmp_path / "results.md").read_text().split("## Freshness")[0]
    assert fresh == (ROOT / "docs" / "results.md").read_text().split("## Freshness")[0]


def test_templates_read_json_paths_and_mark_what_is_missing() -> None:
    """The template fields: paths into the JSON, `-` for what is missing, the conversions and ratio specs."""
    r = {"a": {"b": 0.123456, "flag": True, "list": [2.5], "params": {"unet": 803204}, "empty": []}}
    text = "{r[a][b]} {r[a][b]:.2f} {r[a][b]!s} {r[a][flag]!v} {r[a][list][0]:.1fx} {r[nope][x]:.2f}"
    assert render.Fields().vformat(text, (), {"r": r}) == "0.123 0.12 0.123456 **pass** 2.5x -"
    more = "{r[a][params]!j}; {r[a][empty]!j}; {r[a][list]!n}; {r[a][b]:+.1f%}"
    assert render.Fields().vformat(more, (), {"r": r}) == "unet: 803,204; -; 1; +0.1%"


def test_mitigation_page_shows_the_paper_table_once() -> None:
    """One copy of Chen et al.'s SD v1.4 rows, in the evidence table and in docs/results.md's table."""
    assert render.PAPER_SD["amg-strong"] == (0.34, 0.39, 0.00, 0.00, 100.45)
    for page in ("mitigation.md", "results.md"):
        assert "| 0.91 / 0.93 / 44.85 / 59.23 / 106.41 |" in (ROOT / "docs" / page).read_text(), page


def test_filter_evidence_summary_judges_the_filter_goal() -> None:
    """The filter must cut the planted pairs' memorized share by >= 80 % at <= 5 % FID change
    (``copyguard.pipelines.lab.filter_evidence``, which records ``train_evidence.json``)."""
    from copyguard.pipelines.lab import filter_evidence

    def row(share: float, fid: float | None) -> dict:
        return {"dup_share_over_threshold_pct": share, "fid": fid}

    rows = {"no_filter": row(50.0, 100.0), "filter": row(5.0, 103.0), "curated": row(40.0, 99.0),
            "run_nofilter_s12": row(40.0, 1.0), "run_filter_s12": row(10.0, 1.0)}  # fmt: skip
    s = filter_evidence.summarize(rows)
    assert s["memorized_share_relative_cut"] == 0.9 and s["fid_relative_change"] == 0.03 and s["passes"]
    assert s["memorized_share_relative_cut_12_seeds"] == 0.75 and s["passes_12_seeds"] is False
    assert not filter_evidence.summarize({**rows, "filter": row(5.0, 110.0)})["passes"]  # FID +10 %
    none = filter_evidence.summarize({**rows, "no_filter": row(0.0, 100.0)})
    assert none["memorized_share_relative_cut"] is None and not none["passes"]  # nothing to cut
    gone = row(0.0, 101.0)
    one = filter_evidence.summarize(
        {**rows, "no_filter": {**row(3.125, 100.0), "dup_generations": 32}, "filter": gone}
    )
    assert one["memorized_share_relative_cut"] == 1.0 and one["passes"] is None  # 1 of 32: not judged
    five = filter_evidence.summarize(
        {**rows, "no_filter": {**row(15.625, 100.0), "dup_generations": 32}, "filter": gone}
    )
    assert five["passes"] is True  # 5 of 32 memorized, all gone
    own = {"sscd_own": {"pct_gt_0.4": 30.0, "top5pct": 0.7, "mean": 0.3}}
    measured = {"threshold": 0.4, "all_dup": own, "fid": {"fid": 12.5},
                "by_copies": {"unique": {"sscd_own": {"pct_gt_0.4": 1.0}}, "25": own}}  # fmt: skip
    assert filter_evidence.row(measured) == {
        "dup_share_over_threshold_pct": 30.0, "dup_top5pct": 0.7, "dup_mean": 0.3, "dup_generations": None,
        "unique_share_over_threshold_pct": 1.0, "fid": 12.5, "copies_25_share_pct": 30.0,
    }  # fmt: skip


def test_filter_evidence_runs_select_their_rule_in_the_trainer_config() -> None:
    """Each filter run of the evidence script trains with its own rule (the overrides reach
    ``TrainConfig``), and the run folders of the two rules differ."""
    from copyguard.common.config import load_config
    from copyguard.pipelines.lab import filter_evidence as fe
    from copyguard.train.config import TrainConfig

    for rule, other in (("mad", "percentile"), ("percentile", "mad")):
        cfg = load_config(TrainConfig, "train", overrides=fe.filter_sets(rule, 90.0, 3.0, 20, 10))
        flt = cfg.filter
        assert flt.enabled and flt.rule == rule and flt.rule != other
        assert (flt.percentile, flt.mads, flt.calibrate_steps, flt.timestep_buckets) == (90.0, 3.0, 20, 10)
    assert fe.filter_run_name("percentile", 95, 4, 1) == "run_filter"  # the recorded runs' folder
    assert fe.filter_run_name("mad", 95, 4, 1) == "run_filter_mad_k4"
    assert fe.filter_run_name("mad", 95, 4, 10) == "run_filter_mad_k4_tb10"
    assert fe.filter_run_name("mad", 95, 4, 10, 20) == "run_filter_mad_k4_tb10_re20"
    again = load_config(TrainConfig, "train", overrides=fe.filter_sets("mad", 90.0, 3.0, 20, 10, 20)).filter
    assert again.recalibrate_every == 20 and flt.recalibrate_every == 0


def test_filter_evidence_drop_shares_count_each_kinds_draws(tmp_path: Path) -> None:
    """The share of each kind's draws a run's filter dropped: its filtered rows over the kind's expected
    draws (samples seen spread over the valid training samples; keys outside them do not count); a run with
    the filter off gets its training facts but no shares."""
    from PIL import Image

    from copyguard.curation.records import Sample
    from copyguard.curation.shards import ShardWriter
    from copyguard.pipelines.lab.filter_evidence import run_facts

    data, run, off = tmp_path / "train", tmp_path / "run", tmp_path / "off"
    for folder in (data, run, off):
        folder.mkdir()
    kinds = {"a": "unique", "b": "unique", "c": "unique", "d": "dup_pair", "e": "unique"}  # e: not trained
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(jpeg, "JPEG")
    with ShardWriter(str(data)) as writer:
        for key in "abcd":
            writer.write(Sample(key=key, image=jpeg.getvalue(), caption=f"caption {key}"))
    (data / "ground_truth.jsonl").write_text(
        "".join(json.dumps({"key": k, "kind": v}) + "\n" for k, v in kinds.items())
    )
    facts = {"steps": 5, "total_s": 1.0, "step_s_median": 0.2}
    filt = {"enabled": True, "samples_seen": 40, "threshold": 1.0}  # 10 draws per trained key
    (run / "training.json").write_text(json.dumps({**facts, "filter": filt}))
    rows = [{"key": "d"}] * 5 + [{"key": "a"}] * 3
    (run / "filtered.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (off / "training.json").write_text(json.dumps({**facts, "filter": {"enabled": False, "samples_seen": 0}}))
    shards = str(data / "*.tar")
    got = run_facts(run, shards)
    assert got["draws_dropped_pct"] == {"dup_pair": 50.0, "unique": 10.0}
    assert got["steps"] == 5 and got["filter"]["samples_seen"] == 40
    assert "draws_dropped_pct" not in run_facts(off, shards) and run_facts(tmp_path / "none", shards) == {}


def test_lab_model_summary_reads_the_model_card_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``python -m copyguard.pipelines.lab.model_summary --quick`` on a cached (here: planted) tiny lab model
    writes ``lab_model.json`` with the model card's figures and the goal."""
    from copyguard.pipelines.lab import model_summary
    from copyguard.pipelines.lab.cache import lab_key, sample_data_dir

    cache = tmp_path / "cache"
    model = cache / f"lab-tiny-s0-{lab_key('tiny')}"
    model.mkdir(parents=True)
    data = sample_data_dir("tiny", cache=cache)
    data.mkdir()
    (data / ".done").touch()
    (model / ".done").touch()
    bucket = {"prompts": 2, "sscd_own": {"pct_gt_0.4": 75.0, "top1": 0.8}, "nl2": {"min": 1.1}}
    unique = {"prompts": 5, "sscd_own": {"pct_gt_0.4": 1.0}, "nl2": {}}
    mem = {"threshold": 0.4, "eval": {}, "by_copies": {"50": bucket, "unique": unique}, "dup_ge25": bucket,
           "magnitude": {"auc": 1.0}, "fid": {"fid": 3.0}, "calibration": {}, "timings": {}}  # fmt: skip
    (model / "memorization.json").write_text(json.dumps(mem))
    (model / "lab_training.json").write_text(json.dumps({"data": {"heldout_keys": ["k"], "n": 3}}))
    s = model_summary.summarize(model)
    assert s["share_dup_ge25"] == 75.0 and s["share_unique"] == 1.0
    assert s["by_copies"]["50"] == {"prompts": 2, "pct_gt_0.4": 75.0, "top1": 0.8, "nl2": {"min": 1.1}}
    assert s["training"]["data"] == {"n": 3}  # the held-out keys stay out of the result
    out = tmp_path / "results"
    argv = ["--quick", "--cache", str(cache), "--out", str(out), "--machine", MACHINE]
    assert model_summary.main(argv) == 0
    report = json.loads((out / MACHINE / "lab_model.json").read_text())
    assert report["benchmark"] == "lab_model" and report["quick"] and report["preset"] == "tiny"
    assert report["command"].startswith("python -m copyguard.pipelines.lab.model_summary --quick")
    assert report["model"] == str(model) and report["share_dup_ge25"] == 75.0 and report["passes"]
    assert report["machine"]["tag"] == MACHINE and "wall_s" in report
    assert "wrote" in capsys.readouterr().out
