"""CLI glue for ``copyguard train``: fine-tune Stable Diffusion (full UNet or LoRA) with the memorization filter."""

from __future__ import annotations

import argparse

from copyguard.common.cli_args import examples

__all__ = ["register"]

EPILOG = """\
Fine-tunes the UNet of a Stable Diffusion model on WebDataset shards with Accelerate (text encoder and VAE
frozen); train.mode=lora trains LoRA adapters on the attention projections instead. MODEL: a local diffusers
folder, a Hub id already in the local Hugging Face cache (never downloaded), or one .safetensors checkpoint
(with --model_config DIR|ORG/NAME for its diffusers config).
The flags use the diffusers training-script names; each sets one train.KEY and wins over --set of that key.
The memorization filter is on by default: samples whose text-conditional noise magnitude (Wen et al., ICLR
2024) reaches the threshold leave the loss of that step and are logged to RUN_DIR/filtered.jsonl. The threshold
is median + 4 x 1.4826 MAD of the first 20 steps' magnitudes per timestep bucket (train.filter.rule=mad,
train.filter.mads), recomputed every 20 steps from the last 20 steps' magnitudes as a fine-tune moves them
(train.filter.recalibrate_every; 0 keeps the first calibration); train.filter.rule=percentile or a fixed train.filter.threshold replace
it, and --set train.filter.enabled=false turns the filter off.
Outputs in RUN_DIR: the diffusers folder (full) or pytorch_lora_weights.safetensors (LoRA: load with
pipe.load_lora_weights(RUN_DIR)), train_config.yaml, train_log.jsonl, training.json, checkpoints/,
logs/ (TensorBoard; --report_to wandb|all for others).
Several GPUs or nodes: accelerate launch -m copyguard.train (same arguments).
Exit codes: 0 done, 1 stopped on a non-finite loss (the last good checkpoint is kept), 2 usage/config error.

""" + examples(
    "copyguard train --pretrained_model_name_or_path sd-folder --train_data_dir 'curated/shards/*.tar' "
    "--output_dir run/ --max_train_steps 1000 --learning_rate 1e-5 --set train.filter.enabled=true",
    "copyguard train --pretrained_model_name_or_path sd-folder --train_data_dir 'curated/shards/*.tar' "
    "--output_dir run/ --set train.mode=lora --rank 8 --mixed_precision fp16 --report_to tensorboard",
    "copyguard train --pretrained_model_name_or_path sd-folder --train_data_dir 'curated/shards/*.tar' "
    "--output_dir run/ --resume_from_checkpoint latest",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    from copyguard.train.args import add_arguments

    parser = subparsers.add_parser(
        "train",
        help="fine-tune Stable Diffusion (full or LoRA) with the memorization filter",
        description="Fine-tune a Stable Diffusion model with Accelerate, filtering high-magnitude "
        "(likely memorized) samples out of the loss.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from copyguard.train.__main__ import run_from_args

    return run_from_args(args)
