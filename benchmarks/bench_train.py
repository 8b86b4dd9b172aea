"""Fine-tuning step time and memory: the memorization filter against none, LoRA against full (``copyguard train``).

    python -m benchmarks.bench_train [--quick] [--machine TAG] [--out DIR] [--model DIR] [--data GLOB]
                                     [--steps 40] [--rounds 2] [--batch-size 16] [--threads 1]

Goal: step time with the filter <= 1.3x without it. Writes ``benchmarks/results/<machine>/train.json``;
the configurations and how they are timed: docs/benchmark-methods-gpu.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import begin, finish, script_main
from copyguard.common.timing import median_ratio

log = logging.getLogger("benchmarks.bench_train")
GOAL_FILTER_RATIO = 1.3
FILTER = {
    "": ["train.filter.enabled=false"],
    "+filter": ["train.filter.enabled=true", "train.filter.batched=true"],
    "+filter_seq": ["train.filter.enabled=true", "train.filter.batched=false"],
}
# full, full+filter, full+filter_seq, lora, lora+filter, lora+filter_seq
CONFIGS = {
    f"{mode}{f}": [f"train.mode={mode}", *sets] for mode in ("full", "lora") for f, sets in FILTER.items()
}


def train_once(
    model: str, data: str, out: Path, sets: list[str], steps: int, batch: int, threads: int
) -> dict:
    """One ``copyguard train`` process (its peak RSS is its own); returns its ``training.json``."""
    base = [f"train.max_steps={steps}", f"train.batch_size={batch}", f"train.threads={threads}",
            "train.checkpoint_every=100000", "train.filter.calibrate_steps=2"]  # fmt: skip
    cmd = [sys.executable, "-m", "copyguard.pipelines", "-q", "train", "--model", model, "--input", data,
           "--output", str(out), *(a for s in base + sets for a in ("--set", s))]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"train failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads((out / "training.json").read_text())


def _memory_mib(summary: dict) -> float:
    """Peak CUDA allocation, else peak RSS minus the RSS after the models loaded."""
    if summary.get("cuda_peak_mib") is not None:
        return float(summary["cuda_peak_mib"])
    return float(summary["rss_peak_mib"] - summary["rss_after_load_mib"])


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="diffusers SD folder (default: the cached lab model)")
    parser.add_argument("--data", default=None, help="shards (default: the tiny sample data, built)")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds over the configurations")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="CPU torch threads per run (default 1)")


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every configuration ``--rounds`` times, alternating; returns the result JSON body."""
    model = args.model
    if model is None:
        from copyguard.pipelines.lab.cache import DEFAULT_CACHE, cached_lab_model

        model = str(cached_lab_model("tiny" if args.quick else "small", cache=DEFAULT_CACHE)[0])
    steps, rounds = (6, 1) if args.quick else (args.steps, args.rounds)
    data, batch, threads = args.data, args.batch_size, args.threads
    report = begin("train", "benchmarks.bench_train", args.argv, args.machine, args.quick, threads)
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        if data is None:
            from copyguard.pipelines.lab.config import SampleDataConfig
            from copyguard.pipelines.lab.sample_data import build_sample_data

            build_sample_data(SampleDataConfig(preset="tiny"), Path(tmp) / "data")
            data = str(Path(tmp) / "data" / "*.tar")
        for r in range(rounds):
            for name, sets in CONFIGS.items():
                s = train_once(model, data, Path(tmp) / f"{name}-{r}", sets, steps, batch, threads)
                runs[name].append(s)
                log.info("round %d %-16s %.4f s/step, +%.0f MiB", r, name, s["step_s_median"], _memory_mib(s))

    def ratio(a: str, b: str, key: Callable[[dict], float] = lambda s: s["step_s_median"]) -> float | None:
        """Median per-round ratio; None when every denominator was 0 (no memory growth in a smoke run)."""
        r = median_ratio([key(x) for x in runs[a]], [key(y) for y in runs[b]])
        return None if r is None else round(r, 3)

    configs = {
        name: {"step_s_median": round(statistics.median(s["step_s_median"] for s in rs), 4),
               "step_s_per_round": [round(s["step_s_median"], 4) for s in rs],
               "memory_mib": round(statistics.median(_memory_mib(s) for s in rs), 1),
               "rss_peak_mib": round(max(s["rss_peak_mib"] for s in rs), 1),
               "trainable_params": rs[0]["trainable_params"]}
        for name, rs in runs.items()
    }  # fmt: skip
    first = runs["full"][0]
    batched = str(first["device"]).startswith("cuda")  # what filter.batched=auto picks
    default = "full+filter" if batched else "full+filter_seq"
    summary = {
        f"filter{seq}_ratio_{mode}": ratio(f"{mode}+filter{seq}", mode)
        for seq in ("", "_seq")
        for mode in ("full", "lora")
    }
    summary.update(default_filter_config=default, filter_ratio_default=ratio(default, "full"),
                   lora_vs_full_step=ratio("lora", "full"), lora_vs_full_memory=ratio("lora", "full", _memory_mib),
                   goal_filter_ratio=GOAL_FILTER_RATIO)  # fmt: skip
    summary["passes"] = (
        summary["filter_ratio_default"] is not None and summary["filter_ratio_default"] <= GOAL_FILTER_RATIO
    )
    report["settings"] = {"model": model, "data": data, "steps": steps, "rounds": rounds, "batch_size": batch,
                          "threads": threads, "device": first["device"], "resolution": first["resolution"]}  # fmt: skip
    return finish({**report, "configs": configs, "summary": summary})


def _summary(report: dict[str, Any]) -> str:
    s = report["summary"]
    return (f"filter/none step time: default ({s['default_filter_config']}) {s['filter_ratio_default']}x (goal <= "
            f"{GOAL_FILTER_RATIO}: {'pass' if s['passes'] else 'FAIL'}); batched {s['filter_ratio_full']}x, "
            f"sequential {s['filter_seq_ratio_full']}x; lora/full step {s['lora_vs_full_step']}x, "
            f"memory {s['lora_vs_full_memory']}x")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return script_main(argv, __doc__, "train", _add_args, _measure, _summary)


if __name__ == "__main__":
    sys.exit(main())
