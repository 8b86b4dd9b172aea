"""Which recorded figures are stale: measured on a commit older than the code they measure.

Each benchmark lists the source paths its figures depend on (:data:`SOURCES`). A result is *stale* when
git shows a change to one of those paths between the commit recorded in the result (``git.commit``,
written by :func:`benchmarks.common.begin`) and the working tree, or when the result records no commit.
Rendering code is in no list: re-rendering a page never makes its figures stale.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from benchmarks.render.base import load_results

__all__ = ["SOURCES", "stale_reason", "stale_results"]

ROOT = Path(__file__).resolve().parents[2]
_CURATE = [
    "curation/",
    "pipelines/curate.py",
    "pipelines/curate_steps.py",
    "pipelines/transforms.py",
    "pipelines/beam_connected_components.py",
    "pipelines/beam_io.py",
    "pipelines/embed_handler.py",
    "configs/curate.yaml",
]
SOURCES: dict[str, list[str]] = {
    "dedup": [*_CURATE, "benchmarks/bench_dedup.py"],
    "curate": [*_CURATE, "benchmarks/bench_curate.py"],
    "minhash": ["curation/captions.py", "pipelines/transforms.py", "benchmarks/bench_minhash.py"],
    "faiss": ["curation/clustering.py", "benchmarks/bench_faiss.py"],
    "embedders": ["curation/embedders.py", "curation/images.py", "benchmarks/bench_embedders.py"],
    "sample_data": [
        "pipelines/lab/sample_data.py",
        "pipelines/lab/sample_images.py",
        "pipelines/lab/image_pool.py",
        "benchmarks/sample_data_sscd.py",
    ],
    "lab_model": [
        "train/lab_",
        "configs/lab.yaml",
        "pipelines/lab/sample_data.py",
        "benchmarks/bench_lab.py",
    ],
    "lab_mitigation": ["mitigation/", "benchmarks/lab_mitigation.py"],
    "mitigation": ["mitigation/", "benchmarks/bench_mitigation.py"],
    "train": [
        "train/finetune",
        "train/mem_filter.py",
        "mitigation/magnitude.py",
        "benchmarks/bench_train.py",
    ],
    "train_evidence": [
        "train/finetune",
        "train/mem_filter.py",
        "mitigation/magnitude.py",
        "benchmarks/train_evidence.py",
    ],
}


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)


def _changed_paths(commit: str) -> list[str] | None:
    """Tracked paths that differ between ``commit`` and the working tree (None: unknown commit)."""
    done = _git("diff", "--name-only", commit, "--")
    if done.returncode != 0:
        return None
    return [line for line in done.stdout.splitlines() if line]


def stale_reason(
    name: str, result: dict[str, Any], _cache: dict[str, list[str] | None] | None = None
) -> str | None:
    """Why the result of benchmark ``name`` is stale, or None when it is current."""
    commit = (result.get("git") or {}).get("commit")
    if not commit:
        return "no commit recorded"
    cache = {} if _cache is None else _cache
    if commit not in cache:
        cache[commit] = _changed_paths(commit)
    changed = cache[commit]
    if changed is None:
        return f"commit {commit[:10]} not in this repository"
    prefixes = SOURCES.get(name, [])
    hits = sorted(p for p in changed if any(p.startswith(prefix) for prefix in prefixes))
    if hits:
        more = f" (+{len(hits) - 3} more)" if len(hits) > 3 else ""
        return f"code changed since {commit[:10]}: {', '.join(hits[:3])}{more}"
    if (result.get("git") or {}).get("dirty"):
        return None  # measured on uncommitted changes that have since been committed unchanged
    return None


def stale_results(root: str | Path) -> list[str]:
    """``machine/name: reason`` for every recorded result under ``root`` whose code changed since."""
    out: list[str] = []
    cache: dict[str, list[str] | None] = {}
    for name, by_machine in sorted(load_results(root).items()):
        for machine, result in sorted(by_machine.items()):
            reason = stale_reason(name, result, cache)
            if reason:
                out.append(f"{machine}/{name}: {reason}")
    return out
