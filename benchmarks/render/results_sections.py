"""The detection, mitigation and cost sections of ``docs/results.md`` (the page: :mod:`.results_page`).

Each section takes ``{benchmark: {machine: result}}`` and the machine whose figures it shows; a section
whose result is not recorded says which command records it. Explanations come from
``docs/_partials/results.md``; the paper's mitigation rows from :func:`.paper.paper_cell`.
"""

from __future__ import annotations

from typing import Any

from benchmarks.render.base import CPU, Results, missing, partial, source, verdict
from benchmarks.render.paper import SSCD_COLUMNS, paper_cell
from copyguard.common.fmt import fixed, markdown_table

__all__ = ["costs_section", "detection_section", "mitigation_section"]

PAPER_DETECTION = "SD v1.4, Wen et al. (ICLR 2024): all steps, n = 4: AUC 0.994, TPR@1%FPR 0.982; first step: AUC 0.962, TPR 0.79"


def detection_section(res: Results, machine: str = CPU) -> str:
    """AUC and TPR@1%FPR for first step n=1, n=4 and all steps, next to Wen et al.'s figures."""
    lab = res.get("lab_mitigation", {}).get(machine)
    if not lab or "settings" not in lab.get("detection", {}):
        return missing("Detection", "python -m benchmarks.lab_mitigation")
    det = lab["detection"]
    rows = []
    for name, st in det["settings"].items():
        m, a = st["memorized"], st["all_duplicated"]
        rows.append([name.replace("_", " "), fixed(m["auc"], 3), fixed(m["tpr_at_1pct_fpr"], 2), fixed(a["auc"], 3),
                     fixed(a["tpr_at_1pct_fpr"], 2)])  # fmt: skip
    cal = det.get("calibration", {})
    return "\n".join([
        "## Detection",
        "",
        "First-step text-conditional magnitude (Wen et al., ICLR 2024) on the `small` lab model: the memorized "
        f"prompts (>= 25 copies; {m['positives']}) and all duplicated ones (2-50 copies) against "
        f"{m['negatives']} unique training captions. Goal: AUC >= 0.95 and TPR@1%FPR >= 0.8 at the first step "
        "with n = 1.",
        "",
        markdown_table(["setting", "AUC memorized", "TPR@1%FPR memorized", "AUC all duplicated",
                "TPR@1%FPR all duplicated"], rows),  # fmt: skip
        "",
        f"Published anchors (a different model and data): {PAPER_DETECTION}.",
        f"The gate threshold calibrated at 1 % FPR on {cal.get('reference_prompts', '?')} held-out captions "
        f"({fixed(cal.get('threshold'), 3)}) flags {fixed(cal.get('flagged_memorized_pct'), 0)} % of the memorized "
        f"prompts and {fixed(cal.get('flagged_heldout_pct'), 1)} % of the held-out captions.",
        "",
        source("lab_mitigation", lab),
        "",
    ])  # fmt: skip


def _mit_row(label: str, mem: dict[str, Any], fid: dict[str, Any] | None, paper_txt: str) -> list[Any]:
    fid_txt = (
        "-" if not fid or fid.get("fid") is None else f"{fid['fid']:.1f} ({fid.get('change_pct', 0):+.1f}%)"
    )
    return [label, fixed(mem["top5pct"], 3), fixed(mem["top1"], 3), fixed(mem["pct_gt_0.5"], 1), fixed(mem["pct_gt_0.4"], 1),
            fid_txt, paper_txt]  # fmt: skip


def mitigation_section(res: Results, machine: str = CPU) -> str:
    """The table shaped like Chen et al.'s SD v1.4 results: inference mitigations, the training filter and curation, with the paper's."""
    lab = res.get("lab_mitigation", {}).get(machine)
    ev = res.get("train_evidence", {}).get(machine)
    if not lab and not ev:
        return missing(
            "Mitigation", "python -m benchmarks.lab_mitigation; python -m benchmarks.train_evidence"
        )
    lines = ["## Mitigation", ""]
    if lab:
        methods = lab["mitigation"]["methods"]
        rows = [_mit_row(v.get("label", k), v["memorized"], v.get("fid"), paper_cell(k))
                for k, v in methods.items()]  # fmt: skip
        n = methods["none"]["memorized"]["n"]
        lines += [
            partial("results", "mitigation_table", n=n),
            "",
            markdown_table(
                [
                    "method",
                    *SSCD_COLUMNS,
                    "FID (change)",
                    "paper SD v1.4: Top5% / Top1 / %>0.5 / %>0.4 / FID",
                ],
                rows,
            ),  # fmt: skip
            "",
            "Goals: " + ", ".join(f"{k} {verdict(v)}" for k, v in lab.get("goals", {}).items()) + ".",
            partial("results", "amg_paper_note"),
            "",
            source("lab_mitigation", lab),
            "",
        ]
    if ev:
        rows = []
        labels = {"base": "lab model before fine-tuning", "no_filter": "fine-tuned, no filter",
                  "filter": "fine-tuned with the magnitude filter (per-timestep thresholds)",
                  "run_filter": "fine-tuned with the magnitude filter (one threshold)",
                  "curated": "fine-tuned on curated shards"}  # fmt: skip
        for key, label in labels.items():
            r = ev["models"].get(key)
            if r:
                rows.append([label, fixed(r["dup_top5pct"], 3), fixed(r["dup_share_over_threshold_pct"], 1),
                             fixed(r["fid"], 1)])  # fmt: skip
        twelve = {k: v for k, v in ev["models"].items() if k.endswith("_s12")}
        sm = ev["summary"]
        lines += [
            "Training-time: fine-tuning the lab model on data with 8 freshly planted pairs (25 and 50 copies), "
            f"{ev['settings']['steps']} steps, the same seed; measured like the lab model (4 seeds per pair):",
            "",
            markdown_table(["model", "Top5%", "%>0.4", "FID"], rows),
            "",
            "Measured again with 12 seeds per pair: "
            + "; ".join(
                f"{k.removesuffix('_s12')} {fixed(v['dup_share_over_threshold_pct'], 1)} % (FID {fixed(v['fid'], 1)})"
                for k, v in sorted(twelve.items())
            )  # fmt: skip
            + f". Relative cut by the filter: {fixed(sm.get('memorized_share_relative_cut'), 3)} (4 seeds), "
            f"{fixed(sm.get('memorized_share_relative_cut_12_seeds'), 3)} (12 seeds); goal >= 0.8 at <= 5 % FID change "
            f"(FID change {fixed(100 * sm['fid_relative_change'], 1)} %).",
            "",
            source("train_evidence", ev),
            "",
        ]
    return "\n".join(lines)


def costs_section(res: Results, machine: str = CPU) -> str:
    """Detection, AMG, prompt optimization, the training filter and LoRA: ratios measured side by side."""
    lines = ["## Costs", ""]
    mit = res.get("mitigation", {}).get(machine)
    if mit:
        rows = []
        specs = [
            ("first-step detection, 1 prompt / one CFG UNet evaluation", "detect_1prompt_vs_unet_cfg", None),
            ("first-step detection, batch of 8, per prompt / one CFG UNet evaluation",
             "detect_batch8_per_prompt_vs_unet_cfg", None),
            ("first-step detection / a 50-step generation", "detect_1prompt_vs_50step_generation", None),
            ("AMG gated, unflagged prompt / plain sampling", "amg_gated_unflagged_vs_plain", 1.15),
            ("AMG ungated, unique prompt / plain sampling", "amg_ungated_unique_vs_plain", None),
            ("AMG, memorized prompt / plain sampling", "amg_memorized_vs_plain", 3.0),
            ("AMG worst case (every term every step) / plain", "amg_worst_vs_plain", None),
            ("prompt optimization, one iteration / one CFG UNet evaluation",
             "prompt_opt_iteration_vs_unet_cfg", None),
            ("prompt optimization, 10 iterations / a 50-step generation",
             "prompt_opt_worst_10iter_vs_50step_generation", None),
        ]  # fmt: skip
        models = mit["models"]
        names = list(models)
        for m in models.values():  # a re-measurement with a truly unflagged prompt supersedes the main run's
            if (m.get("gated_recheck") or {}).get("ratio_median") is not None:
                m["ratios"]["amg_gated_unflagged_vs_plain"] = m["gated_recheck"]["ratio_median"]
        for label, key, goal in specs:
            vals = [models[n]["ratios"].get(key) for n in names]
            if all(v is None for v in vals):
                continue
            verdicts = [verdict(None if v is None or goal is None else v <= goal) for v in vals]
            rows.append([label, *[f"{fixed(v, 2)}x" if v is not None else None for v in vals],
                         f"<= {goal}x" if goal else "-", " / ".join(verdicts) if goal else "-"])  # fmt: skip
        heads = [f"{n} ({models[n].get('size')} px, {models[n].get('steps')} steps)" for n in names]
        lines += [
            "Inference (detection and prompt optimization: Wen et al., ICLR 2024; AMG: Chen et al., CVPR 2024), "
            "each ratio from timings taken side by side in one run:",
            "",
            markdown_table(["ratio", *heads, "goal", "result"], rows),
            "",
            f"{partial('results', 'costs_models')} {mit.get('gpu', '')}.",
            "",
            source("mitigation", mit),
            "",
        ]
    train = res.get("train", {}).get(machine)
    if train:
        c, s = train["configs"], train["summary"]
        default = s.get("filter_ratio_default", s["filter_ratio_full"])
        rows = [
            [name, fixed(v["step_s_median"], 3), fixed(v["step_s_median"] / c["full"]["step_s_median"], 2),
             fixed(v.get("memory_mib"), 0), fixed(v.get("rss_peak_mib"), 0), f"{v['trainable_params']:,}"]
            for name, v in c.items()
        ]  # fmt: skip
        lines += [
            "Fine-tuning step (magnitude filter, Wen et al., ICLR 2024), lab model, batch "
            f"{train['settings']['batch_size']}, {train['settings']['device']}:",
            "",
            markdown_table(
                [
                    "configuration",
                    "s / step",
                    "vs full",
                    "tensor memory MiB",
                    "peak RSS MiB",
                    "trainable parameters",
                ],
                rows,
            ),  # fmt: skip
            "",
            f"Filter overhead (full fine-tuning) with the default `filter.batched=auto` "
            f"({s.get('default_filter_config', 'full+filter')} on this device): **{fixed(default, 2)}x** (goal <= "
            f"{s['goal_filter_ratio']}x: {verdict(None if default is None else default <= s['goal_filter_ratio'])}); "
            f"one batched call {fixed(s['filter_ratio_full'], 2)}x, a separate no-grad call "
            f"{fixed(s.get('filter_seq_ratio_full'), 2)}x; "
            f"LoRA vs full: {fixed(s['lora_vs_full_step'], 2)}x step time, {fixed(s['lora_vs_full_memory'], 2)}x memory.",
            "",
            source("train", train),
            "",
        ]
    if len(lines) == 2:
        return missing("Costs", "python -m benchmarks.bench_mitigation; python -m benchmarks.bench_train")
    return "\n".join(lines)
