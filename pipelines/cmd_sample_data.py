"""CLI glue for ``copyguard sample-data``: build the sample shards and their ground truth."""

from __future__ import annotations

import argparse

from copyguard.common.cli_args import add_config_args, add_option, examples
from copyguard.common.config import load_config
from copyguard.pipelines.lab.config import SampleDataConfig
from copyguard.pipelines.lab.sample_data import build_sample_data

__all__ = ["register", "run"]

EPILOG = """\
Writes DIR/shard-000000.tar ... (WebDataset: KEY.jpg + KEY.txt; the last shard holds the broken samples a
reader must reject) and DIR/ground_truth.jsonl ({key, image_group, caption_group, kind, copies} per sample).
The same seed gives the same bytes. Presets: tiny (~300 samples, seconds), small (~2,000, the default), hard
(image copies under the common copy edits at 64 and 224 px, and caption pairs that must or must not merge).

""" + examples(
    "copyguard sample-data --output sample --preset tiny", "copyguard sample-data --output sample --seed 1"
)


def register(subparsers: argparse._SubParsersAction) -> None:

    parser = subparsers.add_parser(
        "sample-data",
        help="write real images and captions as shards, with planted duplicates and a ground truth",
        description="Build a WebDataset sample of real images (scikit-image, scikit-learn and MNIST) and "
        "real captions (MS-COCO, LAION) with planted duplicates of known kinds.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_option(
        parser,
        "--output",
        old=["--out"],
        required=True,
        metavar="DIR",
        help="output folder for shards and ground truth",
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="tiny, small or hard (held-out copy edits; default: the config's, small)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the config's, 0)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the shards and ground truth already in --output"
    )
    add_config_args(parser, "sample_data", example="image_size=96")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.preset is not None:
        overrides.append(f"sample_data.preset={args.preset}")
    if args.seed is not None:
        overrides.append(f"sample_data.seed={args.seed}")
    cfg = load_config(SampleDataConfig, "sample_data", args.config, overrides)
    summary = build_sample_data(cfg, args.output, overwrite=args.overwrite)
    kinds = ", ".join(f"{kind} {count}" for kind, count in summary["kinds"].items())
    print(
        f"wrote {summary['samples']} samples ({summary['broken']} broken) in {summary['shards']} shards "
        f"to {summary['out']} in {summary['seconds']:.1f} s (preset {summary['preset']}, seed {summary['seed']})"
    )
    print(f"kinds: {kinds}")
    return 0
