"""Training-filter evidence: does the filter keep fine-tuning from memorizing freshly planted pairs?

The filter is the magnitude filtering of Wen et al., ICLR 2024, Sec. 5 (``copyguard train``'s
``train.filter``).

    python -m copyguard.pipelines.lab.filter_evidence [--machine TAG] [--out DIR] [--work DIR] [--model DIR]
        [--steps 600] [--percentile 95] [--calibrate-steps 50] [--timestep-buckets 1]
        [--rules percentile mad] [--mads 4] [--name train_evidence] [--note TEXT]

1. ``copyguard sample-data --seed 1`` with a custom small preset: 500 unique samples, 4 groups each of
   25 and 50 copies of one image-caption pair (``dup_pair``, 300 samples), a few of every other kind.
   The base model has never seen these pairs (measured: 0 % of their generations over the threshold).
2. 150 unique samples held out (:func:`~copyguard.pipelines.lab.data.load_lab_data`'s seeded choice): the
   FID reference; the rest written as the training shards. ``copyguard curate`` on those gives the curated
   shards.
3. ``copyguard train`` runs from ``--model`` (full UNet, lr 1e-3, batch 16, seed 0, ``--steps``):
   without the filter, with it once per rule of ``--rules`` (``percentile``: the ``--percentile`` of the
   first ``--calibrate-steps`` steps' magnitudes, run folder ``run_filter``; ``mad``: their median +
   ``--mads`` x 1.4826 x MAD, ``run_filter_mad_k<mads>``; one threshold per timestep bucket with
   ``--timestep-buckets N > 1``), and without it on the curated shards.
4. The lab's measurement (:func:`copyguard.pipelines.lab.evaluate.evaluate_memorization`: 4 seeds per prompt,
   DDIM 25 steps, CFG 7.5, SSCD to the prompt's own training image, the lab's calibrated 32 px threshold 0.4,
   FID of 150 held-out captions' generations against the held-out images) on the base model and the three
   runs. Every step keeps its output in ``--work`` and is skipped when it is there.

Writes ``benchmarks/results/<machine>/train_evidence.json``. About 40 CPU minutes on a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from copyguard.pipelines.lab.results import (
    add_result_args,
    begin_result,
    finish_result,
    setup_logging,
    write_result,
)

__all__ = [
    "filter_run_name",
    "filter_sets",
    "main",
    "measure",
    "prepare_data",
    "row",
    "run",
    "summarize",
    "train_facts",
    "train_run",
]

log = logging.getLogger(__name__)
MODULE = "copyguard.pipelines.lab.filter_evidence"
PRESET = "sample_data.presets.small"
SAMPLE_SETS = [f"{PRESET}.unique=500", f"{PRESET}.image_groups=4", f"{PRESET}.caption_groups=4",
               f"{PRESET}.dup_counts=[25, 50]", f"{PRESET}.dup_groups_per_count=4", f"{PRESET}.template_groups=3",
               f"{PRESET}.broken_per_kind=3", f"{PRESET}.samples_per_shard=150"]  # fmt: skip
HELDOUT = 150
GOAL_RELATIVE_CUT = 0.8
GOAL_FID_CHANGE = 0.05
MIN_MEMORIZED = 5  # memorized generations of the unfiltered run below which the goal is not judged


def _copyguard(*args: str) -> None:
    """One ``copyguard`` command in a child process (memory is returned between the steps)."""
    cmd = [sys.executable, "-m", "copyguard.pipelines", "-q", *args]
    log.info("%s", " ".join(cmd[2:]))
    subprocess.run(cmd, check=True)


def prepare_data(work: Path, curate: bool = True) -> dict[str, str]:
    """Sample data, the held-out split and (with ``curate``) the curated shards; returns the globs."""
    from copyguard.curation.records import Sample
    from copyguard.curation.shards import ShardWriter, iter_samples
    from copyguard.pipelines.lab.data import load_lab_data

    src, train, curated = work / "data", work / "train", work / "curated"
    if not (src / "ground_truth.jsonl").is_file():
        _copyguard("sample-data", "--preset", "small", "--seed", "1", "--output", str(src),
                   *[a for s in SAMPLE_SETS for a in ("--set", s)])  # fmt: skip
    if not (train / "ground_truth.jsonl").is_file():
        held = set(load_lab_data(str(src / "*.tar"), 32, HELDOUT, 0).heldout_keys)
        with ShardWriter(str(train), "shard", 150, 1 << 30) as writer:
            for s in iter_samples(sorted(glob.glob(str(src / "*.tar")))):
                if isinstance(s, Sample) and s.key not in held:
                    writer.write(s)
        shutil.copy(src / "ground_truth.jsonl", train / "ground_truth.jsonl")
    if curate and not (curated / "report.json").is_file():
        _copyguard("curate", "--input", str(train / "*.tar"), "--output", str(curated), "--overwrite")
    return {
        "source": str(src / "*.tar"),
        "train": str(train / "*.tar"),
        "curated": str(curated / "shards" / "*.tar"),
    }


OFF = ["train.filter.enabled=false"]  # the baselines train without the (default-on) filter


def train_run(model: str, data: str, out: Path, steps: int, extra: list[str]) -> dict[str, Any]:
    """``copyguard train`` from ``model`` on ``data`` into ``out`` (unless done); its ``training.json``."""
    sets = ["train.mode=full", f"train.max_steps={steps}", "train.lr=1e-3", "train.checkpoint_every=200",
            "train.seed=0", *extra]  # fmt: skip
    if not (out / "training.json").is_file():
        _copyguard(
            "train",
            "--model",
            model,
            "--input",
            data,
            "--output",
            str(out),
            *[a for s in sets for a in ("--set", s)],
        )
    return json.loads((out / "training.json").read_text())


def measure(name: str, model: str | Path, source: str, work: Path) -> dict[str, Any]:
    """The lab measurement on the seed-1 data (the training keys, the held-out FID reference)."""
    from copyguard.pipelines.lab.config import EvalConfig
    from copyguard.pipelines.lab.data import load_lab_data
    from copyguard.pipelines.lab.evaluate import evaluate_memorization

    path = work / f"{name}.eval.json"
    if path.is_file():
        return json.loads(path.read_text())
    data = load_lab_data(source, 32, HELDOUT, 0)
    spec = EvalConfig(
        seeds=4, steps=25, unique_prompts=20, fid_images=HELDOUT, calibration_images=16, threshold=0.4
    )
    res = evaluate_memorization(
        model, data, spec, device=torch.device("cpu"), seed=0, grid_path=work / f"{name}.png"
    )
    res.pop("generations", None)
    path.write_text(json.dumps(res, indent=1))
    return res


def row(res: dict[str, Any]) -> dict[str, Any]:
    """The figures of one model: planted pairs' share over the threshold and Top5 %, per copy count, FID."""
    thr = f"pct_gt_{res['threshold']:g}"
    out = {
        "dup_share_over_threshold_pct": res["all_dup"]["sscd_own"][thr],
        "dup_top5pct": res["all_dup"]["sscd_own"]["top5pct"],
        "dup_mean": res["all_dup"]["sscd_own"]["mean"],
        "dup_generations": res["all_dup"]["sscd_own"].get("n"),
        "unique_share_over_threshold_pct": res["by_copies"]["unique"]["sscd_own"][thr],
        "fid": res["fid"]["fid"],
    }
    for c in ("25", "50"):
        if c in res["by_copies"]:
            out[f"copies_{c}_share_pct"] = res["by_copies"][c]["sscd_own"][thr]
    return out


def summarize(rows: dict[str, dict[str, Any]], filter_name: str = "run_filter") -> dict[str, Any]:
    """The goal: the filter cuts the planted pairs' memorized share by >= 80 % for <= 5 % FID change
    (``passes`` None when the unfiltered run memorized fewer than :data:`MIN_MEMORIZED` generations).

    ``filter_name``: the filter run's folder name; ``<name>_s12`` rows (the same models measured with 12
    seeds per prompt, kept in the work folder) add the 12-seed figures."""
    from copyguard.mitigation.evaluation.evidence import relative_change_pct

    def cut_of(no_filter: dict[str, Any], with_filter: dict[str, Any]) -> float | None:
        """The relative cut of the memorized share (1 = all gone; None when nothing was memorized)."""
        change = relative_change_pct(
            with_filter["dup_share_over_threshold_pct"], no_filter["dup_share_over_threshold_pct"]
        )
        return None if change is None else round(-change / 100, 3)

    plain, filt = rows["no_filter"], rows["filter"]
    share = plain["dup_share_over_threshold_pct"]
    # a cut of one or two memorized generations is noise: judge only with MIN_MEMORIZED of them unfiltered
    n = plain.get("dup_generations")
    judged = n is None or share * n / 100 >= MIN_MEMORIZED - 1e-9
    cut = cut_of(plain, filt)
    fid_change = relative_change_pct(filt["fid"], plain["fid"])
    fid_change = None if fid_change is None else fid_change / 100
    extra = {}
    if "run_nofilter_s12" in rows and f"{filter_name}_s12" in rows:  # the same models, 12 seeds
        a, b = rows["run_nofilter_s12"], rows[f"{filter_name}_s12"]
        extra = {
            "memorized_share_no_filter_pct_12_seeds": a["dup_share_over_threshold_pct"],
            "memorized_share_filter_pct_12_seeds": b["dup_share_over_threshold_pct"],
            "memorized_share_relative_cut_12_seeds": cut_of(a, b),
        }
    return {
        **extra,
        "memorized_share_no_filter_pct": share,
        "memorized_share_filter_pct": filt["dup_share_over_threshold_pct"],
        "memorized_share_curated_pct": rows["curated"]["dup_share_over_threshold_pct"]
        if "curated" in rows
        else None,
        "memorized_share_relative_cut": cut,
        "fid_relative_change": None if fid_change is None else round(fid_change, 4),
        "goal_relative_cut": GOAL_RELATIVE_CUT,
        "goal_fid_change": GOAL_FID_CHANGE,
        "passes": None
        if not judged
        else cut is not None
        and cut >= GOAL_RELATIVE_CUT
        and fid_change is not None
        and abs(fid_change) <= GOAL_FID_CHANGE,
        "passes_12_seeds": (extra["memorized_share_relative_cut_12_seeds"] or 0) >= GOAL_RELATIVE_CUT
        if extra
        else None,
    }


FILTER_FACTS = ("threshold", "bucket_thresholds", "threshold_source", "samples_seen", "samples_filtered",
                "unique_keys_filtered", "recalibrations")  # fmt: skip


def drop_shares(run_dir: Path, train_glob: str) -> dict[str, float]:
    """Share (%) of the draws of each ground-truth kind that the filter dropped in run ``run_dir``: its
    ``filtered.jsonl`` rows of that kind over the kind's expected draws (``samples_seen`` spread evenly over
    the training samples, which every epoch draws once). ``unique`` are the clean samples, ``dup_pair`` the
    freshly planted copies."""
    from copyguard.curation.records import Sample
    from copyguard.curation.shards import iter_samples

    keys = {r.key for r in iter_samples(train_glob) if isinstance(r, Sample)}
    truth = Path(train_glob).parent / "ground_truth.jsonl"
    kinds = {r["key"]: r["kind"] for r in map(json.loads, truth.read_text().splitlines()) if r["key"] in keys}
    seen = json.loads((run_dir / "training.json").read_text())["filter"]["samples_seen"]
    log_path = run_dir / "filtered.jsonl"
    rows = log_path.read_text().splitlines() if log_path.is_file() else []
    dropped = Counter(kinds.get(json.loads(r)["key"]) for r in rows)
    per_key = seen / max(len(kinds), 1)
    counts = sorted(Counter(kinds.values()).items())
    return {kind: round(100 * dropped[kind] / (n * per_key), 2) if per_key else 0.0 for kind, n in counts}


def run_facts(run_dir: Path, train_glob: str) -> dict[str, Any]:
    """:func:`train_facts` of the run in ``run_dir`` (none before it is trained) and, when its filter was on,
    the dropped share of each kind's draws (:func:`drop_shares`, ``draws_dropped_pct``)."""
    path = run_dir / "training.json"
    if not path.is_file():
        return {}
    training = json.loads(path.read_text())
    facts = train_facts(training)
    if training["filter"].get("enabled"):
        facts["draws_dropped_pct"] = drop_shares(run_dir, train_glob)
    return facts


def train_facts(training: dict[str, Any]) -> dict[str, Any]:
    """What a run's ``training.json`` says about its steps, time and filter."""
    return {
        "steps": training["steps"],
        "train_s": round(training["total_s"], 1),
        "step_s_median": training["step_s_median"],
        "filter": {x: training["filter"].get(x) for x in FILTER_FACTS},
    }


def run(
    machine: str,
    work: Path,
    model: str,
    steps: int,
    percentile: float,
    calibrate: int,
    note: str = "",
    argv: list[str] | None = None,
    buckets: int = 1,
    rules: tuple[str, ...] = ("percentile",),
    mads: float = 4.0,
    name: str = "train_evidence",
    curated: bool = True,
    recalibrate: int = 0,
) -> dict[str, Any]:
    """Data, the training runs (no filter, one per filter rule of ``rules``, curated unless ``curated`` is
    false) and their measurements (each kept in ``work``); the result body. The first rule's run is the
    ``filter`` row; with several rules each also has a ``filter_<rule>`` row and a ``by_rule`` summary.

    Earlier measurements kept in ``work`` (``<name>.eval.json``, e.g. shorter runs or 12-seed ones) are
    added to the models' rows."""
    report = begin_result(name, MODULE, argv, machine)
    torch.set_num_threads(1)
    globs = prepare_data(work, curate=curated)
    filter_dirs = {
        rule: work / filter_run_name(rule, percentile, mads, buckets, recalibrate) for rule in rules
    }
    train_run(model, globs["train"], work / "run_nofilter", steps, OFF)
    for rule, folder in filter_dirs.items():
        train_run(
            model,
            globs["train"],
            folder,
            steps,
            filter_sets(rule, percentile, mads, calibrate, buckets, recalibrate),
        )
    if curated:
        train_run(model, globs["curated"], work / "run_curated", steps, OFF)
    filter_dir = filter_dirs[rules[0]]
    names = {"no_filter": work / "run_nofilter", "filter": filter_dir}
    if curated:
        names["curated"] = work / "run_curated"
    if len(rules) > 1:
        names |= {f"filter_{rule}": folder for rule, folder in filter_dirs.items()}
    rows = {"base": row(measure("base", model, globs["source"], work))}
    rows |= {k: row(measure(v.name, v, globs["source"], work)) for k, v in names.items()}
    for extra in sorted(work.glob("*.eval.json")):
        name = extra.name.removesuffix(".eval.json")
        if name not in {"base", *(v.name for v in names.values())}:
            rows[name] = row(json.loads(extra.read_text())) | run_facts(work / name, globs["train"])
    for k, folder in names.items():
        rows[k].update(run_facts(folder, globs["train"]))
    report["settings"] = {
        "model": model,
        "steps": steps,
        "rules": list(rules),
        "mads": mads,
        "percentile": percentile,
        "calibrate_steps": calibrate,
        "timestep_buckets": buckets,
        "recalibrate_every": recalibrate,
        "heldout": HELDOUT,
        "sample_data": SAMPLE_SETS,
        "work": str(work),
        "note": note,
    }
    report["models"] = rows
    report["summary"] = summarize(rows, filter_dir.name)
    if len(rules) > 1:
        report["summary"]["by_rule"] = {
            rule: summarize({**rows, "filter": rows[f"filter_{rule}"]}, folder.name)
            for rule, folder in filter_dirs.items()
        }
    return finish_result(report)


def filter_run_name(rule: str, percentile: float, mads: float, buckets: int, recalibrate: int = 0) -> str:
    """The run folder of a filter run (the percentile rule keeps the recorded runs' names)."""
    again = f"_re{recalibrate}" if recalibrate else ""
    if rule == "mad":
        return f"run_filter_mad_k{mads:g}" + ("" if buckets == 1 else f"_tb{buckets}") + again
    return ("run_filter" if buckets == 1 else f"run_filter_tb{buckets}_p{percentile:g}") + again


def filter_sets(rule: str, percentile: float, mads: float, calibrate: int, buckets: int,
                recalibrate: int = 0) -> list[str]:  # fmt: skip
    """The ``--set`` overrides of one filter run."""
    return [
        "train.filter.enabled=true",
        f"train.filter.rule={rule}",
        f"train.filter.percentile={percentile}",
        f"train.filter.mads={mads}",
        f"train.filter.calibrate_steps={calibrate}",
        f"train.filter.timestep_buckets={buckets}",
        f"train.filter.recalibrate_every={recalibrate}",  # 0: calibrated once (the config's default is 20)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_result_args(parser)
    parser.add_argument(
        "--work", default=".cache/copyguard/train_evidence", help="working folder (data, runs, evals)"
    )
    parser.add_argument("--model", default=None, help="base model (default: the cached small lab model)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--percentile", type=float, default=95.0)
    parser.add_argument("--calibrate-steps", type=int, default=50)
    parser.add_argument("--timestep-buckets", type=int, default=1,
                        help="train.filter.timestep_buckets of the filter run (1: one threshold)")  # fmt: skip
    parser.add_argument("--rules", nargs="+", choices=("percentile", "mad"), default=["percentile"],
                        help="the filter rules to train with, one run each (the first is the reported filter)")  # fmt: skip
    parser.add_argument("--mads", type=float, default=4.0, help="train.filter.mads of the mad rule")
    parser.add_argument("--recalibrate-every", type=int, default=0,
                        help="train.filter.recalibrate_every of the filter runs (0: calibrate once)")  # fmt: skip
    parser.add_argument("--name", default="train_evidence", help="the result's name (its JSON file)")
    parser.add_argument("--no-curated", action="store_true", help="skip the run on the curated shards")
    parser.add_argument("--note", default="", help="free text recorded with the settings")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        from copyguard.pipelines.lab.cache import cached_lab_model

        model = str(cached_lab_model("small")[0])
    report = run(
        args.machine,
        work,
        model,
        args.steps,
        args.percentile,
        args.calibrate_steps,
        args.note,
        argv,
        args.timestep_buckets,
        tuple(dict.fromkeys(args.rules)),
        args.mads,
        args.name,
        not args.no_curated,
        args.recalibrate_every,
    )
    path = write_result(report, args.out, args.machine, args.name)
    print(json.dumps(report["summary"]), f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
