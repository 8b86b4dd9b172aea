"""The audit's reports: ``AUDIT_DIR/report.json`` (machine-readable) and a self-contained ``report.html``.

``report.json`` holds every prompt with its detection score, flag, token attributions, and per setting and
seed the image path, nearest training key and similarity; the memorization metrics overall and per group; the
detection threshold, counts and AUC; the gate's outcome (each condition measured vs its threshold);
``top_similar`` (the generations closest to the training set, flagged or not); ``run`` (version, model and
index with their hash and size, configuration, date, machine); timings.

``report.html`` needs no other file: images are PNG data URIs, plots (ROC curve, similarity histograms) are
matplotlib (Agg) PNGs embedded the same way, the table sorting is a small inline script. Sections, worst
case first: the gate's verdict and its conditions (failing first), the summary table shaped like
Chen et al., CVPR 2024 (one row per setting), the most similar generations beside their nearest training
images whatever the detector said, each flagged prompt with a token heat-strip (Wen et al., ICLR 2024) and its
generations without and with each mitigation, a sortable table of all prompts, detection, similarity, per
group, and the run facts. Every piece of text from the inputs (prompts, tokens, keys, paths) is HTML-escaped;
a missing value is ``-``. Rendering only: the ``metrics`` section comes from
:func:`copyguard.mitigation.audit_metrics.compute_metrics`, the ``gate`` section from
:mod:`copyguard.mitigation.audit_gate`, ``top_similar`` and ``run`` from
:mod:`copyguard.mitigation.audit_facts`; the HTML pieces live in :mod:`copyguard.mitigation.audit_html`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from copyguard.common.fileops import atomic_write
from copyguard.common.fmt import MISSING, fixed
from copyguard.mitigation.audit_html import (
    SORT_SCRIPT,
    esc,
    figure_uri,
    pair_html,
    plural,
    prompts_table,
    run_section,
    text,
    top_similar_section,
    verdict_section,
)

__all__ = ["render_html", "write_reports"]

_SSCD_COLS = [
    ("top5pct", "Top5%", 2),
    ("top1", "Top1", 2),
    ("pct_gt_0.5", "%>0.5", 2),
    ("pct_gt_0.4", "%>0.4", 2),
]
_NL2_COLS = [
    ("p5", "5th pct nL2", 2),
    ("min", "min nL2", 2),
    ("pct_lt_1.4", "%<1.4", 2),
    ("pct_lt_1.6", "%<1.6", 2),
]
_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}
th{background:#eee}td.l,th.l{text-align:left}.pass{color:#070;font-weight:bold}.fail{color:#b00;font-weight:bold}
.strip span{display:inline-block;padding:2px 3px;margin:1px;border-radius:3px;font-family:monospace}
.pair{display:inline-block;margin:3px;text-align:center;font-size:11px;vertical-align:top}
.pair img{width:96px;height:96px;image-rendering:pixelated;border:1px solid #999}
.row{margin:4px 0}.muted{color:#777}.prompt{border:1px solid #ddd;padding:8px 12px;margin:12px 0}
.verdict{font-size:20px}tr.fail td{background:#fde8e8}.pairs .pair{width:200px}
.prompt-text{display:inline-block;max-width:196px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.missing{display:inline-block;width:96px;height:96px;color:#777;border:1px dashed #bbb;vertical-align:top}
table.sortable th{cursor:pointer;user-select:none}table.sortable th[aria-sort=ascending]::after{content:' ▲'}
table.sortable th[aria-sort=descending]::after{content:' ▼'}
"""


PAPER_REFERENCE = (
    "For scale, Chen et al., CVPR 2024 (SD v1.4 on memorized LAION prompts): no mitigation Top5% 0.91, "
    "Top1 0.93, %>0.5 44.85, %>0.4 59.23; AMG Main 0.41, 0.47, 0.00, 7.07. Thresholds, similarities "
    "and FID do not transfer between models."
)


def _plots(report: Mapping[str, Any]) -> dict[str, str]:
    """ROC curve and similarity histograms as PNG data URIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    roc = report["metrics"]["detection"].get("roc")
    if roc:
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.plot(roc["fpr"], roc["tpr"], lw=2, label=f"AUC {report['metrics']['detection']['auc']:.3f}")
        ax.plot([0, 1], [0, 1], "--", color="#999")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Detection ROC")
        ax.legend(loc="lower right")
        out["roc"] = figure_uri(fig)
    sims = {
        s: [g["similarity"] for r in report["prompts"] for g in r["generations"].get(s, [])]
        for s in ["none", *report["config"]["mitigations"]]
    }
    if any(sims.values()):
        sscd = report["config"]["similarity"] == "sscd"
        fig, ax = plt.subplots(figsize=(6, 3.5))
        values = [v for vs in sims.values() for v in vs]
        bins = np.linspace(min(values), max(values) + 1e-9, 30)
        for s, vs in sims.items():
            ax.hist(vs, bins=bins, alpha=0.5, label=f"{s} (n={len(vs)})")
        for thr in (0.4, 0.5) if sscd else (1.4, 1.6):
            ax.axvline(thr, color="#b00", ls=":", lw=1)
        ax.set(
            xlabel="SSCD cosine to nearest training image" if sscd else "nL2 to nearest training image",
            ylabel="generations",
            title="Similarity to the training set (SSCD)",
        )
        ax.legend()
        out["hist"] = figure_uri(fig)
    return out


def _metric_table(rows: Mapping[str, Mapping[str, Any]], sscd: bool, extra: bool, label: str) -> str:
    cols = _SSCD_COLS if sscd else _NL2_COLS
    head = "".join(f"<th>{esc(name)}</th>" for _, name, _ in cols)
    if extra:
        head += "<th>FID</th><th>CLIP</th>"
    body = []
    for name, m in rows.items():
        cells = "".join(f"<td>{fixed(m.get(k), d, missing=MISSING)}</td>" for k, _, d in cols)
        if extra:
            cells += f"<td>{fixed(m.get('fid'), 2, missing=MISSING)}</td><td>{fixed(m.get('clip'), 2, missing=MISSING)}</td>"
        body.append(
            f"<tr><td class='l'>{esc(name)}</td><td>{fixed(m.get('n'), 0, missing=MISSING)}</td>{cells}</tr>"
        )
    return f"<table><tr><th class='l'>{esc(label)}</th><th>images</th>{head}</tr>{''.join(body)}</table>"


def _heat_strip(tokens: Sequence[Sequence[Any]]) -> str:
    """Tokens in prompt order, shaded by their attribution significance (lowest pale, highest dark)."""
    if not tokens:
        return "<p class='muted'>no tokens</p>"
    values = [float(s) for _, s in tokens]
    lo, hi = min(values), max(values)
    spans = []
    for tok, score in tokens:
        w = (float(score) - lo) / (hi - lo) if hi > lo else 1.0  # min-max: the strip shows the ranking
        color = f"rgba(220,40,30,{0.08 + 0.85 * w:.2f})"
        spans.append(f"<span style='background:{color}' title='{float(score):.4g}'>{esc(tok)}</span>")
    return f"<div class='strip'>{''.join(spans)}</div>"


def _top(tokens: Sequence[Sequence[Any]], k: int) -> str:
    best = sorted(tokens, key=lambda t: -float(t[1]))[:k]
    return (
        "<p>top tokens: " + ", ".join(f"{esc(t)} ({float(s):.3g})" for t, s in best) + "</p>" if best else ""
    )


def _flagged_section(
    report: Mapping[str, Any], out: Path, train: Mapping[str, np.ndarray], limit: int
) -> str:
    flagged = sorted((r for r in report["prompts"] if r["flagged"]), key=lambda r: -r["score"])
    if not flagged:
        return "<p>No prompt was flagged.</p>"
    parts = []
    if len(flagged) > limit:
        parts.append(f"<p class='muted'>{len(flagged)} flagged; the {limit} highest scores are shown.</p>")
    sscd = report["config"]["similarity"] == "sscd"
    top_k = int(report["config"].get("explain_top", 8))
    for r in flagged[:limit]:
        rows = []
        for setting, gens in r["generations"].items():
            pairs = [
                pair_html(
                    out,
                    g,
                    train,
                    f"seed {text(g['seed'])} · {'sim' if sscd else 'nL2'} {text(g['similarity'], 3)}"
                    f"<br>{text(g.get('nearest_key'))}",
                )
                for g in gens
            ]
            rows.append(f"<div class='row'><b>{esc(setting)}</b><br>{''.join(pairs)}</div>")
        label = "" if r.get("label") is None else f" · label {esc(r['label'])}"
        parts.append(
            f"<div class='prompt'><h3>#{esc(r['index'])}: {esc(r['prompt'])}</h3>"
            f"<p>score {text(r['score'])}{label}{' · group ' + esc(r['group']) if r.get('group') else ''}</p>"
            f"{_heat_strip(r.get('tokens') or [])}{_top(r.get('tokens') or [], top_k)}"
            f"<p class='muted'>each pair: generation (left), nearest training image (right)</p>{''.join(rows)}</div>"
        )
    return "".join(parts)


def render_html(report: Mapping[str, Any], out: str | Path, train_images: Mapping[str, np.ndarray]) -> str:
    """The self-contained HTML report (see the module docstring)."""
    out = Path(out)
    cfg, metrics = report["config"], report["metrics"]
    sscd = cfg["similarity"] == "sscd"
    det = metrics["detection"]
    plots = _plots(report)
    s = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>copyguard audit</title><style>{_CSS}</style>"
        "</head><body><h1>copyguard audit</h1>",
        verdict_section(report.get("gate")),
        "<h2 id='summary'>Summary</h2>",
        f"<p>{plural(det['prompts'], 'prompt')} × {plural(len(cfg['seeds']), 'seed')} per setting; similarity: "
        f"{'SSCD cosine to the nearest training image (higher = more memorized)' if sscd else 'nL2 (lower = more memorized)'}.</p>",
        _metric_table({k: v["overall"] for k, v in metrics["settings"].items()}, sscd, True, "method"),
        f"<p class='muted'>FID: {esc(metrics['fid'])}. Prompt alignment: {esc(metrics['prompt_alignment'])}.</p>",
    ]
    if sscd:
        s.append(f"<p class='muted'>{esc(PAPER_REFERENCE)}</p>")
    s.append(top_similar_section(report, out, train_images))
    s.append(
        f"<h2 id='flagged'>Flagged prompts</h2>{_flagged_section(report, out, train_images, cfg['report_flagged_max'])}"
    )
    s.append(prompts_table(report))
    s.append("<h2 id='detection'>Detection</h2>")
    s.append(
        f"<p>{det['flagged']} of {plural(det['prompts'], 'prompt')} flagged ({fixed(det['flagged_share'], 1)}%); "
        f"threshold {text(report['detection']['threshold'])} ({esc(report['detection']['threshold_source'])}).</p>"
    )
    if "auc" in det:
        s.append(
            f"<p>AUC {fixed(det['auc'], 4)}, TPR at 1% FPR {fixed(det['tpr_at_1pct_fpr'], 3)} (labels from the prompt file).</p>"
        )
    if "roc" in plots:
        s.append(f"<img alt='ROC curve' src='{plots['roc']}'>")
    else:
        s.append("<p class='muted'>No ROC curve: the prompt file carries no labels of both kinds.</p>")
    s.append("<h2 id='similarity'>Similarity to the training set</h2>")
    if "hist" in plots:
        s.append(f"<img alt='similarity histograms' src='{plots['hist']}'>")
    for setting, m in metrics["settings"].items():
        if m["groups"]:
            s.append(f"<h3>Per group: {esc(setting)}</h3>" + _metric_table(m["groups"], sscd, False, "group"))
    s.append(run_section(report))
    # the sort script: a <script> element with an attribute, so that the page's only bare "<script>" would be
    # an unescaped one from the data (the report tests look for it)
    s.append(f"<script type='text/javascript'>{SORT_SCRIPT}</script>")
    s.append("</body></html>")
    return "\n".join(s)


def write_reports(report: Mapping[str, Any], out: str | Path, train_images: Mapping[str, np.ndarray]) -> None:
    """Write ``report.json`` and ``report.html`` into ``out`` (atomically)."""
    out = Path(out)
    atomic_write(
        str(out / "report.json"), json.dumps(report, indent=1, ensure_ascii=False, default=float) + "\n"
    )
    atomic_write(str(out / "report.html"), render_html(report, out, train_images))
