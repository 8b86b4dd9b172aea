"""``copyguard sample-data``: shards and ground truth agree, planted groups are what they claim, and the
same seed gives the same bytes. The tiny preset is built once per module."""

from __future__ import annotations

import io
import json
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml

from copyguard.common.config import load_config
from copyguard.common.errors import ConfigError, UsageError
from copyguard.curation.captions import normalize_caption
from copyguard.curation.records import Rejection, RejectReason, Sample
from copyguard.curation.shards import read_shard_file
from copyguard.pipelines.cli import main
from copyguard.pipelines.lab.config import SampleDataConfig
from copyguard.pipelines.lab.sample_captions import (
    NEAR_DUPLICATE_LIMITS,
    case_variants,
    jaccard,
    load_caption_pool,
    near_duplicate_pairs,
    punct_variants,
    word_variants,
)
from copyguard.pipelines.lab.sample_data import KINDS, _Builder, build_sample_data
from copyguard.pipelines.lab.sample_images import PHOTO_NAMES, load_image_pool

ROOT = Path(__file__).resolve().parent.parent
BROKEN_REASONS = {
    "broken_corrupt_image": RejectReason.CORRUPT_IMAGE,
    "broken_missing_caption": RejectReason.MISSING_CAPTION,
    "broken_non_utf8": RejectReason.NON_UTF8_CAPTION,
}


class Built:
    def __init__(self, out: Path, seconds: float, summary: dict) -> None:
        self.out = out
        self.seconds = seconds
        self.summary = summary
        self.truth = [
            json.loads(line) for line in (out / "ground_truth.jsonl").read_text("utf-8").splitlines()
        ]
        self.by_key = {row["key"]: row for row in self.truth}
        self.shards = sorted(out.glob("shard-*.tar"))
        self.records = [(p.name, r) for p in self.shards for r in read_shard_file(str(p))]
        self.samples = {r.key: r for _, r in self.records if isinstance(r, Sample)}
        self.rejections = {r.key: r for _, r in self.records if isinstance(r, Rejection)}

    def groups(self, field: str, kind: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for row in self.truth:
            if row["kind"] == kind:
                out[row[field]].append(row["key"])
        return out


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Built:
    out = tmp_path_factory.mktemp("tiny")
    start = time.perf_counter()
    summary = build_sample_data(SampleDataConfig(preset="tiny"), out)
    return Built(out, time.perf_counter() - start, summary)


def test_every_key_is_in_the_shards_exactly_once(tiny: Built) -> None:
    keys = [r.key for _, r in tiny.records]
    assert len(keys) == len(set(keys)) == len(tiny.truth)
    assert set(keys) == set(tiny.by_key)
    assert all(re.fullmatch(r"s\d{7}", k) for k in keys)
    for row in tiny.truth:
        assert list(row) == ["key", "image_group", "caption_group", "kind", "copies"]
    assert {row["kind"] for row in tiny.truth} == set(KINDS)
    assert tiny.summary["samples"] == len(tiny.truth)
    assert len(tiny.shards) >= 3  # tiny rolls over at 100 samples per shard


def test_broken_samples_are_read_back_as_rejections(tiny: Built) -> None:
    for row in tiny.truth:
        if row["kind"] in BROKEN_REASONS:
            assert tiny.rejections[row["key"]].reason == BROKEN_REASONS[row["kind"]]
            assert row["copies"] == 1 and row["image_group"] == row["caption_group"] == row["key"]
        else:
            assert row["key"] in tiny.samples, row
    assert set(tiny.rejections) == {r["key"] for r in tiny.truth if r["kind"] in BROKEN_REASONS}


def test_unique_samples_have_their_own_groups(tiny: Built) -> None:
    image_groups = Counter(r["image_group"] for r in tiny.truth)
    caption_groups = Counter(r["caption_group"] for r in tiny.truth)
    for row in tiny.truth:
        if row["kind"] == "unique":
            assert row["image_group"] == row["caption_group"] == row["key"] and row["copies"] == 1
            assert image_groups[row["key"]] == caption_groups[row["key"]] == 1
    # every group id is the key of a member of that group (its original)
    for field in ("image_group", "caption_group"):
        for row in tiny.truth:
            assert tiny.by_key[row[field]][field] == row[field]
    # distinct image groups never share bytes; distinct caption groups never share a normalized caption
    image_owner: dict[bytes, str] = {}
    caption_owner: dict[str, str] = {}
    for key, sample in tiny.samples.items():
        row = tiny.by_key[key]
        assert image_owner.setdefault(sample.image, row["image_group"]) == row["image_group"]
        norm = normalize_caption(sample.caption)
        assert caption_owner.setdefault(norm, row["caption_group"]) == row["caption_group"]


def test_image_groups(tiny: Built) -> None:
    for kind in ("image_exact", "image_jpeg", "image_crop", "image_resize", "image_color", "image_overlay"):
        groups = tiny.groups("image_group", kind)
        assert groups, kind
        for original, members in groups.items():
            assert len(members) == tiny.by_key[original]["copies"] >= 2
            captions = [tiny.samples[k].caption for k in members]
            assert len({normalize_caption(c) for c in captions}) == len(members)  # unrelated captions
            assert len({tiny.by_key[k]["caption_group"] for k in members}) == len(members)
            images = [tiny.samples[k].image for k in members]
            if kind == "image_exact":
                assert len(set(images)) == 1
            else:
                assert len(set(images)) == len(members)
            if kind == "image_resize":
                sizes = {(tiny.samples[k].width, tiny.samples[k].height) for k in members if k != original}
                assert sizes <= {(48, 48), (56, 56), (80, 80), (96, 96)}


def test_caption_groups(tiny: Built) -> None:
    for kind in ("caption_exact", "caption_case", "caption_punct", "caption_words", "template_caption"):
        groups = tiny.groups("caption_group", kind)
        assert groups, kind
        for original, members in groups.items():
            assert len(members) == tiny.by_key[original]["copies"] >= 2
            captions = [tiny.samples[k].caption for k in members]
            images = [tiny.samples[k].image for k in members]
            assert len(set(images)) == len(members)  # different images
            assert len({tiny.by_key[k]["image_group"] for k in members}) == len(members)
            if kind in ("caption_exact", "template_caption"):
                assert len(set(captions)) == 1
            else:
                assert len(set(captions)) == len(members)
            if kind in ("caption_case", "caption_punct"):
                assert len({normalize_caption(c) for c in captions}) == 1
            if kind == "caption_words":
                first = tiny.samples[original].caption
                assert len(first.split()) >= 8
                for text in captions[1:]:
                    assert jaccard(first, text, "word", 2) >= 0.7
        if kind == "template_caption":
            assert all(8 <= len(m) <= 10 for m in groups.values())


def test_dup_pairs(tiny: Built) -> None:
    groups = tiny.groups("image_group", "dup_pair")
    assert sorted(len(m) for m in groups.values()) == [2, 5, 10, 25]
    reencoded = 0
    for original, members in groups.items():
        rows = [tiny.by_key[k] for k in members]
        assert all(r["copies"] == len(members) and r["caption_group"] == original for r in rows)
        assert len({tiny.samples[k].caption for k in members}) == 1
        images = Counter(tiny.samples[k].image for k in members)
        assert images[tiny.samples[original].image] >= len(members) - 1
        reencoded += len(members) - images[tiny.samples[original].image]
    assert reencoded >= 1


def test_samples_are_shuffled_across_shards(tiny: Built) -> None:
    shard_of = {r.key: name for name, r in tiny.records}
    dup_groups = tiny.groups("image_group", "dup_pair")
    assert any(len({shard_of[k] for k in members}) > 1 for members in dup_groups.values())
    first = Counter(tiny.by_key[r.key]["kind"] for name, r in tiny.records if name == tiny.shards[0].name)
    assert len(first) >= 8  # not one kind per shard


def test_tiny_is_fast(tiny: Built) -> None:
    assert tiny.seconds < 30, f"tiny preset took {tiny.seconds:.1f} s"


def test_cli_same_seed_same_bytes_and_refuses_existing_output(
    tiny: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    assert main(["sample-data", "--output", str(out), "--preset", "tiny"]) == 0
    assert "samples" in capsys.readouterr().out
    assert _files(out) == _files(tiny.out)
    assert main(["sample-data", "--output", str(out), "--preset", "tiny"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["sample-data", "--output", str(out), "--preset", "tiny", "--seed", "1", "--overwrite"]) == 0
    other = _files(out)
    assert other.keys() == _files(tiny.out).keys()
    assert other["ground_truth.jsonl"] != _files(tiny.out)["ground_truth.jsonl"]
    assert other["shard-000000.tar"] != _files(tiny.out)["shard-000000.tar"]


def test_image_size_is_the_presets_unless_set(tiny: Built, tmp_path: Path) -> None:
    """Each preset renders at its own ``image_size`` (64 px by default); the top-level ``image_size``
    overrides it, and the images in the shards have that size."""
    from PIL import Image

    assert SampleDataConfig(preset="small").size == 64 == SampleDataConfig(preset="tiny").size
    big = SampleDataConfig(preset="small", presets={"small": {"image_size": 128}})
    assert big.size == 128 and big.presets.tiny.image_size == 64
    assert SampleDataConfig(preset="small", image_size=96, presets={"small": {"image_size": 128}}).size == 96
    with pytest.raises(ValueError, match="0 .the preset's. or >= 16"):
        SampleDataConfig(image_size=8)
    first = next(iter(tiny.samples.values()))
    assert Image.open(io.BytesIO(first.image)).size == (64, 64)
    cfg = SampleDataConfig(preset="tiny", image_size=40, presets={"tiny": {"unique": 4, "image_groups": 0,
        "caption_groups": 0, "dup_counts": [], "dup_groups_per_count": 0, "template_groups": 0,
        "broken_per_kind": 0}})  # fmt: skip
    build_sample_data(cfg, tmp_path / "s")
    sizes = {Image.open(io.BytesIO(s.image)).size for p in sorted((tmp_path / "s").glob("*.tar"))
             for s in read_shard_file(str(p)) if isinstance(s, Sample)}  # fmt: skip
    assert sizes == {(40, 40)}


def test_the_cache_keys_sample_data_by_its_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A change of the builder's settings (here the image size) gives a new cache folder, so a cached build
    of older settings is never reused."""
    from copyguard.pipelines.lab import cache

    before = cache.sample_data_dir("small", 0, tmp_path)
    assert (
        before == cache.sample_data_dir("small", 0, tmp_path) != cache.sample_data_dir("small", 1, tmp_path)
    )
    settings = cache._sample_data_config
    monkeypatch.setattr(
        cache, "_sample_data_config", lambda *a: settings(*a).model_copy(update={"image_size": 128})
    )
    assert cache.sample_data_dir("small", 0, tmp_path) != before


def test_cli_rejects_bad_preset_and_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sample-data", "--output", str(tmp_path / "a"), "--preset", "huge"]) == 2
    assert "sample_data.preset" in capsys.readouterr().err
    bad = ["--set", "sample_data.presets.tiny.unique=-1"]
    assert main(["sample-data", "--output", str(tmp_path / "b"), "--preset", "tiny", *bad]) == 2
    assert "sample_data.presets.tiny.unique" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("sample_data.presets.small.dup_counts=[1, 5]", "sample_data.presets.small.dup_counts"),
        ("sample_data.presets.small.template_max=3", "sample_data.presets.small.template_max"),
        ("sample_data.jpeg_quality=101", "sample_data.jpeg_quality"),
        ("sample_data.presets.huge={}", "sample_data.presets.huge"),
    ],
)
def test_config_errors_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(SampleDataConfig, "sample_data", None, [override])


def test_a_partial_preset_keeps_the_other_defaults(tmp_path: Path) -> None:
    path = tmp_path / "sd.yaml"
    path.write_text("sample_data:\n  presets:\n    small:\n      unique: 500\n", encoding="utf-8")
    cfg = load_config(SampleDataConfig, "sample_data", path, [])
    assert cfg.counts.unique == 500
    assert cfg.counts.model_dump(exclude={"unique"}) == SampleDataConfig().counts.model_dump(
        exclude={"unique"}
    )


def test_yaml_equals_schema_defaults() -> None:
    data = yaml.safe_load((ROOT / "configs" / "sample_data.yaml").read_text("utf-8"))
    assert data == {"sample_data": SampleDataConfig().model_dump()}


def test_small_preset_fits_the_shipped_pools() -> None:
    builder = _Builder(SampleDataConfig(preset="small"))  # checks the image pool is large enough
    assert len(builder._dup_tiles) == 20 and all(t.editable for t in builder._dup_tiles)


def test_too_small_a_pool_is_a_usage_error(tmp_path: Path) -> None:
    cfg = load_config(SampleDataConfig, "sample_data", None, ["sample_data.presets.small.unique=100000"])
    with pytest.raises(UsageError, match="image pool"):
        build_sample_data(cfg, tmp_path / "x")


def test_shipped_caption_pool_has_no_near_duplicates() -> None:
    pool = load_caption_pool()
    texts = [*pool.coco, *pool.laion, *pool.memorized, *pool.templates]
    assert len(pool.coco) >= 2000 and len(pool.memorized) >= 40 and len(pool.templates) >= 20
    assert len({normalize_caption(t) for t in texts}) == len(texts)
    for kind, n, limit in NEAR_DUPLICATE_LIMITS:
        assert near_duplicate_pairs(texts, kind, n, limit) == [], (kind, n)


def test_caption_edits_stay_near_duplicates() -> None:
    rng = np.random.default_rng(0)
    for caption in load_caption_pool().coco[:40]:
        for variants in (case_variants(caption, 3, rng), punct_variants(caption, 3, rng)):
            assert variants and all(normalize_caption(v) == normalize_caption(caption) for v in variants)
            assert len(set(variants)) == len(variants) and caption not in variants
        if len(caption.split()) >= 8:
            for text in word_variants(caption, 2, rng):
                assert jaccard(caption, text, "word", 2) >= 0.7 and jaccard(caption, text, "char", 5) >= 0.7
                assert normalize_caption(text) != normalize_caption(caption)


def test_image_pool_tiles_are_disjoint_photo_regions() -> None:
    tiles = load_image_pool()
    assert len(tiles) >= 1400 and {t.photo for t in tiles} <= set(PHOTO_NAMES)
    assert sum(t.editable for t in tiles) >= 500
    by_photo: dict[tuple[str, int], list] = defaultdict(list)
    for t in tiles:
        by_photo[(t.photo, t.downscale)].append(t)
    for same in by_photo.values():
        boxes = np.array([(t.y, t.x, t.y + t.size, t.x + t.size) for t in same])
        overlap_y = np.minimum(boxes[:, None, 2], boxes[None, :, 2]) > np.maximum(
            boxes[:, None, 0], boxes[None, :, 0]
        )
        overlap_x = np.minimum(boxes[:, None, 3], boxes[None, :, 3]) > np.maximum(
            boxes[:, None, 1], boxes[None, :, 1]
        )
        overlap = overlap_y & overlap_x
        np.fill_diagonal(overlap, False)
        assert not overlap.any()
