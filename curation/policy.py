"""The joint keep/drop decision over image and caption groups; every decision carries its reason.

Duplicated images and duplicated captions over them are the two curable causes of memorization
(algorithms.md §1, causes 2 and 3). Rules, all deterministic (no arrival order):

1. A caption group whose members span ``template_min_images`` or more distinct image groups is *templated*
   ("a photo of a product"). ``template_policy``: ``keep`` (nothing happens), ``drop`` (its samples are not
   eligible) or ``cap`` (only the samples in its first ``template_cap`` image groups, ordered by their
   smallest key with that caption, stay eligible).
2. Every image group keeps one representative among its eligible members: the highest resolution
   (``width * height``), then the smallest key. A group with no eligible member keeps nothing.
3. Reasons of the dropped (status ``duplicate``): ``image_and_caption_duplicate`` when another member of the
   same image group also shares its caption group (a duplicated caption over duplicated images),
   ``image_duplicate`` otherwise; ``templated_caption_cap`` / ``templated_caption_drop`` only when the image
   itself kept no copy, i.e. it was lost because of its caption alone.

``representative`` is the kept key standing for the sample: itself when kept, its image group's
representative otherwise, ``""`` when its image kept no copy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from copyguard.curation.curate_config import PolicyConfig

__all__ = ["Decision", "KEPT", "DUPLICATE", "REASONS", "decide", "summarize", "size_histogram"]

KEPT = "kept"
DUPLICATE = "duplicate"
REASONS = (
    "image_duplicate",
    "image_and_caption_duplicate",
    "templated_caption_cap",
    "templated_caption_drop",
)


@dataclass(frozen=True, slots=True)
class Decision:
    """One sample's fate; :meth:`row` is its manifest row."""

    key: str
    status: str
    reason: str
    representative: str
    image_group: str
    caption_group: str

    def row(self) -> dict[str, str]:
        return asdict(self)


def _aligned(values: Sequence[Any] | Mapping[str, Any], keys: Sequence[str], name: str) -> list[Any]:
    if isinstance(values, Mapping):
        missing = [k for k in keys if k not in values]
        if missing:
            raise ValueError(f"{name} has no value for key {missing[0]!r}")
        return [values[k] for k in keys]
    values = list(values)
    if len(values) != len(keys):
        raise ValueError(f"{name} has {len(values)} values for {len(keys)} keys")
    return values


def _templated(
    keys: Sequence[str], image_group: list[str], caption_group: list[str], cfg: PolicyConfig
) -> dict[str, str]:
    """``{key: reason}`` for samples made ineligible by the template rule."""
    if cfg.template_policy == "keep":
        return {}
    first_key: dict[str, dict[str, str]] = {}  # caption group -> image group -> smallest key
    for key, ig, cg in zip(keys, image_group, caption_group, strict=True):
        per_image = first_key.setdefault(cg, {})
        if ig not in per_image or key < per_image[ig]:
            per_image[ig] = key
    allowed: dict[str, set[str]] = {}
    for cg, per_image in first_key.items():
        if len(per_image) < cfg.template_min_images:
            continue
        if cfg.template_policy == "drop":
            allowed[cg] = set()
        else:
            ranked = sorted(per_image, key=per_image.__getitem__)
            allowed[cg] = set(ranked[: cfg.template_cap])
    reason = f"templated_caption_{cfg.template_policy}"
    return {
        key: reason
        for key, ig, cg in zip(keys, image_group, caption_group, strict=True)
        if cg in allowed and ig not in allowed[cg]
    }


def decide(
    keys: Sequence[str],
    widths: Sequence[int] | Mapping[str, int],
    heights: Sequence[int] | Mapping[str, int],
    image_group: Sequence[str] | Mapping[str, str],
    caption_group: Sequence[str] | Mapping[str, str],
    cfg: PolicyConfig | None = None,
    preferred: Collection[str] = (),
) -> list[Decision]:
    """Decide every sample (see the module doc); returns decisions in the order of ``keys``.

    Per-sample inputs are sequences aligned with ``keys`` or mappings from key. Group ids are any
    strings (typically the smallest key of the group); a sample without duplicates is its own group.
    ``preferred`` keys (an earlier run's kept samples, for incremental curation) win their image group
    before resolution and key are compared.
    """
    cfg = cfg or PolicyConfig()
    keys = list(keys)
    if len(set(keys)) != len(keys):
        raise ValueError("keys must be unique")
    w = _aligned(widths, keys, "widths")
    h = _aligned(heights, keys, "heights")
    ig = [str(g) for g in _aligned(image_group, keys, "image_group")]
    cg = [str(g) for g in _aligned(caption_group, keys, "caption_group")]

    excluded = _templated(keys, ig, cg, cfg)
    # image group -> (not preferred, -pixels, key) of its representative
    best: dict[str, tuple[bool, int, str]] = {}
    for key, wi, hi, g in zip(keys, w, h, ig, strict=True):
        if key in excluded:
            continue
        rank = (key not in preferred, -int(wi) * int(hi), key)
        if g not in best or rank < best[g]:
            best[g] = rank
    pair_count = Counter(zip(ig, cg, strict=True))

    out = []
    for key, g, c in zip(keys, ig, cg, strict=True):
        rep = best[g][-1] if g in best else ""
        if rep == key:
            out.append(Decision(key, KEPT, "", key, g, c))
        elif rep:
            reason = "image_and_caption_duplicate" if pair_count[(g, c)] > 1 else "image_duplicate"
            out.append(Decision(key, DUPLICATE, reason, rep, g, c))
        else:
            out.append(Decision(key, DUPLICATE, excluded[key], "", g, c))
    return out


def size_histogram(sizes: Sequence[int] | Counter) -> dict[str, int]:
    """Group sizes binned as ``1``, ``2``, ``3-4``, ``5-8``, ... (powers of two); empty bins omitted."""
    hist: Counter = Counter()
    for size in sizes:
        if size <= 2:
            label = str(size)
        else:
            hi = 1 << (int(size) - 1).bit_length()
            label = f"{hi // 2 + 1}-{hi}"
        hist[label] += 1
    return dict(sorted(hist.items(), key=lambda kv: int(kv[0].split("-")[0])))


def summarize(decisions: Sequence[Decision], top_groups: int = 20) -> dict[str, Any]:
    """Counts by status and reason, group-size histograms and the largest groups of a decision list."""
    image_sizes = Counter(d.image_group for d in decisions)
    caption_sizes = Counter(d.caption_group for d in decisions)

    def top(sizes: Counter) -> list[dict[str, Any]]:
        ranked = sorted(((-n, g) for g, n in sizes.items() if n > 1))[:top_groups]
        return [{"group": g, "size": -n} for n, g in ranked]

    return {
        "samples": len(decisions),
        "status": dict(sorted(Counter(d.status for d in decisions).items())),
        "reason": dict(sorted(Counter(d.reason for d in decisions if d.reason).items())),
        "image_groups": len(image_sizes),
        "caption_groups": len(caption_sizes),
        "image_group_sizes": size_histogram(list(image_sizes.values())),
        "caption_group_sizes": size_histogram(list(caption_sizes.values())),
        "top_image_groups": top(image_sizes),
        "top_caption_groups": top(caption_sizes),
    }
