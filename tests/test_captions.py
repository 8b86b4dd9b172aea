"""Caption dedup core: normalization, shingles, MinHash, LSH bands, bucket edges (algorithms.md §10)."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
from datasketch import MinHashLSH

from copyguard.curation.captions import (
    band_keys,
    bucket_edges,
    caption_groups,
    exact_jaccard,
    jaccard,
    lsh_params,
    minhash_signature,
    minhash_signatures,
    normalize_caption,
    shingles,
    star_edges,
)
from copyguard.curation.components import connected_components
from copyguard.curation.curate_config import MinHashConfig

CFG = MinHashConfig()


def test_normalize_caption() -> None:
    assert normalize_caption("  A Red\tCAR,  on the   road!! ") == "a red car on the road"
    assert (
        normalize_caption("Ｆｕｌｌ－ｗｉｄｔｈ ﬁne") == "full width fine"
    )  # NFKC folds width and ligatures
    assert normalize_caption("snake_case & co.") == "snake case co"
    assert normalize_caption("Café") == normalize_caption("Cafe\u0301")


def test_shingles_word_char_and_short_texts() -> None:
    assert shingles("A red car, on the road", 3, "word") == {
        b"a red car",
        b"red car on",
        b"car on the",
        b"on the road",
    }
    assert shingles("a cat", 3, "word") == {b"a cat"}  # fewer words than n: the whole text
    assert shingles("Dog!", 5, "char") == {b"dog"}
    assert shingles("abcdef", 5, "char") == {b"abcde", b"bcdef"}
    assert shingles("!!!", 3, "word") == {b"!!!"} and shingles("???", 3, "word") == {b"???"}
    assert shingles("   ", 3, "word") == set()
    with pytest.raises(ValueError, match="kind"):
        shingles("x", 3, "token")


def test_signature_is_deterministic_across_processes() -> None:
    text = "A photo of a red car parked by the sea"
    sig = minhash_signature(text, CFG)
    assert sig.dtype == np.uint64 and sig.shape == (CFG.num_perm,)
    code = (
        "from copyguard.curation.captions import minhash_signature;"
        f"print(','.join(map(str, minhash_signature({text!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert [int(v) for v in out.strip().split(",")] == sig.tolist()
    assert np.array_equal(minhash_signatures([text, text], CFG)[1], sig)


def test_lsh_params_is_datasketch_choice() -> None:
    for threshold, num_perm in [(0.7, 128), (0.8, 128), (0.75, 256)]:
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        assert lsh_params(threshold, num_perm) == (lsh.b, lsh.r)
    with pytest.raises(ValueError):
        lsh_params(1.0, 128)


def test_jaccard_estimate_close_to_exact() -> None:
    a = "a watercolor painting of a lighthouse on a rocky coast at sunset with seagulls"
    b = "a watercolor painting of a lighthouse on a rocky coast at dawn with seagulls"
    exact = exact_jaccard(a, b, CFG)
    assert 0.4 < exact < 0.9
    assert abs(jaccard(minhash_signature(a, CFG), minhash_signature(b, CFG)) - exact) < 0.12
    assert exact_jaccard(a, a, CFG) == 1.0


def _shared_bands(a: str, b: str) -> int:
    bands, rows = lsh_params(CFG.threshold, CFG.num_perm)
    ka = set(band_keys(minhash_signature(a, CFG), bands, rows))
    kb = set(band_keys(minhash_signature(b, CFG), bands, rows))
    return len(ka & kb)


def test_lsh_buckets_identical_near_and_unrelated() -> None:
    bands, rows = lsh_params(CFG.threshold, CFG.num_perm)
    base = "A cozy living room with a grey sofa, a wooden coffee table and large windows"
    assert _shared_bands(base, base) == bands
    assert _shared_bands(base, base.upper() + "!!") == bands  # normalization makes them identical
    assert _shared_bands(base, base.replace("grey", "gray")) >= 1  # near duplicate
    assert _shared_bands(base, "An astronaut riding a horse on the moon, digital art") == 0
    keys = band_keys(minhash_signature(base, CFG), bands, rows)
    assert [b for b, _ in keys] == list(range(bands)) and all(len(h) == 16 for _, h in keys)


def test_star_edges_and_giant_bucket_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert star_edges(["d", "b", "c", "b"]) == [("c", "b"), ("d", "b")]
    assert star_edges(["only"]) == []
    keys = [f"k{i:05d}" for i in range(5000)]
    with caplog.at_level(logging.WARNING):
        edges = star_edges(reversed(keys), max_bucket_size=100)
    assert len(edges) == 4999 and {root for _, root in edges} == {"k00000"}  # linear, not 12.5M pairs
    assert "5000 captions exceeds max_bucket_size=100" in caplog.text


def test_bucket_edges_verification_splits_false_candidates(caplog: pytest.LogCaptureFixture) -> None:
    bucket = [
        ("c", "a dog running on the beach"),
        ("a", "a dog running on the beach!"),
        ("b", "stock photo of an office chair"),
        ("d", "Stock photo of an office chair."),
    ]
    verified = bucket_edges(bucket, CFG)
    assert sorted(verified) == [("c", "a"), ("d", "b")]
    assert sorted(bucket_edges(bucket, CFG.model_copy(update={"verify": False}))) == [
        ("b", "a"),
        ("c", "a"),
        ("d", "a"),
    ]
    # Over the cap, members are only checked against the smallest key: b and d get no edge here.
    giant = CFG.model_copy(update={"max_bucket_size": 3})
    with caplog.at_level(logging.WARNING):
        assert bucket_edges(bucket, giant) == [("c", "a")]
    assert "exceeds max_bucket_size=3" in caplog.text


def test_caption_groups_end_to_end_and_order_independent() -> None:
    texts = {
        "k1": "A red vintage car parked in front of a bakery",
        "k2": "a red vintage car parked in front of a bakery.",
        "k3": "A red vintage car parked in front of the bakery",
        "k4": "Portrait of an old fisherman, black and white photo",
        "k5": "portrait of an old fisherman -- black and white photo!",
        "k6": "Mountain lake at sunrise with pine trees",
    }
    groups = caption_groups(list(texts), list(texts.values()), CFG)
    assert groups == {"k1": "k1", "k2": "k1", "k3": "k1", "k4": "k4", "k5": "k4", "k6": "k6"}
    rev = list(reversed(texts))
    assert caption_groups(rev, [texts[k] for k in rev], CFG) == groups


def test_connected_components_smallest_key_root() -> None:
    edges = [("z", "y"), ("y", "x"), ("b", "c")]
    out = connected_components(["x", "y", "z", "a", "b", "c"], edges)
    assert out == {"x": "x", "y": "x", "z": "x", "a": "a", "b": "b", "c": "b"}
    assert connected_components(["c", "b", "a", "z", "y", "x"], list(reversed(edges))) == out
