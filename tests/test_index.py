"""The training-set index: persistence, nearest neighbours, y_N, merging (Chen et al., CVPR 2024; Somepalli et al., NeurIPS 2023)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from copyguard.common.errors import UsageError
from copyguard.curation.index import IndexEntry, TrainingIndex

DIM = 32
INFO = {"name": "fake-sscd", "dim": DIM, "input_size": 320, "preprocessing": {"resize": "none"}}


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _entries(n: int, prefix: str = "k") -> list[IndexEntry]:
    return [IndexEntry(key=f"{prefix}{i:04d}", caption=f"caption {prefix}{i}") for i in range(n)]


def _index(n: int = 50, seed: int = 0, prefix: str = "k", **kwargs) -> TrainingIndex:
    minhash = np.arange(n * 8, dtype=np.uint64).reshape(n, 8) + seed
    return TrainingIndex.build(
        _vectors(n, seed), _entries(n, prefix), INFO, minhash, minhash_info={"num_perm": 8}, **kwargs
    )


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_round_trip(tmp_path: Path) -> None:
    idx = _index()
    idx.save(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "entries.parquet",
        "index.json",
        "minhash.npy",
        "vectors.faiss",
    ]
    back = TrainingIndex.load(str(tmp_path))
    assert len(back) == 50 and back.keys == idx.keys and back.captions == idx.captions
    assert back.info == idx.info
    assert back.info["count"] == 50 and back.info["embedder"]["name"] == "fake-sscd"
    np.testing.assert_array_equal(back.vectors(), idx.vectors())
    np.testing.assert_array_equal(back.minhash, idx.minhash)
    assert (
        back.entry("k0007")
        == idx.entry(7)
        == IndexEntry("k0007", "caption k7", caption_group="k0007", image_group="k0007")
    )
    written = json.loads((tmp_path / "index.json").read_text())
    assert written["format_version"] == 1 and set(written["files"]) == {
        "entries.parquet",
        "minhash.npy",
        "vectors.faiss",
    }


def test_rows_are_sorted_by_key_and_vectors_follow() -> None:
    x = _vectors(5)
    entries = _entries(5)
    idx = TrainingIndex.build(x[::-1], entries[::-1], INFO)
    assert idx.keys == [e.key for e in entries]
    np.testing.assert_allclose(idx.embedding("k0003"), x[3], atol=1e-6)
    np.testing.assert_allclose(idx.reconstruct([1, 2]), x[1:3], atol=1e-6)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_nearest_matches_brute_force(kind: str) -> None:
    n = 400
    idx = _index(n, kind=kind, nlist=4, nprobe=4)  # nprobe = nlist: IVF exhaustive here
    queries = np.random.default_rng(9).standard_normal((20, DIM)).astype(np.float32) * 3.0
    res = idx.nearest(queries, k=5)
    unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = unit @ _vectors(n).T
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(res.indices, expected)
    np.testing.assert_allclose(res.similarities, np.take_along_axis(sims, expected, 1), atol=1e-5)
    assert res.keys[0, 0] == idx.keys[expected[0, 0]]
    assert res.caption_groups[0, 0] == idx.entry(int(expected[0, 0])).caption_group
    one = idx.nearest(queries[0], k=1)  # a single vector is one query
    assert one.indices.shape == (1, 1) and one.indices[0, 0] == expected[0, 0]


def test_nearest_edge_cases() -> None:
    idx = _index(3)
    assert idx.nearest(_vectors(2), k=10).indices.shape == (2, 3)  # k capped at the size
    assert idx.nearest(np.zeros((0, DIM), np.float32), k=1).indices.shape == (0, 1)
    with pytest.raises(UsageError, match="shape"):
        idx.nearest(np.zeros((1, DIM + 1), np.float32))
    empty = TrainingIndex.build(np.zeros((0, DIM), np.float32), [], INFO)
    assert len(empty) == 0 and empty.nearest(_vectors(1)).indices.shape == (1, 0)


def test_duplicated_caption_rule() -> None:
    entries = [
        # image group "g1": duplicated 30 times; two kept rows with captions duplicated 25 and 40 times
        IndexEntry("a", "a famous painting", "c1", "g1", caption_group_size=25, image_group_size=30),
        IndexEntry("b", "another caption", "c2", "g1", caption_group_size=40, image_group_size=30),
        # duplicated image, unique caption: no y_N
        IndexEntry("c", "unique words", "c3", "g2", caption_group_size=1, image_group_size=50),
        # templated caption over a unique image: no y_N
        IndexEntry("d", "stock photo", "c4", "g3", caption_group_size=900, image_group_size=1),
        # curation recorded the exact y_N candidate for this image group
        IndexEntry(
            "e", "kept caption", "c5", "g4", 3, 60, dup_caption="the real duplicate", dup_caption_count=22
        ),
    ]
    idx = TrainingIndex.build(_vectors(5), entries, INFO)
    # support = min(image_group_size, caption_group_size): b has 30, a has 25 -> b's caption, from either row
    assert idx.duplicated_caption("a") == "another caption"
    assert idx.duplicated_caption(0) == idx.duplicated_caption("b") == "another caption"
    assert idx.duplicated_caption("a", min_count=31) is None
    assert idx.duplicated_caption("c") is None
    assert idx.duplicated_caption("d") is None
    assert idx.duplicated_caption("e", min_count=21) == "the real duplicate"
    assert idx.duplicated_caption("e", min_count=23) is None
    assert idx.image_group_rows("a") == [0, 1]
    with pytest.raises(UsageError, match="not in the training index"):
        idx.duplicated_caption("zzz")


def test_ties_go_to_the_smallest_key() -> None:
    entries = [
        IndexEntry("y", "caption y", "cy", "g", caption_group_size=5, image_group_size=5),
        IndexEntry("x", "caption x", "cx", "g", caption_group_size=5, image_group_size=5),
    ]
    assert TrainingIndex.build(_vectors(2), entries, INFO).duplicated_caption("y") == "caption x"


def test_merge(tmp_path: Path) -> None:
    a, b = _index(30, seed=0, prefix="a"), _index(20, seed=1, prefix="b")
    merged = a.merge(b)
    assert len(merged) == 50 and merged.keys == sorted(a.keys + b.keys)
    np.testing.assert_allclose(merged.embedding("b0003"), b.embedding("b0003"))
    np.testing.assert_array_equal(merged.minhash[merged.row("a0002")], a.minhash[2])
    assert merged.nearest(b.embedding("b0005")).keys[0, 0] == "b0005"
    # a flat merge is the same as building on the union
    union = TrainingIndex.build(
        np.concatenate([a.vectors(), b.vectors()]),
        [a.entry(i) for i in range(30)] + [b.entry(i) for i in range(20)],
        INFO,
        np.concatenate([a.minhash, b.minhash]),
        minhash_info={"num_perm": 8},
    )
    merged.save(str(tmp_path / "m"))
    union.save(str(tmp_path / "u"))
    assert _files(tmp_path / "m") == _files(tmp_path / "u")
    with pytest.raises(UsageError, match="keys in both"):
        a.merge(_index(5, prefix="a"))
    with pytest.raises(UsageError, match="MinHash"):
        a.merge(TrainingIndex.build(_vectors(2), _entries(2, "z"), INFO))
    with pytest.raises(UsageError, match="name"):
        a.merge(TrainingIndex.build(_vectors(2), _entries(2, "z"), {**INFO, "name": "other"}))


def test_ivf_merge_keeps_the_trained_lists() -> None:
    a = _index(400, prefix="a", kind="ivf", nlist=4, nprobe=4)
    merged = a.merge(_index(100, seed=1, prefix="b", kind="ivf", nlist=4, nprobe=4))
    assert merged.info["faiss"] == a.info["faiss"] and len(merged) == 500
    assert merged.nearest(a.embedding("a0010")).keys[0, 0] == "a0010"


def test_identical_input_gives_identical_bytes(tmp_path: Path) -> None:
    for kind in ("flat", "ivf"):
        _index(300, kind=kind, nlist=4).save(str(tmp_path / f"{kind}1"))
        _index(300, kind=kind, nlist=4).save(str(tmp_path / f"{kind}2"))
        assert _files(tmp_path / f"{kind}1") == _files(tmp_path / f"{kind}2")
    # input order does not matter: rows are sorted by key
    x, entries = _vectors(40), _entries(40)
    perm = np.random.default_rng(3).permutation(40)
    TrainingIndex.build(x[perm], [entries[i] for i in perm], INFO).save(str(tmp_path / "p"))
    TrainingIndex.build(x, entries, INFO).save(str(tmp_path / "s"))
    assert _files(tmp_path / "p") == _files(tmp_path / "s")


def test_save_over_an_older_index_drops_stale_minhash(tmp_path: Path) -> None:
    _index(10).save(str(tmp_path))
    TrainingIndex.build(_vectors(4), _entries(4), INFO).save(str(tmp_path))
    assert not (tmp_path / "minhash.npy").exists()
    assert TrainingIndex.load(str(tmp_path)).minhash is None


def test_missing_and_corrupt_directories(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="index.json is missing"):
        TrainingIndex.load(str(tmp_path / "nowhere"))
    _index(10).save(str(tmp_path))
    vectors = tmp_path / "vectors.faiss"
    good = vectors.read_bytes()
    vectors.write_bytes(good[:-10])
    with pytest.raises(UsageError, match="corrupt"):
        TrainingIndex.load(str(tmp_path))
    vectors.unlink()
    with pytest.raises(UsageError, match="vectors.faiss is missing"):
        TrainingIndex.load(str(tmp_path))
    vectors.write_bytes(good)
    info_path = tmp_path / "index.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(UsageError, match="format version 99"):
        TrainingIndex.load(str(tmp_path))
    info_path.write_text("{not json")
    with pytest.raises(UsageError, match="corrupt") as err:
        TrainingIndex.load(str(tmp_path))
    assert "\n" not in str(err.value)
    info_path.write_text(json.dumps({**info, "count": 11}))
    with pytest.raises(UsageError, match="inconsistent"):
        TrainingIndex.load(str(tmp_path))


def test_check_compatible() -> None:
    idx = _index(5)
    idx.check_compatible(INFO)
    with pytest.raises(UsageError, match="64-d"):
        idx.check_compatible({**INFO, "dim": 64})
    with pytest.raises(UsageError, match="name"):
        idx.check_compatible({**INFO, "name": "sscd-distilled-onnx"})
    with pytest.raises(UsageError, match="input_size"):
        idx.check_compatible({**INFO, "input_size": 288})
    idx.check_compatible({**INFO, "name": "sscd-torch"}, strict=False)  # logged only


def test_check_compatible_with_a_real_embedder() -> None:
    from copyguard.curation.embedders import embedder_info, load_embedder

    sscd = load_embedder("sscd-onnx", threads=1)
    idx = TrainingIndex.build(sscd.embed([np.zeros((8, 8, 3), np.uint8)]), _entries(1), sscd)
    assert idx.info["embedder"] == embedder_info(sscd)
    idx.check_compatible(sscd)
    with pytest.raises(UsageError, match="name"):
        idx.check_compatible(load_embedder("sscd-distilled-onnx"))


def test_bad_build_inputs() -> None:
    with pytest.raises(UsageError, match="shape"):
        TrainingIndex.build(_vectors(3), _entries(2), INFO)
    with pytest.raises(UsageError, match="duplicate keys"):
        TrainingIndex.build(_vectors(2), [IndexEntry("k", "a"), IndexEntry("k", "b")], INFO)
    with pytest.raises(UsageError, match="NaN"):
        TrainingIndex.build(np.full((1, DIM), np.nan, np.float32), _entries(1), INFO)
    with pytest.raises(UsageError, match="minhash"):
        TrainingIndex.build(_vectors(2), _entries(2), INFO, np.zeros((3, 8), np.uint64))
    with pytest.raises(UsageError, match="entry 0"):
        TrainingIndex.build(_vectors(1), [{"key": "k", "caption": "c", "colour": 1}], INFO)


def test_mapping_entries_and_pickling() -> None:
    idx = TrainingIndex.build(
        _vectors(2), [{"key": "b", "caption": "B", "image_group": 7}, {"key": "a", "caption": "A"}], INFO
    )
    assert idx.entry("b").image_group == "7" and idx.entry("a").image_group == "a"
    clone = pickle.loads(pickle.dumps(idx))
    assert clone.keys == ["a", "b"]
    np.testing.assert_array_equal(clone.vectors(), idx.vectors())


def test_ivf_with_too_few_results_marks_the_gaps() -> None:
    idx = _index(400, kind="ivf", nlist=4, nprobe=1)
    res = idx.nearest(_vectors(3, seed=5), k=400)  # one probed list holds fewer than 400 vectors
    gaps = res.indices < 0
    assert gaps.any() and (~gaps).any()
    assert all(k is None for k in res.keys[gaps]) and np.isneginf(res.similarities[gaps]).all()
    assert all(isinstance(k, str) for k in res.keys[~gaps])
