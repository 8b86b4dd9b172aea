"""HTML pieces of the audit's ``report.html`` (:mod:`copyguard.mitigation.audit_report` assembles the page).

- :func:`verdict_section`: the gate's verdict and its conditions, failing ones first, measured vs threshold.
- :func:`top_similar_section`: the generations most similar to the training set, each beside its nearest
  training image with score and key, flagged or not.
- :func:`prompts_table`: every prompt in one table that sorts by any column on a header click
  (:data:`SORT_SCRIPT`, plain JavaScript in the page).
- :func:`run_section`: the run facts a CI record needs.

Every value from the data goes through :func:`esc`; a missing value is :data:`copyguard.common.fmt.MISSING`.
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
from PIL import Image

from copyguard.common.fmt import MISSING, cell, num

__all__ = [
    "SORT_SCRIPT",
    "esc",
    "figure_uri",
    "image_uri",
    "pair_html",
    "plural",
    "prompts_table",
    "run_section",
    "text",
    "top_similar_section",
    "verdict_section",
]

# Sorts a table.sortable by the clicked header (numbers by value, text alphabetically, missing cells last);
# a second click reverses. On load, the column whose header carries data-initial sorts first.
SORT_SCRIPT = """
(function(){
function key(td){var v=td.getAttribute('data-v');if(v===null)v=td.textContent;
 if(v===''||v==='-')return null;var n=Number(v);return isNaN(n)?v.toLowerCase():n;}
function sortBy(th,dir){var table=th.closest('table'),body=table.tBodies[0],i=th.cellIndex;
 var rows=Array.prototype.slice.call(body.rows);
 rows.sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);
  if(x===null&&y===null)return 0;if(x===null)return 1;if(y===null)return -1;
  if(typeof x!==typeof y){x=String(x);y=String(y);}return (x<y?-1:x>y?1:0)*dir;});
 rows.forEach(function(r){body.appendChild(r);});
 Array.prototype.forEach.call(th.parentNode.cells,function(h){h.removeAttribute('aria-sort');});
 th.setAttribute('aria-sort',dir>0?'ascending':'descending');}
document.querySelectorAll('table.sortable th').forEach(function(th){
 th.addEventListener('click',function(){sortBy(th,th.getAttribute('aria-sort')==='descending'?1:-1);});
 var init=th.getAttribute('data-initial');if(init)sortBy(th,init==='ascending'?1:-1);});
})();
"""


def esc(value: Any) -> str:
    """``value`` as escaped HTML text."""
    return html.escape(str(value), quote=True)


def text(value: Any, digits: int = 4) -> str:
    """A cell's escaped text: :data:`MISSING` for None, yes/no for booleans, floats to ``digits`` significant
    digits (:func:`copyguard.common.fmt.cell`), other values as text."""
    return esc(value if isinstance(value, str) else cell(value, digits))


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 seed``, ``3 seeds`` (``many``: an irregular plural)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def image_uri(image: np.ndarray | Image.Image) -> str:
    """An image as a PNG data URI."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return _png_uri(buf.getvalue())


def figure_uri(fig: Any) -> str:
    """A matplotlib figure as a PNG data URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return _png_uri(buf.getvalue())


def _generation_img(out: Path, rel: str) -> str:
    path = out / rel
    if not path.is_file():
        return "<div class='missing'>image missing</div>"
    return f"<img src='{image_uri(Image.open(path))}' alt='generation'>"


def pair_html(out: Path, gen: Mapping[str, Any], train: Mapping[str, np.ndarray], caption: str) -> str:
    """A generation (left) beside its nearest training image (right), ``caption`` (HTML) below."""
    key = gen.get("nearest_key")
    near = train.get(key) if key is not None else None
    near_html = (
        f"<img src='{image_uri(near)}' alt='training image'>"
        if near is not None
        else "<div class='missing'>not available</div>"
    )
    return f"<div class='pair'>{_generation_img(out, gen['image'])}{near_html}<br>{caption}</div>"


def verdict_section(gate: Mapping[str, Any] | None) -> str:
    """The verdict and a table of the gate conditions, failing ones first: measured value vs threshold."""
    if not gate:
        return "<h2 id='gate'>Gate</h2><p class='muted'>No gate conditions were evaluated.</p>"
    passed = gate["passed"]
    conds = sorted(gate["conditions"], key=lambda c: not c["failed"])
    failing = [c for c in conds if c["failed"]]
    head = (
        f"<p class='verdict'><span class='pass'>PASSED</span>: no condition holds "
        f"({plural(len(conds), 'condition')} checked)</p>"
        if passed
        else f"<p class='verdict'><span class='fail'>FAILED</span>: {plural(len(failing), 'condition')} of {len(conds)} "
        f"{'holds' if len(failing) == 1 else 'hold'}</p>"
    )
    rows = "".join(
        f"<tr class='{'fail' if c['failed'] else ''}'><td class='l'><code>{esc(c['condition'])}</code></td>"
        f"<td class='l'>{text(c.get('setting'))}</td><td class='l'>{text(c.get('metric'))}</td>"
        f"<td>{text(c.get('actual'))}</td><td>{text(c.get('op'))} {text(c.get('threshold'))}</td>"
        f"<td class='l'>{'FAILS the gate' if c['failed'] else 'ok'}</td></tr>"
        for c in conds
    )
    table = (
        "<table><tr><th class='l'>condition</th><th class='l'>setting</th><th class='l'>metric</th>"
        f"<th>measured</th><th>fails when</th><th class='l'>result</th></tr>{rows}</table>"
    )
    return f"<h2 id='gate'>Gate</h2>{head}{table}"


def top_similar_section(
    report: Mapping[str, Any], out: Path, train: Mapping[str, np.ndarray], limit: int | None = None
) -> str:
    """Generations most similar to the training set (``report["top_similar"]``), flagged or not."""
    top = list(report.get("top_similar") or [])[:limit]
    sscd = report["config"]["similarity"] == "sscd"
    intro = (
        "highest SSCD cosine to the nearest training image first"
        if sscd
        else "lowest nL2 to the nearest training image first"
    )
    if not top:
        return "<h2 id='top'>Most similar generations</h2><p class='muted'>No generation was measured.</p>"
    pairs = []
    for g in top:
        flag = (
            "<span class='fail'>flagged</span>" if g["flagged"] else "<span class='muted'>not flagged</span>"
        )
        caption = (
            f"<b>{'sim' if sscd else 'nL2'} {text(g['similarity'], 3)}</b> · {esc(g['setting'])} · "
            f"seed {text(g['seed'])}<br>#{text(g['prompt_index'])} {flag}<br>"
            f"<span class='prompt-text' title='{esc(g['prompt'])}'>{esc(g['prompt'])}</span><br>"
            f"nearest <code>{text(g.get('nearest_key'))}</code>"
        )
        pairs.append(pair_html(out, g, train, caption))
    return (
        f"<h2 id='top'>Most similar generations</h2><p class='muted'>{plural(len(top), 'generation')} over "
        f"all prompts and settings, whatever the detector said; {intro}. Each pair: generation (left), "
        f"nearest training image (right).</p><div class='pairs'>{''.join(pairs)}</div>"
    )


def _worst(gens: Sequence[Mapping[str, Any]], sscd: bool) -> float | None:
    values = [float(g["similarity"]) for g in gens if g.get("similarity") is not None]
    if not values:
        return None
    return max(values) if sscd else min(values)


def prompts_table(report: Mapping[str, Any]) -> str:
    """Every prompt: index, text, group, label, detection score, flag, and per setting the most similar of its
    generations; sortable by any column (initially by the unmitigated similarity, worst first)."""
    sscd = report["config"]["similarity"] == "sscd"
    settings = list(report["metrics"]["settings"]) or ["none"]
    word = "max sim" if sscd else "min nL2"
    first = "descending" if sscd else "ascending"
    heads = [
        "<th>#</th>",
        "<th class='l'>prompt</th>",
        "<th class='l'>group</th>",
        "<th>label</th>",
        "<th>score</th>",
        "<th>flagged</th>",
        *(
            f"<th{' data-initial=' + repr(first) if i == 0 else ''}>{esc(s)} {word}</th>"
            for i, s in enumerate(settings)
        ),
    ]
    rows = []
    for r in report["prompts"]:
        worst = [_worst(r["generations"].get(s, []), sscd) for s in settings]
        cells = [
            f"<td>{text(r['index'])}</td>",
            f"<td class='l'>{esc(r['prompt'])}</td>",
            f"<td class='l'>{text(r.get('group'))}</td>",
            f"<td>{text(r.get('label'))}</td>",
            f"<td data-v='{r['score']!r}'>{text(r['score'])}</td>",
            f"<td data-v='{int(bool(r['flagged']))}'>{text(bool(r['flagged']))}</td>",
            *(f"<td data-v='{'' if w is None else repr(w)}'>{text(w, 3)}</td>" for w in worst),
        ]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f"<h2 id='prompts'>All prompts</h2><p class='muted'>{plural(len(rows), 'prompt')}; click a column "
        "header to sort (again to reverse).</p>"
        f"<table class='sortable' id='prompt-table'><thead><tr>{''.join(heads)}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _weights(w: Mapping[str, Any] | None) -> str:
    if not w:
        return MISSING
    return (
        f"sha256 <code>{esc(w['sha256'])}</code> ({plural(int(w['files']), 'file')}, {num(w['bytes'])} bytes)"
    )


def run_section(report: Mapping[str, Any]) -> str:
    """Run facts: copyguard version, date, model and its hash, index and its size, inputs, timing, machine
    and the configuration (collapsed)."""
    run = report.get("run") or {}
    ident = report.get("identity") or {}
    facts: list[tuple[str, str]] = [
        ("copyguard version", text(run.get("copyguard_version"))),
        ("date (UTC)", text(run.get("date_utc"))),
        ("model", text(run.get("model", ident.get("model")))),
        ("model weights", _weights(run.get("model_weights"))),
        ("LoRA", text(run.get("lora", ident.get("lora")))),
        ("LoRA weights", _weights(run.get("lora_weights"))),
        ("index", text(run.get("index", ident.get("index")))),
        ("index entries", text(run.get("index_entries"))),
    ]
    shown = {"model", "lora", "index"}
    facts += [(k, text(v)) for k, v in ident.items() if k not in shown]
    timing = report.get("timing") or {}
    facts += [(f"timing: {k}", text(v)) for k, v in timing.items()]
    machine = run.get("machine") or {}
    for k in ("node", "cpu_model", "usable_cpus", "memory_gib", "gpu", "python"):
        if k in machine:
            facts.append((f"machine: {k}", text(machine[k])))
    rows = "".join(f"<tr><th class='l'>{esc(k)}</th><td class='l'>{v}</td></tr>" for k, v in facts)
    config = esc(json.dumps(run.get("config", report.get("config", {})), indent=1, sort_keys=True))
    return (
        f"<h2 id='run'>Run facts</h2><table>{rows}</table>"
        f"<details><summary>configuration</summary><pre>{config}</pre></details>"
    )
