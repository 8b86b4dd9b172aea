"""The distributed job's pure parts: partitioned search, the policy per component, summaries, the sharded
index (the Beam wiring itself is covered end to end in test_curate.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from copyguard.common.errors import UsageError
from copyguard.curation.clustering import cluster_embeddings, similarity_edges
from copyguard.curation.component_policy import Member, decide_component, empty_summary, merge_summaries
from copyguard.curation.config import CurateConfig, ImagesConfig
from copyguard.curation.index import IndexEntry, TrainingIndex
from copyguard.curation.index_shards import (
    ShardedIndex,
    load_centroids,
    load_index,
    write_shard,
    write_sharded_info,
)
from copyguard.curation.partitions import (
    assign,
    n_partitions,
    partition_edges,
    sample_rank,
    train_centroids,
)
from copyguard.curation.policy import decide, summarize
from copyguard.curation.union_find import connected_components

INFO = {"name": "fake-sscd", "dim": 32, "input_size": 320, "preprocessing": {}}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _planted(n: int = 600, d: int = 32, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Random unit vectors, every fifth one followed by two noisy copies (cosine ~0.8-0.95)."""
    rng = np.random.default_rng(seed)
    rows = []
    while len(rows) < n:
        base = rng.standard_normal(d)
        rows.append(base)
        if len(rows) % 5 == 1:
            rows += [base + 0.35 * rng.standard_normal(d) for _ in range(2)]
    keys = [f"k{i:04d}" for i in range(n)]
    return keys, _unit(np.array(rows[:n]))


def _search(keys: list[str], x: np.ndarray, cfg: ImagesConfig, centroids: np.ndarray) -> set[tuple[str, str]]:
    """The Beam stage's logic in one process: assign, then search partition by partition."""
    home: dict[int, list[int]] = {}
    visit: dict[int, list[int]] = {}
    for i, vec in enumerate(x):
        parts = assign(vec, centroids, cfg.partition_margin, cfg.partition_probe)
        home.setdefault(parts[0], []).append(i)
        for p in parts[1:]:
            visit.setdefault(p, []).append(i)
    edges = set()
    no_stats = np.zeros((len(x), 0), np.float32)
    for p, members in home.items():
        queries = visit.get(p, [])
        found = partition_edges(
            [keys[i] for i in members], x[members], no_stats[members],
            [keys[i] for i in queries], x[queries], no_stats[queries], cfg,
        )  # fmt: skip
        edges |= {(a, b) for a, b, _ in found}
    return edges


def test_partitioned_search_finds_the_exact_pairs() -> None:
    keys, x = _planted()
    cfg = ImagesConfig(threshold=0.75, partition_size=60, partition_min_train=5, partition_margin=2.0)
    k = n_partitions(len(x), cfg)
    assert k == 10
    centroids = train_centroids(x, k, seed=0)
    i, j, _ = similarity_edges(x, cfg.threshold, cfg, mode="exact")
    exact = {(keys[a], keys[b]) for a, b in zip(i.tolist(), j.tolist(), strict=True)}
    assert len(exact) > 100
    assert _search(keys, x, cfg, centroids) == exact  # every partition probed: exact
    narrow = _search(
        keys, x, cfg.model_copy(update={"partition_margin": 0.1, "partition_probe": 3}), centroids
    )
    assert narrow <= exact and len(narrow) >= 0.9 * len(exact)  # a margin: approximate, never wrong


def test_partitions_are_deterministic() -> None:
    keys, x = _planted(300)
    sample = sorted(range(len(keys)), key=lambda i: sample_rank(keys[i]))[:200]
    a = train_centroids(x[sorted(sample)], 4, seed=0)
    b = train_centroids(x[sorted(sample)], 4, seed=0)
    np.testing.assert_array_equal(a, b)
    assert sample_rank("k0001") == sample_rank("k0001") != sample_rank("k0002")
    assert assign(x[0], a, 0.0, 8) == [int(np.argmax(a @ x[0]))]
    assert len(assign(x[0], a, 2.0, 3)) == 3
    assert n_partitions(0, ImagesConfig()) == 1 and n_partitions(10**6, ImagesConfig()) == 1000
    assert n_partitions(10**6, ImagesConfig(partition_sample=20_000)) == 1000
    assert n_partitions(10**6, ImagesConfig(partition_sample=2_000)) == 100  # 20 per centroid at least
    assert train_centroids(x[:10], 1).shape == (1, x.shape[1])


def _members(keys: list[str], captions: list[str]) -> list[Member]:
    return [Member(k, "s.tar", c, 64, 64, 0) for k, c in zip(keys, captions, strict=True)]


def test_policy_per_component_equals_the_global_policy() -> None:
    keys, x = _planted(200, seed=3)
    cfg = CurateConfig()
    captions = [f"caption number {i % 37} about a red house" for i in range(len(keys))]
    i, j, s = similarity_edges(x, cfg.images.threshold, cfg.images, mode="exact")
    image_edges = [(keys[a], keys[b], float(v)) for a, b, v in zip(i, j, s, strict=True)]
    caption_edges = [
        (a, b) for a in keys for b in keys if a < b and captions[keys.index(a)] == captions[keys.index(b)]
    ]
    # Global: one cluster over all images, caption components, one decide().
    image = cluster_embeddings(keys, x, cfg.images, mode="exact")
    cap = connected_components(keys, caption_edges)
    want = decide(keys, [64] * 200, [64] * 200, image, [cap[k] for k in keys], cfg.policy, captions=captions)
    # Per component of the union of both kinds of edges.
    comp = connected_components(keys, [(a, b) for a, b, _ in image_edges] + caption_edges)
    rows, summary = {}, empty_summary()
    for root in sorted(set(comp.values())):
        part = [k for k in keys if comp[k] == root]
        result = decide_component(
            _members(part, [captions[keys.index(k)] for k in part]), image_edges, caption_edges, cfg
        )
        rows.update({r["key"]: r for r in result.rows})
        summary = merge_summaries(summary, result.summary, cfg.report.top_groups)
    assert {d.key: d.row() for d in want} == {k: {f: r[f] for f in want[0].row()} for k, r in rows.items()}
    whole = summarize(want, cfg.report.top_groups)
    for field in (
        "samples",
        "status",
        "reason",
        "caption_rule_drops",
        "image_group_sizes",
        "caption_group_sizes",
    ):
        assert summary[field] == whole[field], field
    assert [g["group"] for g in summary["top_image_groups"]] == [
        g["group"] for g in whole["top_image_groups"]
    ]


def test_reference_members_keep_their_ids_and_add_their_counts() -> None:
    cfg = CurateConfig()
    ref = IndexEntry("r5", "old caption", "a1", "a1", 4, 3, "old caption", 2)  # a1: dropped earlier
    members = [
        Member("r5", "", "old caption", 0, 0, 7, ref),
        *_members(["n1", "n2"], ["old caption", "x y z"]),
    ]
    result = decide_component(members, [("n1", "r5", 0.9), ("n2", "r5", 0.8)], [("n1", "r5")], cfg)
    rows = {r["key"]: r for r in result.rows}
    assert set(rows) == {"n1", "n2"}  # reference members are never re-decided
    assert (
        rows["n1"]["image_group"] == rows["n1"]["caption_group"] == "a1"
        and rows["n1"]["representative"] == "r5"
    )
    assert rows["n1"]["reason"] == "image_and_caption_duplicate" and rows["n2"]["reason"] == "image_duplicate"
    [(partition, (key, entry))] = result.updates
    assert (partition, key) == (7, "r5")
    assert (entry.image_group_size, entry.caption_group_size, entry.dup_caption_count) == (5, 5, 3)
    excluded = decide_component(members, [("n1", "r5", 0.9)], [], cfg, excluded={"n1"})
    assert (7, ("r5", None)) in excluded.updates and excluded.summary["reference_excluded"] == 1


def _shards(tmp_path: Path, n: int = 90, k: int = 3) -> tuple[np.ndarray, list[IndexEntry], str]:
    rng = np.random.default_rng(0)
    x = _unit(rng.standard_normal((n, 32)))
    entries = [
        IndexEntry(f"k{i:03d}", f"caption {i}", dup_caption=f"caption {i}", dup_caption_count=i % 4)
        for i in range(n)
    ]
    centroids = train_centroids(x, k)
    home = np.argmax(x @ centroids.T, axis=1)
    lines = [
        write_shard(
            str(tmp_path), p, x[home == p], [e for e, h in zip(entries, home, strict=True) if h == p], INFO
        )
        for p in range(k)
    ]
    write_sharded_info(str(tmp_path), lines[::-1], centroids, INFO)
    return x, entries, str(tmp_path)


def test_sharded_index_answers_as_one_flat_index(tmp_path: Path) -> None:
    x, entries, directory = _shards(tmp_path)
    flat = TrainingIndex.build(x, entries, INFO)
    sharded = load_index(directory)
    assert isinstance(sharded, ShardedIndex) and len(sharded) == 90 and sharded.partitions == 3
    assert isinstance(load_index(str(tmp_path / "part-00000")), TrainingIndex)  # an unsharded index: as it is
    with pytest.raises(UsageError, match="load_index"):  # the single-index reader points to the loader
        TrainingIndex.load(directory)
    assert sorted(sharded.keys) == flat.keys and sharded.minhash is None
    q = x[:20] + 0.05
    got, want = sharded.nearest(q, k=5), flat.nearest(q, k=5)
    assert got.keys.tolist() == want.keys.tolist()
    np.testing.assert_allclose(got.similarities, want.similarities, rtol=1e-5)
    np.testing.assert_allclose(
        sharded.reconstruct(got.indices[:, 0]), flat.reconstruct(want.indices[:, 0]), atol=1e-6
    )
    assert sharded.entry("k007") == flat.entry("k007")
    assert (
        sharded.duplicated_caption("k007", 2) == "caption 7" and sharded.duplicated_caption("k004", 2) is None
    )
    assert sharded.image_group_rows("k007") == [sharded.row("k007")]
    sharded.check_compatible(INFO)
    with pytest.raises(UsageError):
        sharded.check_compatible({**INFO, "dim": 64})
    np.testing.assert_array_equal(load_centroids(directory), sharded.centroids)
    # One probe per query: an IVF search over the shards (approximate, at most one shard per query opened).
    one = ShardedIndex.load(directory, nprobe=1, max_open=1)
    assert (one.nearest(x[:20], k=1).keys[:, 0] == np.array([e.key for e in entries[:20]])).all()


def test_sharded_index_checks_its_files(tmp_path: Path) -> None:
    _, _, directory = _shards(tmp_path)
    shard_info = tmp_path / "part-00001" / "index.json"
    shard_info.write_text(shard_info.read_text().replace('"count"', '"count" ', 1))
    index = ShardedIndex.load(directory)
    index.shard(0)
    with pytest.raises(UsageError, match="checksum"):
        index.shard(1)
    (tmp_path / "centroids.npy").write_bytes(b"junk")
    with pytest.raises(UsageError, match="checksum"):
        load_index(directory)
