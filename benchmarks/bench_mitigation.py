"""Costs of detection, AMG and prompt optimization vs plain sampling (Wen et al., ICLR 2024; Chen et al., CVPR 2024).

    python -m benchmarks.bench_mitigation [--quick] [--machine TAG] [--out DIR] [--model DIR] [--index DIR]
        [--memorized-prompt TEXT] [--sd-size 128] [--sd-steps 10] [--rounds 2] [--no-lab] [--device cpu]

Measures the lab model and SD 1.5's architecture with random weights through
:mod:`copyguard.mitigation.evaluation.costs`. Writes ``benchmarks/results/<machine>/mitigation.json``
(``python -m benchmarks.render`` renders it into docs/mitigation.md). What is measured and how:
docs/benchmark-methods-gpu.md; ``bench_gpu`` times the same functions on a GPU.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import begin, script_main
from copyguard.mitigation.evaluation import costs

log = logging.getLogger("benchmarks.bench_mitigation")
LAB_SMALL_MEMORIZED = "George R.R. Martin Donates $10,000 to Wolf Sanctuary for a 13-Year-Old Fan"


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    """The lab model (unless ``--no-lab``) and sd15-arch; the result JSON body."""
    from copyguard.curation import load_index
    from copyguard.mitigation.config import DetectConfig
    from copyguard.mitigation.evaluation.calibrate import calibrate_on_prompts
    from copyguard.mitigation.pipeline_amg import StableDiffusionAMGPipeline
    from copyguard.mitigation.sd_loader import load_sd_pipeline
    from copyguard.pipelines.lab.sd15_shape import sd15_shaped_pipeline

    torch.set_num_threads(args.threads)
    if (args.model is None or args.index is None) and not args.quick:
        from copyguard.pipelines.lab.cache import lab_setup

        model, _, index = lab_setup("small")
        args.model, args.index = args.model or str(model), args.index or str(index)
    needed = (args.index,) if args.no_lab else (args.model, args.index)
    if missing := [
        str(p) for p in needed if not p or not Path(p).exists()
    ]:  # `run_all --quick`, bare checkout
        log.warning(
            "%s not found: build the lab model (`copyguard lab-model`) and the training-set index "
            "(`copyguard curate`), or pass --model/--index",
            ", ".join(missing),
        )
        raise SystemExit(0 if args.quick else 2)
    quick = dict(sd_size=64, sd_steps=3, lab_steps=5, rounds=1, sd_rounds=1, sd_popt_iters=1)
    n = argparse.Namespace(**{**vars(args), **(quick if args.quick else {})})
    report = begin(
        "mitigation", "benchmarks.bench_mitigation", args.argv, args.machine, args.quick, args.threads
    )
    git = report["git"]
    report["commit"] = (git["commit"] or "unknown")[:7] + ("+dirty" if git["dirty"] else "")
    index, models = load_index(args.index), report.setdefault("models", {})
    if not args.no_lab:
        pipe = load_sd_pipeline(args.model, args.device, pipeline_cls=StableDiffusionAMGPipeline)
        size = int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
        dcfg = DetectConfig(num_inference_steps=n.lab_steps)
        cal = calibrate_on_prompts(pipe, costs.REFERENCE_PROMPTS, dcfg, target_fpr=0.01)
        res = costs.measure_model(
            pipe,
            index,
            memorized=args.memorized_prompt,
            steps=n.lab_steps,
            size=size,
            rounds=n.rounds,
            device=args.device,
            gate=cal.threshold,
            l_target=cal.l_target(),
            forced_memorized=False,
            measure_50=True,
        )
        lab = {"name": "lab", "model": str(args.model), "memorized_prompt": args.memorized_prompt}
        models["lab"] = {**res, **lab, "params": costs.parameter_counts(pipe)}
        del pipe
    pipe = sd15_shaped_pipeline(args.device)
    res = costs.measure_random_weights(
        pipe,
        index,
        size=n.sd_size,
        steps=n.sd_steps,
        rounds=n.sd_rounds,
        popt_iters=n.sd_popt_iters,
        device=args.device,
    )
    sd15 = {"name": "sd15-arch", "model": "SD 1.5 UNet + VAE configs, random weights"}
    models["sd15-arch"] = {**res, **sd15, "params": costs.parameter_counts(pipe)}
    cuda = args.device.startswith("cuda")
    report["gpu"] = torch.cuda.get_device_name(0) if cuda else "none: every figure is CPU"
    return report


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="lab model folder (default: the cached small one)")
    parser.add_argument("--index", default=None, help="training-set index (default: the cached curate index)")
    parser.add_argument("--memorized-prompt", default=LAB_SMALL_MEMORIZED, help="a caption the lab model memorizes "
                        "(default: a 50-copy pair of the small sample data, seed 0)")  # fmt: skip
    for flag, default in (("--sd-size", 128), ("--sd-steps", 10), ("--lab-steps", 25), ("--rounds", 2),
                          ("--sd-rounds", 1), ("--sd-popt-iters", 2), ("--threads", 1)):  # fmt: skip
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--no-lab", action="store_true", help="sd15-arch only")
    parser.add_argument("--device", default="cpu")


def _summary(report: dict[str, Any]) -> str:
    return "; ".join(f"{name}: " + ", ".join(f"{k} {v:.3g}" for k, v in res["ratios"].items())
                     for name, res in report["models"].items())  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return script_main(argv, __doc__, "mitigation", _add_args, _measure, _summary)


if __name__ == "__main__":
    sys.exit(main())
