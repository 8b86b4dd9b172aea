"""``docs/results.md``: every recorded figure set against the published anchors.

Sections: curation, the lab model (here), detection, mitigation and costs (:mod:`.results_sections`),
plots (PNG files drawn from the same JSON into ``docs/img/``) and which figures are stale
(:mod:`.staleness`). The page's introduction comes from ``docs/_partials/results.md``.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.render.base import CPU, DOCS, Results, load_results, missing, partial, source, write_page
from benchmarks.render.gpu_section import gpu_section
from benchmarks.render.results_sections import costs_section, detection_section, mitigation_section
from benchmarks.render.staleness import stale_reason
from copyguard.common.fmt import fixed, markdown_table

__all__ = ["render_results", "write_results"]


def curation_section(res: Results, machine: str = CPU) -> str:
    """Dedup accuracy per planted kind, throughput against the SSCD bound, FAISS at 1e4-1e6."""
    lines = ["## Curation", ""]
    dedup = res.get("dedup", {}).get(machine)
    if dedup:
        s = dedup["summary"]
        lines += [
            "Dedup against the planted ground truth of `sample-data --preset small` (pairwise scores; "
            "captions: MinHash LSH; images: SSCD, Pizzi et al., CVPR 2022, with FAISS; goal F1 >= 0.95):",
            "",
            markdown_table(
                ["groups", "precision", "recall", "F1"],
                [[p, fixed(s[p]["precision"]), fixed(s[p]["recall"]), fixed(s[p]["f1"])] for p in s],
            ),
            "",
            "Per planted kind (pairs that involve a sample of the kind; captions for caption edits and "
            "templates, images otherwise):",
            "",
        ]
        rows = []
        scores = dedup["scores"]
        for kind in sorted(scores["images"].get("by_kind", {})):
            part = "captions" if kind.startswith(("caption", "template")) else "images"
            k = scores[part]["by_kind"].get(kind, {})
            rows.append(
                [kind, part, k.get("samples"), fixed(k.get("pair_precision")), fixed(k.get("pair_recall")),
                 fixed(k.get("pair_f1")), fixed(k.get("false_merge"))]
            )  # fmt: skip
        lines += [
            markdown_table(
                ["kind", "scored on", "samples", "precision", "recall", "F1", "false merges"], rows
            ),
            "",
            source("dedup", dedup),
            "",
        ]
    curate = res.get("curate", {}).get(machine)
    if curate:
        s = curate["summary"]
        lines += [
            f"Throughput: the whole Beam job runs at **{s['ratio_median']:.2f}x** the images/s of the SSCD "
            f"model alone on the same images ({s['pipeline_images_per_s_median']} vs "
            f"{s['pure_images_per_s_median']} images/s; goal >= {s['goal_ratio']}).",
            "",
            source("curate", curate),
            "",
        ]
    faiss = res.get("faiss", {}).get(machine)
    if faiss:
        rows = []
        for size in faiss["sizes"]:
            ivf = size.get("ivf_forced") or {}
            sample = size.get("exact_sample") or {}
            rows.append(
                [f"{size['n']:,}", size["production_mode"], size["production"]["total_s"],
                 size["planted_group_recall"], ivf.get("edge_recall_vs_exact", sample.get("edge_recall"))]
            )  # fmt: skip
        lines += [
            "FAISS clustering of SSCD-like descriptors (CPU, production config; goal: 1e6 in < 10 min at "
            "planted recall >= 0.95):",
            "",
            markdown_table(["N", "path", "seconds", "planted recall", "recall vs exact"], rows),
            "",
            source("faiss", faiss),
            "",
        ]
    if len(lines) == 2:
        lines += ["Not measured yet: run `make bench`.", ""]
    lines += ["Details and the other curation benchmarks: [benchmarks.md](benchmarks.md).", ""]
    return "\n".join(lines)


def lab_section(res: Results, machine: str = CPU) -> str:
    """The lab model's memorization per duplication count."""
    lab = res.get("lab_model", {}).get(machine)
    if not lab:
        return missing("The lab model", "python -m benchmarks.bench_lab")
    over = f"pct_gt_{lab['threshold']:g}"
    order = sorted(lab["by_copies"], key=lambda k: int(k) if k.isdigit() else 1 << 30)
    rows = [
        [k, lab["by_copies"][k]["prompts"], fixed(lab["by_copies"][k]["mean"]), fixed(lab["by_copies"][k]["top5pct"]),
         fixed(lab["by_copies"][k][over], 1), fixed(lab["by_copies"][k]["nl2"]["mean"], 2)]
        for k in order
    ]  # fmt: skip
    t = lab["training"]["timings"] or {}
    lines = [
        "## The lab model",
        "",
        f"`{lab['preset']}` preset, 32 px, trained from scratch in {t.get('train_total_s', 0) / 60:.1f} CPU "
        f"minutes; {lab['eval']['seeds']} seeds per prompt, DDIM {lab['eval']['steps']}, guidance "
        f"{lab['eval']['guidance_scale']}; memorized = SSCD > {lab['threshold']:g} (calibrated: "
        "[lab_model.md](lab_model.md)).",
        "",
        markdown_table(
            ["copies", "prompts", "SSCD mean", "Top5%", f"% > {lab['threshold']:g}", "nL2 mean"], rows
        ),
        "",
        f"Pairs with >= 25 copies: **{lab['share_dup_ge25']:.1f} %** of generations memorized (goal >= 60 %), "
        f"unique prompts **{lab['share_unique']:.1f} %** (goal <= 2 %); first-step magnitude AUC "
        f"{fixed((lab.get('magnitude') or {}).get('auc'))}; FID {fixed((lab.get('fid') or {}).get('fid'), 1)}.",
        "",
        source("lab_model", lab),
        "",
    ]
    return "\n".join(lines)


def plots_section(res: Results, img_dir: Path, machine: str = CPU) -> str:
    """ROC curves, similarity histograms before/after mitigation, privacy-utility trade-off."""
    lab = res.get("lab_mitigation", {}).get(machine)
    if not lab:
        return missing("Plots", "python -m benchmarks.lab_mitigation")
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


def staleness_section(res: Results) -> str:
    """Every result file, its commit, and whether the code it measures changed since."""
    rows, cache = [], {}
    for name in sorted(res):
        for machine, r in sorted(res[name].items()):
            reason = stale_reason(name, r, cache)
            commit = (r.get("git") or {}).get("commit")
            rows.append([f"{machine}/{name}", (commit or "-")[:10], r.get("started", "-")[:16],
                         "current" if reason is None else f"**stale**: {reason}"])  # fmt: skip
    return "\n".join(
        ["## Freshness", "", markdown_table(["result", "commit", "measured", "status"], rows), ""]
    )


def render_results(res: Results, img_dir: Path, machine: str = CPU) -> str:
    """The whole page; plots are written into ``img_dir``."""
    parts = [
        "# Results",
        "",
        "<!-- Generated by `python -m benchmarks.render` from benchmarks/results/<machine>/*.json and "
        "docs/_partials/results.md; do not edit by hand. -->",
        "",
        partial("results", "intro"),
        "",
        curation_section(res, machine),
        lab_section(res, machine),
        detection_section(res, machine),
        mitigation_section(res, machine),
        costs_section(res, machine),
        gpu_section(res),
        plots_section(res, img_dir, machine),
        staleness_section(res),
    ]
    return "\n".join(parts)


def write_results(
    results_root: str | Path, docs: str | Path = DOCS / "results.md", machine: str = CPU
) -> Path:
    """Render the results of ``machine`` under ``results_root`` into ``docs`` (plots into ``docs/img``)."""
    path = Path(docs)
    img = path.parent / "img"
    img.mkdir(parents=True, exist_ok=True)
    return write_page(path, render_results(load_results(results_root), img, machine))
