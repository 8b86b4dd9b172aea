"""One name per idea across the commands, examples in every ``--help`` that really parse, old names kept as
hidden aliases that warn (for one release)."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest

from copyguard.common.cli_args import ArgumentParser, add_option
from copyguard.common.config import load_config
from copyguard.pipelines.cli import build_parser

# command -> (config schema, --set section); the schemas are imported lazily by name.
CONFIGS = {
    "sample-data": ("copyguard.pipelines.lab.config:SampleDataConfig", "sample_data"),
    "lab-model": ("copyguard.pipelines.lab.config:LabConfig", "lab"),
    "curate": ("copyguard.curation.config:CurateConfig", "curate"),
    "detect": ("copyguard.mitigation.config:DetectConfig", "detect"),
    "generate": ("copyguard.mitigation.config:GenerateConfig", "generate"),
    "audit": ("copyguard.mitigation.config:AuditConfig", "audit"),
    "train": ("copyguard.train.config:TrainConfig", "train"),
}
# Names retired in favour of one spelling across commands: never shown in a help, still accepted.
RETIRED = ("--out", "--calibrate-on", "--seeds", "--data")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _schema(spec: str) -> type:
    module, name = spec.split(":")
    return getattr(__import__(module, fromlist=[name]), name)


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_every_help_has_examples_that_parse(command: str) -> None:
    sub = _subparsers()[command]
    text = sub.format_help()
    assert "%%" not in text and "§" not in text
    assert "Examples:" in text, f"copyguard {command} --help has no examples"
    lines = text.split("Examples:", 1)[1].splitlines()
    commands = [line.strip() for line in lines if line.strip().startswith("copyguard ")]
    assert commands
    for line in commands:
        argv = shlex.split(line)[1:]
        args, extra = build_parser().parse_known_args(argv)
        assert args.command == command
        if command != "curate":  # curate passes the rest to Beam, which checks it
            assert not extra, f"{line}: unknown {extra}"
        for override in getattr(args, "overrides", []):
            schema, section = CONFIGS[command]
            load_config(_schema(schema), section, None, [override])


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_set_example_in_help_is_accepted(command: str) -> None:
    text = " ".join(_subparsers()[command].format_help().split())
    schema, section = CONFIGS[command]
    found = re.search(rf"e\.g\. --set ({section}\.[\w.]+=\S+?)[ )]", text)
    assert found, f"copyguard {command} --help shows no --set example"
    load_config(_schema(schema), section, None, [found.group(1)])


def test_one_name_per_idea_across_commands() -> None:
    shown = {
        command: {s for a in sub._actions if a.help != argparse.SUPPRESS for s in a.option_strings}
        for command, sub in _subparsers().items()
    }
    for command, names in shown.items():
        assert not names & set(RETIRED), f"{command} shows retired names {names & set(RETIRED)}"
    for command in ("sample-data", "lab-model", "curate", "detect", "generate", "audit", "train"):
        assert "--output" in shown[command], command
    for command in ("detect", "generate", "audit"):
        assert "--reference-prompts" in shown[command], command
    for command in ("sample-data", "lab-model", "generate", "train"):
        assert "--seed" in shown[command], command


@pytest.mark.parametrize(
    ("old", "new", "command", "rest"),
    [
        ("--out", "--output", "detect", ["--model", "m", "--prompts", "p.txt"]),
        (
            "--calibrate-on",
            "--reference-prompts",
            "audit",
            ["--model", "m", "--index", "i", "--prompts", "p", "--output", "o"],
        ),
        ("--data", "--input", "lab-model", ["--output", "o"]),
        ("--out", "--output_dir", "train", ["--model", "m", "--train_data_dir", "d"]),
    ],
)
def test_old_names_still_work_and_warn(old: str, new: str, command: str, rest: list[str], capsys) -> None:
    parser = build_parser()
    via_old = parser.parse_known_args([command, *rest, old, "VALUE"])[0]
    warning = capsys.readouterr().err
    assert old in warning and new.split("_")[0] in warning
    via_new = build_parser().parse_known_args([command, *rest, new, "VALUE"])[0]
    assert {**vars(via_old), "func": None} == {
        **vars(via_new),
        "func": None,
    }  # func: a fresh wrapper each build
    assert capsys.readouterr().err == ""


def test_generate_takes_one_or_more_seeds() -> None:
    from copyguard.pipelines.cmd_generate import _seeds

    args = build_parser().parse_args(
        ["generate", "--model", "m", "--prompt", "p", "--output", "o", "--seed", "0", "1,2"]
    )
    assert _seeds(args.seed) == [0, 1, 2]


def test_a_required_option_is_required_under_any_name(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["detect", "--model", "m", "--prompts", "p.txt"])
    assert exc.value.code == 2 and "required: --output" in capsys.readouterr().err
    parser = ArgumentParser(prog="x")
    add_option(parser, "--output", old=["--out"], required=True)
    assert parser.parse_args(["--out", "o"]).output == "o"
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "x: error: the following arguments are required: --output (see --help)"
