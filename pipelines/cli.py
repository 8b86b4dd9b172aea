"""The ``copyguard`` command line: one subcommand per job.

Exit codes: 0 success; 1 the job ran but failed (an invariant broke, a gate failed); 2 a usage or config
mistake, reported on one line without a traceback; 130 interrupted.

Each subcommand lives in a small ``register(subparsers)`` function that adds its parser and sets
``func``; only subcommands that work are registered.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

from copyguard.common.cli_args import ArgumentParser
from copyguard.common.errors import UsageError

__all__ = ["main", "build_parser"]

log = logging.getLogger("copyguard")


def _version() -> str:
    try:
        return version("copyguard")
    except PackageNotFoundError:  # running from a checkout without install
        return "0+unknown"


def _register_all(sub: argparse._SubParsersAction) -> None:
    from copyguard.pipelines import (
        cmd_audit,
        cmd_curate,
        cmd_detect,
        cmd_generate,
        cmd_lab_model,
        cmd_sample_data,
        cmd_train,
    )

    registrars: list[Callable[[argparse._SubParsersAction], None]] = [
        cmd_sample_data.register,
        cmd_lab_model.register,
        cmd_curate.register,
        cmd_detect.register,
        cmd_generate.register,
        cmd_train.register,
        cmd_audit.register,
    ]
    for register in registrars:
        register(sub)


def build_parser() -> argparse.ArgumentParser:
    """The ``copyguard`` parser with every subcommand registered."""
    parser = ArgumentParser(
        prog="copyguard",
        description="Keep text-to-image diffusion models from memorizing their training data.",
    )
    parser.add_argument("--version", action="version", version=f"copyguard {_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    sub.required = True
    _register_all(sub)
    return parser


class _DropNoise(logging.Filter):
    """Beam logs a harmless warning about optional GCP clients at import time; hide it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("apitools not found")


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropNoise())
    if verbose < 2:  # third-party chatter stays quiet unless -vv
        for name in ("apache_beam", "urllib3", "PIL", "matplotlib", "h5py", "numexpr"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _setup_logging(args.verbose, args.quiet)
    try:
        if getattr(args, "accepts_extra", False):  # e.g. curate: the rest goes to Beam's PipelineOptions
            return int(args.func(args, extra) or 0)
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"copyguard {args.command}: error: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``copyguard`` command line; returns the exit code (see the module docstring).

    Ctrl-C at any point after start-up (while the subcommands are imported, while a job runs) prints
    ``copyguard: interrupted`` and returns 130, without a traceback.
    """
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("copyguard: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
