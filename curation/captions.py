"""Near-duplicate captions: shingles, MinHash signatures, LSH band keys, bucket edges, groups.

Captions are compared on the word shingles of their canonical form
(:mod:`copyguard.curation.caption_canon`: case, punctuation, whitespace, articles and stop words, tag order,
product numbers and codes folded away), so meaning-preserving edits merge and a one-word content change in
a short caption does not. MinHash (Broder, "On the resemblance and containment of documents", 1997)
estimates the shingle Jaccard; LSH banding (Indyk & Motwani 1998; Leskovec, Rajaraman & Ullman, *Mining of
Massive Datasets*, ch. 3) turns it into candidate buckets; candidates are verified with the exact Jaccard.
``CaptionCanon(canonical=False)`` restores the plain scheme (normalized text, ``shingle_kind``/``shingle_n``).

The Beam shell runs these per element: each caption emits ``(band, band_hash)`` keys from
:func:`band_keys`; a GroupByKey on them gives candidate buckets; :func:`bucket_edges` turns a bucket into
star edges to its smallest key (optionally verified with the exact shingle Jaccard); connected components
(:func:`copyguard.curation.union_find.connected_components`) give the caption groups.
:func:`caption_groups` does all of it in memory for small inputs and tests.

Signatures are identical across processes: datasketch hashes shingles with SHA-1 and draws its permutations
from ``numpy.random.RandomState(seed)``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections.abc import Hashable, Iterable, Sequence
from functools import lru_cache

import numpy as np
from datasketch import MinHash
from datasketch.lsh import _optimal_param

from copyguard.curation.caption_canon import CaptionCanon, canonical_shingles
from copyguard.curation.config import MinHashConfig
from copyguard.curation.union_find import connected_components

__all__ = [
    "band_keys",
    "bucket_edges",
    "caption_groups",
    "caption_shingles",
    "exact_jaccard",
    "jaccard",
    "lsh_params",
    "minhash_signature",
    "minhash_signatures",
    "normalize_caption",
    "set_jaccard",
    "shingles",
    "star_edges",
]

log = logging.getLogger(__name__)

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_SPACES = re.compile(r"\s+", re.UNICODE)


def normalize_caption(text: str) -> str:
    """Unicode NFKC, lowercase, punctuation (and ``_``) to spaces, whitespace collapsed and stripped."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _NON_WORD.sub(" ", text).strip()


def shingles(text: str, n: int = 5, kind: str = "char", normalize: bool = True) -> set[bytes]:
    """UTF-8 shingles of ``text``: word n-grams (``kind="word"``) or character n-grams (``"char"``).

    A text shorter than ``n`` (words or characters) gives one shingle, the whole text, so short captions
    still compare. A caption that is only punctuation keeps its NFKC-lowercased form instead of becoming
    empty (``"!!!"`` and ``"???"`` stay different); an empty text gives the empty set.
    """
    if n < 1:
        raise ValueError(f"shingle length must be >= 1, got {n}")
    norm = normalize_caption(text) if normalize else text
    if not norm:
        norm = _SPACES.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()
        if not norm:
            return set()
    if kind == "word":
        words = norm.split(" ")
        if len(words) <= n:
            return {norm.encode("utf-8")}
        return {" ".join(words[k : k + n]).encode("utf-8") for k in range(len(words) - n + 1)}
    if kind == "char":
        if len(norm) <= n:
            return {norm.encode("utf-8")}
        return {norm[k : k + n].encode("utf-8") for k in range(len(norm) - n + 1)}
    raise ValueError(f"shingle kind must be 'word' or 'char', got {kind!r}")


def caption_shingles(text: str, cfg: MinHashConfig, canon: CaptionCanon | None = None) -> set[bytes]:
    """The shingles a caption is compared on: canonical word n-grams, or the plain scheme when disabled.

    ``canon`` defaults to the switches ``cfg`` carries (:meth:`CaptionCanon.from_config`).
    """
    canon = canon or CaptionCanon.from_config(cfg)
    if canon.canonical:
        return canonical_shingles(text, canon)
    return shingles(text, cfg.shingle_n, cfg.shingle_kind)


@lru_cache(maxsize=8)
def _template(num_perm: int, seed: int) -> MinHash:
    # Building the permutations costs more than hashing a caption: build once, copy per caption.
    return MinHash(num_perm=num_perm, seed=seed)


def minhash_signature(
    text: str, cfg: MinHashConfig | None = None, canon: CaptionCanon | None = None
) -> np.ndarray:
    """MinHash signature (``uint64[num_perm]``) of :func:`caption_shingles` (datasketch, SHA-1 hashing)."""
    cfg = cfg or MinHashConfig()
    mh = _template(cfg.num_perm, cfg.seed).copy()
    mh.update_batch(caption_shingles(text, cfg, canon))
    return np.asarray(mh.hashvalues, dtype=np.uint64)


def minhash_signatures(
    texts: Iterable[str], cfg: MinHashConfig | None = None, canon: CaptionCanon | None = None
) -> np.ndarray:
    """Signatures of many captions, ``uint64[N, num_perm]``."""
    cfg = cfg or MinHashConfig()
    rows = [minhash_signature(t, cfg, canon) for t in texts]
    if not rows:
        return np.zeros((0, cfg.num_perm), dtype=np.uint64)
    return np.stack(rows)


@lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """``(bands, rows)`` for a Jaccard ``threshold``: datasketch's own choice.

    This is ``datasketch.lsh._optimal_param`` with ``MinHashLSH``'s default weights (0.5, 0.5): the
    ``(b, r)`` with ``b * r <= num_perm`` that minimizes the equally weighted areas of false positives
    below and false negatives above the threshold of the S-curve ``1 - (1 - s^r)^b``.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"LSH threshold must be in (0, 1), got {threshold}")
    bands, rows = _optimal_param(threshold, num_perm, 0.5, 0.5)
    return int(bands), int(rows)


def band_keys(signature: np.ndarray, bands: int, rows: int) -> list[tuple[int, bytes]]:
    """``[(band, 16-byte blake2b of the band's rows)]``: a caption's LSH buckets.

    Two captions share a bucket when all ``rows`` values of one band agree. Values are hashed as
    little-endian uint64, so keys are identical on every platform.
    """
    sig = np.asarray(signature, dtype="<u8")
    if bands * rows > sig.shape[0]:
        raise ValueError(
            f"{bands} bands x {rows} rows need {bands * rows} values, signature has {sig.shape[0]}"
        )
    return [
        (b, hashlib.blake2b(sig[b * rows : (b + 1) * rows].tobytes(), digest_size=16).digest())
        for b in range(bands)
    ]


def jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """MinHash estimate of the Jaccard similarity: the fraction of equal signature values."""
    a, b = np.asarray(sig_a), np.asarray(sig_b)
    if a.shape != b.shape:
        raise ValueError(f"signatures differ in length: {a.shape} vs {b.shape}")
    return float(np.mean(a == b)) if a.size else 0.0


def exact_jaccard(
    text_a: str, text_b: str, cfg: MinHashConfig | None = None, canon: CaptionCanon | None = None
) -> float:
    """Exact Jaccard similarity of the two captions' shingle sets (1.0 for two empty sets)."""
    cfg = cfg or MinHashConfig()
    return set_jaccard(caption_shingles(text_a, cfg, canon), caption_shingles(text_b, cfg, canon))


def set_jaccard(a: set[bytes], b: set[bytes]) -> float:
    """Jaccard similarity of two shingle sets (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def star_edges(bucket_keys: Iterable[str], max_bucket_size: int | None = None) -> list[tuple[str, str]]:
    """Edges ``(member, smallest key)`` for every other member of one LSH bucket: ``n - 1`` edges, not all pairs.

    A star is linear, so a giant bucket (a templated caption repeated over thousands of images) is still
    linked, which is what lets the policy see the template; beyond ``max_bucket_size`` a warning is logged.
    """
    members = sorted(set(bucket_keys))
    if len(members) < 2:
        return []
    if max_bucket_size is not None and len(members) > max_bucket_size:
        log.warning(
            "LSH bucket of %d captions exceeds max_bucket_size=%d (a templated caption?); "
            "linking it as a star to %r",
            len(members),
            max_bucket_size,
            members[0],
        )
    root = members[0]
    return [(key, root) for key in members[1:]]


def bucket_edges(
    members: Iterable[tuple[str, str]],
    cfg: MinHashConfig | None = None,
    canon: CaptionCanon | None = None,
    memo: dict[str, set[bytes]] | None = None,
) -> list[tuple[str, str]]:
    """Candidate edges of one LSH bucket of ``(key, caption)`` pairs, verified when ``cfg.verify``.

    Without verification: :func:`star_edges`. With it, members in key order are compared with the exact
    shingle Jaccard to the bucket's leaders (the members that matched no earlier leader) and linked to the
    first leader reaching ``verify_threshold``; a member matching none becomes a leader. This keeps a bucket
    that holds two different captions (an LSH false positive) apart at ``O(n * leaders)`` cost. Buckets over
    ``max_bucket_size`` are checked against the smallest key only (``O(n)``); members failing that check get
    no edge from this bucket (the other bands still link them to true matches). ``memo`` (caption ->
    shingles) lets a caller that sees a caption in many buckets shingle it once.
    """
    cfg = cfg or MinHashConfig()
    by_key = dict(sorted(dict(members).items()))
    keys = list(by_key)
    if len(keys) < 2:
        return []
    if not cfg.verify:
        return star_edges(keys, cfg.max_bucket_size)
    giant = len(keys) > cfg.max_bucket_size
    if giant:
        log.warning(
            "LSH bucket of %d captions exceeds max_bucket_size=%d (a templated caption?); "
            "verifying against its smallest key %r only",
            len(keys),
            cfg.max_bucket_size,
            keys[0],
        )
    canon = canon or CaptionCanon.from_config(cfg)
    shingle_of = memo if memo is not None else {}
    for text in by_key.values():
        if text not in shingle_of:
            shingle_of[text] = caption_shingles(text, cfg, canon)
    leaders: list[tuple[str, set[bytes]]] = [(keys[0], shingle_of[by_key[keys[0]]])]
    edges = []
    for key in keys[1:]:
        sh = shingle_of[by_key[key]]
        for leader, leader_sh in leaders:
            if set_jaccard(sh, leader_sh) >= cfg.verify_threshold:
                edges.append((key, leader))
                break
        else:
            if not giant:
                leaders.append((key, sh))
    return edges


def caption_groups(
    keys: Sequence[Hashable],
    captions: Sequence[str],
    cfg: MinHashConfig | None = None,
    canon: CaptionCanon | None = None,
) -> dict[Hashable, Hashable]:
    """In-memory caption dedup: ``{key: group key}`` (the smallest key of its near-duplicate group).

    The same steps the Beam pipeline distributes: signature, band keys, buckets, bucket edges, components.
    """
    cfg = cfg or MinHashConfig()
    if len(keys) != len(captions):
        raise ValueError(f"{len(keys)} keys but {len(captions)} captions")
    bands, rows = lsh_params(cfg.threshold, cfg.num_perm)
    buckets: dict[tuple[int, bytes], list[tuple[Hashable, str]]] = {}
    for key, text in zip(keys, captions, strict=True):
        for band_key in band_keys(minhash_signature(text, cfg, canon), bands, rows):
            buckets.setdefault(band_key, []).append((key, text))
    edges = []
    memo: dict[str, set[bytes]] = {}
    for bucket in buckets.values():
        if len(bucket) > 1:
            edges.extend(bucket_edges(bucket, cfg, canon, memo))
    return connected_components(keys, edges)
