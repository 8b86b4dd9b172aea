"""Check a job's output path before any work, creating nothing: a mistake there is a one-line UsageError.

A job that reads and embeds for an hour and only then finds its output folder read-only, or finds a file
where it wanted a folder, wastes the hour and ends in a traceback. :func:`check_output_dir` and
:func:`check_output_file` run first: the path must have the right type, and the folder that will hold it
(the nearest one that exists) must take a probe file, which is created and deleted at once. Remote
paths (``gs://``, ``s3://``...) are left to the job's filesystem.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from copyguard.common.errors import UsageError

__all__ = ["check_output_dir", "check_output_file", "is_remote"]


def is_remote(path: str | Path) -> bool:
    """True for a URL such as ``gs://bucket/dir`` (checked by the job's own filesystem, not here)."""
    return "://" in str(path)


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (a broken symlink counts as existing)."""
    current = path.absolute()
    while not os.path.lexists(current) and current.parent != current:
        current = current.parent
    return current


def _probe(folder: Path, flag: str, path: str | Path) -> None:
    """Create and delete a file in ``folder``; any OSError is a UsageError that names ``flag``."""
    try:
        fd, name = tempfile.mkstemp(prefix=".copyguard-probe-", dir=folder)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot write in {folder}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(name)


def _check(path: str | Path, flag: str, folder: bool) -> None:
    """``path`` is not of the other type, and the folder that will hold it takes a probe file."""
    if is_remote(path):
        return
    target = Path(path)
    if folder and os.path.lexists(target) and not target.is_dir():
        raise UsageError(f"{flag} {path} is a file; give a folder")
    if not folder and target.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    base = _nearest_existing(target if folder else target.absolute().parent)
    if not base.is_dir():
        raise UsageError(f"{flag} {path}: {base} is a file, not a folder")
    _probe(base, flag, path)


def check_output_dir(path: str | Path, flag: str = "--output") -> None:
    """``path`` is (or can become) a folder this process may write into; nothing is created."""
    _check(path, flag, folder=True)


def check_output_file(path: str | Path, flag: str = "--output") -> None:
    """``path`` is (or can become) a file this process may write; nothing is created."""
    _check(path, flag, folder=False)
