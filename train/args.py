"""Command-line arguments of ``copyguard train``, defined once and shared by ``copyguard train`` and
``accelerate launch -m copyguard.train`` (:func:`add_arguments`, :func:`config_from_args`).

The flag names are those of the diffusers training examples (``train_text_to_image.py``,
``train_text_to_image_lora.py``): ``--pretrained_model_name_or_path``, ``--train_batch_size``, ... Each
config flag (:data:`CONFIG_FLAGS`) sets one ``train.*`` key; ``--set train.KEY=VALUE`` still sets any key.
When a flag and a ``--set`` name the same key, the flag wins (documented in docs/training.md).
"""

from __future__ import annotations

import argparse
from typing import Any

from copyguard.common.cli_args import add_option
from copyguard.common.config import load_config, validate
from copyguard.train.config import TrainConfig

__all__ = ["CONFIG_FLAGS", "add_arguments", "config_from_args"]

# diffusers flag -> (config key under ``train.``, argparse type, choices, help)
CONFIG_FLAGS: dict[str, tuple[str, type, tuple[str, ...] | None, str]] = {
    "--resolution": ("data.resolution", int, None, "training size in px (unset: the model's own)"),
    "--train_batch_size": ("batch_size", int, None, "samples per micro-batch and process"),
    "--gradient_accumulation_steps": ("grad_accum", int, None, "micro-batches per optimizer step"),
    "--learning_rate": ("lr", float, None, "AdamW learning rate"),
    "--max_train_steps": ("max_steps", int, None, "optimizer steps"),
    "--checkpointing_steps": ("checkpoint_every", int, None, "save a checkpoint every N steps"),
    "--checkpoints_total_limit": (
        "checkpoints_keep",
        int,
        None,
        "newest checkpoints kept (older ones are deleted after each save)",
    ),
    "--mixed_precision": (
        "mixed_precision",
        str,
        ("no", "fp16", "bf16"),
        "autocast precision (fp16 needs CUDA)",
    ),
    "--report_to": ("report_to", str, ("tensorboard", "wandb", "all"), "experiment tracker(s)"),
    "--rank": ("lora.rank", int, None, "LoRA rank (train.mode=lora)"),
    "--seed": ("seed", int, None, "seed of every random draw and of the data stream"),
}


def _default(key: str) -> Any:
    """The schema default of ``train.<key>`` (equal to configs/train.yaml's; a test keeps them equal)."""
    node: Any = TrainConfig()
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _dest(flag: str) -> str:
    return "flag_" + flag.lstrip("-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train`` arguments (one definition for both entry points)."""
    parser.add_argument(
        "--pretrained_model_name_or_path",
        "--model",
        dest="model",
        required=True,
        metavar="MODEL",
        help="a local diffusers SD folder, a Hub id 'org/name' already in the local Hugging Face cache "
        "(never downloaded), or a single .safetensors SD checkpoint",
    )
    parser.add_argument(
        "--model_config",
        default=None,
        metavar="DIR|ORG/NAME",
        help="diffusers config of a single-file --model: a local diffusers folder or a cached Hub id "
        "(default: the one diffusers infers, which must be in the local cache)",
    )
    add_option(
        parser,
        "--train_data_dir",
        "--input",
        old=["--data"],
        dest="data",
        required=True,
        metavar="GLOB",
        help="training shards, e.g. 'DIR/*.tar'",
    )
    add_option(
        parser,
        "--output_dir",
        "--output",
        old=["--out"],
        dest="out",
        required=True,
        metavar="RUN_DIR",
        help="output folder of the run",
    )
    parser.add_argument(
        "--resume_from_checkpoint",
        "--resume",
        dest="resume",
        default=None,
        metavar="latest|PATH",
        help="continue from RUN_DIR's newest checkpoint ('latest') or a checkpoint folder",
    )
    group = parser.add_argument_group(
        "training options (diffusers names; each sets one train.KEY and wins over --set of that key)"
    )
    for flag, (key, kind, choices, text) in CONFIG_FLAGS.items():
        group.add_argument(
            flag,
            dest=_dest(flag),
            type=kind,
            choices=choices,
            default=None,
            metavar=None if choices else kind.__name__.upper(),
            help=f"{text} [train.{key}; config default: {_default(key)}]",
        )
    parser.add_argument(
        "--config", metavar="PATH", default=None, help="YAML config (default: configs/train.yaml)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="train.KEY=VALUE",
        action="append",
        default=[],
        help="override one config value, e.g. --set train.mode=full (repeatable; a flag above wins)",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Load ``--config`` with the ``--set`` overrides, then the given flags (errors: one-line
    :class:`ConfigError`)."""
    cfg = load_config(TrainConfig, "train", args.config, list(args.overrides))
    given = {
        key: getattr(args, _dest(flag))
        for flag, (key, *_) in CONFIG_FLAGS.items()
        if getattr(args, _dest(flag), None) is not None
    }
    if not given:
        return cfg
    data = cfg.model_dump()
    for key, value in given.items():
        *parents, last = key.split(".")
        node = data
        for name in parents:
            node = node[name]
        node[last] = value
    return validate(TrainConfig, data, "train")
