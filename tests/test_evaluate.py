"""Pairwise precision / recall / F1 / ARI from the contingency table, and the manifest report."""

from __future__ import annotations

import pytest

from copyguard.curation.evaluate import evaluate_manifest, format_report, kind_breakdown, pairwise_scores


def test_pairwise_scores_hand_computed() -> None:
    # pred {0,1} {2,3,4}: 1 + 3 = 4 pairs; true {0,1,2} {3,4}: 3 + 1 = 4 pairs; together: {0,1}, {3,4}.
    s = pairwise_scores([0, 0, 1, 1, 1], ["a", "a", "a", "b", "b"])
    assert (s["pred_pairs"], s["true_pairs"], s["tp_pairs"], s["fp_pairs"], s["fn_pairs"]) == (4, 4, 2, 2, 2)
    assert s["precision"] == 0.5 and s["recall"] == 0.5 and s["f1"] == 0.5
    # ARI = (tp - E) / (mean(4, 4) - E) with E = 4 * 4 / C(5, 2) = 1.6  ->  0.4 / 2.4
    assert s["ari"] == pytest.approx(1 / 6)
    assert s["pred_groups"] == 2 and s["true_groups"] == 2


def test_pairwise_scores_edge_cases() -> None:
    perfect = pairwise_scores(["x", "x", "y"], [5, 5, 7])
    assert perfect["f1"] == 1.0 and perfect["ari"] == 1.0
    singletons = pairwise_scores([1, 2, 3], [1, 2, 3])
    assert singletons["precision"] == singletons["recall"] == singletons["f1"] == 1.0
    merged_all = pairwise_scores([0, 0, 0, 0], [1, 2, 3, 4])  # 6 predicted pairs, none true
    assert merged_all["precision"] == 0.0 and merged_all["recall"] == 1.0 and merged_all["f1"] == 0.0
    missed_all = pairwise_scores([1, 2, 3], [0, 0, 0])
    assert missed_all["precision"] == 1.0 and missed_all["recall"] == 0.0 and missed_all["ari"] == 0.0
    empty = pairwise_scores([], [])
    assert empty["samples"] == 0 and empty["f1"] == 1.0 and empty["ari"] == 1.0
    with pytest.raises(ValueError):
        pairwise_scores([1], [1, 2])


def test_pairwise_scores_scale_without_pairs() -> None:
    n = 200_000  # 2e10 pairs if enumerated; the contingency table makes it one pass
    s = pairwise_scores([k // 2 for k in range(n)], [k // 4 for k in range(n)])
    assert s["precision"] == 1.0 and s["recall"] == pytest.approx(1 / 3)


def _rows():
    truth = [
        {"key": "o1", "image_group": "o1", "caption_group": "o1", "kind": "original"},
        {"key": "c1", "image_group": "o1", "caption_group": "o1", "kind": "jpeg"},
        {"key": "c2", "image_group": "o1", "caption_group": "c2", "kind": "crop"},
        {"key": "u1", "image_group": "u1", "caption_group": "u1", "kind": "unique"},
        {"key": "u2", "image_group": "u2", "caption_group": "u2", "kind": "unique"},
        {"key": "u3", "image_group": "u3", "caption_group": "u3", "kind": "unique"},
        {"key": "e1", "image_group": "e1", "caption_group": "u1", "kind": "caption_edit"},
        {"key": "bad", "image_group": "bad", "caption_group": "bad", "kind": "unique"},
    ]

    def m(key, status, img, cap, rep, reason=""):
        return {"key": key, "status": status, "reason": reason, "image_group": img, "caption_group": cap,
                "representative": rep}  # fmt: skip

    manifest = [
        m("o1", "kept", "o1", "o1", "o1"),
        m("c1", "duplicate", "o1", "o1", "o1", "image_and_caption_duplicate"),
        m("c2", "kept", "c2", "c2", "c2"),  # the crop was missed
        m("u1", "kept", "u1", "u1", "u1"),
        m("u2", "kept", "u2", "u2", "u2"),
        m("u3", "duplicate", "u2", "u3", "u2", "image_duplicate"),  # a false merge
        m("e1", "kept", "e1", "u1", "e1"),
        m("bad", "rejected", "", "", "", "corrupt_image"),
        m("shard:x", "rejected", "", "", "", "empty_shard"),
    ]
    return manifest, truth


def test_evaluate_manifest_report() -> None:
    manifest, truth = _rows()
    r = evaluate_manifest(manifest, truth)
    assert r["samples"] == 7 and r["truth_rows"] == 8 and r["manifest_rows"] == 9
    assert r["rejected"] == {"corrupt_image": 1} and r["missing_from_manifest"] == 0
    assert r["status"] == {"duplicate": 2, "kept": 5}
    img = r["images"]
    assert (img["pred_pairs"], img["true_pairs"], img["tp_pairs"]) == (2, 3, 1)
    assert (
        img["precision"] == 0.5 and img["recall"] == pytest.approx(1 / 3) and img["f1"] == pytest.approx(0.4)
    )
    assert r["captions"]["f1"] == 1.0 and r["captions"]["true_pairs"] == 2
    assert r["joint"]["tp_pairs"] == 1 and r["joint"]["pred_pairs"] == 2
    by_kind = img["by_kind"]
    assert by_kind["jpeg"]["recall"] == 1.0 and by_kind["crop"]["recall"] == 0.0
    assert by_kind["unique"]["recall"] is None and by_kind["unique"]["false_merge"] == pytest.approx(2 / 3)
    assert by_kind["original"]["pair_recall"] == 0.5
    assert r["captions"]["by_kind"]["caption_edit"]["recall"] == 1.0


def test_evaluate_manifest_missing_and_duplicate_keys() -> None:
    manifest, truth = _rows()
    r = evaluate_manifest(manifest[1:], truth)
    assert r["missing_from_manifest"] == 1 and r["samples"] == 6
    with pytest.raises(ValueError, match="twice"):
        evaluate_manifest(manifest + manifest[:1], truth)


def test_kind_breakdown_anchor_is_smallest_key_without_original() -> None:
    out = kind_breakdown(["a", "b", "c"], [1, 1, 2], ["g", "g", "g"], ["x", "y", "y"])
    assert out["y"]["recall"] == 0.5 and out["x"]["recall"] is None  # a is the anchor
    assert out["x"]["pair_recall"] == 0.5 and out["x"]["false_merge"] == 0.0


def test_kind_breakdown_pair_precision_and_f1() -> None:
    # a, b, c predicted together; a, b, d truly together; c alone in truth.
    out = kind_breakdown(["a", "b", "c", "d"], [1, 1, 1, 2], ["g", "g", "h", "g"], ["x", "x", "y", "y"])
    assert out["x"]["pair_precision"] == 0.5 and out["x"]["pair_recall"] == 0.5 and out["x"]["pair_f1"] == 0.5
    assert out["y"]["pair_precision"] == 0.0 and out["y"]["pair_recall"] == 0.0 and out["y"]["pair_f1"] == 0.0
    alone = kind_breakdown(["a", "b"], [1, 2], ["g", "h"], ["u", "u"])["u"]
    assert alone["pair_precision"] == 1.0 and alone["pair_recall"] is None and alone["pair_f1"] is None


def test_format_report_table() -> None:
    manifest, truth = _rows()
    text = format_report(evaluate_manifest(manifest, truth))
    assert "samples scored: 7 of 8" in text
    assert any(
        line.startswith("images") and "0.500" in line and "0.400" in line for line in text.splitlines()
    )
    assert any(line.startswith("crop") and "0.000" in line for line in text.splitlines())


def test_caption_pairs_count_must_merge_and_false_merges() -> None:
    from copyguard.curation.evaluate import caption_pair_scores, evaluate_manifest, format_report

    truth = [
        {"key": "a", "image_group": "a", "caption_group": "a", "kind": "caption_merge_case", "pair": "b"},
        {"key": "b", "image_group": "b", "caption_group": "a", "kind": "caption_merge_case", "pair": "a"},
        {"key": "c", "image_group": "c", "caption_group": "c", "kind": "caption_split_noun", "pair": "d"},
        {"key": "d", "image_group": "d", "caption_group": "d", "kind": "caption_split_noun", "pair": "c"},
        {"key": "e", "image_group": "e", "caption_group": "e", "kind": "caption_split_count", "pair": "f"},
        {"key": "f", "image_group": "f", "caption_group": "f", "kind": "caption_split_count", "pair": "e"},
    ]
    groups = {"a": "a", "b": "a", "c": "c", "d": "c", "e": "e", "f": "f"}  # c, d falsely merged
    manifest = [
        {"key": k, "status": "kept", "reason": None, "image_group": k, "caption_group": g,
         "representative": None}
        for k, g in groups.items()
    ]  # fmt: skip
    report = evaluate_manifest(manifest, truth)
    assert report["caption_pairs"] == {
        "must_merge": 1, "merged": 1, "must_not_merge": 2, "false_merges": 1,
        "merge_recall": 1.0, "false_merge_rate": 0.5,
    }  # fmt: skip
    assert "1 of 2 must-not-merge falsely merged" in format_report(report)
    assert (
        caption_pair_scores({r["key"]: r for r in manifest}, {r["key"]: dict(r, pair=None) for r in truth})
        is None
    )
