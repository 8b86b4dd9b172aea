"""File access behind a tiny protocol, so curation code stays free of Beam.

Locally :class:`LocalFileOps` uses the OS. The Beam jobs pass an implementation backed by
``apache_beam.io.filesystems.FileSystems`` so the same writers work on ``gs://`` and ``s3://``.
Every final file is written to a temporary name first and renamed when complete (:func:`atomic_write`),
so no half-written file is ever visible at a final path.
"""

from __future__ import annotations

import glob
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO, Protocol

__all__ = ["FileOps", "LocalFileOps", "atomic_write", "atomic_create", "expand_paths", "temp_name"]


class FileOps(Protocol):
    def open(self, path: str) -> BinaryIO: ...

    def create(self, path: str) -> BinaryIO: ...

    def rename(self, src: str, dst: str) -> None: ...

    def delete(self, path: str) -> None: ...

    def exists(self, path: str) -> bool: ...

    def makedirs(self, path: str) -> None: ...

    def join(self, base: str, *parts: str) -> str: ...

    def match(self, pattern: str) -> list[str]: ...


class LocalFileOps:
    """:class:`FileOps` on the local filesystem."""

    def open(self, path: str) -> BinaryIO:
        return open(path, "rb")

    def create(self, path: str) -> BinaryIO:
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        return open(path, "wb")

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def delete(self, path: str) -> None:
        if os.path.exists(path):
            os.remove(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def join(self, base: str, *parts: str) -> str:
        return os.path.join(base, *parts)

    def match(self, pattern: str) -> list[str]:
        return expand_paths(pattern)


def temp_name(path: str) -> str:
    """A hidden sibling name for ``path`` that readers matching ``*.tar`` will not pick up."""
    head, _, tail = path.rpartition("/")
    prefix = f"{head}/" if head else ""
    return f"{prefix}.{tail}.tmp-{uuid.uuid4().hex[:12]}"


@contextmanager
def atomic_create(path: str, fs: FileOps | None = None) -> Iterator[BinaryIO]:
    """Yield a writable stream; on success it is renamed to ``path``, on error the temp file is removed."""
    fs = fs or LocalFileOps()
    tmp = temp_name(path)
    stream = fs.create(tmp)
    try:
        yield stream
        stream.close()
        fs.rename(tmp, path)
    except BaseException:
        stream.close()
        fs.delete(tmp)
        raise


def atomic_write(
    path: str, data: bytes | str | Callable[[BinaryIO], None], fs: FileOps | None = None
) -> None:
    """Write ``data`` (bytes, text, or a callback that writes to the stream) to ``path`` atomically."""
    with atomic_create(path, fs) as stream:
        if callable(data):
            data(stream)
        else:
            stream.write(data.encode("utf-8") if isinstance(data, str) else data)


def expand_paths(patterns: str | list[str]) -> list[str]:
    """Expand local globs (comma-separated or a list) into a sorted, de-duplicated list of files."""
    items = [patterns] if isinstance(patterns, str) else list(patterns)
    found: set[str] = set()
    for item in items:
        for pat in (p.strip() for p in item.split(",")):
            if not pat:
                continue
            matches = glob.glob(os.path.expanduser(pat))
            found.update(m for m in matches if os.path.isfile(m))
    return sorted(found)
