"""``accelerate launch -m copyguard.train --pretrained_model_name_or_path MODEL --train_data_dir 'GLOB'
--output_dir RUN_DIR [...]`` (or the short ``--model``/``--data``/``--out``).

The same arguments as ``copyguard train`` (:func:`copyguard.train.args.add_arguments`); usage
and config mistakes print one line and exit 2, a non-finite loss exits 1.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from copyguard.common.cli_args import ArgumentParser
from copyguard.common.errors import UsageError

if TYPE_CHECKING:
    from copyguard.train.config import TrainConfig

__all__ = ["main", "run_from_args", "train_and_report"]


def train_and_report(
    config: TrainConfig,
    *,
    model: str,
    data: str,
    out: str,
    resume: str | None = None,
    model_config: str | None = None,
) -> int:
    """Run one training (:func:`copyguard.train.finetune.run_training`) and print its one-line summary on
    rank 0; returns the exit code: 0 done, 1 stopped on a non-finite loss. Shared by both entry points."""
    from copyguard.train.finetune import NonFiniteLoss, run_training

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # accelerate logs every checkpoint at INFO
        logging.getLogger("accelerate").setLevel(logging.WARNING)
    try:
        summary = run_training(config, model, data, out, resume=resume, model_config=model_config)
    except NonFiniteLoss as exc:
        print(f"copyguard train: {exc}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") != "0":  # several processes: rank 0 reports
        return 0
    fs = summary["filter"]
    line = f"trained {summary['steps']} steps ({config.mode}) -> {out}; final loss {summary['final_loss_ema']:.4f}"
    if fs["enabled"]:
        line += f"; filtered {fs['samples_filtered']} of {fs['samples_seen']} samples ({fs['unique_keys_filtered']} keys)"
    print(line)
    return 0


def run_from_args(args: Any) -> int:
    """Config (:func:`copyguard.train.args.config_from_args`) and training from parsed ``train`` arguments."""
    from copyguard.train.args import config_from_args

    return train_and_report(
        config_from_args(args),
        model=args.model,
        data=args.data,
        out=args.out,
        resume=args.resume,
        model_config=args.model_config,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m copyguard.train``: parse, load the config, train; returns the exit code."""
    from copyguard.train.args import add_arguments

    parser = ArgumentParser(
        prog="copyguard.train", description="Fine-tune Stable Diffusion with the memorization filter."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    try:
        return run_from_args(args)
    except UsageError as exc:
        print(f"copyguard train: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
