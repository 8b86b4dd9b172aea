"""The Beam curation job: transforms under TestPipeline/assert_that, and the whole job end to end."""

from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from copyguard.curation.config import CurateConfig, MinHashConfig
from copyguard.curation.index_shards import ShardedIndex, load_index
from copyguard.curation.manifest import read_manifest
from copyguard.curation.shards import iter_samples
from copyguard.curation.union_find import connected_components
from copyguard.pipelines.beam_connected_components import ConnectedComponents
from copyguard.pipelines.cli import main
from copyguard.pipelines.curate import _prepare_output, build_pipeline, run, run_curation
from copyguard.pipelines.transforms import CaptionComponents, EmbeddedSample, UniqueKeys
from tests.curate_fixtures import build_inputs, day2_shard, template_shards

PIXELS = ["--set", "curate.io.max_pixels=20000"]


def _pipeline() -> BeamTestPipeline:
    return BeamTestPipeline(runner=FnApiRunner())


def _light(key: str, caption: str = "c", shard: str = "s", reference: bool = False) -> EmbeddedSample:
    return EmbeddedSample(key, shard, caption, 8, 8, np.zeros(4, np.float32), reference)


# -- transforms -------------------------------------------------------------------------------------------


def test_connected_components_match_union_find() -> None:
    rng = np.random.default_rng(0)
    nodes = [f"n{i:03d}" for i in range(120)]
    edges = [(nodes[a], nodes[b]) for a, b in rng.integers(0, 120, size=(90, 2)) if a != b]
    edges += [(f"c{i:03d}", f"c{i + 1:03d}") for i in range(60)]  # a long chain needs several rounds
    truth = connected_components([], edges)
    with _pipeline() as p:
        out = p | beam.Create(edges) | ConnectedComponents(max_rounds=12)
        assert_that(out, equal_to([(k, v) for k, v in truth.items() if k != v]))


def test_connected_components_fail_loudly_when_rounds_are_too_few() -> None:
    edges = [(f"c{i:03d}", f"c{i + 1:03d}") for i in range(200)]
    with pytest.raises(Exception, match="did not converge"), _pipeline() as p:
        _ = p | beam.Create(edges) | ConnectedComponents(max_rounds=1)


def test_unique_keys_keeps_smallest_shard_and_rejects_the_rest() -> None:
    records = [
        _light("k", shard="b.tar"),
        _light("k", shard="a.tar"),
        _light("j"),
        _light("r", reference=True),
        _light("r", shard="x.tar"),
    ]
    with _pipeline() as p:
        out = p | beam.Create(records) | UniqueKeys()
        assert_that(
            out.unique | beam.Map(lambda r: (r.key, r.shard, r.reference)),
            equal_to([("k", "a.tar", False), ("j", "s", False), ("r", "s", True)]),
            label="Unique",
        )
        assert_that(
            out.rejected | beam.Map(lambda r: (r.key, r.shard, str(r.reason))),
            equal_to([("k", "b.tar", "duplicate_key"), ("r", "x.tar", "duplicate_key")]),
            label="Rejected",
        )


def test_caption_components_group_near_duplicates_only() -> None:
    captions = {
        "a": "A cup of coffee on a saucer next to a spoon on a table",
        "b": "a cup of coffee on a saucer, next to a spoon on a table!",
        "c": "A cup of coffee on a saucer next to a spoon on the table",
        "d": "Three dogs running across a snowy field at dawn",
        "e": "An old red tractor parked beside a wooden barn",
    }
    with _pipeline() as p:
        lights = p | beam.Create([_light(k, c) for k, c in captions.items()])
        out = lights | CaptionComponents(MinHashConfig())
        assert_that(out, equal_to([("b", "a"), ("c", "a")]))


# -- the whole job ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("curate")
    expected = build_inputs(root / "in")
    out = root / "out"
    report = run(
        ["--input", str(root / "in" / "*.tar"), "--output", str(out), *PIXELS], test_pipeline=_pipeline()
    )
    return {"root": root, "out": out, "expected": expected, "report": report, "rows": _rows(out)}


def _section_text(html: str, title: str) -> str:
    return html.split(f"<h2>{title}</h2>", 1)[1].split("<h2>", 1)[0]


def _bytes(path: Path) -> bytes | None:
    return None if path.is_dir() else path.read_bytes()


def _rows(out: Path) -> list[dict]:
    return read_manifest(sorted(str(p) for p in (out / "manifest").glob("*.parquet")))


def test_every_bad_input_is_a_rejection_with_its_reason(job: dict) -> None:
    rejected = {(r["key"], r["reason"]) for r in job["rows"] if r["status"] == "rejected"}
    assert rejected == set(job["expected"].items())
    assert len({reason for _, reason in rejected}) == 11  # distinct reasons


def test_accounting_invariant_and_duplicates(job: dict) -> None:
    report, rows = job["report"], job["rows"]
    assert report["invariant_holds"] and report["inputs"] == len(rows) == 24
    assert report["by_status"] == {"kept": 10, "duplicate": 2, "rejected": 12}
    by_key = {r["key"]: r for r in rows if r["status"] != "rejected"}
    # Exact copy and re-encode of one photo: one group, represented by the smallest key at equal resolution.
    for key in ("a0", "a1", "b2"):
        assert by_key[key]["image_group"] == "a0" and by_key[key]["representative"] == "a0"
    assert by_key["a1"]["status"] == by_key["b2"]["status"] == "duplicate"
    assert by_key["a1"]["reason"] == "image_duplicate"
    # Near-identical captions over different images: one caption group, both kept.
    assert by_key["c0"]["caption_group"] == by_key["c1"]["caption_group"] == "c0"
    assert by_key["c0"]["status"] == by_key["c1"]["status"] == "kept"


def test_cleaned_shards_hold_exactly_the_kept_samples(job: dict) -> None:
    kept = sorted(r["key"] for r in job["rows"] if r["status"] == "kept")
    records = list(iter_samples(str(job["out"] / "shards" / "*.tar")))
    assert sorted(r.key for r in records) == kept
    assert not list((job["out"]).rglob(".*tmp*"))  # no temporary file left behind


def test_training_index_covers_kept_images(job: dict) -> None:
    index = load_index(str(job["out"] / "index"))
    kept = sorted(r["key"] for r in job["rows"] if r["status"] == "kept")
    assert isinstance(index, ShardedIndex) and index.partitions == 1  # 10 images: one partition
    assert index.keys == kept
    assert index.info["embedder"]["name"] == "sscd-onnx" and index.info["faiss"]["kind"] == "sharded"
    res = index.nearest(index.vectors()[:3], k=1)
    assert list(res.keys[:, 0]) == kept[:3]
    assert index.entry("a0").image_group_size == 3
    assert not list((job["out"] / "index").rglob("minhash.npy"))  # written, never read: dropped
    assert not (job["out"] / "index" / "_members").exists()  # temporary descriptor files removed


def test_partitioned_search_gives_the_single_partition_result(job: dict) -> None:
    """Four partitions probed exhaustively (margin 2): the same manifest and kept images as one partition;
    the index is split into four shards that answer nearest() as one."""
    out = job["root"] / "out_parts"
    run(
        [
            "--input",
            str(job["root"] / "in" / "*.tar"),
            "--output",
            str(out),
            *PIXELS,
            *("--set", "curate.images.partition_size=3", "--set", "curate.images.partition_min_train=1"),
            *("--set", "curate.images.partition_margin=2.0"),
        ],
        test_pipeline=_pipeline(),
    )
    assert _rows(out) == job["rows"]
    parts, one = load_index(str(out / "index")), load_index(str(job["out"] / "index"))
    assert parts.partitions == 4 and sorted(parts.keys) == one.keys
    queries = one.vectors()
    got, want = parts.nearest(queries, k=2), one.nearest(queries, k=2)
    assert got.keys.tolist() == want.keys.tolist()
    np.testing.assert_allclose(got.similarities, want.similarities, rtol=1e-6)
    assert parts.entry("a0") == one.entry("a0")


def test_report_is_escaped_and_complete(job: dict) -> None:
    html = (job["out"] / "report.html").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert "data:image/jpeg;base64," in html  # thumbnails of the largest duplicate group
    report = json.loads((job["out"] / "report.json").read_text())
    top = report["summary"]["top_image_groups"][0]
    assert top["group"] == "a0"
    # the kept representative is marked and listed first; the others carry their similarity to it
    decided = {r["key"]: r for r in job["rows"] if r["status"] != "rejected"}
    kept = [decided[m["key"]] for m in top["members"] if m["kept"]]
    assert len(kept) == 1 and kept[0]["status"] == "kept" and top["members"][0]["kept"]
    assert top["kept"] == top["members"][0]["key"] and top["members"][0]["similarity"] == 1.0
    for m in top["members"][1:]:
        assert decided[m["key"]]["status"] == "duplicate" and 0.5 < m["similarity"] <= 1.0
    # every listed rejection is a real one with its reason; the manifest holds them all
    rejected = [(r["key"], r["reason"]) for r in job["rows"] if r["status"] == "rejected"]
    listed = report["rejected_samples"]
    assert report["rejected_total"] == len(rejected) and len(listed) == min(len(rejected), 50)
    assert all((r["key"], r["reason"]) in rejected for r in listed)
    assert {"x_corrupt", "x_big"} <= {r["key"] for r in listed}
    assert report["run"]["inputs"].endswith("*.tar") and report["run"]["output"] == str(job["out"])
    assert report["run"]["copyguard"] and report["run"]["started"]
    assert "x_corrupt" in _section_text(html, "Rejected samples") and "sim " in html


def test_rerun_and_multiprocessing_give_identical_outputs(job: dict) -> None:
    out2 = job["root"] / "out_mp"
    argv = ["--input", str(job["root"] / "in" / "*.tar"), "--output", str(out2), *PIXELS]
    run([*argv, "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"])
    for sub in ("manifest", "index", "shards"):
        first = {str(p.relative_to(job["out"])): _bytes(p) for p in (job["out"] / sub).rglob("*")}
        second = {str(p.relative_to(out2)): _bytes(p) for p in (out2 / sub).rglob("*")}
        assert first == second, sub


def test_incremental_run_against_a_reference(job: dict) -> None:
    day2 = day2_shard(job["root"] / "day2")
    out = job["root"] / "out_day2"
    report = run_curation(  # the typed entry point, no argv
        CurateConfig(),
        inputs=[str(day2)],
        output=str(out),
        reference=str(job["out"]),
        test_pipeline=_pipeline(),
    )
    rows = {r["key"]: r for r in _rows(out)}
    assert rows["n0"]["status"] == "duplicate" and rows["n0"]["representative"] == "a0"
    assert rows["n0"]["reason"] == "image_and_caption_duplicate" and rows["n0"]["image_group"] == "a0"
    assert rows["n1"]["status"] == "kept"
    assert report["inputs"] == 2 and report["summary"]["reference_entries"] == 10
    index = load_index(str(out / "index"))
    first = load_index(str(job["out"] / "index"))
    assert set(index.keys) == set(first.keys) | {"n1"}
    # The reference entry stands for one more input now, and its caption is duplicated over its copies.
    before, after = first.entry("a0"), index.entry("a0")
    assert (before.image_group_size, after.image_group_size) == (3, 4)
    assert (before.dup_caption_count, after.dup_caption_count) == (1, 2)
    assert after.dup_caption == "An astronaut in a white suit poses in front of a flag"
    assert index.entry("c0") == first.entry("c0")  # untouched entries are copied as they were
    np.testing.assert_array_equal(index.embedding("c0"), first.embedding("c0"))


def _curate(
    inputs: list[Path], out: Path, reference: Path | None = None, exclude: Path | None = None
) -> dict:
    """The job through ``build_pipeline`` (the way to pass ``exclude_keys`` until the CLI has the flag)."""
    cfg = CurateConfig.model_validate({"io": {"max_pixels": 20000}})
    _prepare_output(str(out), overwrite=False)
    with _pipeline() as p:
        build_pipeline(
            p,
            [str(i) for i in inputs],
            str(out),
            cfg,
            str(reference) if reference else None,
            str(exclude) if exclude else None,
        )
    return json.loads((out / "report.json").read_text())


def test_template_cap_counts_the_reference_samples(tmp_path: Path) -> None:
    day1, day2 = template_shards(tmp_path / "in")
    first = _curate([day1], tmp_path / "o1")
    assert first["by_status"]["kept"] == 3  # three images with one caption: no template yet
    _curate([day2], tmp_path / "o2", reference=tmp_path / "o1")
    rows = {r["key"]: r for r in _rows(tmp_path / "o2")}
    # Six image groups now share the caption; the cap of 3 is already held by the reference run's three.
    assert {k: r["reason"] for k, r in rows.items()} == {f"s{i}": "templated_caption_cap" for i in range(3)}
    index = load_index(str(tmp_path / "o2" / "index"))
    assert sorted(index.keys) == ["t0", "t1", "t2"]
    assert index.entry("t0").caption_group_size == 6


def test_exclude_keys_drop_samples_their_groups_and_reference_entries(job: dict) -> None:
    exclude = job["root"] / "filtered.jsonl"
    exclude.write_text('{"key": "n0", "step": 3}\n{"key": "c0", "step": 4}\n\nnot-a-key-here\n')
    out = job["root"] / "out_excl"
    report = _curate([day2_shard(job["root"] / "day2x")], out, reference=job["out"], exclude=exclude)
    rows = {r["key"]: r for r in _rows(out)}
    assert rows["n0"]["reason"] == "excluded_key" and rows["n0"]["status"] == "duplicate"
    assert rows["n1"]["status"] == "kept"
    index = load_index(str(out / "index"))
    # c0 (a kept reference entry) is named: it leaves the index; a0 is n0's image group: it leaves too.
    assert "c0" not in index.keys and "a0" not in index.keys and "c1" in index.keys
    assert report["summary"]["reference_excluded"] == 2


def test_cli_exit_codes(job: dict, capsys: pytest.CaptureFixture) -> None:
    inp = str(job["root"] / "in" / "*.tar")
    assert (
        main(["curate", "--input", str(job["root"] / "none" / "*.tar"), "--output", str(job["root"] / "o1")])
        == 2
    )
    assert "matches no files" in capsys.readouterr().err
    assert main(["curate", "--input", inp, "--output", str(job["out"])]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (
        main(
            [
                "curate",
                "--input",
                inp,
                "--output",
                str(job["root"] / "o2"),
                "--set",
                "curate.minhash.threshold=2",
            ]
        )
        == 2
    )
    assert "curate.minhash.threshold" in capsys.readouterr().err
    assert (
        main(["curate", "--input", inp, "--output", str(job["root"] / "o3"), "--reference", str(job["root"])])
        == 2
    )
