"""Tests that kill the mutants of ``curation/policy.py`` that survived ``make mutate`` (docs/testing.md,
"Mutation testing"): the template rule's boundaries and loop control, the summary's keys and top groups, and
the numeric order of the size histogram."""

from __future__ import annotations

from copyguard.curation.caption_canon import CaptionCanon, content_words
from copyguard.curation.config import PolicyConfig
from copyguard.curation.policy import Decision, decide, size_histogram, summarize
from tests.test_policy import TEMPLATE


def _statuses(keys, image_group, caption_group, captions, cfg, **kw) -> dict[str, str]:
    sizes = [10] * len(keys)
    out = decide(keys, sizes, sizes, image_group, caption_group, cfg, captions=captions, **kw)
    return {d.key: d.reason for d in out}


def _template_group(n: int, prefix: str = "t", caption: str = TEMPLATE):
    keys = [f"{prefix}{k}" for k in range(n)]
    return keys, list(keys), [prefix] * n, [caption] * n


def test_template_min_images_is_inclusive() -> None:
    """Exactly ``template_min_images`` distinct images make a template (``<`` in the rule, not ``<=``)."""
    keys, ig, cg, texts = _template_group(6)
    reasons = _statuses(keys, ig, cg, texts, PolicyConfig(template_policy="drop", template_min_images=6))
    assert set(reasons.values()) == {"templated_caption_drop"}


def test_template_min_words_is_inclusive() -> None:
    """A caption with exactly ``template_min_words`` content words is informative (a template)."""
    keys, ig, cg, texts = _template_group(6)
    n = content_words(TEMPLATE)
    cfg = PolicyConfig(template_policy="drop", template_min_images=5)
    assert set(_statuses(keys, ig, cg, texts, cfg, template_min_words=n).values()) == {
        "templated_caption_drop"
    }
    assert set(_statuses(keys, ig, cg, texts, cfg, template_min_words=n + 1).values()) == {""}


def test_a_caption_group_that_is_no_template_does_not_stop_the_rule_for_the_next() -> None:
    """Caption groups before the template one (too few images; a generic caption) are skipped, not the end."""
    cfg = PolicyConfig(template_policy="drop", template_min_images=5)
    small = (["s0"], ["s0"], ["s"], [TEMPLATE + " other"])
    generic = _template_group(6, "g", "a photo")
    template = _template_group(6)
    for first in (small, generic):
        keys, ig, cg, texts = (a + b for a, b in zip(first, template, strict=True))
        reasons = _statuses(keys, ig, cg, texts, cfg)
        assert {reasons[k] for k in template[0]} == {"templated_caption_drop"}
        assert {reasons[k] for k in first[0]} == {""}


def _decision(key: str, image_group: str, caption_group: str) -> Decision:
    return Decision(key, "kept", "", key, image_group, caption_group)


def test_summary_keys_and_top_groups() -> None:
    """Group counts under their names; the top lists hold groups of size >= 2 only, largest first."""
    decisions = [_decision(f"k{i}", g, c) for i, (g, c) in enumerate(["aa", "ab", "ba", "cc", "cc", "cc"])]
    s = summarize(decisions)
    assert s["image_groups"] == 3 and s["caption_groups"] == 3
    assert s["top_image_groups"] == [{"group": "c", "size": 3}, {"group": "a", "size": 2}]
    assert s["top_caption_groups"] == [{"group": "c", "size": 3}, {"group": "a", "size": 2}]
    assert s["image_group_sizes"] == {"1": 1, "2": 1, "3-4": 1}


def test_summary_top_groups_default_to_twenty() -> None:
    decisions = [_decision(f"k{i}", f"g{i // 2:02d}", f"c{i}") for i in range(2 * 25)]
    assert len(summarize(decisions)["top_image_groups"]) == 20


def test_size_histogram_bins_in_numeric_order() -> None:
    """``17-32`` comes after ``3-4`` (numeric order of the lower bound, not string order)."""
    assert list(size_histogram([20, 3, 2, 1, 2])) == ["1", "2", "3-4", "17-32"]


def test_input_errors_name_the_field() -> None:
    import pytest

    one = [10]
    with pytest.raises(ValueError, match="^keys must be unique$"):
        decide(["a", "a"], one * 2, one * 2, ["a", "a"], ["a", "b"], captions=["x", "y"])
    for field in ("heights", "image_group", "caption_group"):
        args = {"widths": one, "heights": one, "image_group": ["a"], "caption_group": ["a"]}
        args[field] = args[field] * 2
        with pytest.raises(ValueError, match=f"^{field} has 2 values for 1 keys"):
            decide(["a"], **args, captions=["x"])


def test_preferred_key_wins_then_pixel_count() -> None:
    """A preferred key represents its image group even at a lower resolution; otherwise the most pixels win
    (200x100 = 20000 loses to 150x150 = 22500 although its aspect ratio is larger)."""
    keys, group = ["a", "b"], ["g", "g"]
    out = _by_key_reason(decide(keys, [200, 150], [100, 150], group, ["a", "b"], captions=["x", "y"]))
    assert out["b"] == ("kept", "b") and out["a"][1] == "b"
    pref = decide(keys, [200, 150], [100, 150], group, ["a", "b"], preferred={"a"}, captions=["x", "y"])
    assert _by_key_reason(pref)["a"] == ("kept", "a")


def _by_key_reason(decisions) -> dict[str, tuple[str, str]]:
    return {d.key: (d.status, d.representative) for d in decisions}


def test_decisions_carry_their_groups() -> None:
    """Kept, image duplicates and image+caption duplicates keep their image and caption group ids."""
    keys = ["a", "b", "c", "d"]
    ig, cg = ["g", "g", "g", "h"], ["c1", "c1", "c2", "c3"]
    out = {d.key: d for d in decide(keys, [9, 8, 7, 5], [9, 8, 7, 5], ig, cg, captions=["x", "x", "y", "z"])}
    assert [(out[k].image_group, out[k].caption_group) for k in keys] == list(zip(ig, cg, strict=True))
    assert {out[k].reason for k in keys} == {"", "image_and_caption_duplicate", "image_duplicate"}


def test_the_canonical_switches_reach_both_caption_rules() -> None:
    """``canon`` decides what counts as a content word (template rule) and as the same caption (exact vs
    near-duplicate): with ``mask_codes`` off, product codes are words and different codes differ."""
    no_mask = CaptionCanon(mask_codes=False)
    keys, ig, cg, texts = _template_group(6, caption="red car SKU74173 A12B")  # 2 content words, 4 unmasked
    cfg = PolicyConfig(template_policy="drop", template_min_images=5)
    assert set(_statuses(keys, ig, cg, texts, cfg).values()) == {""}
    assert set(_statuses(keys, ig, cg, texts, cfg, canon=no_mask).values()) == {"templated_caption_drop"}

    keys, ig, cg = ["a", "b"], ["g", "g"], ["c", "c"]
    texts = ["red car SKU74173", "red car SKU99999"]
    sizes = [10, 10]

    def rules(**kw) -> list[str]:
        return [
            d.caption_rule for d in decide(keys, sizes, sizes, ig, cg, PolicyConfig(), captions=texts, **kw)
        ]

    assert rules() == ["", "exact_caption"]
    assert rules(canon=no_mask) == ["", "near_duplicate_caption"]
    texts[:] = ["the red car", "the red car"]  # the same caption is exact under any switches
    assert rules(canon=CaptionCanon(drop_stopwords=False)) == ["", "exact_caption"]
