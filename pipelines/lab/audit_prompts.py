"""Audit prompt files from a ``sample-data`` folder: the planted duplicated pairs' captions and unique ones.

The demo (and a user rehearsing an audit on the lab model) needs prompts whose memorization status is
known: the captions of the planted duplicated image-caption pairs (label 1, grouped by their copy count)
and captions of unique samples (label 0). A disjoint set of unique captions becomes the reference prompts
that calibrate the detection threshold (``--reference-prompts``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from copyguard.common.errors import UsageError
from copyguard.common.fileops import atomic_write
from copyguard.curation.records import Sample
from copyguard.curation.shards import iter_samples

__all__ = ["write_audit_prompts"]

DUP_KIND = "dup_pair"
UNIQUE_KIND = "unique"


def write_audit_prompts(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    min_copies: int = 25,
    unique: int = 16,
    reference: int = 32,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write ``out_dir/prompts.jsonl`` and ``out_dir/reference.txt``; returns their paths.

    ``prompts.jsonl``: one line per planted pair with at least ``min_copies`` copies (``label`` 1,
    ``group`` "copies=N") and ``unique`` unique captions (``label`` 0, ``group`` "unique").
    ``reference.txt``: ``reference`` other unique captions, one per line.
    """
    data = Path(data_dir)
    truth_path = data / "ground_truth.jsonl"
    if not truth_path.is_file():
        raise UsageError(f"{data} has no ground_truth.jsonl (make it with `copyguard sample-data`)")
    truth = [json.loads(line) for line in truth_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    captions = {
        r.key: r.caption for r in iter_samples(str(data / "*.tar")) if isinstance(r, Sample) and r.caption
    }
    dups: dict[str, tuple[int, str]] = {}
    for row in truth:
        if row.get("kind") == DUP_KIND and row.get("copies", 0) >= min_copies and row["key"] in captions:
            dups.setdefault(row["caption_group"], (int(row["copies"]), captions[row["key"]]))
    uniques = sorted(r["key"] for r in truth if r.get("kind") == UNIQUE_KIND and r["key"] in captions)
    if not dups or len(uniques) < unique + reference:
        raise UsageError(
            f"{data}: need duplicated pairs with >= {min_copies} copies and {unique + reference} unique "
            f"samples, found {len(dups)} and {len(uniques)}"
        )
    picked = random.Random(seed).sample(uniques, unique + reference)
    lines = [
        json.dumps({"prompt": caption, "label": 1, "group": f"copies={copies}"})
        for copies, caption in sorted(dups.values())
    ]
    lines += [json.dumps({"prompt": captions[k], "label": 0, "group": "unique"}) for k in picked[:unique]]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts, refs = out / "prompts.jsonl", out / "reference.txt"
    atomic_write(str(prompts), "\n".join(lines) + "\n")
    atomic_write(str(refs), "\n".join(captions[k].replace("\n", " ") for k in picked[unique:]) + "\n")
    return prompts, refs
