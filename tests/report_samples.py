"""Hand-made report data for the audit and curation HTML reports, and a headless-Chromium helper.

The tests render these in milliseconds instead of running a whole audit or curation job. Run as a script to
write both pages and their screenshots (the images in docs/img)::

    .venv/bin/python -m tests.report_samples OUT_DIR [--screenshots docs/img]
"""

from __future__ import annotations

import argparse
import base64
import io
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium() -> str | None:
    """The Chromium executable on PATH, or None."""
    return next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)


def run_chromium(page: Path, *args: str, timeout: float = 120) -> str:
    """Chromium in headless mode on ``page`` with ``args`` (``--dump-dom``, ``--screenshot=...``); stdout."""
    exe = chromium()
    if exe is None:
        raise RuntimeError("chromium is not installed")
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
    return done.stdout


def tile(seed: int, size: int = 32) -> np.ndarray:
    """A small colourful uint8 HWC image, different per ``seed``."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return np.kron(base, np.ones((size // 4, size // 4, 1), dtype=np.uint8))


def _gen(out: Path, index: int, setting: str, seed: int, key: str | None, sim: float, img: int) -> dict:
    name = f"images/p{index:05d}_{setting}_s{seed}.png"
    Image.fromarray(tile(img)).save(out / name)
    return {"seed": seed, "image": name, "nearest_key": key, "similarity": sim}


def audit_report(out: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A report dict (the shape :func:`copyguard.mitigation.audit.run_audit` writes) with images under ``out``.

    Prompt #2 is **not** flagged but holds the most similar generation (0.97, ``train/0007``) and fails the
    gate on ``share_above_0.5``; prompt #0 is flagged; prompt #3 carries HTML in its text; prompt #4 has no
    group (a missing cell). Returns the report and the training images by key.
    """
    (out / "images").mkdir(parents=True, exist_ok=True)
    specs = [  # prompt, score, flagged, group, label, {setting: [(seed, key, sim)]}
        ("a famous painting of a harbour", 9.1, True, "memorized", 1, {"none": [(0, "train/0003", 0.81), (1, "train/0003", 0.66)], "amg": [(0, "train/0003", 0.31), (1, "train/0011", 0.22)]}),
        ("a cat on a sofa", 2.0, False, "normal", 0, {"none": [(0, "train/0021", 0.18), (1, "train/0022", 0.12)], "amg": [(0, "train/0021", 0.15), (1, "train/0022", 0.11)]}),
        ("the logo of a sports club", 2.4, False, "normal", 0, {"none": [(0, "train/0007", 0.97), (1, "train/0007", 0.58)], "amg": [(0, "train/0007", 0.49), (1, "train/0030", 0.27)]}),
        ("<script>alert('x')</script> a red car", 1.7, False, "normal", 0, {"none": [(0, "train/0040", 0.21), (1, None, 0.19)], "amg": [(0, "train/0040", 0.2), (1, "train/0041", 0.14)]}),
        ("mountains at dawn", 1.1, False, None, None, {"none": [(0, "train/0050", 0.09), (1, "train/0051", 0.35)], "amg": [(0, "train/0050", 0.08), (1, "train/0051", 0.3)]}),
    ]  # fmt: skip
    prompts = []
    for i, (text, score, flagged, group, label, gens) in enumerate(specs):
        generations = {
            s: [
                _gen(out, i, s, seed, key, sim, i * 10 + seed + (5 if s == "amg" else 0))
                for seed, key, sim in g
            ]
            for s, g in gens.items()
        }
        prompts.append(
            {
                "index": i,
                "prompt": text,
                "label": label,
                "group": group,
                "score": score,
                "flagged": flagged,
                "tokens": [["a", 0.1], ["famous", 0.9], ["painting", 0.7], ["<b>odd</b>", 0.2]]
                if flagged
                else None,
                "generations": generations,
            }
        )
    overall = {
        "none": {"n": 10, "top5pct": 0.92, "top1": 0.97, "pct_gt_0.5": 30.0, "pct_gt_0.4": 30.0, "mean": 0.42, "fid": None, "clip": None},
        "amg": {"n": 10, "top5pct": 0.41, "top1": 0.49, "pct_gt_0.5": 0.0, "pct_gt_0.4": 10.0, "mean": 0.23, "fid": None, "clip": None},
    }  # fmt: skip
    all_gens = [(r, s, g) for r in prompts for s, gs in r["generations"].items() for g in gs]
    top = sorted(all_gens, key=lambda t: -t[2]["similarity"])[:6]
    report = {
        "identity": {"model": "/models/sd-lab", "lora": None, "index": "/data/curated/index", "prompts": "/data/prompts.jsonl", "reference_prompts": None, "real_images": None, "training_images": "/data/curated/shards/*.tar"},
        "config": {"similarity": "sscd", "seeds": [0, 1], "mitigations": ["amg"], "settings": ["none", "amg"], "report_flagged_max": 50, "explain_top": 3},
        "detection": {"threshold": 5.25, "threshold_source": "default: median + 3 x 1.4826 MAD of the audited prompts' scores"},
        "metrics": {
            "detection": {"prompts": 5, "flagged": 1, "flagged_share": 20.0, "auc": 1.0, "tpr_at_1pct_fpr": 1.0, "roc": {"fpr": [0.0, 0.0, 1.0], "tpr": [0.0, 1.0, 1.0]}},
            "settings": {s: {"overall": m, "groups": {}} for s, m in overall.items()},
            "prompt_alignment": "not measured: no CLIP model configured",
            "fid": "not measured: no --real-images",
        },
        "prompts": prompts,
        "gate": {
            "passed": False,
            "conditions": [
                {"condition": "top1>0.99", "actual": 0.97, "failed": False, "setting": "none", "metric": "top1", "op": ">", "threshold": 0.99},
                {"condition": "share_above_0.5>1", "actual": 30.0, "failed": True, "setting": "none", "metric": "share_above_0.5", "op": ">", "threshold": 1.0},
            ],
        },
        "top_similar": [
            {"prompt_index": r["index"], "prompt": r["prompt"], "setting": s, "seed": g["seed"], "similarity": g["similarity"], "nearest_key": g["nearest_key"], "image": g["image"], "flagged": r["flagged"], "score": r["score"]}
            for r, s, g in top
        ],
        "run": {
            "copyguard_version": "0.1.0", "date_utc": "2025-01-02T03:04:05Z", "model": "/models/sd-lab",
            "model_weights": {"sha256": "ab" * 32, "files": 3, "bytes": 123456789}, "lora": None, "lora_weights": None,
            "index": "/data/curated/index", "index_entries": 4096, "prompts": "/data/prompts.jsonl", "inputs": {},
            "config": {"similarity": "sscd", "seeds": [0, 1]}, "machine": {"node": "ci-runner-1", "cpu_model": "Test CPU", "usable_cpus": 2, "python": "3.12.0"},
        },
        "timing": {"detect_s": 1.5, "generate_s": 20.2, "metrics_s": 0.4, "resumed_prompts": 0, "processes": 1},
    }  # fmt: skip
    keys = {g["nearest_key"] for _, _, g in all_gens} - {None, "train/0040"}  # one training image unavailable
    train = {k: tile(1000 + int(k.split("/")[1])) for k in sorted(keys)}
    return report, train


def _thumb(seed: int) -> str:
    buf = io.BytesIO()
    Image.fromarray(tile(seed, 48)).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def curate_report(full: bool = True) -> tuple[dict[str, Any], dict[str, str]]:
    """A curation ``report.json`` dict and its thumbnails by key. ``full``: with the fields the report shows
    when the curate job provides them (per-member ``kept``/``similarity``, ``rejected_samples``, ``run``)."""
    members = [
        {"key": "s/0001", "caption": "a cat <i>on</i> a mat"},
        {"key": "s/0002", "caption": "a cat on a mat"},
        {"key": "s/0003", "caption": "cat on mat, photo"},
    ]
    if full:
        for m, kept, sim in zip(members, (False, True, False), (0.93, None, 0.88), strict=True):
            m["kept"] = kept
            if sim is not None:
                m["similarity"] = sim
    summary = {
        "image_groups": 2,
        "caption_groups": 1,
        "image_group_sizes": {"2": 1, "3-4": 1},
        "caption_group_sizes": {"2": 1},
        "caption_rule_drops": {"template": 1},
        "top_image_groups": [{"group": "s/0001", "size": 5, "members": members}],
        "top_caption_groups": [
            {"group": "s/0010", "size": 2, "members": [{"key": "s/0010", "caption": "x"}]}
        ],
    }
    report: dict[str, Any] = {
        "inputs": 12,
        "accounted": 12,
        "invariant_holds": True,
        "by_status": {"kept": 7, "duplicate": 3, "rejected": 2},
        "by_reason": {"duplicate:image": 3, "rejected:empty_caption": 1, "rejected:corrupt_image": 1},
        "summary": summary,
        "config": {"images": {"threshold": 0.7}},
    }
    if full:
        report["rejected_samples"] = [
            {"key": "s/0100", "reason": "empty_caption", "detail": "", "shard": "raw/shard-0.tar"},
            {"key": "s/0101", "reason": "corrupt_image", "detail": "<cannot identify image>", "shard": "raw/shard-1.tar"},
        ]  # fmt: skip
        report["rejected_total"] = 5
        report["manifest"] = "out/manifest/*.parquet"
        report["run"] = {
            "copyguard_version": "0.1.0",
            "date_utc": "2025-01-02T03:04:05Z",
            "inputs": "raw/*.tar",
            "output": "out/",
            "machine": {"node": "ci-runner-1"},
        }
    thumbs = {m["key"]: _thumb(i) for i, m in enumerate(members)}
    return report, thumbs


def main() -> None:
    """Write both sample pages into OUT_DIR and, with ``--screenshots DIR``, their screenshots."""
    from copyguard.curation.curate_report import render_report_html
    from copyguard.mitigation.audit_report import write_reports

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--screenshots", type=Path)
    args = parser.parse_args()
    report, train = audit_report(args.out)
    write_reports(report, args.out, train)
    creport, thumbs = curate_report()
    (args.out / "curate_report.html").write_text(render_report_html(creport, thumbs), encoding="utf-8")
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
        for page, shot, height in (("report.html", "audit_report.png", 2400), ("curate_report.html", "curate_report.png", 1500)):  # fmt: skip
            target = (args.screenshots / shot).resolve()
            run_chromium(args.out / page, f"--screenshot={target}", f"--window-size=1200,{height}")
            print(target)


if __name__ == "__main__":
    main()
