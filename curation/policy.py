"""The joint keep/drop decision over image and caption groups; every decision carries its reason.

Duplicated images and duplicated captions over them are the two curable causes of memorization (Somepalli
et al., "Understanding and Mitigating Copying in Diffusion Models", NeurIPS 2023); one specific caption
repeated over many different images is memorized as a template (Webster, "A Reproducible Extraction of
Training Images from Diffusion Models", 2023). Rules, all deterministic (no arrival order):

1. A caption group is *templated* when both hold:

   - its members span ``template_min_images`` or more distinct image groups (images that are not
     near-duplicates of each other), and
   - every distinct caption in it is informative: at least ``template_min_words`` content words
     (:func:`copyguard.curation.caption_canon.content_words`: canonical words that are not generic like
     "photo", "image", "untitled", not codes, not numbers).

   Why the second condition: a short generic caption ("image", "a photo", "untitled", "IMG_0042.jpg", "a
   dog") is shared by chance by unrelated images; its pairs are distinct image-text pairs, not a template,
   and dropping them would only thin the data. A real template ("Shaw Floors Caress Quiet Comfort Deep
   Indigo 00424_CCB96" over many carpet photos) is specific text repeated verbatim or with its codes
   changed. ``template_policy``: ``keep`` (nothing happens), ``drop`` (its samples are not eligible) or
   ``cap`` (only the samples in its first ``template_cap`` image groups stay eligible; image groups holding a
   ``preferred`` sample, i.e. an earlier run's kept entry, come first, then by their smallest key with that
   caption: an incremental run keeps at most ``template_cap`` over both runs, not that many new ones).
2. Every image group keeps one representative among its eligible members: the highest resolution
   (``width * height``), then the smallest key. A group with no eligible member keeps nothing.
3. ``excluded`` keys (``--exclude-keys``: samples the training filter flagged) are not eligible, nor is
   any other member of their image groups: reasons ``excluded_key`` and ``excluded_group``.
4. Reasons of the dropped (status ``duplicate``): ``image_and_caption_duplicate`` when another member of the
   same image group also shares its caption group (a duplicated caption over duplicated images),
   ``image_duplicate`` otherwise; ``templated_caption_cap`` / ``templated_caption_drop`` only when the image
   itself kept no copy, i.e. it was lost because of its caption alone.

``representative`` is the kept key standing for the sample: itself when kept, its image group's
representative otherwise, ``""`` when its image kept no copy.

``caption_rule`` says which caption rule took part in dropping a sample (:data:`CAPTION_RULES`):
``exact_caption`` (``image_and_caption_duplicate`` with another member of the same image group having the
same canonical caption, :func:`copyguard.curation.caption_canon.canonical_caption`),
``near_duplicate_caption`` (``image_and_caption_duplicate`` through a near-duplicate caption only) and
``template`` (``templated_caption_*``); ``""`` otherwise. :func:`summarize` counts them in
``caption_rule_drops``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from copyguard.curation.caption_canon import CaptionCanon, canonical_caption, content_words
from copyguard.curation.config import PolicyConfig

__all__ = [
    "CAPTION_RULES",
    "DEFAULT_TEMPLATE_MIN_WORDS",
    "DUPLICATE",
    "KEPT",
    "REASONS",
    "Decision",
    "decide",
    "size_histogram",
    "summarize",
]

KEPT = "kept"
DUPLICATE = "duplicate"
REASONS = (
    "excluded_key",
    "excluded_group",
    "image_duplicate",
    "image_and_caption_duplicate",
    "templated_caption_cap",
    "templated_caption_drop",
)
CAPTION_RULES = ("exact_caption", "near_duplicate_caption", "template")
# "a red car" (2 content words) over five images can be chance; "red sports car parked" cannot.
DEFAULT_TEMPLATE_MIN_WORDS = 3


@dataclass(frozen=True, slots=True)
class Decision:
    """One sample's fate; :meth:`row` is its manifest row."""

    key: str
    status: str
    reason: str
    representative: str
    image_group: str
    caption_group: str
    caption_rule: str = ""

    def row(self) -> dict[str, str]:
        """The manifest row (the manifest has no ``caption_rule`` column: it is counted in the summary)."""
        row = asdict(self)
        del row["caption_rule"]
        return row


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
    keys: Sequence[str],
    image_group: list[str],
    caption_group: list[str],
    captions: list[str],
    cfg: PolicyConfig,
    min_words: int,
    canon: CaptionCanon | None,
    preferred: Collection[str] = (),
) -> dict[str, str]:
    """``{key: reason}`` for samples made ineligible by the template rule."""
    if cfg.template_policy == "keep":
        return {}
    first_key: dict[str, dict[str, str]] = {}  # caption group -> image group -> smallest key
    texts: dict[str, set[str]] = {}  # caption group -> its distinct captions
    for key, ig, cg, text in zip(keys, image_group, caption_group, captions, strict=True):
        per_image = first_key.setdefault(cg, {})
        if ig not in per_image or key < per_image[ig]:
            per_image[ig] = key
        texts.setdefault(cg, set()).add(text)
    held = {g for key, g in zip(keys, image_group, strict=True) if key in preferred}
    allowed: dict[str, set[str]] = {}
    for cg, per_image in first_key.items():
        if len(per_image) < cfg.template_min_images:
            continue
        if any(content_words(text, canon) < min_words for text in texts[cg]):
            continue  # a generic or short caption shared by chance: distinct pairs, not a template
        if cfg.template_policy == "drop":
            allowed[cg] = set()
        else:
            ranked = sorted(per_image, key=lambda g: (g not in held, per_image[g]))
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
    *,
    captions: Sequence[str] | Mapping[str, str],
    template_min_words: int | None = None,
    canon: CaptionCanon | None = None,
    excluded: Collection[str] = (),
) -> list[Decision]:
    """Decide every sample (see the module doc); returns decisions in the order of ``keys``.

    Per-sample inputs are sequences aligned with ``keys`` or mappings from key. Group ids are any
    strings (typically the smallest key of the group); a sample without duplicates is its own group.
    ``preferred`` keys (an earlier run's kept samples, for incremental curation) win their image group
    before resolution and key are compared. ``captions`` (the texts) are the evidence of the template rule
    and tell exact from near-duplicate captions. ``template_min_words`` defaults to ``cfg``'s field of
    that name when the schema has one, else :data:`DEFAULT_TEMPLATE_MIN_WORDS`; ``canon`` is the canonical
    form's switches (default: all on). ``excluded`` keys and their image groups keep nothing (rule 3).
    """
    cfg = cfg or PolicyConfig()
    keys = list(keys)
    if len(set(keys)) != len(keys):
        raise ValueError("keys must be unique")
    w = _aligned(widths, keys, "widths")
    h = _aligned(heights, keys, "heights")
    ig = [str(g) for g in _aligned(image_group, keys, "image_group")]
    cg = [str(g) for g in _aligned(caption_group, keys, "caption_group")]
    texts = [str(t) for t in _aligned(captions, keys, "captions")]
    if template_min_words is None:
        template_min_words = getattr(cfg, "template_min_words", DEFAULT_TEMPLATE_MIN_WORDS)

    flagged = set(excluded) & set(keys)
    # {key: reason} of every sample that may not represent its image group
    ineligible = _templated(keys, ig, cg, texts, cfg, template_min_words, canon, preferred)
    if flagged:
        flagged_groups = {g for key, g in zip(keys, ig, strict=True) if key in flagged}
        for key, g in zip(keys, ig, strict=True):
            if key in flagged:
                ineligible[key] = "excluded_key"
            elif g in flagged_groups:
                ineligible[key] = "excluded_group"
    # image group -> (not preferred, -pixels, key) of its representative
    best: dict[str, tuple[bool, int, str]] = {}
    for key, wi, hi, g in zip(keys, w, h, ig, strict=True):
        if key in ineligible:
            continue
        rank = (key not in preferred, -int(wi) * int(hi), key)
        if g not in best or rank < best[g]:
            best[g] = rank
    pair_count = Counter(zip(ig, cg, strict=True))
    # Canonical captions per (image group, caption group) cell, only for cells with a duplicated caption.
    cell_forms: Counter = Counter(
        (g, c, canonical_caption(t, canon))
        for g, c, t in zip(ig, cg, texts, strict=True)
        if pair_count[(g, c)] > 1
    )

    out = []
    for key, g, c, text in zip(keys, ig, cg, texts, strict=True):
        rep = best[g][-1] if g in best else ""
        if rep == key:
            out.append(Decision(key, KEPT, "", key, g, c))
        elif not rep:
            rule = "template" if ineligible[key].startswith("templated") else ""
            out.append(Decision(key, DUPLICATE, ineligible[key], "", g, c, rule))
        elif pair_count[(g, c)] > 1:
            exact = cell_forms[(g, c, canonical_caption(text, canon))] > 1
            rule = "exact_caption" if exact else "near_duplicate_caption"
            out.append(Decision(key, DUPLICATE, "image_and_caption_duplicate", rep, g, c, rule))
        else:
            out.append(Decision(key, DUPLICATE, "image_duplicate", rep, g, c))
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
        "caption_rule_drops": {
            rule: sum(d.caption_rule == rule and d.status == DUPLICATE for d in decisions)
            for rule in CAPTION_RULES
        },
        "image_groups": len(image_sizes),
        "caption_groups": len(caption_sizes),
        "image_group_sizes": size_histogram(list(image_sizes.values())),
        "caption_group_sizes": size_histogram(list(caption_sizes.values())),
        "top_image_groups": top(image_sizes),
        "top_caption_groups": top(caption_sizes),
    }
