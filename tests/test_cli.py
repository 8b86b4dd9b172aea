"""The ``copyguard`` command line: help for every subcommand, exit codes, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from copyguard.pipelines.cli import build_parser, main

COMMANDS = {
    "sample-data",
    "lab-model",
    "curate",
    "eval-dedup",
    "detect",
    "generate",
    "audit",
    "train",
    "assets",
}


def _subcommands() -> set[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return set(action.choices)


def test_help_lists_exactly_the_working_subcommands(capsys: pytest.CaptureFixture) -> None:
    assert _subcommands() == COMMANDS
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in _subcommands():
        assert name in out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_subcommand_has_help(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: copyguard" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["no-such-command"],
        ["sample-data"],  # --output missing
        ["sample-data", "--output", "x", "--bogus"],
        ["eval-dedup", "--manifest", "x"],
    ],
)
def test_usage_mistakes_exit_2_with_one_line(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "error:" in err and "Traceback" not in err


def test_user_errors_exit_2_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    truth = tmp_path / "truth.jsonl"
    truth.write_text('{"key": "a"}\n')
    assert main(["eval-dedup", "--manifest", str(tmp_path / "missing"), "--truth", str(truth)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no manifest" in err
    assert main(["sample-data", "--output", str(tmp_path / "o"), "--set", "sample_data.nope=1"]) == 2
    assert "unknown key 'sample_data.nope'" in capsys.readouterr().err


def test_console_script_and_module_entry_points() -> None:
    exe = Path(sys.executable).with_name("copyguard")
    assert exe.exists(), "console script not installed"
    res = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert res.stdout.startswith("copyguard ")
    res = subprocess.run(
        [sys.executable, "-m", "copyguard.pipelines", "--help"], capture_output=True, text=True
    )
    assert res.returncode == 0 and "sample-data" in res.stdout


def test_a_command_leaves_the_environment_as_it_found_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-q`` and the default verbosity set TQDM_DISABLE and the Hugging Face variables for their own command
    only: an in-process caller's next command (here without ``-q``) must not run with the bars off."""
    from copyguard.pipelines import cli

    for name in cli._COMMAND_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DIFFUSERS_VERBOSITY", "info")  # the user's own setting survives too
    seen = {}

    def command(args):  # records what the command ran with
        seen.update({name: os.environ.get(name) for name in cli._COMMAND_ENV})
        return 0

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    sub = next(a for a in parser._actions if a.dest == "command")
    sub.choices["sample-data"].set_defaults(func=command)
    assert cli.main(["-q", "sample-data", "--output", str(tmp_path / "o")]) == 0
    assert seen["TQDM_DISABLE"] == "1" and seen["TRANSFORMERS_VERBOSITY"] == "error"
    assert seen["DIFFUSERS_VERBOSITY"] == "info"
    assert "TQDM_DISABLE" not in os.environ and "TRANSFORMERS_VERBOSITY" not in os.environ
    assert os.environ["DIFFUSERS_VERBOSITY"] == "info"
