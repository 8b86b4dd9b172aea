"""The diffusers-style flags of ``copyguard train``: each parses to the same TrainConfig as its ``--set``."""

from __future__ import annotations

import argparse

import pytest

from copyguard.common.cli_args import ArgumentParser
from copyguard.common.errors import UsageError
from copyguard.train.args import CONFIG_FLAGS, add_arguments, config_from_args
from copyguard.train.config import TrainConfig

REQUIRED = ["--model", "m", "--input", "d", "--output", "o"]

# flag argv -> the equivalent --set override (values differ from the defaults, so a flag that sets the wrong
# key gives another config)
TABLE = [
    (["--resolution", "48"], "train.data.resolution=48"),
    (["--train_batch_size", "3"], "train.batch_size=3"),
    (["--gradient_accumulation_steps", "5"], "train.grad_accum=5"),
    (["--learning_rate", "3e-5"], "train.lr=0.00003"),
    (["--max_train_steps", "77"], "train.max_steps=77"),
    (["--checkpointing_steps", "9"], "train.checkpoint_every=9"),
    (["--checkpoints_total_limit", "6"], "train.checkpoints_keep=6"),
    (["--mixed_precision", "bf16"], "train.mixed_precision=bf16"),
    (["--report_to", "all"], "train.report_to=all"),
    (["--rank", "8"], "train.lora.rank=8"),
    (["--seed", "13"], "train.seed=13"),
]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="t")
    add_arguments(parser)
    return parser.parse_args(argv)


def _config(argv: list[str]) -> TrainConfig:
    return config_from_args(_parse([*REQUIRED, *argv]))


@pytest.mark.parametrize(("flag", "override"), TABLE, ids=[row[0][0] for row in TABLE])
def test_flag_gives_the_same_config_as_set(flag: list[str], override: str) -> None:
    via_flag, via_set = _config(flag), _config(["--set", override])
    assert via_flag == via_set
    assert via_flag != TrainConfig()  # the value is not the default: a wrong mapping cannot pass


def test_the_table_covers_every_config_flag() -> None:
    assert {row[0][0] for row in TABLE} == set(CONFIG_FLAGS)


def test_all_flags_together_equal_all_sets() -> None:
    flags = [arg for row in TABLE for arg in row[0]]
    sets = [arg for row in TABLE for arg in ("--set", row[1])]
    assert _config(flags) == _config(sets)


def test_a_flag_wins_over_set_of_the_same_key() -> None:
    cfg = _config(["--set", "train.batch_size=2", "--train_batch_size", "7", "--set", "train.seed=4"])
    assert cfg.batch_size == 7 and cfg.seed == 4


def test_diffusers_names_and_short_aliases_fill_the_same_fields() -> None:
    long = _parse(
        ["--pretrained_model_name_or_path", "org/name", "--train_data_dir", "d/*.tar", "--output_dir", "run",
         "--resume_from_checkpoint", "latest"]
    )  # fmt: skip
    short = _parse(["--model", "org/name", "--input", "d/*.tar", "--output", "run", "--resume", "latest"])
    assert (long.model, long.data, long.out, long.resume) == ("org/name", "d/*.tar", "run", "latest")
    assert vars(long) == vars(short)


def test_help_lists_the_flags_with_config_defaults(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        _parse(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--train_batch_size INT" in text and "[train.batch_size; config default: 16]" in text
    assert "--report_to {tensorboard,wandb,all}" in text and "config default: tensorboard" in text
    assert "--pretrained_model_name_or_path MODEL, --model MODEL" in text


def test_bad_flag_values_are_usage_errors(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse([*REQUIRED, "--report_to", "mlflow"])
    assert exc.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(UsageError, match="train.batch_size"):
        _config(["--train_batch_size", "0"])


def test_report_to_wandb_without_wandb_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from copyguard.train import finetune

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(UsageError, match="pip install wandb"):
        finetune._trackers("wandb")
    assert finetune._trackers("all") == "all" and finetune._trackers("tensorboard") == "tensorboard"
