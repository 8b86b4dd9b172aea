"""The ``copyguard`` command line: one subcommand per job.

Exit codes: 0 success; 1 the job ran but failed (an invariant broke, a gate failed); 2 a usage or config
mistake, reported on one line without a traceback; 130 interrupted.

Each subcommand lives in a small ``register(subparsers)`` function that adds its parser and sets
``func``; only subcommands that work are registered.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from copyguard.common.cli_args import ArgumentParser
from copyguard.common.errors import UsageError
from copyguard.common.runtime import package_version

__all__ = ["main", "build_parser"]

log = logging.getLogger("copyguard")


def _missing_module(exc: ModuleNotFoundError) -> str | None:
    """The third-party package ``exc`` says is missing (None: a copyguard module, a real bug)."""
    top = (exc.name or "").split(".")[0]
    return None if not top or top == "copyguard" else top


def _with_install_hint(func: Callable[..., int], command: str) -> Callable[..., int]:
    """``func``, but a third-party package missing at run time is a one-line UsageError naming the extra."""

    @functools.wraps(func)
    def run(*args: object) -> int:
        try:
            return func(*args)
        except ModuleNotFoundError as exc:
            if (package := _missing_module(exc)) is None:
                raise
            raise UsageError(_install_hint(package, command)) from None

    return run


def _install_hint(package: str, command: str) -> str:
    from copyguard.common.assets import COMMAND_EXTRAS

    extra = COMMAND_EXTRAS.get(command, "all")
    return f"needs the Python package {package!r}, which is not installed: pip install 'copyguard[{extra}]'"


def _register_unavailable(sub: argparse._SubParsersAction, command: str, package: str) -> None:
    """``command`` whose module cannot even be imported here: listed, and running it says what to install."""

    def run(*_: object) -> int:
        raise UsageError(_install_hint(package, command))

    parser = sub.add_parser(
        command, help=f"(not installed) {_install_hint(package, command)}", add_help=False
    )
    parser.set_defaults(func=run, accepts_extra=True)


# The subcommand modules, in --help order; each has ``register(subparsers)``.
_MODULES = ("sample_data", "lab_model", "curate", "detect", "generate", "train", "audit", "assets")


def _register_all(sub: argparse._SubParsersAction) -> None:
    # Each module is imported here, at start-up: their top-level imports stay light (no torch, no Beam), and
    # the heavy ones happen in the command's function, under the install hint of _with_install_hint. A module
    # whose import needs a package that is not installed still shows its command, which says what to install.
    for module in _MODULES:
        try:
            register = importlib.import_module(f"copyguard.pipelines.cmd_{module}").register
        except ModuleNotFoundError as exc:
            if (package := _missing_module(exc)) is None:
                raise
            _register_unavailable(sub, module.replace("_", "-"), package)
            continue
        register(sub)
    for command, parser in sub.choices.items():
        func = parser.get_default("func")
        if func is not None and not hasattr(func, "__wrapped__"):
            parser.set_defaults(func=_with_install_hint(func, command))


def build_parser() -> argparse.ArgumentParser:
    """The ``copyguard`` parser with every subcommand registered."""
    parser = ArgumentParser(
        prog="copyguard",
        description="Keep text-to-image diffusion models from memorizing their training data.",
    )
    parser.add_argument(
        "--version", action="version", version=f"copyguard {package_version('copyguard') or '0+unknown'}"
    )
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


# Loggers whose INFO lines a user cannot act on (faiss's loader trying CPU variants, Beam's start-up notes).
_CHATTY = ("apache_beam", "urllib3", "PIL", "matplotlib", "h5py", "numexpr", "faiss")


# The Hugging Face libraries' own settings that silence them without -v (read when they are first imported).
_QUIET_LIBRARIES = (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"),
                    ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"))  # fmt: skip


def _setup_logging(verbose: int, quiet: bool) -> None:
    """Our INFO lines (WARNING with ``-q``, DEBUG with ``-vv``); third-party noise off unless asked for.

    The Hugging Face libraries read their settings from the environment when first imported, which happens
    later, inside the command: without ``-v`` their warnings (e.g. transformers' "torchvision not found")
    and model-loading bars are off; ``-q`` also turns off every tqdm bar. A variable the user set wins.
    """
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropNoise())
    if verbose < 2:  # third-party chatter stays quiet unless -vv
        for name in _CHATTY:
            logging.getLogger(name).setLevel(logging.WARNING)
    if verbose < 1:
        for var, value in _QUIET_LIBRARIES:
            os.environ.setdefault(var, value)
    if quiet:
        os.environ.setdefault("TQDM_DISABLE", "1")


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


# What :func:`_setup_logging` may set for one command; :func:`main` puts them back as they were afterwards, so a
# library caller's next in-process command (without ``-q``, say) does not inherit them.
_COMMAND_ENV = (*(var for var, _ in _QUIET_LIBRARIES), "TQDM_DISABLE")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``copyguard`` command line; returns the exit code (see the module docstring).

    Ctrl-C at any point after start-up (while the subcommands are imported, while a job runs) prints
    ``copyguard: interrupted`` and returns 130, without a traceback. The environment variables the command
    set for its own logging and progress bars are restored when it returns.
    """
    saved = {name: os.environ.get(name) for name in _COMMAND_ENV}
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("copyguard: interrupted", file=sys.stderr)
        return 130
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
