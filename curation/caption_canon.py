"""Canonical captions: the meaning-preserving edits folded away before near-duplicate detection.

A caption near-duplicate is the same text after edits that keep its meaning; captions that say different
things are different. Character n-grams cannot tell the two apart on short captions ("a photo of a red car"
and "a photo of a red cat" have a character 5-gram Jaccard of 0.88), so captions are compared on the WORD
shingles of a canonical form, which folds every meaning-preserving edit into the same token sequence:

1. Unicode NFKC and casefolding (width variants, ligatures, case); apostrophes inside words vanish.
2. Tag lists are sorted as a set: ``#hashtags``, ``|``-separated parts, and comma/semicolon lists of three
   or more short parts (at most :data:`MAX_TAG_WORDS` words each, at least half of them without a stop
   word; a sentence with commas stays one sentence).
3. Product-style numbers and codes become one placeholder, :data:`CODE`: tokens mixing digits with letters
   or inner punctuation (``B07XJ8``, ``30x40``, ``19.99``, ``00424_CCB96``), digit runs of three or more
   (item numbers, years) and short numbers right before a unit or right after a product key (``30 cm``,
   ``size 10``, ``6 pcs``). A bare one- or two-digit number anywhere else is a count and stays: "2 dogs on
   a sofa" and "3 dogs on a sofa" say different things. Ordinals stay.
4. Punctuation and whitespace runs are separators; articles and a small list of stop words
   (:data:`STOP_WORDS`) are dropped. Negations (``no``, ``not``, ``without``) and spatial prepositions with
   a meaning (``under``, ``over``, ``behind``) are kept.

Shingles (:func:`canonical_shingles`): a caption of at most ``exact_max_words`` (4) canonical words is
one shingle, its whole canonical form, so short captions match only when their canonical forms are equal
(exact canonical-hash equality: "a photo of a red car" is ``photo red car``, and any changed, added or
removed content word makes it another caption). A longer caption's shingles are its canonical words and
its word bigrams with begin/end markers, within each tag of a tag list. Replacing one word of a caption of
``n`` canonical words keeps a Jaccard of ``(2n - 2) / (2n + 4)`` wherever the word is: 0.57 for ``n = 5``,
below the default verification threshold 0.6, and 0.625 from ``n = 6`` on, so a one-word content change
never merges captions of up to 5 canonical words, while long captions tolerate a stray word as before
(an added word: ``2n / (2n + 4)``, 0.71 from 5 to 6 words). Word shingles of normalized text are
the resemblance that MinHash estimates (Broder, "On the resemblance and containment of documents", 1997).

Every function here is a pure function of one caption (no global state), so Beam workers agree.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "CODE",
    "GENERIC_WORDS",
    "MAX_TAG_WORDS",
    "STOP_WORDS",
    "CaptionCanon",
    "canonical_caption",
    "canonical_parts",
    "canonical_shingles",
    "canonical_tokens",
    "content_words",
]

CODE = "<code>"  # cannot collide with a word: "<" and ">" are separators in captions
MAX_TAG_WORDS = 4
STOP_WORDS = frozenset({
    "a", "an", "the", "of", "and", "or", "with", "in", "on", "at", "to", "for", "from", "by", "as", "is",
    "are", "was", "were", "be", "been", "being", "this", "that", "these", "those", "it", "its", "there",
    "some", "very", "s",
})  # fmt: skip
# Words that say nothing about an image's content; a caption made of them only is uninformative.
GENERIC_WORDS = frozenset({
    "photo", "photos", "photograph", "picture", "pictures", "pic", "pics", "image", "images", "img",
    "untitled", "title", "stock", "file", "default", "thumbnail", "screenshot", "dsc", "jpg",
    "jpeg", "png", "gif", "view", "item", "product", "unknown", "none", "null", "caption", "description",
    "new", "my", "our", "your",
})  # fmt: skip
# A short number before one of these is a measurement or a quantity code, not a count.
_UNITS = frozenset({
    "mm", "cm", "m", "km", "inch", "inches", "ft", "feet", "yd", "g", "kg", "mg", "lb", "lbs", "oz", "ml",
    "gal", "gb", "tb", "mb", "kb", "px", "dpi", "mp", "w", "kw", "v", "mah", "hz", "x", "pcs", "pc",
    "pieces", "pack", "packs", "panels", "panel", "ct", "count", "sizes",
})  # fmt: skip
# A short number after one of these is a product attribute ("size 10", "no 5", "model 3").
_CODE_KEYS = frozenset({
    "size", "sizes", "no", "nr", "num", "number", "item", "model", "sku", "ref", "art", "lot", "part",
    "style", "pack", "vol", "volume", "page", "pages", "chapter", "episode", "ep", "version", "v",
    "edition", "view", "x",
})  # fmt: skip

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
# Pieces of a whitespace token: split at every non-word character and "_", except "." "," ":" between two
# digits ("19.99", "1,000" and "10:30" stay one piece); "mass_effect_3" is three pieces, not one code.
_PIECE_SEP = re.compile(r"(?<!\d)[.,:]|[.,:](?!\d)|[^\w.,:]+|_+", re.UNICODE)
_APOSTROPHES = re.compile(r"['\u2019\u02bc`]")
_HASHTAG = re.compile(r"#(\w*[^\W\d_]\w*)", re.UNICODE)
_LIST_SEP = re.compile(r"(?<!\d),|,(?!\d)|;")
_SHORT_NUMBER = re.compile(r"\d{1,2}")
_KEPT_NUMBER = re.compile(r"\d{1,2}(?:st|nd|rd|th)?")  # a count or an ordinal
_DIGIT = re.compile(r"\d")


@dataclass(frozen=True)
class CaptionCanon:
    """Switches of the canonical form. All on is the default; ``canonical=False`` is the legacy scheme.

    With ``canonical=False`` the MinHash config's ``shingle_kind``/``shingle_n`` apply to the plain
    normalized text (:func:`copyguard.curation.captions.normalize_caption`); otherwise shingles are the
    whole canonical form for captions of at most ``exact_max_words`` canonical words, above it the canonical
    words and their 2- to ``word_ngrams``-grams with begin/end markers; ``shingle_kind``/``shingle_n`` are
    not used.
    """

    canonical: bool = True
    drop_stopwords: bool = True
    sort_tags: bool = True
    mask_codes: bool = True
    word_ngrams: int = 2
    exact_max_words: int = 4

    def __post_init__(self) -> None:
        if self.word_ngrams < 1:
            raise ValueError(f"word_ngrams must be >= 1, got {self.word_ngrams}")
        if self.exact_max_words < 0:
            raise ValueError(f"exact_max_words must be >= 0, got {self.exact_max_words}")

    @classmethod
    def from_config(cls, cfg: Any) -> CaptionCanon:
        """The switches a config object carries under the same attribute names; the defaults otherwise.

        This lets a caption config gain the keys (``canonical``, ``drop_stopwords``, ``sort_tags``,
        ``mask_codes``, ``word_ngrams``, ``exact_max_words``) without another change to the code that
        reads it.
        """
        attrs = getattr(cfg, "__dict__", {})  # pydantic models and plain objects keep fields here
        values = {name: attrs[name] for name in _SWITCHES if name in attrs}
        return cls(**values) if values else _DEFAULT


_SWITCHES = tuple(f.name for f in fields(CaptionCanon))
_DEFAULT = CaptionCanon()


def _segments(text: str, sort_tags: bool) -> list[str]:
    """The caption's parts: one (the text) unless it is a tag list, then its tags (sorted by the caller)."""
    if not sort_tags:
        return [text]
    tags = _HASHTAG.findall(text)
    rest = _HASHTAG.sub(" ", text)
    if "|" in rest:
        parts = rest.split("|")
    else:
        parts = [p for p in _LIST_SEP.split(rest) if _NON_WORD.sub("", p)]
        if not _is_tag_list(parts):
            parts = [rest]
    return parts + tags


def _is_tag_list(parts: list[str]) -> bool:
    """Three or more short parts, at least half of them free of stop words ("sunset, beach, palm trees").

    The stop-word condition keeps a sentence with commas ("a bathroom with, a sink, mirror, and a tub")
    one sentence, wherever its commas are.
    """
    if len(parts) < 3 or any(len(p.split()) > MAX_TAG_WORDS for p in parts):
        return False
    plain = sum(not STOP_WORDS.intersection(_NON_WORD.split(p)) for p in parts)
    return 2 * plain >= len(parts)


def _words(segment: str, mask_codes: bool) -> tuple[str, ...]:
    """Words of one part; digit-bearing pieces other than short numbers and ordinals become CODE."""
    out: list[str] = []
    for raw in segment.split():
        for piece in _PIECE_SEP.split(_APOSTROPHES.sub("", raw)):
            if not piece:
                continue
            if mask_codes and _DIGIT.search(piece) and not _KEPT_NUMBER.fullmatch(piece):
                out.append(CODE)
            else:
                out.extend(w for w in _NON_WORD.split(piece) if w)
    if mask_codes:  # short numbers next to a unit or after a product key are measurements, not counts
        out = [
            CODE
            if _SHORT_NUMBER.fullmatch(t)
            and ((i + 1 < len(out) and out[i + 1] in _UNITS) or (i > 0 and out[i - 1] in _CODE_KEYS))
            else t
            for i, t in enumerate(out)
        ]
    return tuple(out)


def canonical_parts(text: str, canon: CaptionCanon | None = None) -> tuple[tuple[str, ...], ...]:
    """The canonical form as parts of words: one part, or a tag list's distinct tags in sorted order."""
    canon = canon or CaptionCanon()
    text = unicodedata.normalize("NFKC", text).casefold()
    parts = []
    for segment in _segments(text, canon.sort_tags):
        words = _words(segment, canon.mask_codes)
        if canon.drop_stopwords:
            words = tuple(w for w in words if w not in STOP_WORDS)
        if words:
            parts.append(words)
    if len(parts) > 1:
        return tuple(sorted(set(parts)))
    if parts or not text.strip():
        return tuple(parts)
    # Only stop words or punctuation: fall back to the plain words, or to the text itself ("!!!" != "???").
    plain = tuple(w for w in _NON_WORD.split(text) if w)
    return (plain or (" ".join(text.split()),),)


def canonical_tokens(text: str, canon: CaptionCanon | None = None) -> tuple[str, ...]:
    """The canonical words of a caption in order (tags sorted); empty for an empty text."""
    return tuple(w for part in canonical_parts(text, canon) for w in part)


def canonical_caption(text: str, canon: CaptionCanon | None = None) -> str:
    """The canonical form as one string (tags joined by ``" | "``): equal strings are exact duplicates."""
    return " | ".join(" ".join(part) for part in canonical_parts(text, canon))


def canonical_shingles(text: str, canon: CaptionCanon | None = None) -> set[bytes]:
    """The caption's shingles (UTF-8; empty for an empty caption), see the module docstring.

    Up to ``exact_max_words`` canonical words: one shingle, ``"="`` + :func:`canonical_caption`. Above:
    the word 1- to ``word_ngrams``-grams, inside each tag of a tag list, so neither the tags' order nor
    where a list is cut changes them.
    """
    canon = canon or CaptionCanon()
    parts = canonical_parts(text, canon)
    if 0 < sum(map(len, parts)) <= canon.exact_max_words:
        return {("=" + " | ".join(" ".join(part) for part in parts)).encode("utf-8")}
    out = {w.encode("utf-8") for part in parts for w in part}
    for part in parts:
        padded = ("^", *part, "$")  # boundary markers: a changed first or last word costs as much as any
        for n in range(2, canon.word_ngrams + 1):
            out.update(" ".join(padded[k : k + n]).encode("utf-8") for k in range(len(padded) - n + 1))
    return out


def content_words(text: str, canon: CaptionCanon | None = None) -> int:
    """How informative a caption is: its distinct canonical words with a letter, neither generic nor codes.

    ``"a photo"``, ``"Untitled"``, ``"IMG_0042.jpg"`` count 0; ``"a photo of a red car"`` counts 2.
    """
    canon = canon or CaptionCanon()
    words = {
        w
        for w in canonical_tokens(text, canon)
        if w not in GENERIC_WORDS and w not in STOP_WORDS and w != CODE and any(c.isalpha() for c in w)
    }
    return len(words)
