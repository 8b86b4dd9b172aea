"""Code and ``copyguard`` help cite papers, never the internal spec users cannot open.

The spec's section numbers (a section sign followed by a number) and its file name ``algorithms.md`` mean
nothing to a user: code, docstrings and help texts cite the paper and equation instead ("Wen et al., ICLR
2024, eq. 4") or copyguard's own docs. Checked here: every ``.py`` file of the five code folders, and the
rendered ``--help`` of ``copyguard`` and every subcommand, where a literal ``%%`` would also show a help
text escaped once too often (argparse %-formats argument help, not descriptions or epilogs).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from copyguard.pipelines.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
CODE_FOLDERS = ("common", "curation", "mitigation", "train", "pipelines")
SPEC_MARKERS = ("\N{SECTION SIGN}", "algorithms.md")


def spec_citations(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of every line of ``text`` that cites the spec."""
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if any(marker in line for marker in SPEC_MARKERS)
    ]


def code_files() -> list[Path]:
    return sorted(path for folder in CODE_FOLDERS for path in (ROOT / folder).rglob("*.py"))


def test_spec_citations_finds_both_markers() -> None:
    text = "a = 1\n# see \N{SECTION SIGN}6.1\nb = 2  # docs/algorithms.md\n"
    assert spec_citations(text) == [(2, "# see \N{SECTION SIGN}6.1"), (3, "b = 2  # docs/algorithms.md")]
    assert spec_citations("# Chen et al., CVPR 2024, eq. 13\n") == []


def test_code_cites_papers_not_the_spec() -> None:
    files = code_files()
    for folder in CODE_FOLDERS:  # the walk really reached every folder
        assert any(path.is_relative_to(ROOT / folder) for path in files), folder
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line}"
        for path in files
        for number, line in spec_citations(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, "cite the paper (and equation) instead of the spec:\n" + "\n".join(offenders)


def command_lines(parser: argparse.ArgumentParser, argv: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """``argv`` of the parser and of every subcommand below it, as registered by ``build_parser``."""
    yield argv
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from command_lines(sub, (*argv, name))


def rendered_help(argv: tuple[str, ...], capsys: pytest.CaptureFixture) -> str:
    """What ``copyguard ARGV --help`` prints."""
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_cli_help_has_no_spec_citation_and_no_double_percent(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # fixed wrapping, whatever the terminal
    commands = list(command_lines(build_parser()))
    assert len(commands) > 1 and ("train",) in commands
    offenders = []
    for argv in commands:
        text = rendered_help(argv, capsys)
        assert text.startswith("usage: copyguard"), argv
        name = " ".join(("copyguard", *argv))
        offenders += [f"{name} --help: {line}" for _, line in spec_citations(text)]
        offenders += [f"{name} --help: {line.strip()}" for line in text.splitlines() if "%%" in line]
    assert not offenders, "help text cites the spec or shows a literal %%:\n" + "\n".join(offenders)
