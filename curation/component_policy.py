"""The joint policy applied one connected component at a time, and the summaries that add up across them.

The distributed curation job links samples by image edges (partitioned search) and caption edges (MinHash
LSH), finds the connected components of the union, and hands each component to :func:`decide_component`.
Nothing of the policy crosses a component: image groups (chaining-protected clusters of the image edges,
:func:`~copyguard.curation.clustering.cluster_components`), caption groups (connected components of the
caption edges) and the template rule all live inside one, and group ids are smallest keys, so deciding per
component gives exactly the decisions of one global :func:`~copyguard.curation.policy.decide` (the
cluster's tie-breaks compare keys, whose relative order a component preserves).

Incremental runs: an earlier run's kept entries join as *reference* members (``preferred`` by the policy,
never re-decided). They carry their stored entry, so that

- a group that holds a reference member keeps the id it had (the smallest key ever seen in it);
- group sizes count the earlier inputs the reference entry stood for (its stored sizes) plus the new ones;
- ``dup_caption_count`` (y_N's support, AMG) adds the reference entry's stored count to its caption cell;
- a reference entry whose stored fields changed is emitted as an update of its index shard, and one that
  ``--exclude-keys`` names (or whose image group it names) as a deletion.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from copyguard.curation.clustering import cluster_components
from copyguard.curation.config import CurateConfig
from copyguard.curation.index import IndexEntry
from copyguard.curation.policy import CAPTION_RULES, KEPT, decide, summarize
from copyguard.curation.union_find import connected_components, group_ids

__all__ = ["ComponentResult", "Member", "decide_component", "empty_summary", "merge_summaries"]


@dataclass(frozen=True)
class Member:
    """What the policy needs of one sample: no descriptor. ``entry``: a reference member's stored entry."""

    key: str
    shard: str
    caption: str
    width: int
    height: int
    partition: int
    entry: IndexEntry | None = None

    @property
    def reference(self) -> bool:
        return self.entry is not None


@dataclass
class ComponentResult:
    """Manifest rows of the new members, index entries of the kept new members and of the changed
    reference members (``None``: delete it), each with its index partition, and a summary to merge."""

    rows: list[dict[str, str]] = field(default_factory=list)
    entries: list[tuple[int, IndexEntry]] = field(default_factory=list)
    updates: list[tuple[int, tuple[str, IndexEntry | None]]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _rename(groups: list[str], members: Sequence[Member], attr: str) -> list[str]:
    """Name each group by the smallest of its new keys and its reference members' stored group ids."""
    name: dict[str, str] = {}
    for g, m in zip(groups, members, strict=True):
        candidate = getattr(m.entry, attr) or m.key if m.entry is not None else m.key
        if g not in name or candidate < name[g]:
            name[g] = candidate
    return [name[g] for g in groups]


def _sizes(groups: list[str], members: Sequence[Member], attr: str, size_attr: str) -> Counter:
    """Inputs per group: one per new member, plus each distinct stored group's size of reference members."""
    sizes: Counter = Counter()
    stored: dict[tuple[str, str], int] = {}
    for g, m in zip(groups, members, strict=True):
        if m.entry is None:
            sizes[g] += 1
        else:
            old = getattr(m.entry, attr) or m.key
            stored[(g, old)] = max(stored.get((g, old), 0), int(getattr(m.entry, size_attr)))
    for (g, _old), n in stored.items():
        sizes[g] += n
    return sizes


def _dup_captions(
    members: Sequence[Member], image: list[str], caption: list[str]
) -> dict[str, tuple[str, int]]:
    """Per image group: one caption of its most common caption group and that group's count (AMG's y_N,
    Chen et al., CVPR 2024).
    A reference member counts as many as its stored ``dup_caption_count`` (at least 1)."""
    counts: Counter = Counter()
    text: dict[tuple[str, str], str] = {}
    for m, g, c in zip(members, image, caption, strict=True):  # members are sorted by key
        if m.entry is None:
            counts[(g, c)] += 1
            text.setdefault((g, c), m.caption)
        else:
            counts[(g, c)] += max(1, m.entry.dup_caption_count)
            text.setdefault((g, c), m.entry.dup_caption or m.caption)
    best: dict[str, tuple[int, str]] = {}
    for (g, c), n in counts.items():
        if g not in best or (-n, c) < (-best[g][0], best[g][1]):
            best[g] = (n, c)
    return {g: (text[(g, c)], n) for g, (n, c) in best.items()}


def _top_members(
    summary: dict[str, Any],
    decisions,
    captions: dict[str, str],
    per_group: int,
    similarity: dict[tuple[str, str], float],
) -> None:
    """The members shown for each of the largest groups: the kept one first (``kept``: true; the group's
    ``kept`` names it), then the others by key, each image-group member with its SSCD ``similarity`` to the
    kept one where the two share an edge (1 for the kept one itself)."""
    members: dict[tuple[str, str], list[Any]] = {}
    for d in decisions:
        members.setdefault(("image", d.image_group), []).append(d)
        members.setdefault(("caption", d.caption_group), []).append(d)
    for kind in ("image", "caption"):
        for group in summary.get(f"top_{kind}_groups", []):
            ds = sorted(members.get((kind, group["group"]), []), key=lambda d: (d.status != KEPT, d.key))
            kept = next((d.key for d in ds if d.status == KEPT), None)
            group["kept"] = kept
            shown = []
            for d in ds[:per_group]:
                row: dict[str, Any] = {"key": d.key, "caption": captions[d.key], "kept": d.status == KEPT}
                if kind == "image" and kept is not None:
                    pair = (min(d.key, kept), max(d.key, kept))
                    row["similarity"] = 1.0 if d.key == kept else similarity.get(pair)
                shown.append(row)
            group["members"] = shown


def decide_component(
    members: Iterable[Member],
    image_edges: Iterable[tuple[str, str, float]],
    caption_edges: Iterable[tuple[str, str]],
    cfg: CurateConfig,
    excluded: Collection[str] = (),
) -> ComponentResult:
    """Decide one connected component (see the module doc). Edges whose ends are not both members are
    ignored; a member without edges is its own image and caption group."""
    members = sorted(members, key=lambda m: m.key)
    keys = [m.key for m in members]
    pos = {k: i for i, k in enumerate(keys)}
    edges = sorted({(a, b, s) for a, b, s in image_edges if a in pos and b in pos})
    if edges:
        i = np.array([pos[a] for a, _, _ in edges], dtype=np.int64)
        j = np.array([pos[b] for _, b, _ in edges], dtype=np.int64)
        labels = cluster_components(len(keys), i, j, np.array([s for *_, s in edges]), cfg.images)
    else:
        labels = np.arange(len(keys), dtype=np.int64)
    image = _rename(group_ids(keys, labels), members, "image_group")
    groups = connected_components(keys, [(a, b) for a, b in caption_edges if a in pos and b in pos])
    caption = _rename([groups[k] for k in keys], members, "caption_group")
    decisions = decide(
        keys,
        [m.width for m in members],
        [m.height for m in members],
        image,
        caption,
        cfg.policy,
        preferred={m.key for m in members if m.reference},
        captions=[m.caption for m in members],
        excluded=excluded,
    )
    image_sizes = _sizes(image, members, "image_group", "image_group_size")
    caption_sizes = _sizes(caption, members, "caption_group", "caption_group_size")
    dup = _dup_captions(members, image, caption)
    result = ComponentResult()
    new = []
    dropped_refs = 0
    for m, d, g, c in zip(members, decisions, image, caption, strict=True):
        entry = IndexEntry(
            key=m.key,
            caption=m.caption,
            caption_group=c,
            image_group=g,
            caption_group_size=caption_sizes[c],
            image_group_size=image_sizes[g],
            dup_caption=dup[g][0],
            dup_caption_count=dup[g][1],
        )
        if m.entry is not None:
            if d.reason in ("excluded_key", "excluded_group"):
                result.updates.append((m.partition, (m.key, None)))
                dropped_refs += 1
            elif entry != m.entry:
                result.updates.append((m.partition, (m.key, entry)))
            continue
        new.append(d)
        result.rows.append({**d.row(), "shard": m.shard, "detail": ""})
        if d.status == KEPT:
            result.entries.append((m.partition, entry))
    summary = summarize(new, cfg.report.top_groups)
    similarity = {(min(a, b), max(a, b)): round(float(sim), 4) for a, b, sim in edges}
    _top_members(
        summary, new, {m.key: m.caption for m in members}, cfg.report.thumbnails_per_group, similarity
    )
    summary["reference_excluded"] = dropped_refs
    result.summary = summary
    return result


def empty_summary() -> dict[str, Any]:
    """The summary of no decisions (the identity of :func:`merge_summaries`)."""
    return {**summarize([], 0), "reference_excluded": 0}


def _add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    total = Counter(a)
    total.update(b)
    return dict(sorted((k, v) for k, v in total.items() if v))


def _hist(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return dict(sorted(_add(a, b).items(), key=lambda kv: int(kv[0].split("-")[0])))


def merge_summaries(a: dict[str, Any], b: dict[str, Any], top_groups: int) -> dict[str, Any]:
    """The summary of two disjoint decision sets (components never share a group): counts and histograms
    add up, the largest groups are re-ranked by (size desc, group id)."""
    out = dict(a)
    for k in ("samples", "image_groups", "caption_groups", "reference_excluded"):
        out[k] = a.get(k, 0) + b.get(k, 0)
    for k in ("status", "reason"):
        out[k] = _add(a.get(k, {}), b.get(k, {}))
    drops_a, drops_b = a.get("caption_rule_drops", {}), b.get("caption_rule_drops", {})
    out["caption_rule_drops"] = {r: drops_a.get(r, 0) + drops_b.get(r, 0) for r in CAPTION_RULES}
    for k in ("image_group_sizes", "caption_group_sizes"):
        out[k] = _hist(a.get(k, {}), b.get(k, {}))
    for k in ("top_image_groups", "top_caption_groups"):
        ranked = sorted([*a.get(k, []), *b.get(k, [])], key=lambda g: (-g["size"], g["group"]))
        out[k] = ranked[:top_groups]
    return out
