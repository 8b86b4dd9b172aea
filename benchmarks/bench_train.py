"""Fine-tuning step time and memory: the §5 filter against none, LoRA against full (``copyguard train``).

    python -m benchmarks.bench_train [--quick] [--machine TAG] [--out DIR] [--model DIR] [--data GLOB]
                                     [--steps 40] [--rounds 2] [--batch-size 16]

Goal (issue 6): step time with the filter <= 1.3x the step time without it. Each configuration is one real
``copyguard train`` run in its own process (so its peak RSS is its own), on the same model, shards, seed
and batch size:

- ``full`` / ``lora``: no filter;
- ``full+filter`` / ``lora+filter``: the filter with one batched UNet call on 2B samples (§5;
  ``filter.batched=true``, the default on CUDA);
- ``full+filter_seq`` / ``lora+filter_seq``: the filter with the unconditional half as a second, no-grad
  call (``filter.batched=false``, the default elsewhere: ``filter.batched=auto``).

The goal is judged on the configuration the default (``auto``) picks on the measured device.

The step time of a run is the median over its steps after the first two; the rounds alternate the
configurations so that all see the same machine load, and every ratio is the median of its per-round
ratios. Memory: the process's peak RSS minus its RSS after the models loaded (CPU), or the peak CUDA
allocation (GPU). Defaults: the ``small`` lab model from the lab cache (``copyguard.pipelines.lab.cache``,
trained on first use) and the tiny sample data built in a temporary folder; ``--quick`` runs a few steps
on the tiny lab model instead (from the same cache, unless ``--model`` is given).
Writes ``benchmarks/results/<machine>/train.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import add_common_args, begin, finish, setup_logging, write_result

log = logging.getLogger("benchmarks.bench_train")
GOAL_FILTER_RATIO = 1.3
CONFIGS: dict[str, list[str]] = {
    "full": ["train.mode=full"],
    "full+filter": ["train.mode=full", "train.filter.enabled=true", "train.filter.batched=true"],
    "full+filter_seq": ["train.mode=full", "train.filter.enabled=true", "train.filter.batched=false"],
    "lora": ["train.mode=lora"],
    "lora+filter": ["train.mode=lora", "train.filter.enabled=true", "train.filter.batched=true"],
    "lora+filter_seq": ["train.mode=lora", "train.filter.enabled=true", "train.filter.batched=false"],
}


def train_once(
    model: str, data: str, out: Path, sets: list[str], steps: int, batch: int, threads: int
) -> dict:
    """One ``copyguard train`` process; returns its ``training.json``."""
    base = [f"train.max_steps={steps}", f"train.batch_size={batch}", f"train.threads={threads}",
            "train.checkpoint_every=100000", "train.filter.calibrate_steps=2"]  # fmt: skip
    cmd = [sys.executable, "-m", "copyguard.pipelines", "-q", "train", "--model", model, "--data", data,
           "--out", str(out)]  # fmt: skip
    for s in base + sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"train failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads((out / "training.json").read_text())


def _memory_mib(summary: dict) -> float:
    if summary.get("cuda_peak_mib") is not None:
        return float(summary["cuda_peak_mib"])
    return float(summary["rss_peak_mib"] - summary["rss_after_load_mib"])


def run(machine: str, model: str, data: str | None, steps: int, rounds: int, batch: int, threads: int,
        quick: bool = False, argv: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    report = begin("train", "benchmarks.bench_train", argv, machine, quick, threads)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        if data is None:
            from copyguard.pipelines.lab.config import SampleDataConfig
            from copyguard.pipelines.lab.sample_data import build_sample_data

            build_sample_data(SampleDataConfig(preset="tiny"), Path(tmp) / "data")
            data = str(Path(tmp) / "data" / "*.tar")
        runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
        for r in range(rounds):
            for name, sets in CONFIGS.items():
                s = train_once(model, data, Path(tmp) / f"{name}-{r}", sets, steps, batch, threads)
                runs[name].append(s)
                log.info("round %d %-16s %.4f s/step, +%.0f MiB", r, name, s["step_s_median"], _memory_mib(s))

    def ratio(a: str, b: str, key: Any) -> float | None:
        """Median per-round ratio; None when the denominator was 0 (e.g. no memory growth in a smoke run)."""
        pairs = [key(x) / key(y) for x, y in zip(runs[a], runs[b], strict=True) if key(y)]
        return round(statistics.median(pairs), 3) if pairs else None

    step = lambda s: s["step_s_median"]  # noqa: E731
    configs = {
        name: {
            "step_s_median": round(statistics.median(step(s) for s in rs), 4),
            "step_s_per_round": [round(step(s), 4) for s in rs],
            "memory_mib": round(statistics.median(_memory_mib(s) for s in rs), 1),
            "rss_peak_mib": round(max(s["rss_peak_mib"] for s in rs), 1),
            "trainable_params": rs[0]["trainable_params"],
        }
        for name, rs in runs.items()
    }
    device = runs["full"][0]["device"]
    default = "full+filter" if str(device).startswith("cuda") else "full+filter_seq"
    summary = {
        "filter_ratio_full": ratio("full+filter", "full", step),
        "filter_ratio_lora": ratio("lora+filter", "lora", step),
        "filter_seq_ratio_full": ratio("full+filter_seq", "full", step),
        "filter_seq_ratio_lora": ratio("lora+filter_seq", "lora", step),
        "default_filter_config": default,
        "filter_ratio_default": ratio(default, "full", step),
        "lora_vs_full_step": ratio("lora", "full", step),
        "lora_vs_full_memory": ratio("lora", "full", _memory_mib),
        "goal_filter_ratio": GOAL_FILTER_RATIO,
    }
    default_ratio = summary["filter_ratio_default"]
    summary["passes"] = default_ratio is not None and default_ratio <= GOAL_FILTER_RATIO
    report.update({
        "settings": {"model": model, "data": data, "steps": steps, "rounds": rounds, "batch_size": batch,
                     "threads": threads, "device": runs["full"][0]["device"],
                     "resolution": runs["full"][0]["resolution"]},
        "configs": configs,
        "summary": summary,
    })  # fmt: skip
    return finish(report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--model", default=None, help="diffusers SD folder (default: the cached lab model)")
    parser.add_argument("--data", default=None, help="shards (default: the tiny sample data, built)")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds over the configurations")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="CPU torch threads per run (default 1)")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    steps, rounds = (6, 1) if args.quick else (args.steps, args.rounds)
    model = args.model
    if model is None:
        from copyguard.pipelines.lab.cache import DEFAULT_CACHE, cached_lab_model

        model = str(cached_lab_model("tiny" if args.quick else "small", cache=DEFAULT_CACHE)[0])
    report = run(
        args.machine, model, args.data, steps, rounds, args.batch_size, args.threads, args.quick, argv
    )
    path = write_result(report, args.out, args.machine, "train")
    s = report["summary"]
    print(
        f"filter/none step time: default ({s['default_filter_config']}) {s['filter_ratio_default']}x (goal <= "
        f"{GOAL_FILTER_RATIO}: {'pass' if s['passes'] else 'FAIL'}); batched {s['filter_ratio_full']}x, "
        f"sequential {s['filter_seq_ratio_full']}x; "
        f"lora/full step {s['lora_vs_full_step']}x, memory {s['lora_vs_full_memory']}x; wrote {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
