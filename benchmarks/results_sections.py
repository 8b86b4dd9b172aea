"""The detection, mitigation, cost and plot sections of ``docs/results.md`` (see results_doc.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.lab_mitigation import PAPER_SD
from benchmarks.report import _table, _verdict

__all__ = ["costs_section", "detection_section", "mitigation_section", "plots_section", "source"]

CPU = "dev-2cpu"
Results = dict[str, dict[str, dict[str, Any]]]


def _missing(title: str, command: str) -> str:
    return f"## {title}\n\nNot measured yet: run `{command}`.\n"


PAPER_DETECTION = (
    "SD v1.4, Wen et al. (§2): all steps, n = 4: AUC 0.994, TPR@1%FPR 0.982; first step: AUC 0.962, TPR 0.79"
)


def detection_section(res: Results, machine: str = CPU) -> str:
    """AUC and TPR@1%FPR for first step n=1, n=4 and all steps, next to Wen et al.'s figures."""
    lab = res.get("lab_mitigation", {}).get(machine)
    if not lab or "settings" not in lab.get("detection", {}):
        return _missing("Detection", "python -m benchmarks.lab_mitigation")
    det = lab["detection"]
    rows = []
    for name, st in det["settings"].items():
        m, a = st["memorized"], st["all_duplicated"]
        rows.append([name.replace("_", " "), _f(m["auc"], 3), _f(m["tpr_at_1pct_fpr"]), _f(a["auc"], 3),
                     _f(a["tpr_at_1pct_fpr"])])  # fmt: skip
    cal = det.get("calibration", {})
    return "\n".join([
        "## Detection",
        "",
        "First-step text-conditional magnitude (algorithms.md §2) on the `small` lab model: the memorized "
        f"prompts (>= 25 copies; {m['positives']}) and all duplicated ones (2-50 copies) against "
        f"{m['negatives']} unique training captions. Goal: AUC >= 0.95 and TPR@1%FPR >= 0.8 at the first step "
        "with n = 1.",
        "",
        _table(["setting", "AUC memorized", "TPR@1%FPR memorized", "AUC all duplicated",
                "TPR@1%FPR all duplicated"], rows),  # fmt: skip
        "",
        f"Published anchors (a different model and data): {PAPER_DETECTION}.",
        f"The gate threshold calibrated at 1 % FPR on {cal.get('reference_prompts', '?')} held-out captions "
        f"({_f(cal.get('threshold'), 3)}) flags {_f(cal.get('flagged_memorized_pct'), 0)} % of the memorized "
        f"prompts and {_f(cal.get('flagged_heldout_pct'), 1)} % of the held-out captions.",
        "",
        source("lab_mitigation", lab),
        "",
    ])  # fmt: skip


def _mit_row(label: str, m: dict[str, Any], fid: dict[str, Any] | None, paper: tuple | None) -> list[Any]:
    mem = m
    paper_txt = " / ".join(f"{v:g}" for v in paper) if paper else "-"
    fid_txt = (
        "-" if not fid or fid.get("fid") is None else f"{fid['fid']:.1f} ({fid.get('change_pct', 0):+.1f}%)"
    )
    return [label, _f(mem["top5pct"], 3), _f(mem["top1"], 3), _f(mem["pct_gt_0.5"], 1), _f(mem["pct_gt_0.4"], 1),
            fid_txt, paper_txt]  # fmt: skip


def mitigation_section(res: Results, machine: str = CPU) -> str:
    """The §6.4-shaped table: inference mitigations, the training filter and curation, with the paper's."""
    lab = res.get("lab_mitigation", {}).get(machine)
    ev = res.get("train_evidence", {}).get(machine)
    if not lab and not ev:
        return _missing(
            "Mitigation", "python -m benchmarks.lab_mitigation; python -m benchmarks.train_evidence"
        )
    lines = ["## Mitigation", ""]
    if lab:
        methods = lab["mitigation"]["methods"]
        rows = [_mit_row(v.get("label", k), v["memorized"], v.get("fid"), PAPER_SD.get(k))
                for k, v in methods.items()]  # fmt: skip
        n = methods["none"]["memorized"]["n"]
        lines += [
            f"Inference-time mitigations on the `small` lab model's memorized prompts ({n} generations per "
            "method; SSCD against the prompt's own training image; %>0.4 is this 32 px model's memorization "
            "share, %>0.5 the paper's). FID: 200 held-out captions against held-out images. Goals: AMG "
            "`strong` 0 %, AMG `paper` below a tenth of the unmitigated share, FID within 10 %. The last "
            "column is the paper's Stable Diffusion v1.4 table (§6.4) for comparison: **a different model "
            "and data**.",
            "",
            _table(
                [
                    "method",
                    "Top5%",
                    "Top1",
                    "%>0.5",
                    "%>0.4",
                    "FID (change)",
                    "paper SD v1.4: Top5% / Top1 / %>0.5 / %>0.4 / FID",
                ],
                rows,
            ),  # fmt: skip
            "",
            "Goals: " + ", ".join(f"{k} {_verdict(v)}" for k, v in lab.get("goals", {}).items()) + ".",
            "AMG `paper` at 32 px: sigma (SSCD of the decoded x0 estimate against its nearest training image) "
            "sits around 0.3-0.4 for every image, right at the paper's lambda of 0.3-0.4, so G_dup and G_sim "
            "rarely trigger; its constants were set for 512 px (details: [mitigation.md](mitigation.md)).",
            "",
            source("lab_mitigation", lab),
            "",
        ]
    if ev:
        rows = []
        labels = {"base": "lab model before fine-tuning", "no_filter": "fine-tuned, no filter",
                  "filter": "fine-tuned with the filter (§5, per-timestep thresholds)",
                  "run_filter": "fine-tuned with the filter (§5, one threshold)",
                  "curated": "fine-tuned on curated shards"}  # fmt: skip
        for key, label in labels.items():
            r = ev["models"].get(key)
            if r:
                rows.append([label, _f(r["dup_top5pct"], 3), _f(r["dup_share_over_threshold_pct"], 1),
                             _f(r["fid"], 1)])  # fmt: skip
        twelve = {k: v for k, v in ev["models"].items() if k.endswith("_s12")}
        sm = ev["summary"]
        lines += [
            "Training-time: fine-tuning the lab model on data with 8 freshly planted pairs (25 and 50 copies), "
            f"{ev['settings']['steps']} steps, the same seed; measured like the lab model (4 seeds per pair):",
            "",
            _table(["model", "Top5%", "%>0.4", "FID"], rows),
            "",
            "Measured again with 12 seeds per pair: "
            + "; ".join(
                f"{k.removesuffix('_s12')} {_f(v['dup_share_over_threshold_pct'], 1)} % (FID {_f(v['fid'], 1)})"
                for k, v in sorted(twelve.items())
            )  # fmt: skip
            + f". Relative cut by the filter: {_f(sm.get('memorized_share_relative_cut'), 3)} (4 seeds), "
            f"{_f(sm.get('memorized_share_relative_cut_12_seeds'), 3)} (12 seeds); goal >= 0.8 at <= 5 % FID change "
            f"(FID change {_f(100 * sm['fid_relative_change'], 1)} %).",
            "",
            source("train_evidence", ev),
            "",
        ]
    return "\n".join(lines)


def plots_section(res: Results, img_dir: Path, machine: str = CPU) -> str:
    """ROC curves, similarity histograms before/after mitigation, privacy-utility trade-off."""
    lab = res.get("lab_mitigation", {}).get(machine)
    if not lab:
        return _missing("Plots", "python -m benchmarks.lab_mitigation")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    lines = ["## Plots", ""]
    settings = lab["detection"].get("settings", {})
    if any("scores" in st for st in settings.values()):
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        for name, st in settings.items():
            sc = st.get("scores")
            if not sc:
                continue
            mem = [v for v, m in zip(sc["duplicated"], sc["memorized"], strict=True) if m]
            y = [1] * len(mem) + [0] * len(sc["unique"])
            fpr, tpr, _ = roc_curve(y, mem + sc["unique"])
            ax.plot(fpr, tpr, label=f"{name.replace('_', ' ')} (AUC {st['memorized']['auc']:.3f})")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title("Detection ROC, memorized vs unique")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(img_dir / "results_roc.png")
        plt.close(fig)
        lines += ["![detection ROC](img/results_roc.png)", ""]
    else:
        lines += ["ROC curves: the recorded detection result has no per-prompt scores (re-run "
                  "`python -m benchmarks.lab_mitigation` to record them).", ""]  # fmt: skip
    methods = lab["mitigation"]["methods"]
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    bins = [i / 40 for i in range(41)]
    for key in ("none", "amg-paper", "amg-strong"):
        if key in methods and methods[key]["memorized"].get("per_image"):
            ax.hist(
                methods[key]["memorized"]["per_image"],
                bins=bins,
                alpha=0.5,
                label=methods[key].get("label", key),
            )
    ax.axvline(0.4, color="r", ls=":", lw=1)
    ax.set_xlabel("SSCD to the prompt's own training image")
    ax.set_ylabel("generations")
    ax.set_title("Memorized prompts before and after AMG")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(img_dir / "results_similarity.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=100)
    for key, v in methods.items():
        fid = (v.get("fid") or {}).get("fid")
        if fid is not None:
            ax.scatter(v["memorized"]["pct_gt_0.4"], fid)
            ax.annotate(v.get("label", key), (v["memorized"]["pct_gt_0.4"], fid), fontsize=6)
    ax.set_xlabel("memorized share (% SSCD > 0.4)")
    ax.set_ylabel("FID (200 images, 32 px)")
    ax.set_title("Privacy-utility trade-off")
    fig.tight_layout()
    fig.savefig(img_dir / "results_tradeoff.png")
    plt.close(fig)
    lines += [
        "![similarity histograms](img/results_similarity.png)",
        "",
        "![privacy-utility trade-off](img/results_tradeoff.png)",
        "",
        "The trade-off plot has one point per mitigation with a measured FID (AMG strengths: `paper`, `strong`).",
        "",
    ]
    return "\n".join(lines)


def _f(v: Any, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def source(name: str, r: dict[str, Any]) -> str:
    """The italic line naming a figure's result file, machine, load, date and commit."""
    commit = ((r.get("git") or {}).get("commit") or "")[:10] or "not recorded"
    m = r.get("machine", {})
    return (
        f"*Source: `benchmarks/results/{m.get('tag', CPU)}/{name}.json` ({m.get('cpu_model', '?')}, "
        f"{m.get('usable_cpus', '?')} cores, load {m.get('load_average_at_start', ['?'])[0]} at the start; "
        f"{r.get('started', '?')[:16]}; commit {commit}).*"
    )


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
            verdicts = [_verdict(None if v is None or goal is None else v <= goal) for v in vals]
            rows.append([label, *[f"{_f(v)}x" if v is not None else None for v in vals],
                         f"<= {goal}x" if goal else "-", " / ".join(verdicts) if goal else "-"])  # fmt: skip
        heads = [f"{n} ({models[n].get('size')} px, {models[n].get('steps')} steps)" for n in names]
        lines += [
            "Inference (algorithms.md §2, §4, §6), each ratio from timings taken side by side in one run:",
            "",
            _table(["ratio", *heads, "goal", "result"], rows),
            "",
            f"`lab` is the 32 px lab model (0.8 M-parameter UNet); `sd15-arch` is Stable Diffusion 1.5's UNet "
            "and VAE built from their configs with random weights (no weights exist offline), on CPU at "
            "reduced resolution. On the lab model one SSCD pass (ResNet-50 at 320 px) costs far more than "
            "its UNet, so AMG's per-check cost dominates there; at SD 1.5 scale the UNet dominates. "
            "The SD 1.5 architecture's gated/unflagged ratio is the re-measurement with a prompt the gate "
            "does not flag (`--gated-recheck`; with random weights the main run's 'unique' prompt was "
            f"flagged). {mit.get('gpu', '')}.",
            "",
            source("mitigation", mit),
            "",
        ]
    train = res.get("train", {}).get(machine)
    if train:
        c, s = train["configs"], train["summary"]
        default = s.get("filter_ratio_default", s["filter_ratio_full"])
        rows = [
            [name, _f(v["step_s_median"], 3), _f(v["step_s_median"] / c["full"]["step_s_median"]),
             _f(v.get("memory_mib"), 0), _f(v.get("rss_peak_mib"), 0), f"{v['trainable_params']:,}"]
            for name, v in c.items()
        ]  # fmt: skip
        lines += [
            "Fine-tuning step (algorithms.md §5), lab model, batch "
            f"{train['settings']['batch_size']}, {train['settings']['device']}:",
            "",
            _table(
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
            f"({s.get('default_filter_config', 'full+filter')} on this device): **{_f(default)}x** (goal <= "
            f"{s['goal_filter_ratio']}x: {_verdict(None if default is None else default <= s['goal_filter_ratio'])}); "
            f"one batched call {_f(s['filter_ratio_full'])}x, a separate no-grad call "
            f"{_f(s.get('filter_seq_ratio_full'))}x; "
            f"LoRA vs full: {_f(s['lora_vs_full_step'])}x step time, {_f(s['lora_vs_full_memory'])}x memory.",
            "",
            source("train", train),
            "",
        ]
    if len(lines) == 2:
        return _missing("Costs", "python -m benchmarks.bench_mitigation; python -m benchmarks.bench_train")
    return "\n".join(lines)
