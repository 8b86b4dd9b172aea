"""The atomic rolling shard writer: :class:`ShardWriter` and the member layout of a sample.

Members are written as USTAR when they fit (so ordinary shards are byte-identical to earlier releases)
and as PAX when they do not: a key longer than USTAR's 100 (+155 prefix) characters is a valid sample of
a PAX or GNU input shard and must survive being written back.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Iterable
from typing import BinaryIO

from copyguard.common.fileops import FileOps, LocalFileOps, temp_name
from copyguard.curation.records import Sample

__all__ = ["ShardWriter", "sample_members"]

log = logging.getLogger(__name__)

# Tar names are UTF-8; a name that is not (only possible for keys made outside the reader) round-trips.
_ENCODING, _ERRORS = "utf-8", "surrogateescape"


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0  # deterministic bytes: same samples give the same shard
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _member_format(info: tarfile.TarInfo) -> int:
    """USTAR when the header fits it, else PAX (long names; PAX headers are what GNU tar reads too)."""
    try:
        info.tobuf(tarfile.USTAR_FORMAT, _ENCODING, _ERRORS)
    except ValueError:
        return tarfile.PAX_FORMAT
    return tarfile.USTAR_FORMAT


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
        self._tar = tarfile.open(  # noqa: SIM115 - closed by _close_current/abort
            fileobj=self._stream, mode="w|", format=tarfile.USTAR_FORMAT, encoding=_ENCODING, errors=_ERRORS
        )
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
        """Append one sample, first rolling to a new shard when this one is full."""
        members = sample_members(sample)
        size = sum(512 + (len(data) + 511) // 512 * 512 for _, data in members)
        if self._tar is not None and (self._count >= self.max_count or self._bytes + size > self.max_bytes):
            self._close_current()
        if self._tar is None:
            self._open()
        assert self._tar is not None
        for name, data in members:
            info = _tarinfo(name, len(data))
            self._tar.format = _member_format(info)  # read per member by TarFile.addfile
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self._bytes += size

    def write_all(self, samples: Iterable[Sample]) -> list[str]:
        """Write every sample; returns the shards finished so far."""
        for sample in samples:
            self.write(sample)
        return self.paths

    def close(self) -> list[str]:
        """Finish the shard in progress; returns every shard written."""
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
