"""Caption dedup core: canonical form, shingles, MinHash, LSH bands, bucket edges (Broder, 1997)."""

from __future__ import annotations

import logging
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that
from datasketch import MinHashLSH

from copyguard.curation.caption_canon import (
    CODE,
    CaptionCanon,
    canonical_caption,
    canonical_shingles,
    canonical_tokens,
    content_words,
)
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
from copyguard.curation.config import MinHashConfig
from copyguard.curation.union_find import connected_components
from copyguard.pipelines.lab.caption_pairs import MERGE_EDITS, SPLIT_EDITS, caption_pair_set
from copyguard.pipelines.lab.sample_captions import load_caption_pool
from copyguard.pipelines.transforms import CaptionComponents, EmbeddedSample

CFG = MinHashConfig()

# Meaning-preserving edits: case, punctuation, whitespace, articles, stop words, tag order, product numbers
# and codes. Each pair must land in one caption group.
MUST_MERGE = [
    ("A photo of a red car", "a PHOTO of a red car!!"),
    ("a red car parked by the sea", "  red car,  parked by\tsea. "),
    ("The old lighthouse at dawn", "An old lighthouse at dawn"),
    ("A cat is sleeping on the sofa", "cat sleeping on a sofa"),
    ("A cat sleeping on the sofa", "A cat sleeping in the sofa"),
    ("sunset, beach, palm trees, ocean", "ocean | palm trees | sunset | beach"),
    ("#sunset #beach #travel", "#travel #sunset #beach"),
    (
        "Shaw Floors Caress Quiet Comfort Deep Indigo 00424_CCB96",
        "Shaw Floors Caress Quiet Comfort Deep Indigo 00724_CCS68",
    ),
    ("Men's cotton T-shirt, size 10 - SKU 48213", "Mens cotton T-shirt, size 12 - SKU 99120"),
    ("Canvas print 30x40 cm - mountain lake", "Canvas print 50x70 cm - mountain lake"),
    ("Vintage tin poster $19.99", "vintage tin poster $24.50"),
    ("Ｆｕｌｌ－ｗｉｄｔｈ ﬁne art print", "full width fine art print"),
]
# Captions that say different things, all short (a one-word change is a different caption), and counts:
# a bare one- or two-digit number outside a product context is a count, "2 dogs" is not "3 dogs".
MUST_NOT_MERGE = [
    ("a photo of a red car", "a photo of a red cat"),
    ("a red car parked by the sea", "a blue car parked by the sea"),
    ("2 dogs on a sofa", "3 dogs on a sofa"),
    ("two dogs on a sofa", "three dogs on a sofa"),
    ("a man with a hat", "a man without a hat"),
    ("a cat on the table", "a cat under the table"),
    ("a photo of a dog", "a photo of a dog toy"),
    ("Portrait of an old fisherman", "Portrait of an old farmer"),
    ("a red car parked on a quiet street", "a blue car parked on a quiet street"),
    ("image", "photo"),
    ("!!!", "???"),
]


def _same_group(a: str, b: str, cfg: MinHashConfig = CFG, canon: CaptionCanon | None = None) -> bool:
    groups = caption_groups(["a", "b"], [a, b], cfg, canon)
    return groups["a"] == groups["b"]


@pytest.mark.parametrize(("a", "b"), MUST_MERGE)
def test_must_merge_through_minhash_lsh(a: str, b: str) -> None:
    assert canonical_caption(a) == canonical_caption(b)
    assert _same_group(a, b)


@pytest.mark.parametrize(("a", "b"), MUST_NOT_MERGE)
def test_must_not_merge_through_minhash_lsh(a: str, b: str) -> None:
    assert not _same_group(a, b)
    if max(len(canonical_tokens(a)), len(canonical_tokens(b))) <= CaptionCanon().exact_max_words:
        # Short captions do not even become LSH candidates: their single shingles differ.
        assert not _same_group(a, b, CFG.model_copy(update={"verify": False}))


def test_old_character_shingles_merged_different_captions() -> None:
    """The plain scheme (character 5-grams) is what issue 13 reported: red car = red cat, tags apart."""
    legacy = CaptionCanon(canonical=False)
    assert exact_jaccard("a photo of a red car", "a photo of a red cat", CFG, legacy) > 0.85
    assert _same_group("a photo of a red car", "a photo of a red cat", CFG, legacy)
    assert not _same_group("#sunset #beach #travel", "#travel #sunset #beach", CFG, legacy)


def test_canonical_form_rules() -> None:
    assert canonical_caption("  The Dog's bowl,  on a TABLE!! ") == "dogs bowl table"
    assert canonical_caption("2 dogs on a sofa") == "2 dogs sofa"  # a count stays
    assert canonical_caption("the 3rd place") == "3rd place"  # an ordinal stays
    # Product numbers and codes become one placeholder; "_" and "-" split slugs into words first.
    assert canonical_caption("Mug 19.99, 1,000 pcs, 30x40 cm, size 10, item 48213") == (
        f"{CODE} cm | {CODE} pcs | item {CODE} | mug {CODE} | size {CODE}"
    )
    assert canonical_caption("mass_effect_3_admiral.jpg") == "mass effect 3 admiral jpg"
    # A sentence with a comma or two is not a tag list; three short parts are.
    assert canonical_caption("a man, riding a horse") == "man riding horse"
    assert canonical_caption("snow, nature, winter") == "nature | snow | winter"
    assert canonical_caption("it is") == "it is"  # nothing but stop words: the plain words
    off = CaptionCanon(drop_stopwords=False, sort_tags=False, mask_codes=False)
    assert canonical_caption("snow, a cat, SKU 48213", off) == "snow a cat sku 48213"


def test_short_captions_need_equal_canonical_forms() -> None:
    # Up to exact_max_words canonical words: one shingle, the whole form.
    assert canonical_shingles("a photo of a red car") == {b"=photo red car"}
    assert exact_jaccard("a photo of a red car", "A photo of the red car.", CFG) == 1.0
    assert exact_jaccard("a photo of a red car", "a photo of a red cat", CFG) == 0.0
    # Longer: words and bigrams with boundary markers; a replaced word costs the same anywhere.
    base = "red car parked near quiet beach"
    assert b"^ red" in canonical_shingles(base) and b"beach $" in canonical_shingles(base)
    first = exact_jaccard(base, "blue car parked near quiet beach", CFG)
    middle = exact_jaccard(base, "red car parked near busy beach", CFG)
    assert first == middle == pytest.approx(10 / 16)
    five = exact_jaccard("red car parked near beach", "blue car parked near beach", CFG)
    assert five == pytest.approx(8 / 14) and five < CFG.verify_threshold


def test_content_words_measure_informativeness() -> None:
    assert content_words("a photo") == 0
    assert content_words("Untitled") == 0
    assert content_words("IMG_0042.jpg") == 0
    assert content_words("!!!") == 0
    assert content_words("A photo of a red car") == 2
    assert content_words("Shaw Floors Caress Quiet Comfort Deep Indigo 00424_CCB96") == 7


def test_canon_switches_from_config_attributes() -> None:
    class WithKeys:
        def __init__(self) -> None:
            self.canonical = False
            self.exact_max_words = 2

    assert CaptionCanon.from_config(CFG) == CaptionCanon()
    assert CaptionCanon.from_config(WithKeys()) == CaptionCanon(canonical=False, exact_max_words=2)
    with pytest.raises(ValueError, match="word_ngrams"):
        CaptionCanon(word_ngrams=0)


def test_beam_caption_components_use_the_canonical_form() -> None:
    """The job's distributed path (band keys, GroupByKey, verified bucket edges, components)."""
    texts = {}
    for i, (a, b) in enumerate(MUST_MERGE):
        texts[f"m{i:02d}a"], texts[f"m{i:02d}b"] = a, b
    for i, (a, b) in enumerate(MUST_NOT_MERGE):
        texts[f"n{i:02d}a"], texts[f"n{i:02d}b"] = a, b

    def check(rows: list[tuple[str, str]]) -> None:
        group = dict(rows)
        for key in texts:
            group.setdefault(key, key)
        for i in range(len(MUST_MERGE)):
            assert group[f"m{i:02d}a"] == group[f"m{i:02d}b"], MUST_MERGE[i]
        for i in range(len(MUST_NOT_MERGE)):
            assert group[f"n{i:02d}a"] != group[f"n{i:02d}b"], MUST_NOT_MERGE[i]

    with BeamTestPipeline(runner=FnApiRunner()) as p:
        lights = p | beam.Create(
            [EmbeddedSample(k, "s", t, 8, 8, np.zeros(4, np.float32)) for k, t in sorted(texts.items())]
        )
        assert_that(lights | CaptionComponents(CFG), check)


def test_caption_pair_set_is_seeded_and_labelled_right() -> None:
    pool = load_caption_pool()
    pairs = caption_pair_set(40, seed=3, pool=pool)
    assert pairs == caption_pair_set(40, seed=3, pool=pool)
    assert pairs != caption_pair_set(40, seed=4, pool=pool)
    merge = [q for q in pairs if q.duplicate]
    split = [q for q in pairs if not q.duplicate]
    assert len(merge) == 40 and len(split) == 40
    assert {q.edit for q in merge} == set(MERGE_EDITS)
    assert {q.edit for q in split} <= set(SPLIT_EDITS) and len({q.edit for q in split}) >= 3
    real = set(pool.coco) | set(pool.laion) | set(pool.memorized) | set(pool.templates)
    assert all(q.a in real for q in merge if q.edit not in ("tags", "code"))
    wrong = [q for q in pairs if _same_group(q.a, q.b) != q.duplicate]
    assert wrong == []


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


def test_caption_shingles_follow_the_given_switches_and_the_plain_default() -> None:
    """``caption_shingles`` uses the switches it is given (here: keep stop words), else the config's; with
    ``canonical`` off it is the plain scheme, whose default kind is character 5-grams."""
    from copyguard.curation.captions import caption_shingles

    cfg = MinHashConfig()
    text = "a photo of the red car"
    keep = CaptionCanon(drop_stopwords=False)
    assert caption_shingles(text, cfg, keep) == canonical_shingles(text, keep)
    assert caption_shingles(text, cfg, keep) != caption_shingles(text, cfg)
    assert caption_shingles(text, cfg) == canonical_shingles(text, CaptionCanon.from_config(cfg))
    plain = CaptionCanon(canonical=False)
    assert caption_shingles(text, cfg, plain) == shingles(text, cfg.shingle_n, cfg.shingle_kind)
    assert shingles(text) == shingles(text, 5, "char") != shingles(text, 5, "word")


def test_bucket_size_limit_is_exclusive_and_warned(caplog) -> None:
    """A bucket of exactly ``max_bucket_size`` is verified against its leaders (here the two "B" captions
    link); one member more and it is checked against its smallest key only (no edge: both differ from "A").
    Without verification an oversized bucket is still a star, with a warning."""
    members = [("k0", "a red car on the street"), ("k1", "the blue house by the lake"),
               ("k2", "the blue house by the lake!")]  # fmt: skip
    cfg = MinHashConfig(max_bucket_size=3)
    assert bucket_edges(members, cfg) == [("k2", "k1")]
    assert bucket_edges(members, MinHashConfig(max_bucket_size=2)) == []
    with caplog.at_level("WARNING", logger="copyguard.curation.captions"):
        edges = bucket_edges(members, MinHashConfig(max_bucket_size=2, verify=False))
    assert edges == [("k1", "k0"), ("k2", "k0")]
    assert "LSH bucket of 3 captions exceeds max_bucket_size=2" in caplog.text


def test_caption_groups_refuses_misaligned_inputs() -> None:
    with pytest.raises(ValueError, match="^2 keys but 1 captions$"):
        caption_groups(["a", "b"], ["one caption"])


def test_the_given_config_and_switches_reach_the_signatures_and_the_exact_jaccard() -> None:
    """``exact_jaccard`` and ``minhash_signatures`` use the config and switches they are given; no captions give
    an empty ``uint64`` signature matrix; a two-member bucket is one star edge; a band layout that uses every
    signature value is valid."""
    a, b = "a photo of the red car", "the red car photo"
    plain = MinHashConfig(canonical=False)
    sa, sb = shingles(a), shingles(b)  # the plain scheme: character 5-grams
    assert exact_jaccard(a, b, plain) == pytest.approx(len(sa & sb) / len(sa | sb))
    assert exact_jaccard(a, b, plain) != exact_jaccard(a, b)
    keep = CaptionCanon(drop_stopwords=False)
    assert not np.array_equal(minhash_signatures([a], CFG, keep), minhash_signatures([a], CFG))
    np.testing.assert_array_equal(minhash_signatures([a], CFG, keep)[0], minhash_signature(a, CFG, keep))
    empty = minhash_signatures([], MinHashConfig(num_perm=16))
    assert empty.shape == (0, 16) and empty.dtype == np.uint64
    assert star_edges(["b", "a"]) == [("b", "a")]
    assert len(band_keys(np.arange(8, dtype=np.uint64), bands=2, rows=4)) == 2
    with pytest.raises(ValueError, match="^3 bands x 3 rows need 9 values, signature has 8$"):
        band_keys(np.arange(8, dtype=np.uint64), bands=3, rows=3)
