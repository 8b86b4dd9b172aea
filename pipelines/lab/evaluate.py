"""Measure how much the lab model memorizes, from its saved diffusers folder.

The model is loaded with plain ``StableDiffusionPipeline.from_pretrained(model_dir)`` and sampled with
DDIM and classifier-free guidance through the library's generate-and-measure loop
(:mod:`copyguard.mitigation.evaluation.measure`; figures from
:mod:`copyguard.mitigation.evaluation.evidence`). Prompts: the caption of every duplicated image-caption
pair the data holds (:func:`copyguard.pipelines.lab.data.duplication`: from ``ground_truth.jsonl`` groups or
the shards themselves) and a seeded choice of unique training captions, several seeds each. Each
generation is compared with its prompt's own training image(s) by SSCD cosine, optionally with the
nearest image of the whole training set (Somepalli et al. 2023, "Understanding and Mitigating Copy in
Diffusion Models"), and by pixel nL2 (Chen et al. 2024, "Towards Memorization-Free Diffusion
Models"); figures are given per duplication count, for whatever counts the data has. Data with no
duplicated pair gets ``duplicated: {"measured": false, "reason": NO_DUPLICATES}`` and no duplicated
figures; unique prompts, calibration and FID are measured all the same. Also measured: the threshold
calibration (SSCD of VAE round trips and JPEG re-encodes of training images vs. distinct training
images), the first-step text-conditional magnitude AUC (Wen et al. 2024, "Detecting, Explaining, and
Mitigating Memorization in Diffusion Models": duplicated >= 25 copies vs. unique) and FID of held-out
captions' generations against the held-out real images.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from copyguard.common.errors import UsageError
from copyguard.curation.embedders import load_embedder
from copyguard.mitigation.evaluation import evidence, measure
from copyguard.mitigation.metrics import InceptionFeatures, fid_from_features, max_cosine, pixel_nl2
from copyguard.pipelines.lab.config import EvalConfig
from copyguard.pipelines.lab.data import LabData

__all__ = ["NO_DUPLICATES", "EvalPrompt", "evaluate_memorization", "load_pipeline", "select_prompts"]

log = logging.getLogger(__name__)

MAGNITUDE_MIN_COPIES = 25
NO_DUPLICATES = "no duplicated pairs found: memorization of duplicated pairs not measured"


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt: its caption, the image group it should be compared with, its copy count."""

    caption: str
    group: str
    copies: int  # 1 = unique

    @property
    def bucket(self) -> str:
        return "unique" if self.copies <= 1 else str(self.copies)


def load_pipeline(model_dir: str | Path, device: torch.device) -> Any:
    """``StableDiffusionPipeline.from_pretrained`` (local files only), DDIM, quiet progress."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(model_dir), local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def select_prompts(data: LabData, unique_prompts: int, seed: int) -> list[EvalPrompt]:
    """Every duplicated pair's caption (sorted by copies) and ``unique_prompts`` seeded unique captions.

    Pairs and copy counts come from ``data.copies`` (derived from the groups, never from a ``kind`` or
    ``copies`` column); a prompt is compared with the training images of its pair's image group.
    """
    dups: dict[str, EvalPrompt] = {}
    unique: list[EvalPrompt] = []
    for key, cap in zip(data.keys, data.captions, strict=True):
        row, copies = data.row(key), data.copies.get(key, 1)
        group = str(row.get("image_group") or key)
        if copies == 0:
            unique.append(EvalPrompt(cap, group, 1))
        elif copies > 1 and group not in dups:
            dups[group] = EvalPrompt(cap, group, copies)
    rng = np.random.default_rng([seed, 11])
    pick = rng.choice(len(unique), size=min(unique_prompts, len(unique)), replace=False) if unique else []
    chosen = [unique[i] for i in sorted(pick)]
    return sorted(dups.values(), key=lambda p: (p.copies, p.group)) + chosen


def _generate_config(spec: EvalConfig) -> Any:
    """Plain sampling (no mitigation) with the measurement's steps, guidance and batch size."""
    from copyguard.mitigation.config import GenerateConfig

    return GenerateConfig(
        num_inference_steps=spec.steps, guidance_scale=spec.guidance_scale, batch_size=spec.batch_size
    )


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


@torch.no_grad()
def _vae_roundtrip(vae: Any, images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(vae.device)
    rec = vae.decode(vae.encode(x).latent_dist.mean).sample
    return ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def calibrate_threshold(vae: Any, embedder: Any, images: np.ndarray, threshold: float) -> dict[str, Any]:
    """SSCD of copies (VAE round trip, JPEG q=75 and q=50) vs. distinct images, at the model's size."""
    base = embedder.embed(list(images))
    out: dict[str, Any] = {"images": len(images), "threshold": threshold}
    variants = {
        "vae_roundtrip": _vae_roundtrip(vae, images),
        "jpeg_q75": np.stack([_jpeg(im, 75) for im in images]),
        "jpeg_q50": np.stack([_jpeg(im, 50) for im in images]),
    }
    for name, imgs in variants.items():
        sims = (embedder.embed(list(imgs)) * base).sum(1)
        out[name] = _dist(sims, threshold)
    pair = base @ base.T
    np.fill_diagonal(pair, -1.0)
    out["distinct_nearest"] = _dist(pair.max(1), threshold)
    out["distinct_pairs"] = _dist(pair[np.triu_indices(len(base), 1)], threshold)
    return out


def _dist(values: np.ndarray, threshold: float) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(v.mean()),
        "p5": float(np.percentile(v, 5)),
        "p50": float(np.percentile(v, 50)),
        "p95": float(np.percentile(v, 95)),
        "pct_gt_threshold": float(100.0 * (v > threshold).mean()),
    }


def _unique_rows(data: LabData) -> tuple[np.ndarray, list[str]]:
    """One training image per image group (duplicated copies collapse), with the group names."""
    rows, groups = measure.first_of_groups(str(data.row(k).get("image_group") or k) for k in data.keys)
    return data.images[rows], groups


def evaluate_memorization(
    model_dir: str | Path,
    data: LabData,
    spec: EvalConfig,
    *,
    device: torch.device,
    seed: int = 0,
    nearest_train: bool = True,
    grid_path: str | Path | None = None,
) -> dict[str, Any]:
    """Run the whole measurement; returns the ``memorization.json`` body (see the module docstring)."""
    t0 = time.perf_counter()
    pipe = load_pipeline(model_dir, device)
    res = int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
    embedder = load_embedder("sscd-onnx", threads=torch.get_num_threads())
    prompts = select_prompts(data, spec.unique_prompts, seed)
    if not prompts:
        raise UsageError(
            "nothing to measure: no training sample is a duplicated pair or unique "
            "(every sample shares only its image or only its caption with others)"
        )
    seeds_per_prompt = [seed * 1000 + j for j in range(spec.seeds)]
    seeds = [s for _ in prompts for s in seeds_per_prompt]
    made = measure.generate_grid(pipe, _generate_config(spec), [p.caption for p in prompts], seeds_per_prompt)
    gen = made.images
    timings = {"generate_s": time.perf_counter() - t0}
    t1 = time.perf_counter()
    gen_emb = embedder.embed(list(gen))
    ref_images, ref_groups = _unique_rows(data)
    gen_groups = [p.group for p in prompts for _ in range(spec.seeds)]
    sim_train = None
    if nearest_train:  # the whole training set embedded once: the own images are among its rows
        own = measure.OwnImages(embedder.embed(list(ref_images)), ref_groups)
        sim_train, _ = max_cosine(gen_emb, own.embeddings)
    else:
        own = measure.OwnImages.build(embedder, ref_images, ref_groups, wanted=gen_groups)
    sim_own = own(gen_emb, gen_groups)
    nl2, _ = pixel_nl2(gen, ref_images)
    timings["measure_s"] = time.perf_counter() - t1
    buckets = [p.bucket for p in prompts for _ in range(spec.seeds)]

    def summary(mask: Any) -> dict[str, Any]:
        return evidence.memorization_summary(np.asarray(mask), sim_own, sim_train, nl2, spec.threshold)

    by_copies: dict[str, Any] = {}
    for c in sorted({p.copies for p in prompts}):
        name = "unique" if c <= 1 else str(c)
        by_copies[name] = summary([b == name for b in buckets])
        by_copies[name]["prompts"] = sum(1 for p in prompts if p.bucket == name)
    result: dict[str, Any] = {
        "resolution": res,
        "threshold": spec.threshold,
        "eval": spec.model_dump(),
        "seed": seed,
        "by_copies": by_copies,
        "duplicated": _duplicated(prompts),
    }
    if result["duplicated"]["measured"]:
        result["all_dup"] = summary([b != "unique" for b in buckets])
        if any(p.copies >= MAGNITUDE_MIN_COPIES for p in prompts):
            result[f"dup_ge{MAGNITUDE_MIN_COPIES}"] = summary(
                [p.copies >= MAGNITUDE_MIN_COPIES for p in prompts for _ in range(spec.seeds)]
            )
    t2 = time.perf_counter()
    result["magnitude"] = _magnitude_auc(pipe, prompts, seed, spec.steps)
    n_cal = min(spec.calibration_images, len(ref_images))
    if n_cal < 2:
        result["calibration"] = {
            "threshold": spec.threshold,
            "reason": "fewer than 2 distinct training images",
        }
    else:
        cal_idx = np.random.default_rng([seed, 13]).choice(len(ref_images), size=n_cal, replace=False)
        result["calibration"] = calibrate_threshold(
            pipe.vae, embedder, ref_images[np.sort(cal_idx)], spec.threshold
        )
    timings["calibration_s"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    result["fid"] = _fid(pipe, data, spec, seed, device)
    timings["fid_s"] = time.perf_counter() - t3
    result["generations"] = [
        {
            "group": g,
            "copies": p.copies,
            "seed": s,
            "sscd_own": round(float(sim_own[i]), 4),
            **({"sscd_train": round(float(sim_train[i]), 4)} if sim_train is not None else {}),
            "nl2": round(float(nl2[i]), 4),
        }
        for i, (p, g, s) in enumerate(
            zip([p for p in prompts for _ in range(spec.seeds)], gen_groups, seeds, strict=True)
        )
    ]
    if grid_path is not None:
        _save_grid(Path(grid_path), prompts, gen, ref_images, ref_groups, spec.seeds)
    timings["total_s"] = time.perf_counter() - t0
    result["timings"] = timings
    return result


def _duplicated(prompts: list[EvalPrompt]) -> dict[str, Any]:
    """Whether duplicated pairs were measured, their copy counts and prompts, or why not."""
    counts = sorted({p.copies for p in prompts if p.copies > 1})
    if not counts:
        return {"measured": False, "reason": NO_DUPLICATES}
    return {"measured": True, "copies": counts, "prompts": sum(1 for p in prompts if p.copies > 1)}


def _magnitude_auc(pipe: Any, prompts: list[EvalPrompt], seed: int, steps: int) -> dict[str, Any]:
    """First-step detection (Wen et al. 2024, n = 1): AUC of the >= 25-copy prompts against unique ones."""
    from copyguard.mitigation.config import DetectConfig
    from copyguard.mitigation.detect import Detector

    sel = [p for p in prompts if p.copies >= MAGNITUDE_MIN_COPIES or p.copies <= 1]
    labels = np.array([p.copies >= MAGNITUDE_MIN_COPIES for p in sel])
    if labels.all() or not labels.any():
        return {"auc": None, "reason": "needs both duplicated (>= 25 copies) and unique prompts"}
    cfg = DetectConfig(num_inference_steps=steps, end=1, generations=1, seed=seed, batch_size=64)
    d = np.asarray(Detector(pipe, cfg, progress=False).score([p.caption for p in sel]))
    roc = evidence.roc_summary(d[labels], d[~labels])
    return {
        "auc": roc["auc"],
        "positives": roc["positives"],
        "negatives": roc["negatives"],
        "mean_dup": roc["mean_pos"],
        "mean_unique": roc["mean_neg"],
    }


def _fid(pipe: Any, data: LabData, spec: EvalConfig, seed: int, device: torch.device) -> dict[str, Any]:
    n = min(spec.fid_images, len(data.heldout_keys))
    if n < 2:
        return {"fid": None, "reason": "no held-out images (set heldout and eval.fid_images)"}
    # chunk k of batch_size captions with seed seed * 7919 + k, as the mitigation evidence measures FID
    gen = measure.generate_chunked(
        pipe, _generate_config(spec), data.heldout_captions[:n], seed * 7919
    ).images
    incep = InceptionFeatures(device=str(device))
    real = incep(data.heldout_images[:n])
    fake = incep(gen)
    return {
        "fid": fid_from_features(real, fake),
        "images": n,
        "reference": "held-out training-distribution images",
    }


def _save_grid(
    path: Path,
    prompts: list[EvalPrompt],
    gen: np.ndarray,
    ref: np.ndarray,
    groups: list[str],
    seeds: int,
    rows: int = 12,
) -> None:
    """A PNG: per row, a prompt's training image then its generations (duplicated prompts first)."""
    index = {g: i for i, g in enumerate(groups)}
    shown = [i for i, p in enumerate(prompts) if p.copies > 1][-rows // 2 :]
    shown += [i for i, p in enumerate(prompts) if p.copies <= 1][: rows - len(shown)]
    r = gen.shape[1]
    canvas = np.full((len(shown) * (r + 2), (seeds + 1) * (r + 2) + 4, 3), 255, dtype=np.uint8)
    for row, i in enumerate(shown):
        y = row * (r + 2)
        canvas[y : y + r, :r] = ref[index[prompts[i].group]]
        for j in range(seeds):
            x = (j + 1) * (r + 2) + 4
            canvas[y : y + r, x : x + r] = gen[i * seeds + j]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).resize((canvas.shape[1] * 2, canvas.shape[0] * 2), Image.Resampling.NEAREST).save(
        path
    )
