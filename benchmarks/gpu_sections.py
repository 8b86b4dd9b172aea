"""The sections of ``benchmarks/bench_gpu.py``: each measures one thing on the GPU and records it in ``rec``."""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.gpu_helpers import (
    REFS,
    SMOKE_UNET,
    UNIQUE,
    Deadline,
    _err,
    _no_gpu_faiss,
    _params,
    _r,
    _sd15_pipe,
    _sync,
    _synced_timing,
    _times,
    _tiny_index,
)


# ------------------------------------------------------------------------------------------ sections
def sec_lab_gpu(p: dict[str, Any], rec: dict[str, Any], save: Callable[[], None], dl: Deadline) -> None:
    from copyguard.pipelines.lab.config import LabConfig, SampleDataConfig
    from copyguard.pipelines.lab.run import run_lab_model
    from copyguard.pipelines.lab.sample_data import build_sample_data

    tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_lab_"))
    t0 = time.perf_counter()
    data = build_sample_data(SampleDataConfig(preset=p["data_preset"]), tmp / "data")
    rec["sample_data"] = {"preset": p["data_preset"], "samples": data.get("samples"),
                          "seconds": _r(time.perf_counter() - t0, 2)}  # fmt: skip
    over = {
        "heldout": p["heldout"],
        "vae": {"steps": p["vae_steps"]},
        "unet": {"steps": p["unet_steps"]},
        "eval": p["eval"],
    }
    cfg = LabConfig(preset=p["preset"], device=p["device"], presets={p["preset"]: over})
    preset = cfg.active()
    rec["settings"] = {"preset": p["preset"], "overrides": over, "resolution": preset.resolution,
                       "vae_batch": preset.vae.batch_size, "unet_batch": preset.unet.batch_size,
                       "mixed_precision": cfg.mixed_precision, "deterministic": cfg.deterministic}  # fmt: skip
    save()
    t1 = time.perf_counter()
    out = run_lab_model(cfg, str(tmp / "data" / "*.tar"), tmp / "model")
    rec["run_s"] = _r(time.perf_counter() - t1, 2)
    training, mem = out["training"], out["memorization"]
    timings = training.get("timings") or {}
    rec["timings_s"] = {k: _r(v, 3) for k, v in timings.items()}
    rec["params"] = training.get("params")
    for stage, batch in (("vae", preset.vae.batch_size), ("unet", preset.unet.batch_size)):
        steps, secs = p[f"{stage}_steps"], timings.get(f"{stage}_s")
        if steps and secs:
            rec[f"{stage}_steps_per_s"] = _r(steps / secs, 3)
            rec[f"{stage}_images_per_s"] = _r(steps * batch / secs, 1)
    rec["memorization_evaluated"] = mem is not None
    if mem is not None:
        rec["memorization"] = {
            k: v for k, v in mem.items() if k in ("timings", "by_copies", "auc", "summary")
        }
        gen = (mem.get("timings") or {}).get("generate_s")
        n = p["eval"]["seeds"] * p["eval"]["unique_prompts"]
        if gen:
            rec["eval_generated_images_per_s"] = _r(n / gen, 2)
    shutil.rmtree(tmp, ignore_errors=True)


def sec_sd15_detection(
    p: dict[str, Any], rec: dict[str, Any], save: Callable[[], None], dl: Deadline
) -> None:
    import torch

    from copyguard.mitigation.config import DetectConfig
    from copyguard.mitigation.detect import Detector

    device, size = p["device"], p["size"]
    t0 = time.perf_counter()
    pipe = _sd15_pipe(p)
    rec["build_s"] = _r(time.perf_counter() - t0, 2)
    rec.update(size=size, latents=[4, size // 8, size // 8], unet_params=_params(pipe.unet))
    prompts = [f"{UNIQUE} {i}" for i in range(max(p["batches"]))]
    results: dict[str, Any] = rec.setdefault("ms_per_prompt", {})
    for dtype in p["dtypes"]:
        if dl.expired(5):
            results[dtype] = "skipped: time budget"
            continue
        pipe.to(dtype=getattr(torch, dtype))
        row: dict[str, Any] = {}
        with torch.no_grad():
            x = torch.randn(2, 4, size // 8, size // 8, device=device, dtype=pipe.unet.dtype)
            e = torch.randn(2, 77, 768, device=device, dtype=pipe.unet.dtype)
            t = torch.tensor(999, device=device)

            def cfg_call(x: Any = x, e: Any = e, t: Any = t) -> Any:
                return pipe.unet(x, t, encoder_hidden_states=e).sample

            cfg_call()
            row["unet_cfg_call_ms"] = _r(
                1000 * statistics.median(_times(cfg_call, device, p["repeats"], dl)), 3
            )
        for b in p["batches"]:
            if dl.expired(5):
                row[f"batch{b}"] = "skipped: time budget"
                continue
            det = Detector(pipe, DetectConfig(num_inference_steps=50, height=size, width=size, batch_size=b),
                           progress=False)  # fmt: skip
            batch = prompts[:b]
            det.score(batch)  # warm-up at this shape
            secs = _times(lambda det=det, batch=batch: det.score(batch), device, p["repeats"], dl)
            row[f"batch{b}"] = _r(1000 * statistics.median(secs) / b, 3)
            row[f"batch{b}_vs_unet_cfg_call"] = _r(row[f"batch{b}"] / row["unet_cfg_call_ms"], 3)
            row[f"batch{b}_runs"] = len(secs)
        results[dtype] = row
        save()
    rec["note"] = ("first-step detection: text encoding + one CFG UNet call on (uncond, cond) per prompt "
                   "batch, 50-step schedule, text-conditional magnitude at the first step")  # fmt: skip


def sec_sd15_amg(p: dict[str, Any], rec: dict[str, Any], save: Callable[[], None], dl: Deadline) -> None:
    from benchmarks import bench_mitigation as bm
    from copyguard.mitigation.config import DetectConfig
    from copyguard.mitigation.detect import Detector

    device, size, steps = p["device"], p["size"], p["steps"]
    t0 = time.perf_counter()
    pipe = _sd15_pipe(p)
    index = _tiny_index(p["index_rows"], p["sscd_size"])
    det = Detector(pipe, DetectConfig(num_inference_steps=steps, height=size, width=size), progress=False)
    calibrated = det.calibrate(REFS, 0.01)
    gate = max(calibrated, 1.01 * det.score([UNIQUE])[0])  # random weights: make the unique prompt unflagged
    rec.update(size=size, steps=steps, build_s=_r(time.perf_counter() - t0, 2), gate_threshold=gate,
               index_rows=p["index_rows"], dtype="float32")  # fmt: skip
    save()
    runs: list[dict[str, Any]] = []
    for i in range(p["max_runs"]):
        t1 = time.perf_counter()
        with _synced_timing(bm, device):
            res = bm.measure_model(
                pipe, index, memorized="a photo of a cat", unique=UNIQUE, steps=steps, size=size, rounds=1,
                gate=gate, l_target=0.5 * gate, forced_memorized=True, short_steps=2,
                popt_iters=p["popt_iters"], seed=i,
            )  # fmt: skip
        res.pop("seconds_all", None)
        res["run_s"] = _r(time.perf_counter() - t1, 2)
        runs.append(res)
        rec["runs"] = runs
        keys = runs[0]["ratios"].keys()
        rec["ratios_median"] = {k: _r(statistics.median(r["ratios"][k] for r in runs)) for k in keys}
        rec["seconds_median"] = {
            k: _r(statistics.median(r["seconds_median"][k] for r in runs)) for k in runs[0]["seconds_median"]
        }
        rec["goals"] = {
            "amg_gated_unflagged_le_1.15": rec["ratios_median"]["amg_gated_unflagged_vs_plain"]
            <= bm.GOAL_GATED,
            "amg_memorized_le_3": rec["ratios_median"]["amg_memorized_vs_plain"] <= bm.GOAL_MEMORIZED,
        }
        save()
        if dl.left() < 1.5 * res["run_s"] + 5:
            break
    rec["memorized_case"] = "forced worst case: random weights memorize nothing, so lambda is lowered below "
    rec["memorized_case"] += "any sigma and G_spe, G_dup and G_sim fire at every step"


def sec_filter_step(p: dict[str, Any], rec: dict[str, Any], save: Callable[[], None], dl: Deadline) -> None:
    import torch
    import torch.nn.functional as F
    from diffusers import UNet2DConditionModel

    from benchmarks import bench_mitigation as bm
    from copyguard.train import mem_filter
    from copyguard.train.mem_filter import MagnitudeFilter, filtered_prediction, masked_loss

    # the filter's settings class, under the name mem_filter imports it by (FilterConfig, formerly FilterSpec)
    spec_cls = getattr(mem_filter, "FilterConfig", None) or mem_filter.FilterSpec

    device, size, b = p["device"], p["size"], p["batch"]
    cuda = device.startswith("cuda")
    torch.manual_seed(0)
    config = {**bm.SD15_UNET, **(SMOKE_UNET if p["smoke"] else {})}
    with torch.device(device) if cuda else contextlib.nullcontext():
        unet = UNet2DConditionModel(**config)
    unet = unet.to(device).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-6)
    filt = MagnitudeFilter(spec_cls(enabled=True, threshold=1e9))  # fixed, never filters: cost only
    g = torch.Generator("cpu").manual_seed(0)
    lat = size // 8
    noisy = torch.randn(b, 4, lat, lat, generator=g).to(device)
    target = torch.randn(b, 4, lat, lat, generator=g).to(device)
    cond = torch.randn(b, 77, 768, generator=g).to(device)
    uncond = torch.randn(1, 77, 768, generator=g).to(device)
    t = torch.randint(0, 1000, (b,), generator=g).to(device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    def step(kind: str) -> None:
        with amp if cuda else contextlib.nullcontext():
            if kind == "none":
                pred, mag = unet(noisy, t, encoder_hidden_states=cond).sample, None
            else:
                pred, mag = filtered_prediction(unet, noisy, t, cond, uncond, batched=kind == "batched")
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
        keep = filt.keep(mag, t) if mag is not None else torch.ones(b, device=device)
        masked_loss(per_sample, keep).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    kinds = ("none", "batched", "separate")
    rec.update(size=size, batch=b, unet_params=_params(unet), precision="bf16 autocast" if cuda else "fp32",
               step="UNet forward + backward + AdamW (no VAE encode / text encoder: the filter's share is "
               "an upper bound of its share of a full fine-tuning step)")  # fmt: skip
    save()
    for kind in kinds:  # warm-up (allocations, cuDNN autotuning)
        step(kind)
    _sync(device)
    per: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(p["rounds"]):
        if r and dl.expired(5):
            break
        for kind in kinds:
            secs = _times(lambda kind=kind: step(kind), device, p["steps"], Deadline(max(dl.left() / 3, 1)))
            per[kind].append(statistics.median(secs))
        rec["step_s_per_round"] = {k: [_r(x, 5) for x in v] for k, v in per.items()}
        ratio = lambda a: statistics.median(x / y for x, y in zip(per[a], per["none"], strict=True))  # noqa: E731
        rec["step_s_median"] = {k: _r(statistics.median(v), 5) for k, v in per.items()}
        rec["ratio_batched_vs_none"] = _r(ratio("batched"), 3)
        rec["ratio_separate_vs_none"] = _r(ratio("separate"), 3)
        save()
    if cuda:
        rec["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)


def sec_faiss_1e6(p: dict[str, Any], rec: dict[str, Any], save: Callable[[], None], dl: Deadline) -> None:
    import numpy as np
    import torch

    device, n, d, k, thr = p["device"], p["n"], 512, 10, 0.75
    rec.update(n=n, dim=d, k=k, range_threshold=thr)
    try:
        import faiss

        gpus = int(getattr(faiss, "get_num_gpus", lambda: 0)())
        rec["faiss_version"] = faiss.__version__
        rec["faiss_gpu"] = "available" if gpus else f"unavailable: {_no_gpu_faiss()}"
    except ImportError as exc:
        faiss, gpus = None, 0
        rec["faiss_gpu"] = f"unavailable: faiss does not import ({_err(exc)})"
    # data: unit rows, 5% of them in planted near-copy pairs (cosine 0.76-0.98)
    t0 = time.perf_counter()
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(n, d, device=device, generator=g)
    x = torch.nn.functional.normalize(x, dim=1)
    pairs = n // 40
    perm = torch.randperm(n, device=device, generator=g)[: 2 * pairs]
    pi, pj = perm[:pairs], perm[pairs:]
    c = 0.76 + 0.22 * torch.rand(pairs, 1, device=device, generator=g)
    h = torch.randn(pairs, d, device=device, generator=g)
    h = torch.nn.functional.normalize(h - (h * x[pi]).sum(1, keepdim=True) * x[pi], dim=1)
    x[pj] = c * x[pi] + torch.sqrt(1 - c * c) * h
    _sync(device)
    rec["generate_s"] = _r(time.perf_counter() - t0, 2)
    partner = torch.full((n,), -1, dtype=torch.long, device=device)
    partner[pi], partner[pj] = pj, pi
    save()

    def torch_search(dtype: Any, chunk: int, budget: float) -> dict[str, Any]:
        xs = x.to(dtype)
        torch.backends.cuda.matmul.allow_tf32 = False
        rows, found, edges, t_knn, t_range = 0, 0, 0, 0.0, 0.0
        stop = Deadline(budget)
        while rows < n and not stop.expired():
            q = xs[rows : rows + chunk]
            _sync(device)
            t1 = time.perf_counter()
            sims = q @ xs.T
            top = sims.topk(k + 1, dim=1)
            _sync(device)
            t2 = time.perf_counter()
            hit = sims >= thr
            count = int(hit.sum())
            _sync(device)
            t_knn += t2 - t1
            t_range += time.perf_counter() - t2
            want = partner[rows : rows + chunk]
            found += int((top.indices == want[:, None]).any(1)[want >= 0].sum())
            edges += count
            rows += q.shape[0]
            del sims, hit
        planted = int((partner[:rows] >= 0).sum())
        return {
            "queries_done": rows,
            "knn_s_all_queries": _r(t_knn * n / rows, 2),
            "range_extra_s_all_queries": _r(t_range * n / rows, 2),
            "extrapolated": rows < n,
            "planted_pair_recall_at_k": _r(found / max(planted, 1), 4),
            "range_hits_per_query": _r(edges / rows, 2),
            "chunk": chunk,
        }

    gpu: dict[str, Any] = rec.setdefault("torch_gpu" if device.startswith("cuda") else "torch_cpu", {})
    for dtype in p["dtypes"]:
        if dl.expired(p["cpu_reserve"] + 5):
            gpu[dtype] = "skipped: time budget"
            continue
        try:
            gpu[dtype] = torch_search(getattr(torch, dtype), p["chunk"], p["torch_budget"])
        except Exception as exc:
            gpu[dtype] = f"error: {_err(exc)}"
        save()
    if faiss is None:
        rec["faiss_cpu"] = "unavailable: faiss does not import"
        return
    if dl.expired(5):
        rec["faiss_cpu"] = "skipped: time budget"
        return
    xn = x.cpu().numpy()
    if gpus:
        try:
            t0 = time.perf_counter()
            gindex = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, faiss.IndexFlatIP(d))
            gindex.add(xn)
            m = min(n, p["chunk"] * 8)
            t1 = time.perf_counter()
            gindex.search(xn[:m], k + 1)
            rec["faiss_gpu_flat"] = {"add_s": _r(t1 - t0, 2), "queries": m, "extrapolated": m < n,
                                     "knn_s_all_queries": _r((time.perf_counter() - t1) * n / m, 2)}  # fmt: skip
        except Exception as exc:
            rec["faiss_gpu_flat"] = f"error: {_err(exc)}"
        save()
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(d)
    index.add(xn)
    add_s = time.perf_counter() - t0
    q = np.ascontiguousarray(xn[: p["cpu_queries"]])
    t0 = time.perf_counter()
    index.search(q, k + 1)
    knn = time.perf_counter() - t0
    t0 = time.perf_counter()
    lims, _, _ = index.range_search(q, thr)
    rng_s = time.perf_counter() - t0
    rec["faiss_cpu"] = {
        "threads": faiss.omp_get_max_threads(),
        "queries": len(q),
        "add_s": _r(add_s, 2),
        "knn_s_all_queries": _r(knn * n / len(q), 2),
        "range_s_all_queries": _r(rng_s * n / len(q), 2),
        "range_hits_per_query": _r(lims[-1] / len(q), 2),
        "extrapolated": len(q) < n,
    }
    for dtype, res in gpu.items():
        if isinstance(res, dict) and res.get("knn_s_all_queries"):
            rec[f"knn_speedup_torch_{dtype}_vs_faiss_cpu"] = _r(
                rec["faiss_cpu"]["knn_s_all_queries"] / res["knn_s_all_queries"], 2
            )


def sec_embedder(p: dict[str, Any], rec: dict[str, Any], save: Callable[[], None], dl: Deadline) -> None:
    import numpy as np
    import torch

    from benchmarks.bench_embedders import PHOTOS, _resize, random_crops
    from copyguard.curation.embedders import load_embedder
    from copyguard.mitigation.sscd_torch import load_torch_sscd

    device, n, bs = p["device"], p["images"], p["batch"]
    try:
        from skimage import data as skdata

        photos = [getattr(skdata, name)() for name in PHOTOS]
    except Exception as exc:  # skimage photos missing: random pictures time the same
        rec["photos"] = f"random (skimage photos: {_err(exc)})"
        photos = [np.random.default_rng(i).integers(0, 256, (256, 256, 3), dtype=np.uint8) for i in range(4)]
    crops = random_crops(photos, n)
    t0 = time.perf_counter()
    model = load_torch_sscd("sscd-onnx", input_size=p["input_size"], device=device)
    rec["torch_load_s"] = _r(time.perf_counter() - t0, 2)
    rec.update(model="sscd-onnx (ResNet-50, 320 px, int8 QDQ; torch: converted, fake-quant)", images=n,
               batch=bs, input_size=model.input_size, device=device)  # fmt: skip
    full = torch.from_numpy(np.stack([_resize(c, model.input_size) for c in crops])).permute(0, 3, 1, 2)
    full = (full.float() / 255.0).to(device)
    save()
    torch_res: dict[str, Any] = rec.setdefault("torch", {})
    for dtype in p["dtypes"]:
        if dl.expired(p["ort_reserve"]):
            torch_res[dtype] = "skipped: time budget"
            continue
        amp = (
            torch.autocast("cuda", dtype=torch.float16)
            if dtype == "float16" and device.startswith("cuda")
            else contextlib.nullcontext()
        )

        def model_only(amp: Any = amp) -> None:
            with torch.no_grad(), amp:
                for i in range(0, n, bs):
                    model.descriptors(full[i : i + bs])

        def end_to_end(amp: Any = amp) -> None:
            with amp:
                for i in range(0, n, bs):
                    model.embed(crops[i : i + bs])

        try:
            model_only()  # warm-up
            row = {}
            for label, fn in (("model_only_320px", model_only), ("end_to_end_64px", end_to_end)):
                secs = min(_times(fn, device, p["repeats"], dl))
                row[label] = {"images_per_s": _r(n / secs, 1), "ms_per_image": _r(1000 * secs / n, 3)}
            torch_res[dtype] = row
        except Exception as exc:
            torch_res[dtype] = f"error: {_err(exc)}"
        save()
    if dl.expired(3):
        rec["onnxruntime_cpu"] = "skipped: time budget"
        return
    ort = load_embedder("sscd-onnx", input_size=p["input_size"], threads=os.cpu_count())
    ort.embed(crops[:bs])  # session start + warm-up
    m = p["ort_images"]
    secs = min(_times(lambda: ort.embed(crops[:m]), "cpu", 2, dl))
    rec["onnxruntime_cpu"] = {"threads": os.cpu_count(), "images": m, "end_to_end_64px": {
        "images_per_s": _r(m / secs, 1), "ms_per_image": _r(1000 * secs / m, 3)}}  # fmt: skip
    for dtype, row in torch_res.items():
        if isinstance(row, dict):
            rec[f"speedup_torch_{dtype}_vs_onnxruntime_cpu"] = _r(
                row["end_to_end_64px"]["images_per_s"]
                / rec["onnxruntime_cpu"]["end_to_end_64px"]["images_per_s"],
                2,
            )


SECTION_FUNCS: dict[str, Callable[..., None]] = {
    "lab_gpu": sec_lab_gpu,
    "sd15_detection": sec_sd15_detection,
    "sd15_amg": sec_sd15_amg,
    "filter_step": sec_filter_step,
    "faiss_1e6": sec_faiss_1e6,
    "embedder": sec_embedder,
}


def section_params(name: str, smoke: bool, device: str) -> dict[str, Any]:
    """Sizes of one section: the GPU run's, or toy sizes for ``--smoke``."""
    base = {"device": device, "smoke": smoke}
    if name == "lab_gpu":
        if smoke:
            return {**base, "preset": "tiny", "data_preset": "tiny", "heldout": 0, "vae_steps": 3,
                    "unet_steps": 3, "eval": {"seeds": 1, "steps": 2, "unique_prompts": 2, "fid_images": 0,
                                              "calibration_images": 2, "batch_size": 8}}  # fmt: skip
        return {**base, "preset": "gpu", "data_preset": "small", "heldout": 100, "vae_steps": 250,
                "unet_steps": 400, "eval": {"seeds": 2, "steps": 25, "unique_prompts": 32, "fid_images": 0,
                                            "calibration_images": 16}}  # fmt: skip
    if name == "sd15_detection":
        if smoke:
            return {**base, "size": 64, "dtypes": ["float32"], "batches": [1, 8], "repeats": 1}
        return {**base, "size": 512, "dtypes": ["float32", "float16"], "batches": [1, 8], "repeats": 5}
    if name == "sd15_amg":
        if smoke:
            return {**base, "size": 64, "steps": 3, "popt_iters": 1, "index_rows": 64, "sscd_size": 96,
                    "max_runs": 1}  # fmt: skip
        return {**base, "size": 512, "steps": 20, "popt_iters": 2, "index_rows": 10_000, "sscd_size": 320,
                "max_runs": 3}  # fmt: skip
    if name == "filter_step":
        if smoke:
            return {**base, "size": 64, "batch": 2, "steps": 2, "rounds": 1}
        return {**base, "size": 512, "batch": 4, "steps": 6, "rounds": 2}
    if name == "faiss_1e6":
        if smoke:
            return {**base, "n": 20_000, "dtypes": ["float32"], "chunk": 2048, "torch_budget": 10,
                    "cpu_queries": 500, "cpu_reserve": 5}  # fmt: skip
        return {**base, "n": 1_000_000, "dtypes": ["float32", "float16"], "chunk": 2048, "torch_budget": 14,
                "cpu_queries": 2000, "cpu_reserve": 15}  # fmt: skip
    if name == "embedder":
        if smoke:
            return {**base, "images": 4, "batch": 2, "input_size": 96, "dtypes": ["float32"], "repeats": 1,
                    "ort_images": 2, "ort_reserve": 10}  # fmt: skip
        return {**base, "images": 256, "batch": 64, "input_size": 320, "dtypes": ["float32", "float16"],
                "repeats": 3, "ort_images": 64, "ort_reserve": 12}  # fmt: skip
    raise ValueError(f"unknown section {name!r}")
