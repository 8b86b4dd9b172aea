"""Dedup quality against a ground truth: pairwise precision / recall / F1 and ARI (copyguard's evaluation protocol).

A clustering is scored on pairs of samples (per planted kind too, e.g. per image edit family of
``sample-data --preset hard``; planted caption pairs also give the must-not-merge false-merge count): a pair is positive when both samples share a group. Counts come
from the contingency table (``sum C(n, 2)`` over its cells and margins), never from enumerating pairs, so a
million samples cost one pass. :func:`evaluate_manifest` is what ``copyguard eval-dedup`` prints.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from sklearn.metrics import adjusted_rand_score

from copyguard.common.errors import UsageError
from copyguard.common.fmt import text_table

__all__ = ["caption_pair_scores", "evaluate_manifest", "format_report", "kind_breakdown", "pairwise_scores"]

log = logging.getLogger(__name__)

_DEDUP_STATUSES = ("kept", "duplicate")
UNIQUE_KIND = "unique"


def _pairs(count: int) -> int:
    return count * (count - 1) // 2


def _encode(labels: Sequence[Hashable]) -> list[int]:
    codes: dict[Hashable, int] = {}
    return [codes.setdefault(label, len(codes)) for label in labels]


def pairwise_scores(pred_labels: Sequence[Hashable], true_labels: Sequence[Hashable]) -> dict[str, Any]:
    """Pairwise precision, recall, F1 and the adjusted Rand index of a predicted grouping.

    Labels are any hashables (group ids), aligned per sample. With no predicted pairs precision is 1.0,
    with no true pairs recall is 1.0 (nothing could be wrong, nothing could be missed); F1 follows.
    """
    pred, true = list(pred_labels), list(true_labels)
    if len(pred) != len(true):
        raise ValueError(f"{len(pred)} predicted labels but {len(true)} true labels")
    p, t = _encode(pred), _encode(true)
    cells = Counter(zip(p, t, strict=True))
    tp = sum(_pairs(c) for c in cells.values())
    pred_pairs = sum(_pairs(c) for c in Counter(p).values())
    true_pairs = sum(_pairs(c) for c in Counter(t).values())
    precision = tp / pred_pairs if pred_pairs else 1.0
    recall = tp / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    ari = float(adjusted_rand_score(t, p)) if len(p) > 1 else 1.0
    return {
        "samples": len(p),
        "pred_groups": len(set(p)),
        "true_groups": len(set(t)),
        "pred_pairs": pred_pairs,
        "true_pairs": true_pairs,
        "tp_pairs": tp,
        "fp_pairs": pred_pairs - tp,
        "fn_pairs": true_pairs - tp,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "ari": ari,
    }


def kind_breakdown(
    keys: Sequence[str], pred: Sequence[Hashable], true: Sequence[Hashable], kinds: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per planted kind: how many samples, recall and false merges.

    - ``recall``: among samples of the kind with true duplicates, the fraction predicted in the same group
      as their true group's anchor (the true group id when it is a key, e.g. the original; else the
      group's smallest key). The anchor itself is not counted.
    - ``pair_recall``: the fraction of true pairs involving a sample of the kind that are predicted together.
    - ``pair_precision``: the fraction of predicted pairs involving a sample of the kind that are true pairs
      (1.0 when none were predicted); ``pair_f1`` combines the two.
    - ``false_merge``: the fraction of samples whose predicted group holds a sample of another true group
      (for ``unique`` samples: merged with anything at all).
    """
    index = {k: n for n, k in enumerate(keys)}
    true_members: dict[Hashable, list[int]] = defaultdict(list)
    pred_members: dict[Hashable, list[int]] = defaultdict(list)
    for n, (pg, tg) in enumerate(zip(pred, true, strict=True)):
        true_members[tg].append(n)
        pred_members[pg].append(n)
    anchor = {}
    for tg, members in true_members.items():
        anchor[tg] = (
            index[tg] if tg in index and true[index[tg]] == tg else min(members, key=keys.__getitem__)
        )
    # Per predicted group: how many samples of each true group it holds.
    mix = {pg: Counter(true[m] for m in members) for pg, members in pred_members.items()}

    stats: dict[str, Counter] = defaultdict(Counter)
    for n, kind in enumerate(kinds):
        s = stats[kind]
        s["samples"] += 1
        tg, pg = true[n], pred[n]
        mates = len(true_members[tg]) - 1
        together = mix[pg][tg] - 1
        s["true_pairs"] += mates
        s["found_pairs"] += together
        s["pred_pairs"] += len(pred_members[pg]) - 1
        if mates and anchor[tg] != n:
            s["with_duplicates"] += 1
            s["grouped"] += int(pred[anchor[tg]] == pg)
        s["false_merge"] += int(len(pred_members[pg]) - 1 > together)
    out = {}
    for kind in sorted(stats):
        s = stats[kind]
        pair_recall = s["found_pairs"] / s["true_pairs"] if s["true_pairs"] else None
        pair_precision = s["found_pairs"] / s["pred_pairs"] if s["pred_pairs"] else 1.0
        pair_f1 = None
        if pair_recall is not None:
            total = pair_precision + pair_recall
            pair_f1 = 2 * pair_precision * pair_recall / total if total else 0.0
        out[kind] = {
            "samples": s["samples"],
            "recall": s["grouped"] / s["with_duplicates"] if s["with_duplicates"] else None,
            "pair_recall": pair_recall,
            "pair_precision": pair_precision,
            "pair_f1": pair_f1,
            "false_merge": s["false_merge"] / s["samples"],
        }
    return out


def caption_pair_scores(
    manifest: Mapping[str, Mapping[str, Any]], truth: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any] | None:
    """Planted caption pairs (ground-truth rows with ``pair``, e.g. ``sample-data --preset hard``): how many
    must-merge pairs share a predicted caption group and how many must-not-merge pairs do (false merges).

    A pair is must-merge when both rows share a true ``caption_group``. Pairs with a member the manifest
    lacks or rejected are skipped. ``None`` when the ground truth plants no pairs.
    """
    counts = Counter()
    for key, row in truth.items():
        other = row.get("pair")
        if other is None or str(other) <= key or str(other) not in truth:
            continue
        a, b = manifest.get(key), manifest.get(str(other))
        if not a or not b or a.get("status") not in _DEDUP_STATUSES or b.get("status") not in _DEDUP_STATUSES:
            continue
        together = a["caption_group"] == b["caption_group"]
        if row["caption_group"] == truth[str(other)]["caption_group"]:
            counts["must_merge"] += 1
            counts["merged"] += int(together)
        else:
            counts["must_not_merge"] += 1
            counts["false_merges"] += int(together)
    if not counts:
        return None
    out: dict[str, Any] = {k: counts[k] for k in ("must_merge", "merged", "must_not_merge", "false_merges")}
    out["merge_recall"] = counts["merged"] / counts["must_merge"] if counts["must_merge"] else None
    out["false_merge_rate"] = (
        counts["false_merges"] / counts["must_not_merge"] if counts["must_not_merge"] else None
    )
    return out


def _rows_by_key(rows: Iterable[Mapping[str, Any]], name: str) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        key = row.get("key")
        if key is None:
            raise UsageError(f"{name} row without 'key': {dict(row)!r}")
        if key in out:
            raise UsageError(f"{name} has key {key!r} twice")
        out[str(key)] = row
    return out


def evaluate_manifest(
    manifest_rows: Iterable[Mapping[str, Any]], truth_rows: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """Score a curation manifest against ``ground_truth.jsonl`` rows for captions, images and joint groups.

    Manifest rows carry ``key, status, reason, image_group, caption_group, representative``; truth rows
    ``key, image_group, caption_group`` and optionally ``kind``. Samples scored are those in both with a
    dedup status (``kept`` / ``duplicate``); truth keys the manifest rejected or lost are counted apart.
    Joint groups: predicted, the samples sharing a ``representative`` (a sample without one stands alone);
    true, the image groups (the decision keeps one sample per image group).
    """
    manifest = _rows_by_key(manifest_rows, "manifest")
    truth = _rows_by_key(truth_rows, "ground truth")
    scored = sorted(k for k in truth if k in manifest and manifest[k].get("status") in _DEDUP_STATUSES)
    rejected = Counter(
        str(manifest[k].get("reason") or manifest[k].get("status"))
        for k in truth
        if k in manifest and manifest[k].get("status") not in _DEDUP_STATUSES
    )
    missing = sorted(k for k in truth if k not in manifest)
    if missing:
        log.warning(
            "%d ground-truth keys are missing from the manifest (first: %r)", len(missing), missing[0]
        )
    kinds = [str(truth[k].get("kind", "") or "") for k in scored]

    def view(pred_field: str, true_field: str) -> tuple[list[Hashable], list[Hashable]]:
        return [manifest[k][pred_field] for k in scored], [truth[k][true_field] for k in scored]

    joint_pred = [manifest[k].get("representative") or k for k in scored]
    joint_true = [truth[k]["image_group"] for k in scored]

    report: dict[str, Any] = {
        "samples": len(scored),
        "truth_rows": len(truth),
        "manifest_rows": len(manifest),
        "missing_from_manifest": len(missing),
        "rejected": dict(sorted(rejected.items())),
        "status": dict(sorted(Counter(manifest[k]["status"] for k in scored).items())),
    }
    for name, (pred, true) in (
        ("captions", view("caption_group", "caption_group")),
        ("images", view("image_group", "image_group")),
        ("joint", (joint_pred, joint_true)),
    ):
        section = pairwise_scores(pred, true)
        if any(kinds):
            section["by_kind"] = kind_breakdown(scored, pred, true, kinds)
        report[name] = section
    pairs = caption_pair_scores(manifest, truth)
    if pairs is not None:
        report["caption_pairs"] = pairs
    return report


def format_report(report: Mapping[str, Any]) -> str:
    """A plain-text table of :func:`evaluate_manifest`'s report (what ``eval-dedup`` prints)."""
    lines = [
        f"samples scored: {report['samples']} of {report['truth_rows']} in the ground truth "
        f"(rejected: {sum(report['rejected'].values())}, missing from manifest: {report['missing_from_manifest']})"
    ]
    lines += text_table(
        ["", "precision", "recall", "f1", "ari", "true pairs", "pred pairs"],
        [
            [
                name,
                *(report[name][k] for k in ("precision", "recall", "f1", "ari", "true_pairs", "pred_pairs")),
            ]
            for name in ("captions", "images", "joint")
        ],
        widths=(10, 10, 9, 8, 8, 12, 12),
    )
    pairs = report.get("caption_pairs")
    if pairs:
        lines.append(
            f"caption pairs: {pairs['merged']} of {pairs['must_merge']} must-merge merged, "
            f"{pairs['false_merges']} of {pairs['must_not_merge']} must-not-merge falsely merged"
        )
    kinds = sorted(set(report["images"].get("by_kind", {})) | set(report["captions"].get("by_kind", {})))
    if kinds:
        rows = []
        for kind in kinds:
            img = report["images"]["by_kind"].get(kind, {})
            cap = report["captions"]["by_kind"].get(kind, {})
            n = img.get("samples", cap.get("samples", 0))
            rows.append([kind or "(none)", n, img.get("recall"), cap.get("recall"), img.get("false_merge"),
                         cap.get("false_merge")])  # fmt: skip
        lines.append("")
        lines += text_table(
            ["kind", "n", "img recall", "cap recall", "img merge", "cap merge"],
            rows,
            widths=(22, 6, 12, 12, 11, 11),
        )
    return "\n".join(lines)
