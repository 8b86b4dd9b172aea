"""The one renderer: ``docs/benchmarks.md``, ``docs/results.md`` (plots in ``docs/img/``) and
``docs/mitigation.md`` from the JSON the benchmark scripts write under ``benchmarks/results/<machine>/``.

    python -m benchmarks.render [--machine dev-2cpu] [--results benchmarks/results] [--docs docs]

Each page's template is ``docs/_partials/<page>.md``: its prose and table layouts in page order, one section
per ``<!-- partial: NAME ... -->`` line, ``{r[a][b]}`` placeholders filled from the recorded JSON
(:class:`Fields`; the syntax is described at the top of each template). This module picks the results,
derives what a template cannot (:func:`_views`), draws the plots and flags stale figures: those measured on
a commit older than the code they measure (:func:`stale_reason`).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import string
import subprocess
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from copyguard.common.fileops import atomic_write
from copyguard.common.fmt import MISSING, cell, num

__all__ = ["load_results", "main", "render_all", "render_page", "stale_reason", "stale_results"]
__all__ += ["write_benchmarks", "write_mitigation", "write_results"]

log = logging.getLogger("benchmarks.render")
ROOT = Path(__file__).resolve().parents[1]
DOCS, RESULTS = ROOT / "docs", ROOT / "benchmarks" / "results"
CPU = "dev-2cpu"  # the machine tag of the recorded CPU results
Record = dict[str, Any]
Results = dict[str, dict[str, Record]]  # {benchmark: {machine: result}}
_MARK = re.compile(r"^<!-- partial: ([\w-]+)(.*?) -->$", re.M)
SOURCE = (  # the line under a result's figures ({source} in a template)
    "*Source: `benchmarks/results/{tag}/{name}.json` ({r[machine][cpu_model]}, {r[machine][usable_cpus]} of "
    "{r[machine][cpu_count]} cores, {r[machine][memory_gib]!s} GiB, threads {r[machine][threads]}; 1-min load "
    "{r[machine][load_average_at_start][0]!s} → {r[machine][load_average_at_end][0]!s} (start → end) on "
    "{r[started]:.16}; commit {r[git][commit]:.10}; run took {r[wall_s]!s} s). Reproduce: `{command}`.*"
)
_BARE_SECTION = re.compile(r" \(§[\d.]+\)")  # recorded labels may cite one ("(§4)"); the docs cite papers

# Chen, Liu, Xu, "Towards Memorization-Free Diffusion Models" (CVPR 2024): SD v1.4 on LAION memorized prompts
# (baselines: Somepalli et al., NeurIPS 2023), SSCD to the nearest training image: Top5%, Top1, %>0.5, %>0.4, FID.
PAPER_SD: dict[str, tuple[float, ...]] = {
    "none": (0.91, 0.93, 44.85, 59.23, 106.41),
    "gni": (0.91, 0.94, 42.75, 58.18, 97.81),
    "rt": (0.61, 0.84, 15.07, 26.75, 101.69),
    "cwr": (0.79, 0.85, 26.45, 40.93, 96.25),
    "rna": (0.75, 0.82, 17.78, 29.05, 99.68),
    "amg-paper": (0.41, 0.47, 0.00, 7.07, 99.12),
    "amg-strong": (0.34, 0.39, 0.00, 0.00, 100.45),
}
_CURATE = "curation/ pipelines/curate pipelines/transforms.py pipelines/beam_ pipelines/embed_handler.py configs/curate"
_TRAIN = "train/finetune train/mem_filter.py mitigation/magnitude.py"
_LAB = "pipelines/lab/architecture pipelines/lab/data pipelines/lab/trainer pipelines/lab/sample_data configs/lab"
# The code (path prefixes) each benchmark's figures measure, besides its script (named in its command).
SOURCES: dict[str, str] = {
    "dedup": _CURATE,
    "curate": _CURATE,
    "curate_scale": _CURATE,
    "minhash": "curation/captions.py pipelines/transforms.py",
    "faiss": "curation/clustering.py",
    "embedders": "curation/embedders.py curation/images.py",
    "sample_data": "pipelines/lab/sample_ pipelines/lab/image_pool.py",
    "lab_model": _LAB,
    "lab_mitigation": "mitigation/",
    "mitigation": "mitigation/",
    "train": _TRAIN,
    "train_evidence": _TRAIN,
    "train_evidence_rules": _TRAIN,
    "train_evidence_recalibrate": _TRAIN,
    "train_evidence_rules_small": _TRAIN,
    "train_evidence_recalibrate_small": _TRAIN,
    "filter_rules_tiny": _TRAIN,
    "filter_rules_small": _TRAIN,
    "bench_gpu": f"mitigation/ benchmarks/gpu_ {_TRAIN} {_LAB}",
}


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
        if isinstance(data, dict) and (include_quick or not data.get("quick")):
            out.setdefault(data.get("benchmark", path.stem), {})[path.parent.name] = data
    return out


def get(record: Any, *keys: str) -> Any:
    """``record[k1][k2]...`` through dicts and lists (a digit key indexes a list); None where one is missing."""
    for key in keys:
        if isinstance(record, list) and key.isdigit():
            record = record[int(key)] if int(key) < len(record) else None
        else:
            record = record.get(key) if isinstance(record, Mapping) else None
    return record


def verdict(ok: bool | None) -> str:
    """A goal's result: ``**pass**``, ``**FAIL**`` or ``-`` when not judged."""
    return MISSING if ok is None else ("**pass**" if ok else "**FAIL**")


class Fields(string.Formatter):
    """``str.format`` for the templates: ``{r[a][b]}`` is the path a/b into the field ``r`` (``-`` when missing);
    a value without a format spec goes through :func:`copyguard.common.fmt.cell` (numbers to 3 significant
    digits), ``!s`` writes it as recorded, ``!v`` as a goal's verdict, ``!n`` a list's length, ``!j`` a list or
    dict joined; ``:.2fx`` and ``:+.1f%`` append ``x`` and ``%``. ``found`` counts the fields present."""

    found = 0

    def get_field(self, field_name: str, args: Any, kwargs: Mapping[str, Any]) -> tuple[Any, str]:
        first, *keys = re.findall(r"[^[\]]+", field_name)
        value = get(kwargs.get(first), *keys)
        self.found += value is not None
        return value, first

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if value is None or conversion not in ("v", "n", "j"):
            return value if value is None else super().convert_field(value, conversion)
        if conversion == "j":  # a dict's numbers with thousands separators; an empty list reads "-"
            items = [f"{k}: {num(v)}" for k, v in value.items()] if isinstance(value, Mapping) else value
            return ", ".join(items) or None
        return verdict(value) if conversion == "v" else len(value)

    def format_field(self, value: Any, spec: str) -> str:
        if value is None or not spec:
            return cell(value)
        return format(value, spec[:-1]) + spec[-1] if spec[-2:] in ("fx", "f%") else format(value, spec)


@cache
def _sections(page: str) -> dict[str, tuple[str, dict[str, str]]]:
    """``{name: (text, attributes)}`` of the sections of ``docs/_partials/<page>.md``, in order."""
    text = (DOCS / "_partials" / f"{page}.md").read_text(encoding="utf-8")
    marks = list(_MARK.finditer(text))
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return {
        m.group(1): (text[m.end() : end].strip("\n"), dict(a.partition("=")[::2] for a in m.group(2).split()))
        for m, end in zip(marks, ends, strict=True)
    }


def _row(template: str, values: Mapping[str, Any]) -> str:
    if not template.startswith("|"):
        return Fields().vformat(template, (), values)
    cells = []
    for part in template.strip("| ").split(" | "):
        formatter = Fields()
        text = formatter.vformat(part, (), values)
        cells.append(text if formatter.found or "{" not in part else MISSING)
    return f"| {' | '.join(cells)} |"


def _fill(text: str, values: Mapping[str, Any], rows: Iterable[Record] | Mapping[str, Record] | None) -> str:
    """``text`` filled from ``values``; with ``rows``, its row (the line after the last ``|---|`` line, else
    the last line) once per record (a dict's records with their key as ``key``)."""
    if rows is None:
        return Fields().vformat(text, (), values)
    lines = text.splitlines()
    at = max([i + 1 for i, line in enumerate(lines) if line.startswith("|---")], default=len(lines) - 1)
    if isinstance(rows, Mapping):
        rows = [{**v, "key": k} for k, v in rows.items()]
    body = [_row(lines[at], {**values, **row}) for row in rows]
    head, tail = ("\n".join(part) for part in (lines[:at], lines[at + 1 :]))
    return "\n".join([Fields().vformat(head, (), values), *body, Fields().vformat(tail, (), values)])


def blocks(*parts: str | None) -> str:
    """The non-empty parts, a blank line between them."""
    return "\n\n".join(p.strip("\n") for p in parts if p and p.strip())


def _views(name: str, r: Record) -> Record:
    """What a template cannot compute from the result ``r`` of benchmark ``name`` (its ``{x[...]}``)."""
    x: Record = {}
    if name == "embedders":
        rows = x.setdefault("rows", [])
        for kind, res in r["models"].items():
            for bs, e2e in res["end_to_end_64px"].items():
                only, q = res["model_only_320px"][bs], res["quality"]["64px"]
                rows.append({"model": kind, "batch": bs, "e2e": e2e, "only": only, "q": q})
    elif name == "dedup":
        by = {part: get(r, "scores", part, "by_kind") or {} for part in ("captions", "images")}
        for kind in sorted(by["images"]):
            part = "captions" if kind.startswith(("caption", "template")) else "images"
            x.setdefault("kinds", []).append({**by[part].get(kind, {}), "key": kind, "part": part})
    elif name == "lab_model":
        by, over = r["by_copies"], f"pct_gt_{r['threshold']:g}"
        order = sorted(by, key=lambda k: int(k) if k.isdigit() else 1e9)
        x["rows"] = [{**by[k], "key": k, "over": by[k][over]} for k in order]
        x["minutes"] = (get(r, "training", "timings", "train_total_s") or 0) / 60
    elif name == "lab_mitigation":
        paper = {k: " / ".join(f"{v:g}" for v in row) for k, row in PAPER_SD.items()}
        methods = [{**v, "key": k, "paper": paper.get(k)} for k, v in r["mitigation"]["methods"].items()]
        settings = r["detection"]["settings"].items()
        x = {"settings": [{**s, "setting": k.replace("_n", ", n = ").replace("_", " ")} for k, s in settings]}
        x["methods"], x["unique"] = ([m for m in methods if m.get(key)] for key in ("memorized", "unique"))
        x["amg"] = [m for m in methods if get(m, "memorized", "amg")]
        x["generations"] = len(r["mitigation"]["memorized_prompts"]) * len(r["mitigation"]["seeds"])
        x["goals"] = (
            "Goals: " + ", ".join(f"{k} {verdict(bool(v))}" for k, v in r.get("goals", {}).items()) + "."
        )
    elif (
        name == "mitigation"
    ):  # a gated re-measurement with a prompt the gate does not flag supersedes the first
        for key, m in r["models"].items():
            gated = get(m, "gated_recheck", "ratio_median") or get(
                m, "ratios", "amg_gated_unflagged_vs_plain"
            )
            memorized = get(m, "ratios", "amg_memorized_vs_plain")
            ok = [None if v is None else v <= goal for v, goal in ((gated, 1.15), (memorized, 3.0))]
            x.setdefault("models", []).append({**m, "key": key, "gated_ok": ok[0], "memorized_ok": ok[1]})
            worst = get(m, "details", "amg_worst_memorized") or get(m, "details", "amg_memorized")
            if worst and not get(worst, "amg_stats", "dup_unet_images"):
                x.setdefault("no_gdup", []).append(x["models"][-1])
            if get(m, "details", "amg_gated_unique", "flagged"):
                x.setdefault("flagged", []).append(x["models"][-1])
    elif name == "train":
        full = r["configs"]["full"]["step_s_median"]
        x["configs"] = [
            {**v, "key": k, "vs_full": v["step_s_median"] / full} for k, v in r["configs"].items()
        ]
    elif name == "train_evidence":
        x["twelve"] = [{**v, "key": k[:-4]} for k, v in sorted(r["models"].items()) if k.endswith("_s12")]
    return x


def render_page(page: str, res: Results, machine: str | None = None, **fields: Any) -> str:
    """The sections of ``docs/_partials/<page>.md`` filled from ``res``: a section ``from`` a benchmark once per
    result of ``machine`` (None, or with ``all``: of every machine), the others once, ``fields`` in all."""

    def recorded(name: str, attrs: Mapping[str, str]) -> dict[str, Record]:
        runs = sorted(res.get(name, {}).items())
        return {m: r for m, r in runs if (machine in (None, m) or "all" in attrs) and not r.get("smoke")}

    out = []
    for text, attrs in _sections(page).values():
        if any(recorded(n, attrs) for n in attrs.get("unless", "").split(",") if n):
            continue
        if "if" in attrs and not any(recorded(n, attrs) for n in attrs["if"].split(",")):
            continue
        need, _, path = attrs.get("from", "").partition("/")
        runs = recorded(need, attrs).items() if need else [(None, None)]
        for tag, r in runs:
            values = {**fields, "r": r, "x": _views(need, r) if r else {}, "tag": tag, "name": need}
            values["command"] = re.sub(r" --out \S*benchmarks/results/?(?= |$)", "", str(get(r, "command")))
            values["source"] = Fields().vformat(SOURCE, (), values)
            if not path or get(values, *path.split("/")):
                rows = get(values, *attrs["rows"].split("/")) if "rows" in attrs else None
                out.append(_fill(text, values, rows))
    return blocks(*out)


def stale_reason(name: str, result: Record) -> str | None:
    """Why the result of benchmark ``name`` is stale (git shows a change to its script or :data:`SOURCES`
    between its recorded commit and the working tree, or it records no commit), or None when it is current."""
    commit = get(result, "git", "commit")
    if not commit:
        return "no commit recorded"
    if (changed := _changed_since(commit)) is None:
        return f"commit {commit[:10]} not in this repository"
    scripts = re.findall(r"-m (?:copyguard\.)?([\w.]+)", str(result.get("command")))
    prefixes = (*SOURCES.get(name, "").split(), *(s.replace(".", "/") + ".py" for s in scripts))
    hits = sorted(p for p in changed if p.startswith(prefixes))
    more = f" (+{len(hits) - 3} more)" if len(hits) > 3 else ""
    return f"code changed since {commit[:10]}: {', '.join(hits[:3])}{more}" if hits else None


@cache
def _changed_since(commit: str) -> tuple[str, ...] | None:
    diff = subprocess.run(
        ["git", "diff", "--name-only", commit, "--"], cwd=ROOT, capture_output=True, text=True
    )
    return tuple(diff.stdout.splitlines()) if diff.returncode == 0 else None


def stale_results(root: str | Path) -> list[str]:
    """``machine/name: reason`` for every recorded result under ``root`` whose code changed since."""
    res = load_results(root)
    found = [(f"{m}/{n}", stale_reason(n, r)) for n in sorted(res) for m, r in sorted(res[n].items())]
    return [f"{what}: {why}" for what, why in found if why]


def write_page(path: str | Path, title: str, page: str, files: str, body: str) -> Path:
    """Write a generated page: its title, where it comes from, and ``body``."""
    note = f"<!-- Generated by `python -m benchmarks.render` from benchmarks/results/<machine>/{files} and "
    note += f"docs/_partials/{page}.md; do not edit by hand. -->"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(path), _BARE_SECTION.sub("", blocks(f"# {title}", note, body)) + "\n")
    log.info("wrote %s", path)
    return Path(path)


def write_benchmarks(
    results: str | Path, docs: str | Path = DOCS / "benchmarks.md", include_quick: bool = False
) -> Path:
    """Render every machine's curation benchmarks under ``results`` into ``docs``."""
    body = render_page("benchmarks", load_results(results, include_quick))
    return write_page(docs, "Benchmarks", "benchmarks", "*.json", body)


def _plots(lab: Record, img: Path) -> str:
    """Detection ROC curves, similarity histograms before/after AMG and the privacy-utility trade-off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    def save(ax: Any, name: str, title: str, xlabel: str, ylabel: str) -> str:
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.figure.tight_layout()
        ax.figure.savefig(img / name)
        plt.close(ax.figure)
        return f"![{title}](img/{name})"

    methods = lab["mitigation"]["methods"]
    label = {k: _BARE_SECTION.sub("", v.get("label", k)) for k, v in methods.items()}
    scored = {k: st for k, st in lab["detection"].get("settings", {}).items() if st.get("scores")}
    figures = ["ROC curves: the recorded detection result has no per-prompt scores."]
    if scored:
        ax = plt.subplots(figsize=(4, 4), dpi=100)[1]
        for name, st in scored.items():
            sc = st["scores"]
            mem = [v for v, m in zip(sc["duplicated"], sc["memorized"], strict=True) if m]
            fpr, tpr, _ = roc_curve([1] * len(mem) + [0] * len(sc["unique"]), mem + sc["unique"])
            ax.plot(fpr, tpr, label=f"{name.replace('_', ' ')} (AUC {st['memorized']['auc']:.3f})")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.legend(fontsize=7, loc="lower right")
        figures = [save(ax, "results_roc.png", "Detection ROC", "false positive rate", "true positive rate")]
    ax = plt.subplots(figsize=(6, 3), dpi=100)[1]
    for k in ("none", "amg-paper", "amg-strong"):
        if per_image := get(methods, k, "memorized", "per_image"):
            ax.hist(per_image, bins=[i / 40 for i in range(41)], alpha=0.5, label=label[k])
    ax.axvline(0.4, color="r", ls=":", lw=1)
    ax.legend(fontsize=7)
    title, xlabel = "Memorized prompts before and after AMG", "SSCD to the prompt's training image"
    figures.append(save(ax, "results_similarity.png", title, xlabel, "generations"))
    ax = plt.subplots(figsize=(4.5, 3.2), dpi=100)[1]
    for k, v in methods.items():
        if (fid := get(v, "fid", "fid")) is not None:
            ax.scatter(v["memorized"]["pct_gt_0.4"], fid)
            ax.annotate(label[k], (v["memorized"]["pct_gt_0.4"], fid), fontsize=6)
    xlabel, ylabel = "memorized share (% SSCD > 0.4)", "FID (200 images, 32 px)"
    figures.append(save(ax, "results_tradeoff.png", "Privacy-utility trade-off", xlabel, ylabel))
    return "\n\n".join(figures)


def write_results(
    results: str | Path = RESULTS, docs: str | Path = DOCS / "results.md", machine: str = CPU
) -> Path:
    """Render ``machine``'s results under ``results`` into ``docs``, its plots into ``docs``'s ``img/``."""
    res, img = load_results(results), Path(docs).parent / "img"
    img.mkdir(parents=True, exist_ok=True)
    lab = res.get("lab_mitigation", {}).get(machine)
    fresh = [
        {"what": f"{m}/{n}", "r": r, "why": stale_reason(n, r)}
        for n in sorted(res)
        for m, r in sorted(res[n].items())
    ]
    body = render_page("results", res, machine, plots=lab and _plots(lab, img), freshness=fresh)
    return write_page(docs, "Results", "results", "*.json", body)


def write_mitigation(
    results: str | Path = RESULTS, machine: str = CPU, docs: str | Path = DOCS / "mitigation.md"
) -> Path:
    """Render ``docs`` from ``<results>/<machine>/{lab_mitigation,mitigation}.json`` (--quick results too)."""
    paths = {name: Path(results) / machine / f"{name}.json" for name in ("lab_mitigation", "mitigation")}
    res = {
        name: {machine: json.loads(p.read_text(encoding="utf-8"))} for name, p in paths.items() if p.is_file()
    }
    body = render_page("mitigation", res, machine)
    title, files = "Detection and mitigation: evidence and costs", "{lab_mitigation,mitigation}.json"
    return write_page(docs, title, "mitigation", files, body)


def render_all(results: str | Path = RESULTS, machine: str = CPU, docs: str | Path = DOCS) -> list[Path]:
    """Regenerate the three pages under ``docs`` (results.md and mitigation.md with ``machine``'s figures)."""
    docs = Path(docs)
    pages = [
        write_benchmarks(results, docs / "benchmarks.md"),
        write_results(results, docs / "results.md", machine),
    ]
    return [*pages, write_mitigation(results, machine, docs / "mitigation.md")]


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.render``: regenerate the docs from the recorded JSON (no measuring)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.render", description=main.__doc__)
    parser.add_argument("--results", default=str(RESULTS), help="results root (default: benchmarks/results)")
    parser.add_argument("--machine", default=CPU, help=f"whose figures results.md shows (default {CPU})")
    parser.add_argument("--docs", default=str(DOCS), help="folder of the pages (default: docs)")
    for page in render_all(**vars(parser.parse_args(argv))):
        print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
