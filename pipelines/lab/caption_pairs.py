"""Caption-pair benchmark for ``sample-data``: must-merge variants and must-not-merge pairs of real captions.

A caption near-duplicate is the same text after edits that keep its meaning; captions that say different
things are different (issue 13). :func:`caption_pair_set` draws, with a seed, from the shipped caption pool
(:func:`copyguard.pipelines.lab.sample_captions.load_caption_pool`):

- must-merge pairs (:func:`must_merge_pairs`): a real caption and its re-casing, punctuation or whitespace
  edit, a changed or dropped article or stop word; a tag list made of its words and the list reordered; a
  product title made of it with another SKU, item number or print size;
- must-not-merge pairs (:func:`must_not_merge_pairs`): a real short caption (at most
  :data:`SHORT_CAPTION_WORDS` canonical words) and the same with one content word changed: another colour,
  count or noun, "with" made "without", an added adjective.

Pairwise precision/recall over them (copyguard's evaluation protocol) scores a caption dedup; a dedup that merges a
must-not-merge pair is wrong whatever its F1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from copyguard.curation.caption_canon import STOP_WORDS, canonical_tokens
from copyguard.pipelines.lab.sample_captions import (
    CaptionPool,
    case_variants,
    load_caption_pool,
    punct_variants,
)

__all__ = [
    "MERGE_EDITS",
    "SHORT_CAPTION_WORDS",
    "SPLIT_EDITS",
    "CaptionPair",
    "caption_pair_set",
    "must_merge_pairs",
    "must_not_merge_pairs",
]

MERGE_EDITS = ("case", "punct", "whitespace", "article", "stop_word", "tags", "code")
SPLIT_EDITS = ("colour", "count", "noun", "negation", "added_word")
# Captions of at most this many canonical words are "short": any content change makes another caption.
SHORT_CAPTION_WORDS = 4
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "brown", "orange", "purple", "grey")
COUNTS = ("two", "three", "four", "five", "six")
NOUNS = ("cat", "car", "dog", "horse", "boat", "tree", "house", "bridge", "clock", "guitar", "castle", "bird")
ADJECTIVES = ("old", "tiny", "wooden", "broken", "frozen", "golden", "empty", "giant")
_ARTICLES = ("a", "an", "the")
_STOP_SWAPS = {"on": "in", "in": "on", "at": "in", "is": "", "are": "", "of": "", "with": "and"}


@dataclass(frozen=True)
class CaptionPair:
    """Two captions, whether they are near-duplicates (``duplicate``), the edit that made ``b`` and the pool
    caption both were made from (``source``: a sample elsewhere must not carry it, or it would be a third,
    unlabelled near-duplicate)."""

    a: str
    b: str
    duplicate: bool
    edit: str
    source: str = ""


def _replace_word(words: list[str], index: int, new: str) -> str:
    return " ".join(w for w in words[:index] + [new] + words[index + 1 :] if w)


def _merge_edit(caption: str, edit: str, rng: np.random.Generator) -> tuple[str, str] | None:
    """``(a, b)``: ``caption`` (or a tag list or product title made of it) and its meaning-preserving edit."""
    words = caption.split()
    lower = [w.lower() for w in words]
    if edit == "case":
        out = case_variants(caption, 1, rng)
        return (caption, out[0]) if out else None
    if edit == "punct":
        out = punct_variants(caption, 1, rng)
        return (caption, out[0]) if out else None
    if edit == "whitespace":
        seps = [str(rng.choice(["  ", "\t", " \n ", "   "])) for _ in words[1:]]
        return caption, " " + "".join(w + sep for w, sep in zip(words, seps + [" "], strict=True))
    if edit == "article":
        at = [i for i, w in enumerate(lower) if w in _ARTICLES]
        if not at:
            return caption, "The " + caption
        i = int(rng.choice(at))
        new = str(rng.choice([a for a in ("", "the", "a") if a != lower[i]]))
        return caption, _replace_word(words, i, new)
    if edit == "stop_word":
        at = [i for i, w in enumerate(lower) if w in _STOP_SWAPS]
        if not at:
            return None
        i = int(rng.choice(at))
        return caption, _replace_word(words, i, _STOP_SWAPS[lower[i]])
    tags = list(dict.fromkeys(t for t in canonical_tokens(caption) if t.isalpha()))
    if edit == "tags":
        if len(tags) < 3:
            return None
        order = [tags[int(i)] for i in rng.permutation(len(tags))]
        if order == tags:
            order = order[1:] + order[:1]
        style = int(rng.integers(3))
        if style == 0:
            return ", ".join(tags), ", ".join(order)
        if style == 1:
            return " | ".join(tags), ", ".join(order)
        return " ".join("#" + t for t in tags), " ".join("#" + t for t in order)
    if edit == "code":
        n1, n2 = (int(v) for v in rng.choice(np.arange(10_000, 100_000), 2, replace=False))
        style = int(rng.integers(3))
        if style == 0:
            return f"{caption} - SKU {n1}", f"{caption} - SKU {n2}"
        if style == 1:
            return f"{caption} | Item #{n1}", f"{caption} | Item #{n2}"
        w1, w2 = int(rng.integers(20, 60)), int(rng.integers(60, 99))
        return f"{caption}, canvas print {w1}x{w1 + 10} cm", f"{caption}, canvas print {w2}x{w2 + 10} cm"
    raise ValueError(f"unknown merge edit {edit!r}")


def _split_edit(caption: str, edit: str, rng: np.random.Generator) -> tuple[str, str] | None:
    """``(caption, b)``: one content word of ``caption`` changed, added, or negated (a different caption)."""
    words = caption.split()
    lower = [w.lower().strip(".,!?;:") for w in words]
    content = [i for i, w in enumerate(lower) if w.isalpha() and w not in STOP_WORDS]
    if not content:
        return None
    if edit == "colour":
        at = [i for i in content if lower[i] in COLOURS]
        if not at:
            return None
        i = int(rng.choice(at))
        return caption, _replace_word(words, i, str(rng.choice([c for c in COLOURS if c != lower[i]])))
    if edit == "count":
        at = [i for i, w in enumerate(lower) if w in COUNTS or (w.isdigit() and len(w) == 1)]
        if not at:  # no count yet: put one in place of a leading article
            rest = " ".join(words[1:] if lower[0] in _ARTICLES else words)
            return "Two " + rest, "Three " + rest
        i = int(rng.choice(at))
        new = (
            str(rng.choice([c for c in COUNTS if c != lower[i]]))
            if lower[i] in COUNTS
            else str((int(lower[i]) + 1) % 10)
        )
        return caption, _replace_word(words, i, new)
    if edit == "noun":
        i = int(rng.choice(content))
        return caption, _replace_word(words, i, str(rng.choice([n for n in NOUNS if n not in lower])))
    if edit == "negation":
        at = [i for i, w in enumerate(lower) if w == "with"]
        if not at:
            return None
        return caption, _replace_word(words, int(rng.choice(at)), "without")
    if edit == "added_word":
        i = int(rng.choice(content))
        return caption, " ".join(words[:i] + [str(rng.choice(ADJECTIVES))] + words[i:])
    raise ValueError(f"unknown split edit {edit!r}")


def _pairs(
    captions: Sequence[str], count: int, rng: np.random.Generator, edits: Sequence[str], duplicate: bool
) -> list[CaptionPair]:
    """Pairs over shuffled captions, the edit kinds in turn; more passes while a pass still adds pairs."""
    out: list[CaptionPair] = []
    seen: set[tuple[str, str]] = set()
    make = _merge_edit if duplicate else _split_edit
    turn = 0
    for _ in range(len(edits) * 2):
        before = len(out)
        for i in rng.permutation(len(captions)):
            if len(out) == count:
                return out
            edit = edits[turn % len(edits)]
            turn += 1
            pair = make(captions[int(i)], edit, rng)
            if pair is None or pair[0] == pair[1] or pair in seen:
                continue
            if not duplicate and any(len(canonical_tokens(t)) > SHORT_CAPTION_WORDS for t in pair):
                continue  # only short captions: a one-word change in a long caption may stay a near-duplicate
            seen.add(pair)
            out.append(CaptionPair(pair[0], pair[1], duplicate, edit, captions[int(i)]))
        if len(out) == before:
            break
    return out


def must_merge_pairs(captions: Sequence[str], count: int, rng: np.random.Generator) -> list[CaptionPair]:
    """Up to ``count`` pairs of near-duplicates made from real captions by meaning-preserving edits.

    Edits (:data:`MERGE_EDITS`, in turn over shuffled captions): re-casing, punctuation, whitespace runs, a
    changed, added or dropped article, a dropped or swapped stop word, a tag list of the caption's words
    and its reordering, a product title with a different SKU, item number or print size.
    """
    return _pairs(captions, count, rng, MERGE_EDITS, duplicate=True)


def must_not_merge_pairs(captions: Sequence[str], count: int, rng: np.random.Generator) -> list[CaptionPair]:
    """Up to ``count`` pairs of different captions: one content word of a real short caption changed.

    Edits (:data:`SPLIT_EDITS`): another colour, another count ("2 dogs" and "3 dogs" say different
    things), another noun, "with" made "without", an added adjective. Both captions have at most
    :data:`SHORT_CAPTION_WORDS` canonical words (a one-word change in a long caption may stay a near
    duplicate); captions that allow no edit of the turn's kind are skipped.
    """
    return _pairs(captions, count, rng, SPLIT_EDITS, duplicate=False)


def caption_pair_set(count: int, seed: int = 0, pool: CaptionPool | None = None) -> list[CaptionPair]:
    """The caption-pair benchmark: ``count`` must-merge and up to ``count`` must-not-merge pairs (seeded).

    Must-merge pairs come from the whole pool, must-not-merge pairs from its short captions.
    """
    pool = pool or load_caption_pool()
    rng = np.random.default_rng(seed)
    texts = list(pool.coco) + list(pool.laion) + list(pool.memorized) + list(pool.templates)
    short = [t for t in texts if 2 <= len(canonical_tokens(t)) <= SHORT_CAPTION_WORDS]
    return must_merge_pairs(texts, count, rng) + must_not_merge_pairs(short, count, rng)
