"""Command-line parsing shared by every entry point (``copyguard ...``, ``python -m copyguard.train``,
:func:`copyguard.pipelines.curate.run`).

- :class:`ArgumentParser`: argparse, but a usage mistake prints one line and exits 2 (no usage block);
- :func:`add_config_args`: the ``--config PATH`` and repeatable ``--set job.key=value`` pair that every job
  reads with :func:`copyguard.common.config.load_config`.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

__all__ = ["ArgumentParser", "add_config_args"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but errors print one line (``PROG: error: ... (see --help)``) and exit 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` on one line to stderr and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_config_args(parser: argparse.ArgumentParser, job: str) -> None:
    """Add ``--config PATH`` (dest ``config``) and repeatable ``--set job.KEY=VALUE`` (dest ``overrides``)."""
    parser.add_argument(
        "--config", metavar="PATH", default=None, help=f"YAML config (default: configs/{job}.yaml)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar=f"{job}.KEY=VALUE",
        action="append",
        default=[],
        help=f"override one config value, e.g. --set {job}.seed=1 (repeatable)",
    )
