"""The curation report as one self-contained HTML page (inline thumbnails and SVG bar charts).

Captions are untrusted text: every string from the data goes through :func:`html.escape`.
"""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["render_report_html", "bar_chart_svg"]

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


def _table(rows: list[tuple[str, Any]], head: tuple[str, str]) -> str:
    body = "".join(f'<tr><td>{_e(k)}</td><td class="num">{_e(v)}</td></tr>' for k, v in rows)
    return f"<table><tr><th>{_e(head[0])}</th><th>{_e(head[1])}</th></tr>{body}</table>"


def _groups(groups: list[dict], thumbs: dict[str, str], with_images: bool) -> str:
    if not groups:
        return '<p class="muted">no duplicate groups</p>'
    out = []
    for g in groups:
        figures = []
        for m in g.get("members", []):
            img = thumbs.get(m["key"]) if with_images else None
            pic = f'<img alt="{_e(m["key"])}" src="data:image/jpeg;base64,{img}">' if img else ""
            figures.append(
                f"<figure>{pic}<figcaption><code>{_e(m['key'])}</code><br>{_e(m['caption'])}</figcaption></figure>"
            )
        shown = len(g.get("members", []))
        more = f' <span class="muted">(showing {shown})</span>' if shown < g["size"] else ""
        out.append(
            f'<div class="group"><b>group <code>{_e(g["group"])}</code></b>: {g["size"]} samples{more}'
            f'<div class="thumbs">{"".join(figures)}</div></div>'
        )
    return "".join(out)


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
<h2>Samples by status</h2>{_table(status, ("status", "samples"))}
<h2>Samples by reason</h2>{_table(reasons, ("status:reason", "samples")) if reasons else '<p class="muted">none</p>'}
<h2>Image-duplicate group sizes</h2>
<p class="muted">{_e(summary.get("image_groups", 0))} groups</p>{bar_chart_svg(summary.get("image_group_sizes", {}))}
<h2>Caption group sizes</h2>
<p class="muted">{_e(summary.get("caption_groups", 0))} groups</p>{bar_chart_svg(summary.get("caption_group_sizes", {}))}
<h2>Largest image-duplicate groups</h2>{_groups(summary.get("top_image_groups", []), thumbs, True)}
<h2>Largest caption groups</h2>{_groups(summary.get("top_caption_groups", []), thumbs, False)}
<h2>Configuration</h2><pre>{config}</pre>
</body></html>
"""
