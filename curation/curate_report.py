"""The curation report as one self-contained HTML page (inline thumbnails and SVG bar charts).

Sections: the accounting invariant, samples by status and reason, the rejected samples (the first
:data:`REJECTED_SHOWN` with reason and detail, and where the rest are: the manifest), group-size charts, the
largest duplicate groups (each member's thumbnail with its similarity to the kept representative, the kept
one marked), the run facts and the configuration. Fields the curate job may not provide yet are rendered
when present: per member ``kept`` (bool) and ``similarity`` (float), per group ``kept`` (the kept key); in
the report ``rejected_samples`` (``[{key, reason, detail, shard}]``), ``rejected_total``, ``manifest`` and
``run`` (``{name: value}``).

Captions are untrusted text: every string from the data goes through :func:`html.escape`; a missing value
is :data:`copyguard.common.fmt.MISSING`.
"""

from __future__ import annotations

import html
import json
from typing import Any

from copyguard.common.fmt import MISSING, html_table, num

__all__ = ["REJECTED_SHOWN", "bar_chart_svg", "render_report_html"]

# rejected samples listed in the page; the manifest holds them all
REJECTED_SHOWN = 50

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem;color:#1d2330;max-width:1100px}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{padding:.25rem .7rem;border-bottom:1px solid #eef;text-align:left}
th{background:#f4f6fb}.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37;font-weight:600}.bad{color:#c62828;font-weight:600}
.group{margin:1rem 0;padding:.6rem;border:1px solid #e3e6ef;border-radius:6px}
.thumbs{display:flex;flex-wrap:wrap;gap:.5rem}.thumbs figure{margin:0;width:112px;font-size:.72rem}
.thumbs img{width:96px;height:96px;object-fit:contain;background:#f4f4f4;border:1px solid #ccd}
.muted{color:#667}code{font-size:.85em}
.thumbs figure.kept img{border:3px solid #1a7f37}.badge{background:#1a7f37;color:#fff;border-radius:3px;padding:0 .3rem}
.sim{font-weight:600}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def bar_chart_svg(data: dict[str, int], width: int = 420, bar: int = 18) -> str:
    """A horizontal bar chart of ``label -> count`` as inline SVG."""
    if not data:
        return '<p class="muted">none</p>'
    top = max(data.values()) or 1
    height = bar * len(data) + 4
    parts = [f'<svg width="{width + 160}" height="{height}" role="img">']
    for i, (label, count) in enumerate(data.items()):
        y = i * bar + 2
        w = max(1, int(width * count / top))
        parts.append(f'<text x="0" y="{y + bar - 5}" font-size="12">{_e(label)}</text>')
        parts.append(f'<rect x="70" y="{y}" width="{w}" height="{bar - 4}" fill="#5b7cfa"/>')
        parts.append(f'<text x="{74 + w}" y="{y + bar - 5}" font-size="12">{count}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _member(m: dict[str, Any], kept_key: str | None, thumbs: dict[str, str], with_images: bool) -> str:
    """One group member: thumbnail, key, caption, and when known its similarity and whether it was kept."""
    img = thumbs.get(m["key"]) if with_images else None
    pic = f'<img alt="{_e(m["key"])}" src="data:image/jpeg;base64,{img}">' if img else ""
    kept = bool(m.get("kept")) or (kept_key is not None and m["key"] == kept_key)
    marks = []
    if kept:
        marks.append('<span class="badge">kept</span>')
    if m.get("similarity") is not None:
        marks.append(f'<span class="sim">sim {num(float(m["similarity"]))}</span>')
    line = " ".join(marks) + "<br>" if marks else ""
    return (
        f'<figure class="{"kept" if kept else ""}">{pic}<figcaption>{line}<code>{_e(m["key"])}</code><br>'
        f"{_e(m['caption'])}</figcaption></figure>"
    )


def _groups(groups: list[dict], thumbs: dict[str, str], with_images: bool) -> str:
    if not groups:
        return '<p class="muted">no duplicate groups</p>'
    out = []
    for g in groups:
        members = g.get("members", [])
        figures = [_member(m, g.get("kept"), thumbs, with_images) for m in members]
        shown = len(members)
        more = f' <span class="muted">(showing {shown})</span>' if shown < g["size"] else ""
        known = any("kept" in m for m in members) or g.get("kept") is not None
        kept = "" if known else ' <span class="muted">(kept representative not recorded)</span>'
        out.append(
            f'<div class="group"><b>group <code>{_e(g["group"])}</code></b>: {_plural(g["size"], "sample")}'
            f'{more}{kept}<div class="thumbs">{"".join(figures)}</div></div>'
        )
    return "".join(out)


def _plural(n: int, word: str) -> str:
    return f"{n} {word if n == 1 else word + 's'}"


def _cell(value: Any) -> str:
    if value is None or value == "":
        return MISSING
    if isinstance(value, dict | list):
        return f"<code>{_e(json.dumps(value, sort_keys=True))}</code>"
    return _e(value)


def _rejected(report: dict[str, Any]) -> str:
    """The first :data:`REJECTED_SHOWN` rejected samples with reason and detail, and where the rest are."""
    total = int(report.get("rejected_total", report.get("by_status", {}).get("rejected", 0)))
    where = report.get("manifest") or "the manifest (OUT/manifest/*.parquet)"
    note = f'<p class="muted">All rejected samples are the rows with status "rejected" in <code>{_e(where)}</code>.</p>'
    samples = report.get("rejected_samples")
    if not total and not samples:
        return '<p class="muted">none</p>'
    if samples is None:
        return f"<p>{_plural(total, 'sample')} rejected (reasons above).</p>{note}"
    shown = samples[:REJECTED_SHOWN]
    rows = "".join(
        f"<tr><td><code>{_e(r.get('key'))}</code></td><td>{_cell(r.get('reason'))}</td>"
        f"<td>{_cell(r.get('detail'))}</td><td>{_cell(r.get('shard'))}</td></tr>"
        for r in shown
    )
    head = f"<p>{_plural(total, 'sample')} rejected; the first {len(shown)} are listed.</p>"
    table = f"<table><tr><th>key</th><th>reason</th><th>detail</th><th>shard</th></tr>{rows}</table>"
    return head + table + note


def _run(report: dict[str, Any]) -> str:
    run = report.get("run")
    if not run:
        return '<p class="muted">not recorded</p>'
    return (
        "<table>"
        + "".join(f"<tr><th>{_e(k)}</th><td>{_cell(v)}</td></tr>" for k, v in run.items())
        + "</table>"
    )


def render_report_html(report: dict[str, Any], thumbs: dict[str, str]) -> str:
    """Render ``report.json``'s content (plus base64 JPEG thumbnails by key) as a standalone page."""
    summary = report.get("summary", {})
    holds = report.get("invariant_holds", False)
    verdict = (
        f'<span class="ok">holds</span>: {report["inputs"]} inputs = {report["accounted"]} manifest rows'
        if holds
        else f'<span class="bad">BROKEN</span>: {report["inputs"]} inputs, {report["accounted"]} manifest rows'
    )
    status = list(report.get("by_status", {}).items())
    reasons = list(report.get("by_reason", {}).items())
    config = _e(json.dumps(report.get("config", {}), indent=2, sort_keys=True))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>copyguard curation report</title>
<style>{_STYLE}</style></head><body>
<h1>copyguard curation report</h1>
<p>Accounting invariant (inputs = kept + duplicate + rejected): {verdict}</p>
<h2>Samples by status</h2>{html_table(("status", "samples"), status)}
<h2>Samples by reason</h2>{html_table(("status:reason", "samples"), reasons) if reasons else '<p class="muted">none</p>'}
<h2>Rejected samples</h2>{_rejected(report)}
<h2>Image-duplicate group sizes</h2>
<p class="muted">{_plural(int(summary.get("image_groups", 0)), "group")}</p>{bar_chart_svg(summary.get("image_group_sizes", {}))}
<h2>Caption group sizes</h2>
<p class="muted">{_plural(int(summary.get("caption_groups", 0)), "group")}</p>{bar_chart_svg(summary.get("caption_group_sizes", {}))}
<h2>Samples dropped by caption rule</h2>{html_table(("caption rule", "samples"), list(summary.get("caption_rule_drops", {}).items()))}
<h2>Largest image-duplicate groups</h2>{_groups(summary.get("top_image_groups", []), thumbs, True)}
<h2>Largest caption groups</h2>{_groups(summary.get("top_caption_groups", []), thumbs, False)}
<h2>Run facts</h2>{_run(report)}
<h2>Configuration</h2><pre>{config}</pre>
</body></html>
"""
