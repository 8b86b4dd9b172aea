"""Captions for ``copyguard sample-data``: the shipped pool of real captions and the planted edits.

The pool lives in ``data/captions_*.txt`` (one caption per line, UTF-8): MS-COCO 2014 validation
captions, LAION captions that Stable Diffusion does not regurgitate, LAION captions it memorizes verbatim
(``VM``) and templated LAION captions it memorizes as templates (``TM``). They are a sample of the prompt
sets of Hintersdorf et al., *Finding NeMo* (NeurIPS 2024; MIT), see ``data/ATTRIBUTION.md``;
:func:`refresh_captions` regenerates the files from those CSVs::

    python -m copyguard.pipelines.lab.sample_captions --refresh-captions ../shared/data/prompts

No two captions of the pool are near-duplicates under any of :data:`NEAR_DUPLICATE_LIMITS` (normalized
shingle Jaccard; Broder, 1997), so a caption planted once is really unique.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from copyguard.common.errors import UsageError
from copyguard.common.fileops import atomic_write
from copyguard.curation.captions import normalize_caption, shingles

__all__ = [
    "CAPTION_FILES",
    "NEAR_DUPLICATE_LIMITS",
    "CaptionPool",
    "case_variants",
    "jaccard",
    "load_caption_pool",
    "near_duplicate_pairs",
    "punct_variants",
    "refresh_captions",
    "select_distinct",
    "word_variants",
]

log = logging.getLogger(__name__)

CAPTION_FILES = {
    "coco": "captions_coco.txt",
    "laion": "captions_laion.txt",
    "memorized": "captions_laion_memorized.txt",
    "templates": "captions_laion_templates.txt",
}
# (shingle kind, n, limit): two pool captions must stay below every limit.
NEAR_DUPLICATE_LIMITS: tuple[tuple[str, int, float], ...] = (
    ("word", 1, 0.5),
    ("word", 2, 0.4),
    ("char", 5, 0.4),
)
# A word edit must keep the edited caption a near-duplicate under both of these (kind, n, minimum).
WORD_EDIT_MINIMUMS: tuple[tuple[str, int, float], ...] = (("word", 2, 0.7), ("char", 5, 0.7))
EDIT_WORDS = (
    "small", "large", "old", "young", "white", "black", "red", "blue", "green", "little",
    "big", "brown", "two", "three", "wooden", "busy", "empty", "tall", "bright", "quiet",
)  # fmt: skip
MAX_CAPTION_CHARS = 200


@dataclass(frozen=True)
class CaptionPool:
    """The shipped captions by source (see the module docstring)."""

    coco: tuple[str, ...]
    laion: tuple[str, ...]
    memorized: tuple[str, ...]
    templates: tuple[str, ...]


def _data_dir():
    return resources.files("copyguard.pipelines.lab.assets")


def load_caption_pool() -> CaptionPool:
    """Read the four shipped caption files."""
    parts = {}
    for name, filename in CAPTION_FILES.items():
        text = _data_dir().joinpath(filename).read_text(encoding="utf-8")
        parts[name] = tuple(line for line in text.splitlines() if line.strip())
    return CaptionPool(**parts)


def jaccard(a: str, b: str, kind: str = "word", n: int = 2) -> float:
    """Exact Jaccard of the normalized shingle sets of two captions."""
    sa, sb = shingles(a, n, kind), shingles(b, n, kind)
    return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


def near_duplicate_pairs(
    texts: Sequence[str], kind: str, n: int, threshold: float, chunk: int = 1024
) -> list[tuple[int, int]]:
    """All index pairs ``i < j`` whose exact shingle Jaccard is ``>= threshold`` (sparse products)."""
    import scipy.sparse as sp

    vocab: dict[bytes, int] = {}
    rows, cols = [], []
    for i, text in enumerate(texts):
        for gram in shingles(text, n, kind):
            rows.append(i)
            cols.append(vocab.setdefault(gram, len(vocab)))
    x = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(texts), len(vocab)))
    sizes = np.asarray(x.sum(axis=1)).ravel()
    xt = x.T.tocsc()
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(texts), chunk):
        inter = (x[start : start + chunk] @ xt).toarray()
        union = sizes[start : start + chunk, None] + sizes[None, :] - inter
        sim = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        for a, b in zip(*np.nonzero(sim >= threshold), strict=True):
            if start + a < b:
                pairs.append((int(start + a), int(b)))
    return pairs


def select_distinct(
    texts: Sequence[str], limits: Sequence[tuple[str, int, float]] = NEAR_DUPLICATE_LIMITS
) -> list[int]:
    """Greedily keep texts (in the given order) that are not near-duplicates of one already kept."""
    conflicts: list[set[int]] = [set() for _ in texts]
    for kind, n, limit in limits:
        for a, b in near_duplicate_pairs(texts, kind, n, limit):
            conflicts[a].add(b)
            conflicts[b].add(a)
    kept: list[int] = []
    taken: set[int] = set()
    for i in range(len(texts)):
        if not conflicts[i] & taken:
            kept.append(i)
            taken.add(i)
    return kept


def _read_prompts(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle, delimiter=";"))
    except OSError as exc:
        raise UsageError(f"cannot read prompt file {path}: {exc.strerror or exc}") from None


def _clean(caption: str) -> str | None:
    caption = " ".join((caption or "").split())
    if not caption or len(caption) > MAX_CAPTION_CHARS or not normalize_caption(caption):
        return None
    return caption


def refresh_captions(
    source_dir: str | Path,
    out_dir: str | Path | None = None,
    coco: int = 3000,
    laion: int = 300,
    seed: int = 0,
) -> dict[str, int]:
    """Rewrite the ``data/captions_*.txt`` files from the Finding-NeMo prompt CSVs in ``source_dir``.

    Captions are whitespace-collapsed, those over 200 characters dropped, each source shuffled with
    ``seed``; then taken greedily in the order templates (``TM``), memorized (``VM``), LAION, COCO while
    no near-duplicate of an earlier one (:data:`NEAR_DUPLICATE_LIMITS`), up to ``laion`` and ``coco``.
    """
    source = Path(source_dir)
    out = Path(out_dir) if out_dir is not None else Path(str(_data_dir()))
    rng = np.random.default_rng(seed)
    memorized = _read_prompts(source / "memorized_laion_prompts.csv")
    sources = {
        "templates": [r["Caption"] for r in memorized if r.get("type") == "TM"],
        "memorized": [r["Caption"] for r in memorized if r.get("type") == "VM"],
        "laion": [r["Caption"] for r in _read_prompts(source / "unmemorized_laion_prompts.csv")],
        "coco": [r["Caption"] for r in _read_prompts(source / "coco2014_val_10000.csv")],
    }
    limits = {"templates": None, "memorized": None, "laion": laion, "coco": coco}
    texts: list[str] = []
    origin: list[str] = []
    seen: set[str] = set()
    for name, captions in sources.items():
        cleaned = [c for c in (_clean(c) for c in captions) if c is not None]
        for i in rng.permutation(len(cleaned)):
            if cleaned[i] not in seen:
                seen.add(cleaned[i])
                texts.append(cleaned[i])
                origin.append(name)
    counts = dict.fromkeys(sources, 0)
    chosen: dict[str, list[str]] = {name: [] for name in sources}
    for i in select_distinct(texts):
        name = origin[i]
        limit = limits[name]
        if limit is None or counts[name] < limit:
            counts[name] += 1
            chosen[name].append(texts[i])
    for name, captions in chosen.items():
        path = out / CAPTION_FILES[name]
        atomic_write(str(path), ("\n".join(captions) + "\n").encode("utf-8"))
        log.info("wrote %d %s captions to %s", len(captions), name, path)
    return counts


def case_variants(caption: str, count: int, rng: np.random.Generator) -> list[str]:
    """Up to ``count`` distinct re-casings of ``caption`` (upper, lower, title...), none equal to it."""
    styles = [str.upper, str.lower, str.title, str.capitalize, str.swapcase]
    out: list[str] = []
    for i in rng.permutation(len(styles)):
        text = styles[int(i)](caption)
        if text != caption and text not in out and normalize_caption(text) == normalize_caption(caption):
            out.append(text)
        if len(out) == count:
            break
    return out


def _punct_edits(caption: str, rng: np.random.Generator) -> list[str]:
    words = caption.split(" ")
    base = caption.rstrip(".!?")
    comma_at = int(rng.integers(0, max(1, len(words) - 1)))
    with_comma = " ".join(w + "," if i == comma_at and w[-1:].isalnum() else w for i, w in enumerate(words))
    return [
        base if base != caption else caption + ".",
        base + "!",
        base + "...",
        f'"{caption}"',
        with_comma,
        "- " + caption,
        base + "?!",
    ]


def punct_variants(caption: str, count: int, rng: np.random.Generator) -> list[str]:
    """Up to ``count`` distinct punctuation edits (added or removed at word boundaries only)."""
    edits = _punct_edits(caption, rng)
    out: list[str] = []
    for i in rng.permutation(len(edits)):
        text = edits[int(i)]
        if text != caption and text not in out and normalize_caption(text) == normalize_caption(caption):
            out.append(text)
        if len(out) == count:
            break
    return out


def _keeps_near(original: str, edited: str) -> bool:
    return all(jaccard(original, edited, kind, n) >= low for kind, n, low in WORD_EDIT_MINIMUMS)


def word_variants(caption: str, count: int, rng: np.random.Generator) -> list[str]:
    """Up to ``count`` distinct one-word edits (insert, delete or substitute a word) of ``caption``.

    Each edit keeps the caption a near-duplicate: word-bigram and character-5-gram Jaccard with the
    original stay >= 0.7 (:data:`WORD_EDIT_MINIMUMS`). Meant for captions of at least 8 words.
    """
    words = caption.split(" ")
    candidates: list[list[str]] = []
    for pos in range(len(words) + 1):
        for new in EDIT_WORDS:
            candidates.append(words[:pos] + [new] + words[pos:])
    for pos in range(len(words)):
        candidates.append(words[:pos] + words[pos + 1 :])
        for new in EDIT_WORDS:
            if new != words[pos].lower():
                candidates.append(words[:pos] + [new] + words[pos + 1 :])
    out: list[str] = []
    norms = {normalize_caption(caption)}
    for i in rng.permutation(len(candidates)):
        text = " ".join(candidates[int(i)])
        norm = normalize_caption(text)
        if norm and norm not in norms and _keeps_near(caption, text):
            out.append(text)
            norms.add(norm)
        if len(out) == count:
            break
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the shipped sample-data caption pool.")
    parser.add_argument("--refresh-captions", metavar="PROMPTS_DIR", required=True)
    parser.add_argument("--coco", type=int, default=3000)
    parser.add_argument("--laion", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        counts = refresh_captions(args.refresh_captions, coco=args.coco, laion=args.laion, seed=args.seed)
    except UsageError as exc:
        log.error("error: %s", exc)
        return 2
    log.info("caption pool: %s", counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
