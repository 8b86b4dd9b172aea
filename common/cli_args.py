"""Command-line parsing shared by every entry point (``copyguard ...``, ``python -m copyguard.train``,
:func:`copyguard.pipelines.curate.run`).

- :class:`ArgumentParser`: argparse, but a usage mistake prints one line and exits 2 (no usage block);
- :func:`add_option`: an option under its one name across commands (``--output``, ``--input``,
  ``--reference-prompts``, ``--seed``), with earlier names kept as hidden aliases that warn;
- :func:`add_config_args`: the ``--config PATH`` and repeatable ``--set job.key=value`` pair that every job
  reads with :func:`copyguard.common.config.load_config`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

__all__ = ["ArgumentParser", "add_config_args", "add_option", "examples"]

# The release that drops the old option names kept by add_option.
ALIASES_REMOVED_IN = "0.3"


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but errors print one line (``PROG: error: ... (see --help)``) and exit 2, and options added
    with :func:`add_option` (``required=True``) are required under any of their names."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` on one line to stderr and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        parsed, extra = super().parse_known_args(args, namespace)
        missing = [
            flag for dest, flag in getattr(self, "_required_any_name", ()) if getattr(parsed, dest) is None
        ]
        if missing and not getattr(parsed, "help", False):
            self.error(f"the following arguments are required: {', '.join(missing)}")
        return parsed, extra


class _OldName(argparse.Action):
    """A hidden earlier name of an option: stores into the same ``dest`` and warns on stderr."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None
    ) -> None:
        print(
            f"{parser.prog}: warning: {option} is now {self.new} ({option} goes in copyguard {ALIASES_REMOVED_IN})",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_option(
    parser: argparse.ArgumentParser,
    name: str,
    *also: str,
    old: Sequence[str] = (),
    required: bool = False,
    **kwargs: Any,
) -> argparse.Action:
    """Add option ``name`` (e.g. ``--output``; ``also``: further names shown in the help, such as a diffusers
    spelling) and its earlier names ``old`` (e.g. ``--out``) as hidden aliases that warn. ``required`` is
    checked after parsing, so any of the names satisfies it."""
    dest = kwargs.pop("dest", name.lstrip("-").replace("-", "_"))
    action = parser.add_argument(name, *also, dest=dest, **kwargs)
    value_kwargs = {k: v for k, v in kwargs.items() if k in ("type", "nargs", "choices", "metavar")}
    for alias in old:
        parser.add_argument(
            alias, dest=dest, action=_OldName, new=name, help=argparse.SUPPRESS, **value_kwargs
        )
    if required:
        if not isinstance(parser, ArgumentParser):
            raise TypeError("add_option(required=True) needs copyguard.common.cli_args.ArgumentParser")
        parser._required_any_name = [*getattr(parser, "_required_any_name", []), (dest, name)]
    return action


def examples(*lines: str) -> str:
    """An ``Examples:`` block for an epilog (``RawDescriptionHelpFormatter``); every line is checked by the
    test suite to parse."""
    return "Examples:\n" + "\n".join(f"  {line}" for line in lines) + "\n"


def add_config_args(parser: argparse.ArgumentParser, job: str, example: str = "") -> None:
    """Add ``--config PATH`` (dest ``config``) and repeatable ``--set job.KEY=VALUE`` (dest ``overrides``);
    ``example`` is a ``KEY=VALUE`` of this job's config shown in the help (checked by the tests)."""
    parser.add_argument(
        "--config", metavar="PATH", default=None, help=f"YAML config (default: configs/{job}.yaml)"
    )
    hint = f", e.g. --set {job}.{example}" if example else ""
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar=f"{job}.KEY=VALUE",
        action="append",
        default=[],
        help=f"override one config value{hint} (repeatable)",
    )
