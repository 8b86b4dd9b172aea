"""WebDataset shard I/O: a streaming reader that never crashes on bad data, and an atomic rolling writer.

A shard is a tar whose members are grouped into samples by key: ``abc.jpg``, ``abc.txt`` and an optional
``abc.json`` form sample ``abc`` (the WebDataset convention: the key is the member path up to the first dot
of its base name). The reader turns every problem into a :class:`~copyguard.curation.records.Rejection`
with a reason, so every input sample is accounted for.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from copyguard.curation.fileops import FileOps, LocalFileOps, expand_paths, temp_name
from copyguard.curation.images import DEFAULT_MAX_PIXELS, ImageDecodeError, image_size
from copyguard.curation.records import (
    CAPTION_EXTENSIONS,
    IMAGE_EXTENSIONS,
    Rejection,
    RejectReason,
    Sample,
)

__all__ = [
    "ShardWriter",
    "iter_samples",
    "read_shard",
    "read_shard_file",
    "sample_members",
    "shard_key",
    "split_member_name",
]

log = logging.getLogger(__name__)

_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, ValueError)


def split_member_name(name: str) -> tuple[str, str]:
    """Split a member path into ``(key, extension)`` at the first dot of the base name."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{head}/{stem}" if head else stem
    return key, ext.lower() if dot else ""


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


@dataclass
class _Group:
    key: str
    parts: dict[str, bytes] = field(default_factory=dict)
    unsafe: str = ""


def _finish(group: _Group, shard: str, seen: set[str], max_pixels: int) -> Sample | Rejection:
    key = group.key

    def reject(reason: RejectReason, detail: str) -> Rejection:
        return Rejection(key=key, reason=reason, shard=shard, detail=detail)

    if group.unsafe:
        return reject(RejectReason.UNSAFE_MEMBER_NAME, group.unsafe)
    if key in seen:
        return reject(RejectReason.DUPLICATE_KEY, f"key '{key}' occurs more than once in {shard}")
    seen.add(key)
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
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return reject(RejectReason.BAD_METADATA, f"metadata .json does not parse: {exc}")
        if not isinstance(metadata, dict):
            return reject(RejectReason.BAD_METADATA, "metadata .json is not an object")
    image = group.parts[image_ext]
    try:
        width, height = image_size(image, max_pixels)
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
    )


def read_shard(
    stream: BinaryIO, shard: str, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Iterator[Sample | Rejection]:
    """Stream the samples of one tar shard (plain or gzip) from a file object.

    Never raises for bad data: a corrupt member, a missing caption or image, non-UTF-8 text, an image that
    fails to decode or exceeds ``max_pixels``, a path-traversal member name, a duplicated key, an empty or
    truncated tar each become a :class:`Rejection`. Samples already read before a truncation are kept.
    """
    seen: set[str] = set()
    group: _Group | None = None
    produced = 0
    head = stream.read(512)
    if not head:
        yield Rejection(shard_key(shard), RejectReason.EMPTY_SHARD, shard, "shard is a zero-byte file")
        return
    try:
        tar = tarfile.open(fileobj=_Prefixed(head, stream), mode="r|*")  # noqa: SIM115 - closed below
    except _READ_ERRORS as exc:
        yield Rejection(shard_key(shard), RejectReason.CORRUPT_TAR, shard, f"not a readable tar: {exc}")
        return
    try:
        for member in tar:
            if member.isdir():
                continue
            key, ext = split_member_name(member.name)
            if group is None or key != group.key:
                if group is not None:
                    produced += 1
                    yield _finish(group, shard, seen, max_pixels)
                group = _Group(key)
            if _is_unsafe(member.name):
                group.unsafe = f"unsafe member name {member.name!r}"
                continue
            if not member.isfile():
                group.unsafe = f"member {member.name!r} is a link or device, not a regular file"
                continue
            handle = tar.extractfile(member)
            data = handle.read() if handle is not None else b""
            if len(data) != member.size:
                raise EOFError(f"member {member.name!r} is cut short")
            group.parts[ext] = data
    except _READ_ERRORS as exc:
        detail = f"tar is truncated or corrupt: {exc}"
        if group is not None:
            produced += 1
            yield Rejection(group.key, RejectReason.TRUNCATED_TAR, shard, detail)
        else:
            produced += 1
            yield Rejection(shard_key(shard), RejectReason.TRUNCATED_TAR, shard, detail)
        return
    finally:
        tar.close()
    if group is not None:
        produced += 1
        yield _finish(group, shard, seen, max_pixels)
    if produced == 0:
        yield Rejection(shard_key(shard), RejectReason.EMPTY_SHARD, shard, "shard holds no samples")


def read_shard_file(
    path: str, max_pixels: int = DEFAULT_MAX_PIXELS, fs: FileOps | None = None
) -> Iterator[Sample | Rejection]:
    """:func:`read_shard` on a path opened through ``fs`` (local by default)."""
    fs = fs or LocalFileOps()
    try:
        stream = fs.open(path)
    except OSError as exc:
        yield Rejection(shard_key(path), RejectReason.CORRUPT_TAR, path, f"cannot open shard: {exc}")
        return
    with stream:
        yield from read_shard(stream, path, max_pixels)


def iter_samples(
    patterns: str | list[str], max_pixels: int = DEFAULT_MAX_PIXELS
) -> Iterator[Sample | Rejection]:
    """All records of the local shards matching ``patterns`` (globs, comma-separated), in sorted order."""
    for path in expand_paths(patterns):
        yield from read_shard_file(path, max_pixels)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0  # deterministic bytes: same samples give the same shard
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def sample_members(sample: Sample) -> list[tuple[str, bytes]]:
    """The tar members of a sample: image, caption and (when present) metadata."""
    members = [
        (f"{sample.key}.{sample.image_ext}", sample.image),
        (f"{sample.key}.txt", sample.caption.encode("utf-8")),
    ]
    if sample.metadata:
        members.append((f"{sample.key}.json", json.dumps(sample.metadata, sort_keys=True).encode("utf-8")))
    return members


class ShardWriter:
    """Write samples into ``{prefix}-{index:06d}.tar`` shards, rolling by sample count or bytes.

    Each shard is written under a hidden temporary name and renamed only when complete, so a reader
    globbing ``*.tar`` never sees a partial shard. Use as a context manager; :attr:`paths` lists the
    shards written so far.
    """

    def __init__(
        self,
        directory: str,
        prefix: str = "shard",
        max_count: int = 1000,
        max_bytes: int = 256 * 1024 * 1024,
        fs: FileOps | None = None,
        start_index: int = 0,
    ) -> None:
        if max_count < 1 or max_bytes < 1:
            raise ValueError("max_count and max_bytes must be positive")
        self.directory = directory
        self.prefix = prefix
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.fs = fs or LocalFileOps()
        self.index = start_index
        self.paths: list[str] = []
        self._stream: BinaryIO | None = None
        self._tar: tarfile.TarFile | None = None
        self._tmp = ""
        self._final = ""
        self._count = 0
        self._bytes = 0
        self.fs.makedirs(directory)

    def _open(self) -> None:
        self._final = self.fs.join(self.directory, f"{self.prefix}-{self.index:06d}.tar")
        self._tmp = temp_name(self._final)
        self._stream = self.fs.create(self._tmp)
        self._tar = tarfile.open(fileobj=self._stream, mode="w|", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self._count = self._bytes = 0
        self.index += 1

    def _close_current(self) -> None:
        if self._tar is None or self._stream is None:
            return
        self._tar.close()
        self._stream.close()
        self.fs.rename(self._tmp, self._final)
        self.paths.append(self._final)
        log.debug("wrote %s (%d samples, %d bytes)", self._final, self._count, self._bytes)
        self._tar = self._stream = None

    def write(self, sample: Sample) -> None:
        members = sample_members(sample)
        size = sum(512 + (len(data) + 511) // 512 * 512 for _, data in members)
        if self._tar is not None and (self._count >= self.max_count or self._bytes + size > self.max_bytes):
            self._close_current()
        if self._tar is None:
            self._open()
        assert self._tar is not None
        for name, data in members:
            self._tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
        self._count += 1
        self._bytes += size

    def write_all(self, samples: Iterable[Sample]) -> list[str]:
        for sample in samples:
            self.write(sample)
        return self.paths

    def close(self) -> list[str]:
        self._close_current()
        return self.paths

    def abort(self) -> None:
        """Drop the shard in progress (its temporary file is removed); finished shards stay."""
        if self._tar is not None and self._stream is not None:
            try:
                self._tar.close()
            finally:
                self._stream.close()
                self.fs.delete(self._tmp)
        self._tar = self._stream = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
