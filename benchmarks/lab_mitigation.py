"""Detection and mitigation evidence on a lab model (issue 5; Wen et al., ICLR 2024; Chen et al., CVPR 2024; Somepalli et al., NeurIPS 2023).

    python -m benchmarks.lab_mitigation --model models/lab-small --data 'data/small/*.tar' \
        --index out/index [--seeds 4] [--unique-prompts 50] [--fid-images 200] [--steps 25] \
        [--methods none,gni,...] [--machine TAG] [--docs docs/mitigation.md]

``--data`` must be the shards the model was trained on (``copyguard sample-data`` with the model's preset
and seed); the script checks that the model's held-out keys (``lab_training.json``) are among them.
``--index`` is ``OUT/index`` of ``copyguard curate`` on those shards (SSCD embedder).

1. **Detection** (§2): the text-conditional magnitude of every duplicated-group caption and every unique
   training caption along the ordinary CFG trajectory (:class:`~copyguard.mitigation.detect.Detector`),
   ROC AUC and TPR@1%FPR (:func:`copyguard.mitigation.evaluation.evidence.detection_roc`) for memorized (>= 25 copies)
   and for all duplicated prompts against the unique ones, at the first step with n = 1 and n = 4
   generations and over all steps. A threshold is calibrated at 1% FPR on the held-out captions (never
   trained on; :mod:`copyguard.mitigation.evaluation.calibrate`); it is AMG's detection gate.
2. **Mitigation** (§6.4, §7): the memorized prompts with ``--seeds`` seeds each, generated through
   :func:`copyguard.mitigation.generate.generate_images` (the code path of ``copyguard generate``) with
   each method: none, the §8 baselines, prompt-opt (§4; ``l_target`` = median first-step magnitude of the
   held-out captions), AMG ``paper`` and ``strong`` (§6) in detection-gated mode against the index. Each
   image's SSCD (the shipped ONNX ``sscd_disc_mixup``) against its prompt's own training image gives
   Top5%, Top1, % > 0.5, % > 0.4. FID (TF-Inception, :class:`~copyguard.mitigation.metrics.InceptionFeatures`)
   of ``--fid-images`` held-out captions (in chunks of 8 sharing a seed) against the held-out real images, as
   ``pipelines/lab/evaluate.py`` measures it. Unique prompts: the change each method makes to the same (prompt,
   seed) image: SSCD cosine to the unmitigated image, mean absolute pixel change, bit-identical share
   (:mod:`copyguard.mitigation.evaluation`: the loop in ``measure``, the figures in ``evidence``).

Writes ``benchmarks/results/<machine>/lab_mitigation.json`` and renders ``docs/mitigation.md`` (with the
cost benchmark of ``benchmarks/bench_mitigation.py`` when its JSON exists).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import add_common_args, begin, setup_logging, write_result
from benchmarks.render.mitigation import write_mitigation
from copyguard.common.errors import UsageError
from copyguard.common.fileops import atomic_write
from copyguard.mitigation.config import AMG_PRESETS, MITIGATIONS
from copyguard.pipelines.lab.evaluate import MAGNITUDE_MIN_COPIES, EvalPrompt
from copyguard.pipelines.lab.evidence import evidence_prompts, load_evidence_setup, reference_prompts

__all__ = ["METHODS", "EvidenceSpec", "detection_evidence", "mitigation_evidence", "run_evidence"]

log = logging.getLogger("benchmarks.lab_mitigation")
ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "mitigation.md"
# The mitigations, AMG once per named preset ("amg-paper", ...); the baselines first, as in the tables.
METHODS = (
    *(m for m in MITIGATIONS if m not in ("prompt-opt", "amg")),
    "prompt-opt",
    *(f"amg-{p}" for p in AMG_PRESETS),
)
LABELS = {"none": "no mitigation", **{m: m.upper() for m in METHODS if m not in ("none", "prompt-opt")},
          "prompt-opt": "prompt-opt (§4)", **{f"amg-{p}": f"AMG {p} (gated)" for p in AMG_PRESETS},
          "amg-paper-ungated": "AMG paper (ungated)"}  # fmt: skip


# the integer options of the command line: (flag, default, help); each sets the EvidenceSpec field of its name
INT_ARGS = (
    ("--seeds", 4, "seeds per memorized prompt"),
    ("--unique-prompts", 50, "unique training captions measured for the change from unmitigated"),
    ("--unique-seeds", 1, "seeds per unique prompt"),
    ("--fid-images", 200, "held-out captions for FID (< 2: no FID)"),
    ("--steps", 25, "DDIM steps"),
    ("--ungated-unique", 0, "unique prompts through ungated AMG paper"),
    ("--detect-generations", 4, "n of the first-step n > 1 setting"),
    ("--check-every", 1, "AMG sigma check interval (steps)"),
)


@dataclass
class EvidenceSpec:
    """Sizes and sampling settings of one evidence run (defaults: the ``small`` lab model's measurement)."""

    seeds: int = 4
    unique_prompts: int = 50
    unique_seeds: int = 1
    fid_images: int = 200
    steps: int = 25
    guidance_scale: float = 7.5
    batch_size: int = 8
    detect_generations: int = 4  # first step with n generations (all steps: n = 1)
    detect_all_steps: bool = True
    calibration_only: bool = False  # detection: only the gate threshold (for a run merged into another)
    check_every: int = 1  # AMG's sigma check interval (1 = every step, as the paper)
    detect_negatives: int | None = None  # None: every unique training caption
    target_fpr: float = 0.01
    min_copies: int = MAGNITUDE_MIN_COPIES  # >= 25 copies: memorized by the small lab model
    ungated_unique: int = 0  # unique prompts also run through ungated AMG paper (0: skip)
    seed: int = 0


# ------------------------------------------------------------------------------------------ detection
def _detect_config(spec: EvidenceSpec) -> Any:
    """The detection trajectory of the evidence: all steps, n = 1 (settings narrow it)."""
    from copyguard.mitigation.config import DetectConfig

    return DetectConfig(
        num_inference_steps=spec.steps, end=None, generations=1, seed=spec.seed,
        guidance_scale=spec.guidance_scale, batch_size=64, target_fpr=spec.target_fpr,
    )  # fmt: skip


def detection_evidence(pipe: Any, prompts: dict[str, list[EvalPrompt]], spec: EvidenceSpec) -> dict[str, Any]:
    """§2 ROC at first step n=1 / n=4 and over all steps n=1 / n=4, plus the 1%-FPR threshold calibrated on
    the held-out captions and what it flags. One trajectory pass per prompt and seed gives every setting
    (the first step of the all-steps run is the first-step score: same seeds, deterministic DDIM)."""
    from copyguard.mitigation.detect import Detector
    from copyguard.mitigation.evaluation.calibrate import calibrate_on_prompts
    from copyguard.mitigation.evaluation.evidence import detection_roc, scores_by_copies

    cfg = _detect_config(spec)
    first_cfg = cfg.model_copy(update={"end": 1})
    dup, neg = prompts["duplicated"], prompts["unique_all"]
    captions = [p.caption for p in dup] + [p.caption for p in neg]
    t0 = time.perf_counter()
    refs, ref_name = reference_prompts(prompts)
    cal = calibrate_on_prompts(pipe, refs, cfg, reference=ref_name)
    if spec.calibration_only:
        return {"calibration": {**cal.to_dict(), "l_target_median": cal.l_target()}}
    settings: dict[str, np.ndarray] = {}
    if spec.detect_all_steps:
        settings["all_steps_n1"] = Detector(pipe, cfg, progress=True).magnitudes(captions)  # [P, 1, steps]
        settings["first_step_n1"] = settings["all_steps_n1"][:, :, :1]  # same seed, same first step
    else:
        settings["first_step_n1"] = Detector(pipe, first_cfg, progress=False).magnitudes(captions)
    n = spec.detect_generations
    if n > 1:
        gcfg = first_cfg.model_copy(update={"generations": n})
        settings[f"first_step_n{n}"] = Detector(pipe, gcfg, progress=True).magnitudes(captions)
    settings = {
        k: settings[k] for k in ("first_step_n1", f"first_step_n{n}", "all_steps_n1") if k in settings
    }
    is_mem = np.array([p.copies >= spec.min_copies for p in dup])
    first = settings["first_step_n1"][:, 0, 0]
    f_dup, f_neg = first[: len(dup)], first[len(dup) :]
    return {
        "settings": detection_roc(settings, len(dup), is_mem),
        "seconds": round(time.perf_counter() - t0, 1),
        "steps": spec.steps,
        "calibration": {
            **cal.to_dict(),
            "l_target_median": cal.l_target(),
            "flagged_memorized_pct": cal.flagged_pct(f_dup[is_mem]),
            "flagged_duplicated_pct": cal.flagged_pct(f_dup),
            "flagged_unique_train_pct": cal.flagged_pct(f_neg),
            "flagged_heldout_pct": cal.flagged_pct(cal.reference_scores),
        },
        "by_copies_first_step_n1": scores_by_copies(
            f_dup, [p.copies for p in dup], f_neg, cal.reference_scores, cal.threshold
        ),
    }


# ----------------------------------------------------------------------------------------- mitigation
def method_config(name: str, spec: EvidenceSpec, gate: float | None, l_target: float | None) -> Any:
    """The :class:`GenerateConfig` of method ``name`` (AMG gated at ``gate``; prompt-opt at ``l_target``)."""
    from copyguard.mitigation.config import AMGConfig, GenerateConfig, PromptOptConfig

    base = {
        "num_inference_steps": spec.steps,
        "guidance_scale": spec.guidance_scale,
        "batch_size": spec.batch_size,
        "baseline_seed": spec.seed,
    }
    if name.startswith("amg-"):
        preset = name.split("-")[1]
        gated = not name.endswith("-ungated")
        amg = AMGConfig.preset(
            preset, "sscd", gated=gated, gate_threshold=gate if gated else None, check_every=spec.check_every
        )
        return GenerateConfig(mitigation="amg", amg=amg, **base)
    if name == "prompt-opt":
        return GenerateConfig(mitigation="prompt-opt", prompt_opt=PromptOptConfig(l_target=l_target), **base)
    return GenerateConfig(mitigation=name, **base)


def _fid_changes(rows: dict[str, Any]) -> None:
    """Each method's FID change (%) against the unmitigated FID, in place."""
    from copyguard.mitigation.evaluation.evidence import relative_change_pct

    none_fid = (rows["none"].get("fid") or {}).get("fid")
    for row in rows.values():
        change = relative_change_pct((row.get("fid") or {}).get("fid"), none_fid)
        if change is not None:
            row["fid"]["change_pct"] = change


def mitigation_evidence(
    pipe: Any,
    lab: Any,
    index: Any,
    prompts: dict[str, list[EvalPrompt]],
    spec: EvidenceSpec,
    gate: float,
    methods: Sequence[str] = METHODS,
    fid: bool = True,
    progress: Callable[[str], None] | None = None,
    partial: str | Path | None = None,
    l_target: float | None = None,
) -> dict[str, Any]:
    """The §6.4-shaped table: per method, §7 metrics of the memorized prompts' generations against their
    own training images, FID on held-out captions, and the unique prompts' change from unmitigated.
    ``l_target``: prompt-opt's target (None: the median first-step magnitude of the reference prompts)."""
    from copyguard.curation.embedders import load_embedder
    from copyguard.mitigation.evaluation import evidence as ev
    from copyguard.mitigation.evaluation.calibrate import calibrate_on_prompts
    from copyguard.mitigation.evaluation.measure import OwnImages, generate_chunked, generate_grid
    from copyguard.mitigation.metrics import InceptionFeatures, fid_from_features, summarize_similarity

    say = progress or log.info
    embedder = load_embedder("sscd-onnx", threads=torch.get_num_threads())
    mem, uni = prompts["memorized"], prompts["unique_eval"]
    held = prompts["heldout"][: spec.fid_images]
    seeds = {"memorized": [spec.seed * 1000 + j for j in range(spec.seeds)]}
    seeds["unique"] = [spec.seed * 1000 + j for j in range(spec.unique_seeds)]
    train_groups = [str(lab.row(k)["image_group"]) for k in lab.keys]
    own = OwnImages.build(embedder, lab.images, train_groups, wanted=[p.group for p in mem + uni])
    if "prompt-opt" in methods and l_target is None:
        l_target = calibrate_on_prompts(pipe, reference_prompts(prompts)[0], _detect_config(spec)).l_target()
    incep = InceptionFeatures() if fid and len(held) >= 2 else None
    real = incep(lab.heldout_images[: len(held)]) if incep is not None else None
    rows: dict[str, Any] = {}
    base: dict[str, Any] = {}

    def measure(name: str, cfg: Any, kind: str, chosen: list[EvalPrompt]) -> dict[str, Any]:
        """Generate ``chosen`` x the kind's seeds, SSCD to the own images, change against ``none``."""
        g = generate_grid(pipe, cfg, [p.caption for p in chosen], seeds[kind], index)
        say(f"{name}: {kind} prompts, {len(g.images)} images in {g.seconds:.0f} s")
        emb = embedder.embed(list(g.images))
        sims = own(emb, [p.group for p in chosen for _ in seeds[kind]])
        out = {**summarize_similarity(sims, (0.5, 0.4)), "seconds": round(g.seconds, 1)}
        out |= {"per_image": [round(float(s), 4) for s in sims]} if kind == "memorized" else {}
        out["amg"] = ev.amg_term_stats(g.records)
        if kind == "memorized":
            out["prompt_opt_reached_pct"] = ev.prompt_opt_reached_pct(g.records)
        if name == "none":
            base[kind] = (g.images, emb)
        else:
            k = len(g.images)
            out["change"] = ev.image_change(g.images, base[kind][0][:k], emb, base[kind][1][:k])
        return out

    for name in ["none", *[m for m in methods if m != "none"]]:
        cfg = method_config(name, spec, gate, l_target)
        row: dict[str, Any] = {"label": LABELS.get(name, name)}
        if name.startswith("amg-") and spec.check_every > 1:
            row["label"] = row["label"].replace(")", f", sigma every {spec.check_every} steps)")
            row["check_every"] = spec.check_every
        ungated = name.endswith("-ungated")
        if not ungated:
            row["memorized"] = measure(name, cfg, "memorized", mem)
        uni_sel = uni[: spec.ungated_unique if ungated else len(uni)]
        if uni_sel:
            row["unique"] = measure(name, cfg, "unique", uni_sel)
        if incep is not None and not ungated:
            g = generate_chunked(pipe, cfg, [p.caption for p in held], spec.seed * 7919, index)
            fid_value = fid_from_features(real, incep(g.images))
            row["fid"] = {"fid": fid_value, "images": len(held), "seconds": round(g.seconds, 1)}
            row["fid"]["amg"] = ev.amg_term_stats(g.records)
            say(
                f"{name}: FID {fid_value:.2f} on {len(held)} held-out captions ({g.seconds:.0f} s to generate)"
            )
            if name == "none":
                base["fid"] = g.images
            else:
                row["fid"]["identical_to_unmitigated_pct"] = ev.identical_pct(g.images, base["fid"])
        rows[name] = row
        if partial is not None:  # a crash late in a long run keeps the methods already measured
            atomic_write(str(partial), json.dumps(rows, indent=1))
    _fid_changes(rows)
    return {
        "gate_threshold": gate,
        "prompt_opt_l_target": l_target,
        "memorized_prompts": [{"caption": p.caption, "group": p.group, "copies": p.copies} for p in mem],
        "seeds": seeds["memorized"],
        "unique_prompts": len(uni),
        "unique_seeds": seeds["unique"],
        "fid_images": len(held),
        "fid_seeds": f"chunks of {spec.batch_size} captions, chunk k with seed {spec.seed * 7919} + k",
        "fid_reference": "held-out training-distribution images (lab_training.json heldout_keys)",
        "methods": rows,
    }


# --------------------------------------------------------------------------------------------- goals
def goals(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals, checked against the figures (None where not measured)."""
    rows = result["mitigation"]["methods"]
    none = rows["none"]["memorized"]
    out: dict[str, Any] = {}
    if "settings" in result["detection"]:
        det = result["detection"]["settings"]["first_step_n1"]["memorized"]
        out["detection_auc_ge_0.95"] = det["auc"] >= 0.95
        out["detection_tpr1_ge_0.8"] = det["tpr_at_1pct_fpr"] >= 0.8
    if "amg-strong" in rows:
        out["amg_strong_zero_memorized"] = rows["amg-strong"]["memorized"]["pct_gt_0.4"] == 0.0
    if "amg-paper" in rows:
        out["amg_paper_below_tenth"] = rows["amg-paper"]["memorized"]["pct_gt_0.4"] < none["pct_gt_0.4"] / 10
    for name in ("amg-paper", "amg-strong"):
        fid = (rows.get(name) or {}).get("fid")
        if fid and "change_pct" in fid:
            out[f"{name}_fid_within_10pct"] = abs(fid["change_pct"]) <= 10.0
        uni = (rows.get(name) or {}).get("unique") or {}
        if uni.get("change") and uni.get("amg"):  # every prompt the gate did not flag is bit-identical
            unflagged = 100.0 - uni["amg"]["flagged_pct"]
            out[f"{name}_unflagged_unique_bit_identical"] = uni["change"]["identical_pct"] >= unflagged - 1e-9
    return out


# ----------------------------------------------------------------------------------------------- run
def run_evidence(
    model: str | Path,
    data: str,
    index_dir: str | Path,
    spec: EvidenceSpec,
    machine: str,
    methods: Sequence[str] = METHODS,
    fid: bool = True,
    argv: list[str] | None = None,
    partial: str | Path | None = None,
) -> dict[str, Any]:
    """Everything above; returns the result JSON body (with the :func:`begin` header)."""
    report = begin(
        "lab_mitigation", "benchmarks.lab_mitigation", argv, machine, threads=torch.get_num_threads()
    )
    git = report["git"]
    report["commit"] = (git["commit"] or "unknown")[:7] + ("+dirty" if git["dirty"] else "")
    pipe, lab, index, info = load_evidence_setup(model, data, index_dir)
    prompts = evidence_prompts(lab, spec.unique_prompts, spec.seed, spec.min_copies, spec.detect_negatives)
    if not prompts["memorized"]:
        raise UsageError(f"no duplicated prompt with >= {spec.min_copies} copies in {data}")
    report["model"] = {
        "path": str(model),
        "preset": info.get("preset"),
        "resolution": int(pipe.unet.config.sample_size * pipe.vae_scale_factor),
        "params": info.get("params"),
    }
    report["data"] = {
        "shards": data,
        "train_samples": len(lab.keys),
        "heldout": len(lab.heldout_keys),
        "index": str(index_dir),
        "index_images": len(index),
        "index_embedder": index.info.get("embedder", {}).get("name"),
        "prompts": {k: len(v) for k, v in prompts.items()},
    }
    report["spec"] = dict(spec.__dict__)
    t0 = time.perf_counter()
    report["detection"] = detection_evidence(pipe, prompts, spec)
    log.info("detection done in %.0f s", time.perf_counter() - t0)
    cal = report["detection"]["calibration"]
    report["mitigation"] = mitigation_evidence(
        pipe, lab, index, prompts, spec, cal["threshold"], methods, fid, partial=partial,
        l_target=cal["l_target_median"],
    )  # fmt: skip
    report["goals"] = goals(report)
    return report


def merge_results(main: dict[str, Any], others: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Add the methods measured by other runs (split over processes to share a busy machine) to ``main``.

    Every run measures ``none`` itself; its per-image figures must equal ``main``'s (same model, data,
    seeds: sampling is deterministic), and the gate threshold must be the same, else the merge is refused.
    """
    rows = main["mitigation"]["methods"]
    base = rows["none"]["memorized"]["per_image"]
    main.setdefault("merged_runs", [])
    for other in others:
        o = other["mitigation"]
        if o["methods"]["none"]["memorized"]["per_image"] != base:
            raise UsageError(f"cannot merge {other['command']!r}: its unmitigated generations differ")
        if abs(o["gate_threshold"] - main["mitigation"]["gate_threshold"]) > 1e-9:
            raise UsageError(f"cannot merge {other['command']!r}: another gate threshold")
        for name, row in o["methods"].items():
            if name != "none":
                rows[name] = row
        if main["mitigation"].get("prompt_opt_l_target") is None:
            main["mitigation"]["prompt_opt_l_target"] = o.get("prompt_opt_l_target")
        if not rows["none"].get("fid") and o["methods"]["none"].get("fid"):  # main ran without FID
            rows["none"]["fid"] = o["methods"]["none"]["fid"]
            for key in ("fid_images", "fid_seeds", "fid_reference"):
                main["mitigation"][key] = o.get(key, main["mitigation"].get(key))
        main["merged_runs"].append(
            {
                "command": other["command"],
                "methods": [k for k in o["methods"] if k != "none"],
                "machine": other["machine"],
                "wall_s": other.get("wall_s"),
                "commit": other.get("commit"),
            }
        )
    _fid_changes(rows)
    order = [m for m in (*METHODS, "amg-paper-ungated") if m in rows]
    main["mitigation"]["methods"] = {k: rows[k] for k in order}
    main["goals"] = goals(main)
    return main


def merge_main(argv: list[str]) -> int:
    """``python -m benchmarks.lab_mitigation merge MAIN.json OTHER.json ... [--docs PATH]``: merge the other
    runs' methods into MAIN (rewritten in place) and render the docs from MAIN's folder."""
    parser = argparse.ArgumentParser(prog="lab_mitigation merge")
    parser.add_argument("main")
    parser.add_argument("others", nargs="+")
    parser.add_argument("--docs", default=str(DOCS))
    args = parser.parse_args(argv)
    setup_logging()
    main_path = Path(args.main)
    result = merge_results(
        json.loads(main_path.read_text()), [json.loads(Path(p).read_text()) for p in args.others]
    )
    atomic_write(str(main_path), json.dumps(result, indent=2) + "\n")
    write_mitigation(main_path.parent.parent, main_path.parent.name, args.docs)
    print(json.dumps(result["goals"], indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["merge"]:
        return merge_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a copyguard lab model folder (default: the cached small one)")
    parser.add_argument("--data", help="the shards the model was trained on (quote the glob)")
    parser.add_argument("--index", help="OUT/index of `copyguard curate` on those shards")
    for flag, default, text in INT_ARGS:  # EvidenceSpec fields
        parser.add_argument(flag, type=int, default=default, help=text)
    parser.add_argument("--no-all-steps", action="store_true", help="skip the all-steps detection setting")
    parser.add_argument("--calibration-only", action="store_true", help="detection: the gate threshold only")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)"
    )
    parser.add_argument("--docs", default=str(DOCS), help="page to render")
    parser.add_argument("--partial", default=None, help="write each finished method's figures here")
    add_common_args(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.ungated_unique:
        methods.append("amg-paper-ungated")
    fields = {flag[2:].replace("-", "_") for flag, _, _ in INT_ARGS}
    spec = EvidenceSpec(
        **{f: getattr(args, f) for f in fields},
        detect_all_steps=not args.no_all_steps,
        calibration_only=args.calibration_only,
    )
    if args.model is None or args.data is None or args.index is None:
        from copyguard.pipelines.lab.cache import lab_setup

        model, data, index = lab_setup("small")
        args.model, args.data, args.index = (
            args.model or str(model),
            args.data or data,
            args.index or str(index),
        )
    try:
        result = run_evidence(
            args.model, args.data, args.index, spec, args.machine, methods, args.fid_images >= 2, argv,
            partial=args.partial,
        )  # fmt: skip
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_result(result, args.out, args.machine, "lab_mitigation")
    if not args.quick and not args.calibration_only:
        write_mitigation(args.out, args.machine, args.docs)
    print(json.dumps(result["goals"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
