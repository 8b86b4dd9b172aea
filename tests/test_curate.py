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

from copyguard.curation.components import connected_components
from copyguard.curation.curate_config import MinHashConfig
from copyguard.curation.index import TrainingIndex
from copyguard.curation.manifest import read_manifest
from copyguard.curation.shards import iter_samples
from copyguard.pipelines.beam_components import ConnectedComponents
from copyguard.pipelines.cli import main
from copyguard.pipelines.curate import run
from copyguard.pipelines.transforms import CaptionComponents, Light, UniqueKeys
from tests.curate_fixtures import build_inputs, near_duplicate_shard

PIXELS = ["--set", "curate.io.max_pixels=20000"]


def _pipeline() -> BeamTestPipeline:
    return BeamTestPipeline(runner=FnApiRunner())


def _light(key: str, caption: str = "c", shard: str = "s", reference: bool = False) -> Light:
    return Light(key, shard, caption, 8, 8, np.zeros(4, np.float32), reference)


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
            equal_to(
                [("k", "a.tar", False), ("j", "s", False), ("r", "", True) if False else ("r", "s", True)]
            ),
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
    index = TrainingIndex.load(str(job["out"] / "index"))
    kept = sorted(r["key"] for r in job["rows"] if r["status"] == "kept")
    assert index.keys == kept
    assert index.info["embedder"]["name"] == "sscd-onnx" and index.minhash is not None
    res = index.nearest(index.vectors()[:3], k=1)
    assert list(res.keys[:, 0]) == kept[:3]
    assert index.entry("a0").image_group_size == 3


def test_report_is_escaped_and_complete(job: dict) -> None:
    html = (job["out"] / "report.html").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert "data:image/jpeg;base64," in html  # thumbnails of the largest duplicate group
    report = json.loads((job["out"] / "report.json").read_text())
    assert report["summary"]["top_image_groups"][0]["group"] == "a0"


def test_rerun_and_multiprocessing_give_identical_outputs(job: dict) -> None:
    out2 = job["root"] / "out_mp"
    argv = ["--input", str(job["root"] / "in" / "*.tar"), "--output", str(out2), *PIXELS]
    run([*argv, "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"])
    for sub in ("manifest", "index", "shards"):
        first = {p.name: p.read_bytes() for p in sorted((job["out"] / sub).iterdir())}
        second = {p.name: p.read_bytes() for p in sorted((out2 / sub).iterdir())}
        assert first == second, sub


def test_incremental_run_against_a_reference(job: dict) -> None:
    day2 = near_duplicate_shard(job["root"] / "day2")
    out = job["root"] / "out_day2"
    report = run(
        ["--input", str(day2), "--output", str(out), "--reference", str(job["out"])],
        test_pipeline=_pipeline(),
    )
    rows = {r["key"]: r for r in _rows(out)}
    assert rows["n0"]["status"] == "duplicate" and rows["n0"]["representative"] == "a0"
    assert rows["n1"]["status"] == "kept"
    assert report["inputs"] == 2
    index = TrainingIndex.load(str(out / "index"))
    first = TrainingIndex.load(str(job["out"] / "index"))
    assert set(index.keys) == set(first.keys) | {"n1"}


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
