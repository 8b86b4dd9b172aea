"""How the training filter's threshold rules split a model's training samples: clean against duplicated.

The filter of Wen et al. (ICLR 2024) drops a sample from a step's loss when its text-conditional magnitude
``m_i = ||eps(x_t, e_i) - eps(x_t, e_0)||`` at its random timestep reaches the threshold, calibrated on the
first ``calibrate_steps`` steps. This measures, on a trained model and its labelled training shards
(``ground_truth.jsonl`` beside them: ``copies`` per key), the magnitudes the filter would see (several
random ``(t, noise)`` draws per sample, as training makes them), calibrates each rule on a random stand-in for
the first steps, and reports per rule the share of draws it drops among clean samples (``copies == 1``) and
among duplicated ones (by copy count). A rule that suits a default drops (almost) no clean draws and many of
the duplicated ones; a percentile always drops its share of whatever it sees.

    python -m copyguard.pipelines.lab.filter_rules --model MODEL_DIR --input 'DATA/*.tar' --name filter_rules_small

writes ``benchmarks/results/<machine>/<name>.json`` with the commit, machine and command (or ``--output PATH``).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from copyguard.common.fileops import atomic_write, expand_paths
from copyguard.curation.records import Sample
from copyguard.curation.shards import iter_samples
from copyguard.pipelines.lab.results import (
    add_result_args,
    begin_result,
    finish_result,
    setup_logging,
    write_result,
)
from copyguard.train.config import FilterConfig
from copyguard.train.finetune_data import prepare_image
from copyguard.train.mem_filter import bucket_thresholds, filtered_prediction, timestep_bucket
from copyguard.train.sd_models import encode_text, load_models

__all__ = ["RULES", "rule_table", "training_magnitudes"]

# rule name -> the FilterConfig fields it sets (timestep buckets as the default filter)
RULES: dict[str, dict[str, Any]] = {
    "mad_k3": {"rule": "mad", "mads": 3.0},
    "mad_k4 (default)": {"rule": "mad", "mads": 4.0},
    "mad_k6": {"rule": "mad", "mads": 6.0},
    "mad_k8": {"rule": "mad", "mads": 8.0},
    "p95": {"rule": "percentile", "percentile": 95.0},
    "p99": {"rule": "percentile", "percentile": 99.0},
}


def _copies(shards: str) -> dict[str, int]:
    paths = expand_paths(shards)
    if not paths:
        raise SystemExit(f"no shards match {shards}")
    truth = Path(paths[0]).parent / "ground_truth.jsonl"
    rows = [json.loads(line) for line in truth.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["key"]: int(r.get("copies", 1)) for r in rows}


@torch.no_grad()
def training_magnitudes(model: str, shards: str, draws: int = 4, batch: int = 16, seed: int = 0) -> dict:
    """``{"magnitude", "timestep", "copies"}`` arrays: ``draws`` random (t, noise) draws per training sample."""
    m = load_models(model)
    unet, vae, sched = m["unet"].eval(), m["vae"].eval(), m["scheduler"]
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    size = int(unet.config.sample_size) * factor
    copies = _copies(shards)
    samples = [s for s in iter_samples(shards) if isinstance(s, Sample) and s.key in copies]
    e0 = encode_text(m, [""], torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    mags, ts, cps = [], [], []
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        pixels = np.stack(
            [prepare_image(Image.open(io.BytesIO(s.image)), size, True, False, rng) for s in chunk]
        )
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        latents = vae.encode(x).latent_dist.mean * float(vae.config.scaling_factor)
        cond = encode_text(m, [s.caption for s in chunk], torch.device("cpu"))
        for _ in range(draws):
            t = torch.randint(0, sched.config.num_train_timesteps, (len(chunk),), generator=gen)
            noisy = sched.add_noise(latents, torch.randn(latents.shape, generator=gen), t)
            _, magnitude = filtered_prediction(unet, noisy, t, cond, e0, batched=False)
            mags += magnitude.tolist()
            ts += t.tolist()
            cps += [copies[s.key] for s in chunk]
    return {"magnitude": np.array(mags), "timestep": np.array(ts), "copies": np.array(cps),
            "num_train_timesteps": int(sched.config.num_train_timesteps)}  # fmt: skip


def rule_table(
    data: dict[str, Any], calibration: int = 160, buckets: int = 10, seed: int = 0
) -> dict[str, Any]:
    """Per rule of :data:`RULES`: calibrated on ``calibration`` random draws (the first steps' stand-in), the
    share (%) of clean and of duplicated draws at or above their bucket's threshold."""
    mags, ts, copies, t_max = data["magnitude"], data["timestep"], data["copies"], data["num_train_timesteps"]
    pick = np.random.default_rng(seed).choice(len(mags), size=min(calibration, len(mags)), replace=False)
    bucket = timestep_bucket(ts, buckets, t_max)
    out: dict[str, Any] = {}
    for name, fields in RULES.items():
        spec = FilterConfig(timestep_buckets=buckets, **fields)
        _, per = bucket_thresholds(mags[pick].tolist(), ts[pick].tolist(), spec, buckets, t_max)
        dropped = mags >= np.asarray(per)[bucket]
        row = {"clean_dropped_pct": round(100 * float(dropped[copies == 1].mean()), 2)}
        for c in sorted(set(copies.tolist()) - {1}):
            row[f"copies_{c}_dropped_pct"] = round(100 * float(dropped[copies == c].mean()), 2)
        row["duplicated_dropped_pct"] = round(100 * float(dropped[copies > 1].mean()), 2)
        out[name] = row
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m copyguard.pipelines.lab.filter_rules", description=__doc__
    )
    parser.add_argument("--model", required=True, help="a trained lab model (diffusers folder)")
    parser.add_argument("--input", required=True, help="its training shards (ground_truth.jsonl beside them)")
    parser.add_argument("--name", default="filter_rules", help="the result's name (its JSON file)")
    parser.add_argument("--output", default=None, help="JSON to write (default: the results folder, --name)")
    parser.add_argument("--draws", type=int, default=4, help="random (t, noise) draws per sample")
    parser.add_argument("--calibration", type=int, default=160, help="draws the rules calibrate on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="free text recorded with the result")
    add_result_args(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.quick:  # a smoke run: one draw per sample, a quarter of the calibration draws
        args.draws, args.calibration = 1, max(args.calibration // 4, 20)
    report = begin_result(args.name, "copyguard.pipelines.lab.filter_rules", argv, args.machine, args.quick)
    data = training_magnitudes(args.model, args.input, args.draws, seed=args.seed)
    table = rule_table(data, args.calibration, seed=args.seed)
    report |= {
        "model": args.model,
        "input": args.input,
        "draws": args.draws,
        "calibration_draws": args.calibration,
        "samples": int(len(data["magnitude"]) // max(args.draws, 1)),
        "clean_share_pct": round(100 * float((data["copies"] == 1).mean()), 1),
        "rules": table,
        "note": args.note,
    }
    if args.output:
        atomic_write(args.output, json.dumps(finish_result(report), indent=1))
    else:
        write_result(report, args.out, args.machine, args.name)
    print(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
