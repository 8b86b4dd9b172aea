"""Exceptions for user mistakes. The CLI prints them as one line and exits 2 (no traceback)."""

from __future__ import annotations

__all__ = ["ConfigError", "UsageError"]


class UsageError(ValueError):
    """A mistake by the user: a bad path, an unusable input, a wrong combination of options."""


class ConfigError(UsageError):
    """A mistake in a config file or a ``--set`` override; the message names the key."""
