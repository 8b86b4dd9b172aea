"""Measure how much the lab model memorizes (algorithms.md §7, §2), from its saved diffusers folder.

The model is loaded with plain ``StableDiffusionPipeline.from_pretrained(model_dir)`` and sampled with
DDIM and classifier-free guidance. Prompts: the caption of every planted duplicated pair (``dup_pair``
in the ground truth) and a seeded choice of unique training captions, several seeds each. Each
generation is compared with its prompt's own training image(s) by SSCD cosine, optionally with the
nearest image of the whole training set, and by pixel nL2 (§6.1); figures are given per duplication
count. Also measured: the threshold calibration (SSCD of VAE round trips and JPEG re-encodes of training
images vs. distinct training images), the first-step text-conditional magnitude AUC (§2: duplicated
>= 25 copies vs. unique) and FID of held-out captions' generations against the held-out real images.
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
from tqdm import tqdm

from copyguard.curation.embedders import load_embedder
from copyguard.mitigation.metrics import (
    InceptionFeatures,
    fid_from_features,
    max_cosine,
    max_cosine_to_groups,
    pixel_nl2,
    summarize_nl2,
    summarize_similarity,
)
from copyguard.train.lab_config import EvalSpec
from copyguard.train.lab_data import LabData

__all__ = ["EvalPrompt", "evaluate_memorization", "load_pipeline", "select_prompts"]

log = logging.getLogger(__name__)

MAGNITUDE_MIN_COPIES = 25


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
    """``StableDiffusionPipeline.from_pretrained`` with no extra arguments, DDIM, quiet progress."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(model_dir))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def select_prompts(data: LabData, unique_prompts: int, seed: int) -> list[EvalPrompt]:
    """Every duplicated group's caption (sorted by copies) and ``unique_prompts`` seeded unique captions."""
    dups: dict[str, EvalPrompt] = {}
    unique: list[EvalPrompt] = []
    for key, cap in zip(data.keys, data.captions, strict=True):
        row = data.row(key)
        if row["kind"] == "unique":
            unique.append(EvalPrompt(cap, str(row["image_group"]), 1))
        elif row["kind"] == "dup_pair" and row["image_group"] not in dups:
            dups[str(row["image_group"])] = EvalPrompt(cap, str(row["image_group"]), int(row["copies"]))
    rng = np.random.default_rng([seed, 11])
    pick = rng.choice(len(unique), size=min(unique_prompts, len(unique)), replace=False) if unique else []
    chosen = [unique[i] for i in sorted(pick)]
    return sorted(dups.values(), key=lambda p: (p.copies, p.group)) + chosen


def _generate(pipe: Any, captions: list[str], seeds: list[int], spec: EvalSpec, res: int) -> np.ndarray:
    out = []
    for i in tqdm(range(0, len(captions), spec.batch_size), desc="generate", unit="batch", leave=False):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i : i + spec.batch_size]]
        imgs = pipe(
            captions[i : i + spec.batch_size],
            height=res,
            width=res,
            num_inference_steps=spec.steps,
            guidance_scale=spec.guidance_scale,
            generator=gens,
            output_type="np",
        ).images
        out.append(np.clip(np.round(imgs * 255), 0, 255).astype(np.uint8))
    return np.concatenate(out)


@torch.no_grad()
def first_step_magnitudes(pipe: Any, captions: list[str], seeds: list[int], steps: int) -> np.ndarray:
    """§2 at the first DDIM step (n = 1): ``||eps(x_T, e_p) - eps(x_T, e_0)||_2`` per caption."""
    device = pipe.unet.device
    tok = pipe.tokenizer
    ids = tok(captions + [""], padding="max_length", max_length=tok.model_max_length, truncation=True)
    emb = pipe.text_encoder(torch.tensor(ids.input_ids, device=device))[0]
    e_p, e_0 = emb[:-1], emb[-1:].expand(len(captions), -1, -1)
    pipe.scheduler.set_timesteps(steps)
    t = pipe.scheduler.timesteps[0]
    c = pipe.unet.config
    shape = (c.in_channels, c.sample_size, c.sample_size)
    x = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    x = (x * pipe.scheduler.init_noise_sigma).to(device)
    eps_p = pipe.unet(x, t, e_p).sample
    eps_0 = pipe.unet(x, t, e_0).sample
    return (eps_p - eps_0).flatten(1).norm(dim=1).float().cpu().numpy()


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
    seen: dict[str, int] = {}
    for i, key in enumerate(data.keys):
        seen.setdefault(str(data.row(key)["image_group"]), i)
    return data.images[list(seen.values())], list(seen.keys())


def evaluate_memorization(
    model_dir: str | Path,
    data: LabData,
    spec: EvalSpec,
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
    caps = [p.caption for p in prompts for _ in range(spec.seeds)]
    seeds = [seed * 1000 + j for _ in prompts for j in range(spec.seeds)]
    gen = _generate(pipe, caps, seeds, spec, res)
    timings = {"generate_s": time.perf_counter() - t0}
    t1 = time.perf_counter()
    gen_emb = embedder.embed(list(gen))
    ref_images, ref_groups = _unique_rows(data)
    wanted = {p.group for p in prompts}
    own_idx = [i for i, g in enumerate(ref_groups) if g in wanted]
    own_emb = embedder.embed([ref_images[i] for i in own_idx])
    gen_groups = [p.group for p in prompts for _ in range(spec.seeds)]
    sim_own = max_cosine_to_groups(gen_emb, own_emb, gen_groups, [ref_groups[i] for i in own_idx])
    sim_train = None
    if nearest_train:
        train_emb = embedder.embed(list(ref_images))
        sim_train, _ = max_cosine(gen_emb, train_emb)
    nl2, _ = pixel_nl2(gen, ref_images)
    timings["measure_s"] = time.perf_counter() - t1
    buckets = [p.bucket for p in prompts for _ in range(spec.seeds)]
    order = sorted({p.copies for p in prompts})
    by_copies: dict[str, Any] = {}
    for c in order:
        name = "unique" if c <= 1 else str(c)
        mask = np.array([b == name for b in buckets])
        by_copies[name] = _bucket(mask, sim_own, sim_train, nl2, spec.threshold)
        by_copies[name]["prompts"] = sum(1 for p in prompts if p.bucket == name)
    high = np.array([p.copies >= MAGNITUDE_MIN_COPIES for p in prompts for _ in range(spec.seeds)])
    result: dict[str, Any] = {
        "resolution": res,
        "threshold": spec.threshold,
        "eval": spec.model_dump(),
        "seed": seed,
        "by_copies": by_copies,
        f"dup_ge{MAGNITUDE_MIN_COPIES}": _bucket(high, sim_own, sim_train, nl2, spec.threshold),
        "all_dup": _bucket(
            np.array([b != "unique" for b in buckets]), sim_own, sim_train, nl2, spec.threshold
        ),
    }
    t2 = time.perf_counter()
    result["magnitude"] = _magnitude_auc(pipe, prompts, seed, spec.steps)
    n_cal = min(spec.calibration_images, len(ref_images))
    cal_idx = np.random.default_rng([seed, 13]).choice(len(ref_images), size=n_cal, replace=False)
    result["calibration"] = calibrate_threshold(
        pipe.vae, embedder, ref_images[np.sort(cal_idx)], spec.threshold
    )
    timings["calibration_s"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    result["fid"] = _fid(pipe, data, spec, seed, res, device)
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


def _bucket(
    mask: np.ndarray, sim_own: np.ndarray, sim_train: np.ndarray | None, nl2: np.ndarray, thr: float
) -> dict[str, Any]:
    thresholds = sorted({thr, 0.5}, reverse=True)
    out: dict[str, Any] = {"generations": int(mask.sum())}
    if not mask.any():
        return out
    out["sscd_own"] = summarize_similarity(sim_own[mask], thresholds)
    if sim_train is not None:
        out["sscd_train"] = summarize_similarity(sim_train[mask], thresholds)
    out["nl2"] = summarize_nl2(nl2[mask])
    return out


def _magnitude_auc(pipe: Any, prompts: list[EvalPrompt], seed: int, steps: int) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    sel = [p for p in prompts if p.copies >= MAGNITUDE_MIN_COPIES or p.copies <= 1]
    labels = np.array([p.copies >= MAGNITUDE_MIN_COPIES for p in sel])
    if labels.all() or not labels.any():
        return {"auc": None, "reason": "needs both duplicated (>= 25 copies) and unique prompts"}
    mags = []
    for i in range(0, len(sel), 64):
        chunk = sel[i : i + 64]
        mags.append(first_step_magnitudes(pipe, [p.caption for p in chunk], [seed] * len(chunk), steps))
    d = np.concatenate(mags)
    return {
        "auc": float(roc_auc_score(labels, d)),
        "positives": int(labels.sum()),
        "negatives": int((~labels).sum()),
        "mean_dup": float(d[labels].mean()),
        "mean_unique": float(d[~labels].mean()),
    }


def _fid(
    pipe: Any, data: LabData, spec: EvalSpec, seed: int, res: int, device: torch.device
) -> dict[str, Any]:
    n = min(spec.fid_images, len(data.heldout_keys))
    if n < 2:
        return {"fid": None, "reason": "no held-out images (set heldout and eval.fid_images)"}
    gen = _generate(pipe, data.heldout_captions[:n], [seed * 7919 + i for i in range(n)], spec, res)
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
