"""``make demo``: the whole copyguard workflow on the bundled default, end to end.

Stages (``--preset small``, the default; ``tiny`` is ``make demo-quick``):

1. the bundled sample data (real photographs and captions with planted duplicates), cached;
2. the lab model: a small Stable Diffusion trained from scratch on it, which memorizes the planted pairs
   (trained once into ``.cache/copyguard``, then reused: see ``copyguard.pipelines.lab.cache``);
3. curation of that data (MinHash captions + SSCD/FAISS images, Apache Beam), scored against the truth;
4. new fine-tuning data with freshly planted duplicated pairs, and its curation (the index the second
   audit looks images up in; it also shows what curating first would have removed);
5. fine-tuning the lab model on the new data with the memorization filter on;
6. audits of the memorizing lab model and of the filtered fine-tune, each without and with AMG;
7. a summary table and the path of every report.

Outputs go to ``demo_out/`` (``--out``). Every stage prints its command and its time.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from copyguard.pipelines.cli import main as cli

__all__ = ["run_demo"]

# Per preset: fine-tuning data overrides (sample-data), fine-tuning steps, audit settings.
PRESETS: dict[str, dict[str, Any]] = {
    "small": {
        "finetune_data": [
            "sample_data.presets.small.unique=500",
            "sample_data.presets.small.dup_counts=[25, 50]",
            "sample_data.presets.small.dup_groups_per_count=4",
        ],
        "finetune_steps": 600,
        "audit": [  # one seed, sigma every 5th step: an audit in minutes on a CPU (defaults: 4 seeds, every step)
            "audit.seeds=[0]",
            "audit.num_inference_steps=25",
            "audit.detect.num_inference_steps=25",
            "audit.amg.gated=true",
            "audit.amg.check_every=5",
        ],
        "min_copies": 25,
        "unique_prompts": 12,
        "reference_prompts": 100,
    },
    "tiny": {
        "finetune_data": [],
        "finetune_steps": 40,
        "audit": [
            "audit.seeds=[0]",
            "audit.num_inference_steps=10",
            "audit.detect.num_inference_steps=10",
            "audit.amg.gated=true",
        ],  # fmt: skip
        "min_copies": 10,
        "unique_prompts": 6,
        "reference_prompts": 32,
    },
}


def _stage(title: str, argv: list[str], ok: tuple[int, ...] = (0,)) -> tuple[float, int]:
    print(f"\n=== {title}\n$ copyguard {' '.join(argv)}", flush=True)
    started = time.perf_counter()
    code = cli(argv)
    if code not in ok:
        print(f"demo: stage '{title}' failed with exit code {code}", file=sys.stderr)
        sys.exit(code)
    return time.perf_counter() - started, code


def _timed(title: str, fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    print(f"\n=== {title}", flush=True)
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def _audit(
    name: str, model: Path, index: Path, prompts: Path, refs: Path, out: Path, sets: list[str]
) -> float:
    argv = ["audit", "--model", str(model), "--index", str(index), "--prompts", str(prompts),
            "--reference-prompts", str(refs), "--output", str(out)]  # fmt: skip
    argv += [a for s in sets for a in ("--set", s)]  # the gate: configs/audit.yaml's defaults
    seconds, _ = _stage(
        name, argv, ok=(0, 1)
    )  # 1: the gate failed, which is what a memorizing model should do
    return seconds


def _share(groups: dict[str, Any], planted: bool) -> str:
    """%>0.4 over the planted pairs' groups (``copies=N``) or the unique prompts, weighted by images."""
    picked = [g for name, g in groups.items() if name.startswith("copies=") == planted]
    n = sum(g["n"] for g in picked)
    return "-" if not n else f"{sum(g['pct_gt_0.4'] * g['n'] for g in picked) / n:.1f}%"


def _audit_row(name: str, out: Path) -> list[str]:
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    det = report["metrics"]["detection"]
    settings = report["metrics"]["settings"]
    none, amg = settings["none"]["groups"], settings.get("amg", {}).get("groups", {})
    auc = det.get("auc")
    return [
        name,
        f"{det['flagged']}/{det['prompts']}",
        "-" if auc is None else f"{auc:.3f}",
        f"{_share(none, True)} -> {_share(amg, True)}",
        f"{_share(none, False)} -> {_share(amg, False)}",
        "passed" if report["gate"]["passed"] else "FAILED",
        str(out / "report.html"),
    ]


def run_demo(out: Path, preset: str, cache: Path | None = None) -> None:
    from copyguard.pipelines.lab.audit_prompts import write_audit_prompts
    from copyguard.pipelines.lab.cache import DEFAULT_CACHE, cached_lab_model, cached_sample_data

    spec = PRESETS[preset]
    cache = Path(cache or DEFAULT_CACHE)
    t: dict[str, float] = {}
    t["sample data"], data = _timed(f"1. sample data ({preset})", cached_sample_data, preset, cache=cache)
    print(f"sample data: {data}")
    t["lab model"], (model, _) = _timed(
        f"2. lab model ({preset}; trained once, then cached)", cached_lab_model, preset, cache=cache
    )
    print(f"lab model: {model} (card: {model / 'README.md'})")
    curated = out / "curated"
    t["curate"], _ = _stage(
        "3. curate: MinHash captions + SSCD/FAISS images (Apache Beam)",
        ["curate", "--input", str(data / "*.tar"), "--output", str(curated), "--overwrite"],
    )
    t["eval-dedup"], _ = _stage(
        "3b. score the curation against the planted ground truth",
        ["eval-dedup", "--manifest", str(curated), "--truth", str(data / "ground_truth.jsonl")],
    )
    ft_data, ft_curated = out / "finetune_data", out / "finetune_curated"
    argv = ["sample-data", "--output", str(ft_data), "--preset", preset, "--seed", "1", "--overwrite"]
    t["fine-tune data"], _ = _stage(
        "4. fine-tuning data with freshly planted duplicated pairs",
        argv + [a for s in spec["finetune_data"] for a in ("--set", s)],
    )
    t["curate fine-tune data"], _ = _stage(
        "4b. curate it (its index serves the second audit)",
        ["curate", "--input", str(ft_data / "*.tar"), "--output", str(ft_curated), "--overwrite"],
    )
    run = out / "finetuned"
    sets = ["train.mode=full", f"train.max_steps={spec['finetune_steps']}", "train.lr=1e-3",
            "train.checkpoint_every=200", "train.filter.calibrate_steps=20"]  # the filter's default rule  # fmt: skip
    t["fine-tune"], _ = _stage(
        "5. fine-tune the lab model on it with the memorization filter (Wen et al., ICLR 2024)",
        ["train", "--model", str(model), "--input", str(ft_data / "*.tar"), "--output", str(run)]
        + [a for s in sets for a in ("--set", s)],
    )
    counts = {"min_copies": spec["min_copies"], "unique": spec["unique_prompts"],
              "reference": spec["reference_prompts"]}  # fmt: skip
    prompts_lab = write_audit_prompts(data, out / "prompts_lab", **counts)
    prompts_ft = write_audit_prompts(ft_data, out / "prompts_finetune", **counts)
    audits = {"lab model (memorizing)": (model, curated, prompts_lab, out / "audit_lab")}
    audits["fine-tuned with the filter"] = (run, ft_curated, prompts_ft, out / "audit_finetuned")
    for n, (name, (m, cur, (prompts, refs), dest)) in enumerate(audits.items()):
        t[f"audit {n + 1}"] = _audit(
            f"6.{n + 1} audit: {name}, without and with AMG",
            m,
            cur / "index",
            prompts,
            refs,
            dest,
            spec["audit"],
        )
    training = json.loads((run / "training.json").read_text(encoding="utf-8"))
    filt = training.get("filter", {})
    print("\n=== summary")
    report = json.loads((ft_curated / "report.json").read_text(encoding="utf-8"))
    print(f"curation of the fine-tuning data: {report['by_status']} (duplicates removed before any training)")
    print(
        f"fine-tuning filter: {filt.get('samples_filtered', 0)} of {filt.get('samples_seen', 0)} samples left the "
        f"loss (threshold {filt.get('threshold')}, {filt.get('threshold_source')}); log: {run / 'filtered.jsonl'}"
    )
    head = [
        "audited model",
        "flagged",
        "AUC",
        "planted pairs: none -> AMG",
        "unique: none -> AMG",
        "gate",
        "report",
    ]
    rows = [_audit_row(name, dest) for name, (_, _, _, dest) in audits.items()]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    print("shares: generations with SSCD > 0.4 to their nearest training image (the lab's 32 px threshold)")
    print(
        "times: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in t.items())
        + f"; total {sum(t.values()) / 60:.1f} min"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m copyguard.pipelines.demo", description=__doc__)
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="small")
    parser.add_argument("--cache", default=None, help="lab model cache (default: .cache/copyguard)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    run_demo(Path(args.out), args.preset, Path(args.cache) if args.cache else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
