"""Image dedup core: FAISS similarity edges (exact / IVF / k-NN) and chaining-safe clustering."""

from __future__ import annotations

import time

import numpy as np
import pytest

from copyguard.common.errors import UsageError
from copyguard.curation.clustering import (
    cluster_components,
    cluster_embeddings,
    gpu_available,
    group_ids,
    similarity_edges,
)
from copyguard.curation.config import ImagesConfig
from copyguard.curation.evaluate import pairwise_scores
from copyguard.curation.union_find import connected_labels


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _planted(n_unique: int, group_sizes: list[int], d: int = 64, noise: float = 0.25, seed: int = 0):
    """Random unit vectors plus tight groups (each copy = original + noise); returns (emb, true labels)."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for g, size in enumerate(group_sizes):
        base = rng.standard_normal(d)
        base /= np.linalg.norm(base)
        for _ in range(size):
            rows.append(base + noise * rng.standard_normal(d) / np.sqrt(d))
            labels.append(g)
    rows.extend(rng.standard_normal((n_unique, d)))
    labels.extend(range(len(group_sizes), len(group_sizes) + n_unique))
    return _unit(np.array(rows)), np.array(labels)


def _pairs(i: np.ndarray, j: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(i.tolist(), j.tolist(), strict=True))


def test_exact_edges_match_brute_force() -> None:
    emb, _ = _planted(300, [2, 3, 4, 5])
    i, j, sim = similarity_edges(emb, 0.6, ImagesConfig())
    gram = emb @ emb.T
    bi, bj = np.nonzero(np.triu(gram >= 0.6, k=1))
    assert _pairs(i, j) == _pairs(bi, bj) and len(i) == 1 + 3 + 6 + 10
    assert np.all(i < j) and np.allclose(sim, gram[i, j], atol=1e-5)
    assert len(similarity_edges(emb[:1], 0.6)[0]) == 0


@pytest.mark.parametrize("mode", ["ivf", "knn"])
def test_approximate_search_recall_vs_exact(mode: str) -> None:
    emb, _ = _planted(6000, [2] * 150 + [5] * 20, d=64, noise=0.4)
    cfg = ImagesConfig(exact_max=1000, nprobe=8, knn_k=16)
    exact = _pairs(*similarity_edges(emb, 0.6, cfg, mode="exact")[:2])
    approx = _pairs(*similarity_edges(emb, 0.6, cfg, mode=mode)[:2])
    assert len(exact) >= 150 + 20 * 10  # planted pairs (plus a rare random one)
    assert len(approx & exact) / len(exact) >= 0.95
    assert approx <= exact  # never a pair below the threshold


def test_auto_mode_uses_ivf_above_exact_max() -> None:
    emb, _ = _planted(3000, [3] * 30, noise=0.3)
    exact = _pairs(*similarity_edges(emb, 0.6, ImagesConfig())[:2])
    auto_ivf = _pairs(*similarity_edges(emb, 0.6, ImagesConfig(exact_max=100))[:2])
    assert len(auto_ivf & exact) / len(exact) >= 0.95


def test_ivf_mode_reports_its_steps_and_finds_no_edge_without_a_match() -> None:
    """IVF (forced, or chosen above ``exact_max``) runs the list join and times its steps inside the search;
    a run where no pair reaches the threshold gives empty edge arrays, not an error."""
    emb, _ = _planted(3000, [3] * 30, noise=0.3)
    exact = _pairs(*similarity_edges(emb, 0.6, ImagesConfig(), mode="exact")[:2])
    for mode, cfg, steps in (
        ("ivf", ImagesConfig(), ("ivf_train_s", "ivf_assign_s", "ivf_join_s")),
        (None, ImagesConfig(exact_max=100), ("ivf_train_s", "ivf_assign_s", "ivf_join_s")),
        ("knn", ImagesConfig(exact_max=100), ("ivf_train_s", "ivf_add_s")),  # k-NN over an IVF index
    ):
        times: dict = {}
        t0 = time.perf_counter()
        similarity_edges(emb, 0.6, cfg, mode=mode, timings=times)
        wall = time.perf_counter() - t0
        assert times["mode"] == (mode or "ivf") and times["nlist"] >= 2
        assert min(times[k] for k in steps) >= 0 and sum(times[k] for k in steps) <= times["search_s"] + 1e-6
        assert times["edges_s"] >= 0 and times["search_s"] + times["edges_s"] <= wall + 1e-6
    # probing every list, the IVF join is exact: every query row (the first one too) is searched
    everything = ImagesConfig(nprobe=100_000)
    assert _pairs(*similarity_edges(emb, 0.6, everything, mode="ivf")[:2]) == exact
    unique, _ = _planted(3000, [], noise=0.3)
    i, j, sim = similarity_edges(unique, 1.01, ImagesConfig(), mode="ivf")  # not even an image itself
    assert len(i) == len(j) == len(sim) == 0 and i.dtype == np.int64 and sim.dtype == np.float32


def test_gpu_available_reads_faiss_and_survives_a_broken_build(monkeypatch: pytest.MonkeyPatch) -> None:
    import faiss

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2, raising=False)
    assert gpu_available() is True
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0, raising=False)
    assert gpu_available() is False

    def broken() -> int:
        raise RuntimeError("CUDA driver version is insufficient")

    monkeypatch.setattr(faiss, "get_num_gpus", broken, raising=False)
    assert gpu_available() is False


def _chain(length: int, step_cos: float = 0.8, d: int = 128) -> np.ndarray:
    """v[k+1] = step_cos * v[k] + sqrt(1 - step_cos^2) * e[k]: each step cos 0.8, cos(v0, vk) = 0.8^k."""
    basis = np.eye(d, dtype=np.float64)
    out = [basis[0]]
    for k in range(1, length):
        out.append(step_cos * out[-1] + np.sqrt(1 - step_cos**2) * basis[k])
    return _unit(np.array(out))


@pytest.mark.parametrize("threshold", [0.6, 0.75])
def test_chaining_protection(threshold: float) -> None:
    emb = _chain(60)
    assert float(emb[0] @ emb[59]) < 1e-5  # the end points are unrelated
    cfg = ImagesConfig(threshold=threshold, join_threshold=max(0.85, threshold))
    i, j, sim = similarity_edges(emb, threshold, cfg)
    plain = connected_labels(60, i, j)
    assert len(set(plain.tolist())) == 1  # union-find chains all 60 into one group
    labels = cluster_components(60, i, j, sim, cfg)
    sizes = np.bincount(labels)
    assert sizes.max() <= 5 and len(set(labels.tolist())) >= 12
    for g in set(labels.tolist()):
        members = np.flatnonzero(labels == g)
        assert members.max() - members.min() <= 4  # a group spans at most 4 chain steps


def test_planted_groups_recovered_exactly() -> None:
    emb, truth = _planted(500, [2, 3, 4, 6, 8, 12], noise=0.4)
    cfg = ImagesConfig()
    labels = cluster_components(len(emb), *similarity_edges(emb, cfg.threshold, cfg), cfg)
    scores = pairwise_scores(labels.tolist(), truth.tolist())
    assert scores["precision"] == 1.0 and scores["recall"] == 1.0


def test_copies_linked_only_through_their_original() -> None:
    # Copies at cos 0.75 to the original but only 0.56 to each other: one group around the original.
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((64, 8)))
    original, others = q[:, 0], q[:, 1:].T
    copies = 0.75 * original + np.sqrt(1 - 0.75**2) * others
    emb = _unit(np.vstack([copies, original, rng.standard_normal((40, 64))]))
    cfg = ImagesConfig(threshold=0.6)
    labels = cluster_components(len(emb), *similarity_edges(emb, 0.6, cfg), cfg)
    assert len(set(labels[:8].tolist())) == 1 and labels[0] == 0
    assert len(set(labels[8:].tolist())) == 40


def test_lone_representative_joins_only_at_join_threshold() -> None:
    # hub 0 with members 1-4 (0.8); node 5 touches only member 1 (0.7).
    i = np.array([0, 0, 0, 0, 1])
    j = np.array([1, 2, 3, 4, 5])
    sim = np.array([0.8, 0.8, 0.8, 0.8, 0.7], dtype=np.float32)
    strict = cluster_components(6, i, j, sim, ImagesConfig(threshold=0.6, join_threshold=0.85))
    assert strict.tolist() == [0, 0, 0, 0, 0, 5]
    loose = cluster_components(6, i, j, sim, ImagesConfig(threshold=0.6, join_threshold=0.65))
    assert loose.tolist() == [0] * 6
    with pytest.raises(ValueError, match="out of range"):
        cluster_components(3, i, j, sim)


def test_group_ids_independent_of_input_order() -> None:
    emb, truth = _planted(50, [3, 4], noise=0.3, seed=5)
    keys = [f"s{k:03d}" for k in range(len(emb))]
    ids = dict(zip(keys, cluster_embeddings(keys, emb), strict=True))
    perm = np.random.default_rng(1).permutation(len(keys))
    shuffled = dict(
        zip([keys[p] for p in perm], cluster_embeddings([keys[p] for p in perm], emb[perm]), strict=True)
    )
    assert shuffled == ids
    assert ids["s001"] == "s000" and ids["s006"] == "s003" and ids["s010"] == "s010"
    assert group_ids(["b", "a", "c"], [7, 7, 2]) == ["a", "a", "c"]


def test_bad_config_values_are_rejected() -> None:
    with pytest.raises(ValueError, match="join_threshold"):
        ImagesConfig(threshold=0.8, join_threshold=0.7)
    with pytest.raises(ValueError, match="threshold"):
        ImagesConfig(threshold=1.5)


def test_gpu_path_builds_a_knn_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU route's wiring only, with stand-ins for the two GPU FAISS calls (CPU index underneath).

    What the mock tests: ``use_gpu="auto"`` with a GPU takes the k-NN route, moves the index exactly once
    (to device 0) and post-processes the GPU index's k-NN answer exactly like the CPU path; ``use_gpu=True``
    without a GPU is a usage error. What it cannot test: anything the GPU index itself does (FAISS GPU
    results, its k <= 2048 limit, nprobe on a GPU IVF, memory); that needs a machine with a GPU build.
    """
    import faiss

    from copyguard.curation import clustering

    moved = []
    monkeypatch.setattr(clustering, "gpu_available", lambda: True)
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(
        faiss, "index_cpu_to_gpu", lambda res, dev, index: moved.append((dev, index)) or index, raising=False
    )
    emb, _ = _planted(400, [2] * 20, noise=0.3)
    cfg = ImagesConfig(use_gpu="auto", knn_k=8)
    gpu = _pairs(*similarity_edges(emb, 0.75, cfg)[:2])
    cpu = _pairs(*similarity_edges(emb, 0.75, ImagesConfig(use_gpu=False))[:2])
    assert [dev for dev, _ in moved] == [0] and gpu == cpu
    monkeypatch.setattr(clustering, "gpu_available", lambda: False)
    with pytest.raises(UsageError, match="no GPU"):
        similarity_edges(emb, 0.75, ImagesConfig(use_gpu=True))


def test_knn_graph_links_each_image_to_its_k_nearest_only() -> None:
    """k = 2 on a chain a-b-c-d (every pair above the threshold): the ends never link to each other."""
    rng = np.random.default_rng(4)
    base, step = rng.standard_normal(64), 0.12 * rng.standard_normal(64)
    chain = [base + s * step for s in range(4)]
    emb = _unit(np.array(chain + list(rng.standard_normal((20, 64)))))
    gram = emb @ emb.T
    assert gram[0, 3] > 0.6 and gram[0, 3] < min(gram[0, 2], gram[1, 3])  # a's two nearest are b, c
    i, j, _ = similarity_edges(emb, 0.6, ImagesConfig(knn_k=2), mode="knn")
    assert _pairs(i, j) == {(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)}


def test_small_ivf_runs_one_list_and_cluster_embeddings_reports_its_steps() -> None:
    """Below two lists' worth of training vectors IVF keeps one list (probing it is exact search);
    ``cluster_embeddings`` adds its own step times and the edge count to the search's."""
    emb, _ = _planted(30, [3, 3], noise=0.3)  # 36 < 2 x 20 training vectors
    times: dict = {}
    ivf = _pairs(*similarity_edges(emb, 0.6, ImagesConfig(), mode="ivf", timings=times)[:2])
    assert times["nlist"] == 1 and ivf == _pairs(
        *similarity_edges(emb, 0.6, ImagesConfig(), mode="exact")[:2]
    )
    times = {}
    t0 = time.perf_counter()
    labels = cluster_embeddings([f"k{n:02d}" for n in range(len(emb))], emb, ImagesConfig(), timings=times)
    wall = time.perf_counter() - t0
    assert times["edges"] == len(similarity_edges(emb, ImagesConfig().threshold, ImagesConfig())[0])
    assert 0 <= times["index_s"] <= times["search_s"] <= times["similarity_s"] <= wall
    assert times["cluster_s"] >= 0 and times["similarity_s"] + times["cluster_s"] <= wall
    assert len(labels) == len(emb)
