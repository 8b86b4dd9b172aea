"""``accelerate launch -m copyguard.train --model DIR --data 'GLOB' --out RUN_DIR [...]``.

The same arguments as ``copyguard train`` (:func:`copyguard.train.finetune_config.add_arguments`); usage
and config mistakes print one line and exit 2, a non-finite loss exits 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from copyguard.curation.errors import UsageError

__all__ = ["main", "run_from_args"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_from_args(args: argparse.Namespace) -> int:
    """Run one training from parsed arguments (shared by both entry points); returns the exit code."""
    from copyguard.train.finetune import NonFiniteLoss, run_training
    from copyguard.train.finetune_config import config_from_args

    cfg = config_from_args(args)
    if (
        logging.getLogger().getEffectiveLevel() > logging.DEBUG
    ):  # accelerate logs every checkpoint file at INFO
        logging.getLogger("accelerate").setLevel(logging.WARNING)
    try:
        summary = run_training(cfg, args.model, args.data, args.out, resume=args.resume)
    except NonFiniteLoss as exc:
        print(f"copyguard train: {exc}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") != "0":  # several processes: rank 0 reports
        return 0
    fs = summary["filter"]
    line = f"trained {summary['steps']} steps ({cfg.mode}) -> {args.out}; final loss {summary['final_loss_ema']:.4f}"
    if fs["enabled"]:
        line += f"; filtered {fs['samples_filtered']} of {fs['samples_seen']} samples ({fs['unique_keys_filtered']} keys)"
    print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from copyguard.train.finetune_config import add_arguments

    parser = _Parser(
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
