"""WebDataset shard I/O: a streaming reader that never crashes on bad data (the writer: shard_writer.py).

A shard is a tar whose members are grouped into samples by key: ``abc.jpg``, ``abc.txt`` and an optional
``abc.json`` form sample ``abc`` (the WebDataset convention: the key is the member path up to the first dot
of its base name). The reader turns every problem into a :class:`~copyguard.curation.records.Rejection`
with a reason, and gives every tar member a fate: each non-directory member is counted in exactly one
record's ``members``. Rules, in order:

* Adjacent members with one key form one sample; a member whose extension the sample already has starts
  a new sample with the same key (``k.jpg k.txt k.jpg k.txt`` is two samples, never an overwrite).
* The first sample of a key in a shard owns the key; every later one is a ``duplicate_key`` rejection.
* Limits are checked from the tar header before a byte is read (``member_too_large``,
  ``caption_too_long``, oversize ``.json``: ``bad_metadata``); a skipped member is never read whole.
* A member name that is not UTF-8 is ``non_utf8_name``, under a stable escaped key (``caf\\xe9``), since
  Beam coders, Parquet and JSON all need text keys.
* Images must be an allowed format within ``max_pixels`` (:mod:`copyguard.curation.images`).
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import logging
import lzma
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from copyguard.common.fileops import FileOps, LocalFileOps, expand_paths
from copyguard.curation.config import DEFAULT_MAX_PIXELS
from copyguard.curation.images import ImageDecodeError, image_size
from copyguard.curation.records import (
    CAPTION_EXTENSIONS,
    IMAGE_EXTENSIONS,
    Rejection,
    RejectReason,
    Sample,
)
from copyguard.curation.shard_writer import ShardWriter, sample_members

__all__ = [
    "DEFAULT_MAX_CAPTION_BYTES",
    "DEFAULT_MAX_MEMBER_BYTES",
    "DEFAULT_MAX_METADATA_BYTES",
    "ReadLimits",
    "ShardWriter",
    "escape_key",
    "iter_samples",
    "read_shard",
    "read_shard_file",
    "sample_members",
    "shard_key",
    "split_member_name",
]

log = logging.getLogger(__name__)

# Largest tar member read into memory (the image of one sample); larger members are skipped unread.
DEFAULT_MAX_MEMBER_BYTES = 64 * 1024 * 1024
# Largest caption member; captions land in manifests and reports.
DEFAULT_MAX_CAPTION_BYTES = 8 * 1024
# Largest ``.json`` metadata member.
DEFAULT_MAX_METADATA_BYTES = 1024 * 1024
# The extensions whose bytes a sample uses; other members are counted but never read.
_USED = frozenset((*IMAGE_EXTENSIONS, *CAPTION_EXTENSIONS, "json"))


@dataclass(frozen=True)
class ReadLimits:
    """What the reader accepts. ``verify_images=False`` checks image headers only (format, pixel limit)
    and leaves the full decode to a consumer that decodes anyway (the trainer)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    max_caption_bytes: int = DEFAULT_MAX_CAPTION_BYTES
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES
    verify_images: bool = True


def split_member_name(name: str) -> tuple[str, str]:
    """Split a member path into ``(key, extension)`` at the first dot of the base name."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{head}/{stem}" if head else stem
    return key, ext.lower() if dot else ""


def escape_key(text: str) -> str:
    """``text`` as valid UTF-8 text: bytes that tarfile could not decode (surrogate escapes) become
    ``\\xNN``; any other lone surrogate becomes ``\\udNNN``. Text that is already UTF-8 is unchanged."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _is_unsafe(name: str) -> bool:
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return True
    parts = re.split(r"[/\\]", name)
    return any(p == ".." for p in parts)


def shard_key(shard: str) -> str:
    """The manifest key used for a rejection that concerns a whole shard (empty, unreadable)."""
    return f"shard:{os.path.basename(shard.rstrip('/'))}"


class _Prefixed(io.RawIOBase):
    """A read-only stream that yields ``head`` and then the rest of ``stream`` (a peek without seeking)."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head = head
        self._stream = stream

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0:
                out, self._head = self._head + self._stream.read(), b""
                return out
            out, self._head = self._head[:size], self._head[size:]
            if len(out) < size:
                out += self._stream.read(size - len(out))
            return out
        return self._stream.read(size)


def _decompressed(head: bytes, stream: BinaryIO) -> BinaryIO:
    """The shard's tar bytes. Compressed shards go through the standard library's streaming readers
    (bounded buffers), not tarfile's ``r|*`` stream, whose skip over a highly compressed member copies its
    whole decompressed buffer once per 10 KB record. Closing the reader leaves ``stream`` open."""
    source: Any = _Prefixed(head, stream)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=source, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(source, "rb")
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(source, "rb")
    return source


@dataclass
class _Group:
    """The members of one sample as they are read; ``problem`` is the first member-level rejection."""

    key: str
    parts: dict[str, bytes] = field(default_factory=dict)
    exts: set[str] = field(default_factory=set)
    members: int = 0
    problem: tuple[RejectReason, str] | None = None


def _member_problem(member: tarfile.TarInfo, ext: str, limits: ReadLimits) -> tuple[RejectReason, str] | None:
    """A rejection decided from the member's header alone (nothing read yet), or None."""
    shown = escape_key(member.name)
    if shown != member.name:
        raw = member.name.encode("utf-8", "surrogateescape")
        return RejectReason.NON_UTF8_NAME, f"member name is not UTF-8: {raw!r}"
    if _is_unsafe(member.name):
        return RejectReason.UNSAFE_MEMBER_NAME, f"unsafe member name {shown!r}"
    if not member.isfile():
        return RejectReason.UNSAFE_MEMBER_NAME, f"member {shown!r} is a link or device, not a regular file"
    if member.size > limits.max_member_bytes:
        return (
            RejectReason.MEMBER_TOO_LARGE,
            f"member {shown!r} is {member.size} bytes, over max_member_bytes={limits.max_member_bytes}",
        )
    if ext in CAPTION_EXTENSIONS and member.size > limits.max_caption_bytes:
        return (
            RejectReason.CAPTION_TOO_LONG,
            f"caption is {member.size} bytes, over max_caption_bytes={limits.max_caption_bytes}",
        )
    if ext == "json" and member.size > limits.max_metadata_bytes:
        return (
            RejectReason.BAD_METADATA,
            f"metadata .json is {member.size} bytes, over max_metadata_bytes={limits.max_metadata_bytes}",
        )
    return None


def _finish(group: _Group, shard: str, seen: set[str], limits: ReadLimits) -> Sample | Rejection:
    key = group.key
    first = key not in seen
    seen.add(key)

    def reject(reason: RejectReason, detail: str) -> Rejection:
        return Rejection(key=key, reason=reason, shard=shard, detail=detail, members=group.members)

    if group.problem is not None:
        return reject(*group.problem)
    if not first:
        return reject(RejectReason.DUPLICATE_KEY, f"key '{key}' occurs more than once in {shard}")
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in group.parts), None)
    caption_ext = next((e for e in CAPTION_EXTENSIONS if e in group.parts), None)
    empty = sorted(ext for ext, data in group.parts.items() if not data)
    if empty:
        return reject(
            RejectReason.EMPTY_FILE, f"zero-byte member(s): {', '.join(f'{key}.{e}' for e in empty)}"
        )
    if image_ext is None:
        return reject(RejectReason.MISSING_IMAGE, f"no image member (one of {', '.join(IMAGE_EXTENSIONS)})")
    if caption_ext is None:
        return reject(RejectReason.MISSING_CAPTION, "no caption member (.txt)")
    try:
        caption = group.parts[caption_ext].decode("utf-8")
    except UnicodeDecodeError as exc:
        return reject(
            RejectReason.NON_UTF8_CAPTION, f"caption is not UTF-8: {exc.reason} at byte {exc.start}"
        )
    caption = " ".join(caption.split())
    if not caption:
        return reject(RejectReason.EMPTY_CAPTION, "caption is empty or whitespace")
    metadata: dict = {}
    if "json" in group.parts:
        try:
            metadata = json.loads(group.parts["json"].decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            return reject(RejectReason.BAD_METADATA, f"metadata .json does not parse: {exc}")
        if not isinstance(metadata, dict):
            return reject(RejectReason.BAD_METADATA, "metadata .json is not an object")
    image = group.parts[image_ext]
    try:
        width, height = image_size(image, limits.max_pixels, load=limits.verify_images)
    except ImageDecodeError as exc:
        return reject(exc.reason, exc.detail)
    return Sample(
        key=key,
        caption=caption,
        image=image,
        image_ext=image_ext,
        width=width,
        height=height,
        shard=shard,
        metadata=metadata,
        members=group.members,
    )


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    data = handle.read(member.size) if handle is not None else b""
    if len(data) != member.size:
        raise EOFError(f"member {escape_key(member.name)!r} is cut short")
    return data


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def read_shard(
    stream: BinaryIO,
    shard: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    max_caption_bytes: int = DEFAULT_MAX_CAPTION_BYTES,
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES,
    verify_images: bool = True,
) -> Iterator[Sample | Rejection]:
    """Stream the samples of one tar shard (plain or compressed) from a file object.

    Never raises for bad data: a corrupt member, a missing caption or image, non-UTF-8 text or names, an
    image that fails to decode, is not an allowed format or exceeds ``max_pixels``, a member over
    ``max_member_bytes`` (a caption over ``max_caption_bytes``, metadata over ``max_metadata_bytes``), a
    path-traversal member name, a duplicated key, an empty or truncated tar each become a
    :class:`Rejection` (see the module docstring for the rules). Samples read before a truncation are kept.
    """
    limits = ReadLimits(max_pixels, max_member_bytes, max_caption_bytes, max_metadata_bytes, verify_images)
    seen: set[str] = set()
    group: _Group | None = None
    produced = 0
    head = stream.read(512)
    if not head:
        yield Rejection(shard_key(shard), RejectReason.EMPTY_SHARD, shard, "shard is a zero-byte file")
        return
    source = _decompressed(head, stream)
    try:
        tar = tarfile.open(fileobj=source, mode="r|", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115 - closed below
    except Exception as exc:  # tarfile and the decompressors raise many types for hostile input
        source.close()
        yield Rejection(
            shard_key(shard), RejectReason.CORRUPT_TAR, shard, f"not a readable tar: {_describe(exc)}"
        )
        return
    members = iter(tar)
    broken: BaseException | None = None
    try:
        while True:
            try:
                member = next(members, None)
            except Exception as exc:
                broken = exc
                break
            if member is None:
                break
            if member.isdir():  # structure, not content: not counted
                continue
            raw_key, ext = split_member_name(member.name)
            key = escape_key(raw_key)
            if group is None or key != group.key or ext in group.exts:
                if group is not None:
                    produced += 1
                    yield _finish(group, shard, seen, limits)
                group = _Group(key)
            group.exts.add(ext)
            group.members += 1
            if group.problem is not None:
                continue  # the sample is rejected already: its other members are skipped unread
            group.problem = _member_problem(member, ext, limits)
            if group.problem is not None or ext not in _USED:
                continue
            try:
                group.parts[ext] = _read_member(tar, member)
            except Exception as exc:
                broken = exc
                break
    finally:
        tar.close()
        source.close()
    if broken is not None:
        detail = f"tar is truncated or corrupt: {_describe(broken)}"
        if group is not None:
            yield Rejection(group.key, RejectReason.TRUNCATED_TAR, shard, detail, group.members)
        else:
            yield Rejection(shard_key(shard), RejectReason.TRUNCATED_TAR, shard, detail)
        return
    if group is not None:
        produced += 1
        yield _finish(group, shard, seen, limits)
    if produced == 0:
        yield Rejection(shard_key(shard), RejectReason.EMPTY_SHARD, shard, "shard holds no samples")


def read_shard_file(
    path: str, max_pixels: int = DEFAULT_MAX_PIXELS, fs: FileOps | None = None, **limits: int
) -> Iterator[Sample | Rejection]:
    """:func:`read_shard` on a path opened through ``fs`` (local by default); ``limits``: its keywords."""
    fs = fs or LocalFileOps()
    try:
        stream = fs.open(path)
    except OSError as exc:
        yield Rejection(shard_key(path), RejectReason.CORRUPT_TAR, path, f"cannot open shard: {exc}")
        return
    with stream:
        yield from read_shard(stream, path, max_pixels, **limits)


def iter_samples(
    patterns: str | list[str], max_pixels: int = DEFAULT_MAX_PIXELS, **limits: int
) -> Iterator[Sample | Rejection]:
    """All records of the local shards matching ``patterns`` (globs, comma-separated), in sorted order."""
    for path in expand_paths(patterns):
        yield from read_shard_file(path, max_pixels, **limits)
