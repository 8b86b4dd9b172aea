"""What every generated page shares: loading the recorded JSON, the hand-written prose, the lines that
name a figure's machine and command, and writing a page.

Prose lives in ``docs/_partials/<page>.md``: each section starts at a ``<!-- partial: NAME -->`` line and
runs to the next such line; :func:`partial` returns it verbatim (surrounding blank lines stripped).
"""

from __future__ import annotations

import json
import logging
import re
from functools import cache
from pathlib import Path
from typing import Any

from copyguard.common.fileops import atomic_write

__all__ = [
    "CPU",
    "DOCS",
    "Results",
    "command",
    "load_average_span",
    "load_results",
    "machine_line",
    "missing",
    "partial",
    "source",
    "verdict",
    "write_page",
]

log = logging.getLogger("benchmarks.render")
ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PARTIALS = DOCS / "_partials"
CPU = "dev-2cpu"  # the machine tag of the recorded CPU results
Results = dict[str, dict[str, dict[str, Any]]]  # {benchmark: {machine: result}}
_MARK = re.compile(r"^<!-- partial: ([\w-]+) -->$", re.M)


def load_results(root: str | Path, include_quick: bool = False) -> Results:
    """``{benchmark: {machine: result}}`` for every ``<root>/<machine>/<benchmark>.json``; results of
    ``--quick`` runs only with ``include_quick``."""
    out: Results = {}
    for path in sorted(Path(root).glob("*/*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        if not isinstance(data, dict) or (data.get("quick") and not include_quick):
            continue
        name = data.get("benchmark", path.stem)
        out.setdefault(name, {})[path.parent.name] = data
    return out


@cache
def _sections(page: str) -> dict[str, str]:
    text = (PARTIALS / f"{page}.md").read_text(encoding="utf-8")
    marks = list(_MARK.finditer(text))
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return {m.group(1): text[m.end() : end].strip("\n") for m, end in zip(marks, ends, strict=True)}


def partial(page: str, name: str, **fields: Any) -> str:
    """The hand-written section ``name`` of ``docs/_partials/<page>.md``; with ``fields``, its ``{field}``
    placeholders filled (``str.format``)."""
    sections = _sections(page)
    if name not in sections:
        raise KeyError(f"docs/_partials/{page}.md has no section {name!r} (has: {', '.join(sections)})")
    return sections[name].format(**fields) if fields else sections[name]


def missing(title: str, command: str) -> str:
    """A section whose result is not recorded yet."""
    return f"## {title}\n\nNot measured yet: run `{command}`.\n"


def verdict(ok: bool | None) -> str:
    """A goal's result cell: ``**pass**``, ``**FAIL**`` or ``-`` when not judged."""
    return "-" if ok is None else ("**pass**" if ok else "**FAIL**")


def load_average_span(machine: dict[str, Any], digits: int | None = 1) -> str:
    """``start → end`` 1-minute load averages of a result's machine record (``?`` where absent)."""

    def first(key: str) -> str:
        values = machine.get(key) or ["?"]
        return str(values[0]) if digits is None or values[0] == "?" else f"{values[0]:.{digits}f}"

    return f"{first('load_average_at_start')} → {first('load_average_at_end')}"


def command(r: dict[str, Any]) -> str:
    """The recorded command, without ``--out`` when it names the default results folder."""
    words = str(r.get("command", "?")).split(" ")
    for k in range(len(words) - 1):
        if words[k] == "--out" and Path(words[k + 1]).as_posix().endswith("benchmarks/results"):
            del words[k : k + 2]
            break
    return " ".join(words)


def machine_line(tag: str, r: dict[str, Any]) -> str:
    """The italic line under a benchmark's table: machine, load, date, wall time, command."""
    m = r.get("machine", {})
    cores = f"{m.get('usable_cpus', '?')} of {m.get('cpu_count', '?')} cores"
    mem = f", {m['memory_gib']} GiB" if m.get("memory_gib") else ""
    return (
        f"*Machine `{tag}`: {m.get('cpu_model') or m.get('processor', '?')}, {cores}{mem}; "
        f"1-min load average {load_average_span(m)} (start → end) on {r.get('started', '?')[:16]}; "
        f"run took {r.get('wall_s', '?')} s. Reproduce: `{command(r)}`.*"
    )


def source(name: str, r: dict[str, Any]) -> str:
    """The italic line naming a figure's result file, machine, load, date and commit."""
    commit = ((r.get("git") or {}).get("commit") or "")[:10] or "not recorded"
    m = r.get("machine", {})
    return (
        f"*Source: `benchmarks/results/{m.get('tag', CPU)}/{name}.json` ({m.get('cpu_model', '?')}, "
        f"{m.get('usable_cpus', '?')} cores, load {m.get('load_average_at_start', ['?'])[0]} at the start; "
        f"{r.get('started', '?')[:16]}; commit {commit}).*"
    )


def write_page(path: str | Path, text: str) -> Path:
    """Write a generated page (its folder created), ending in exactly one newline."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(out), text.rstrip() + "\n")
    log.info("wrote %s", out)
    return out
