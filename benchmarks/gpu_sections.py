"""The sections of ``benchmarks/bench_gpu.py``: each times one thing on ``p["device"]`` and records it in ``rec``
(``save()`` rewrites the record; ``dl`` is the section's deadline). Timing: :mod:`copyguard.common.timing`;
the mitigation costs: :mod:`copyguard.mitigation.evaluation.costs`. Method: docs/benchmark-methods-gpu.md.

    python -m benchmarks.gpu_sections NAME PARAMS_JSON RESULT_JSON BUDGET_S    (started by bench_gpu)
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # copyguard is importable only after bench_gpu.bootstrap() on a bare device machine
    from copyguard.common.timing import Deadline

Save = Callable[[], None]
DTYPES = ("float32", "float16")


def _err(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def sec_lab_gpu(p: dict[str, Any], rec: dict[str, Any], save: Save, dl: Deadline) -> None:
    """The lab preset through ``run_lab_model``: training steps/s and images/s, and the evaluation."""
    from copyguard.pipelines.lab.throughput import measure_lab_run

    over = {"heldout": p["heldout"], "vae": {"steps": p["vae_steps"]}, "unet": {"steps": p["unet_steps"]},
            "eval": p["eval"]}  # fmt: skip
    rec.update(
        measure_lab_run(p["preset"], p["data_preset"], p["device"], over, lambda r: (rec.update(r), save()))
    )


def sec_sd15_detection(p: dict[str, Any], rec: dict[str, Any], save: Save, dl: Deadline) -> None:
    """``costs.detection_costs`` on SD 1.5's shape, per dtype: ms per prompt at batch 1 and 8."""
    import torch

    from copyguard.common.timing import timed
    from copyguard.mitigation.evaluation.costs import detection_costs
    from copyguard.pipelines.lab.sd15_shape import sd15_shaped_pipeline

    device, size = p["device"], p["size"]
    build_s, pipe = timed(lambda: sd15_shaped_pipeline(device, toy=p["smoke"]))
    unet_params = sum(x.numel() for x in pipe.unet.parameters())
    rec.update(build_s=_r(build_s, 2), size=size, latents=[4, size // 8, size // 8], unet_params=unet_params)
    results: dict[str, Any] = rec.setdefault("ms_per_prompt", {})
    for dtype in p["dtypes"]:
        if dl.expired(5):
            results[dtype] = "skipped: time budget"
            continue
        pipe.to(dtype=getattr(torch, dtype))
        row = detection_costs(pipe, size, p["repeats"], device, stop=lambda: dl.expired(5))
        results[dtype] = {k: v if k.endswith("_runs") else _r(v, 3) for k, v in row.items()}
        save()
    rec["note"] = (
        "first-step detection: text encoding + one CFG UNet call on (uncond, cond) per prompt "
        "batch, 50-step schedule, text-conditional magnitude at the first step"
    )


def sec_sd15_amg(p: dict[str, Any], rec: dict[str, Any], save: Save, dl: Deadline) -> None:
    """``costs.measure_random_weights`` (bench_mitigation's sd15-arch) at 512 px, once per seed while the
    budget lasts."""
    from copyguard.common.timing import timed
    from copyguard.mitigation.evaluation import costs
    from copyguard.pipelines.lab.sd15_shape import random_index, sd15_shaped_pipeline

    build_s, pipe = timed(lambda: sd15_shaped_pipeline(p["device"], toy=p["smoke"]))
    index = random_index(p["index_rows"], p["sscd_size"])
    rec.update(
        size=p["size"], steps=p["steps"], build_s=_r(build_s, 2), index_rows=p["index_rows"], dtype="float32"
    )
    runs: list[dict[str, Any]] = []
    for seed in range(p["max_runs"]):
        kw = {"rounds": 1, "popt_iters": p["popt_iters"], "device": p["device"], "seed": seed}
        run_s, res = timed(
            lambda kw=kw: costs.measure_random_weights(pipe, index, size=p["size"], steps=p["steps"], **kw)
        )
        res.pop("seconds_all")
        runs.append({**res, "run_s": _r(run_s, 2)})
        med = {
            part: {k: _r(statistics.median(r[part][k] for r in runs)) for k in res[part]}
            for part in ("ratios", "seconds_median")
        }
        q = med["ratios"]
        rec.update(gate_threshold=runs[0]["gate_threshold"], runs=runs, ratios_median=q)
        rec.update(seconds_median=med["seconds_median"], goals=costs.goals(q))
        save()
        if dl.left() < 1.5 * runs[-1]["run_s"] + 5:
            break
    rec["memorized_case"] = (
        "forced worst case: random weights memorize nothing, so lambda is lowered below "
        "any sigma and G_spe, G_dup and G_sim fire at every step"
    )


def sec_filter_step(p: dict[str, Any], rec: dict[str, Any], save: Save, dl: Deadline) -> None:
    """``filter_step_costs``: one fine-tuning step of SD 1.5's UNet without the filter, batched, separate."""
    import torch

    from copyguard.pipelines.lab.sd15_shape import sd15_unet
    from copyguard.train.filter_cost import filter_step_costs

    device, size, b = p["device"], p["size"], p["batch"]
    cuda = device.startswith("cuda")
    torch.manual_seed(0)
    with torch.device(device):
        unet = sd15_unet(p["smoke"]).train()
    rec.update(size=size, batch=b, unet_params=sum(x.numel() for x in unet.parameters()))
    rec["precision"] = "bf16 autocast" if cuda else "fp32"
    rec["step"] = (
        "UNet forward + backward + AdamW (no VAE encode / text encoder: the filter's share is "
        "an upper bound of its share of a full fine-tuning step)"
    )
    save()
    res = filter_step_costs(
        unet, batch=b, size=size, rounds=p["rounds"], steps=p["steps"], stop=lambda: dl.expired(5)
    )
    rec["step_s_per_round"] = {k: [_r(x, 5) for x in v] for k, v in res["step_s_per_round"].items()}
    rec["step_s_median"] = {k: _r(v, 5) for k, v in res["step_s_median"].items()}
    rec.update({k: _r(res[k], 3) for k in ("ratio_batched_vs_none", "ratio_separate_vs_none")})
    if cuda:
        rec["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)


def _torch_knn(
    x: Any, partner: Any, dtype: Any, k: int, thr: float, chunk: int, budget: float
) -> dict[str, Any]:
    """Exact inner-product k-NN and range search with torch (chunked matmul + top-k: what ``IndexFlatIP``
    computes) until ``budget`` seconds are spent; the times are extrapolated to every row as query."""
    from copyguard.common.timing import Deadline, timed

    xs, n, device = x.to(dtype), len(x), str(x.device)
    rows, found, edges, t_knn, t_range = 0, 0, 0, 0.0, 0.0

    def search(q: Any) -> tuple[Any, Any]:
        sims = q @ xs.T
        return sims, sims.topk(k + 1, dim=1)

    stop = Deadline(budget)
    while rows < n and not stop.expired():
        sec, (sims, top) = timed(lambda q=xs[rows : rows + chunk]: search(q), device)
        sec2, count = timed(lambda sims=sims: int((sims >= thr).sum()), device)
        want = partner[rows : rows + len(sims)]
        found += int((top.indices == want[:, None]).any(1)[want >= 0].sum())
        t_knn, t_range, edges, rows = t_knn + sec, t_range + sec2, edges + count, rows + len(sims)
        del sims, top
    return {"queries_done": rows, "knn_s_all_queries": _r(t_knn * n / rows, 2),
            "range_extra_s_all_queries": _r(t_range * n / rows, 2), "extrapolated": rows < n,
            "planted_pair_recall_at_k": _r(found / max(int((partner[:rows] >= 0).sum()), 1), 4),
            "range_hits_per_query": _r(edges / rows, 2), "chunk": chunk}  # fmt: skip


def sec_faiss_1e6(p: dict[str, Any], rec: dict[str, Any], save: Save, dl: Deadline) -> None:
    """k-NN and range search over the lab's planted descriptors: torch on the device, faiss on the CPU."""
    import faiss
    import torch

    from copyguard.common.timing import timed

    # curate's exact searches (what similarity_edges runs on an exact index)
    from copyguard.curation.clustering import gpu_available, knn_edges, range_edges
    from copyguard.curation.config import ImagesConfig
    from copyguard.pipelines.lab.synthetic import planted_descriptors

    device, n, d, k, thr = p["device"], p["n"], 512, 10, 0.75
    rec.update(n=n, dim=d, k=k, range_threshold=thr, faiss_version=faiss.__version__)
    cpu_build = (
        f"unavailable: the faiss that loads is a CPU build; torch here is built for CUDA {torch.version.cuda}"
    )
    rec["faiss_gpu"] = "available (not timed: torch is)" if gpu_available() else cpu_build
    t0 = time.perf_counter()
    xn, pi, pj, _ = planted_descriptors(n, 0, d)
    x = torch.from_numpy(xn).to(device)
    partner = torch.full((n,), -1, dtype=torch.long)
    partner[pi], partner[pj] = torch.from_numpy(pj), torch.from_numpy(pi)
    partner = partner.to(device)
    rec["generate_s"] = _r(time.perf_counter() - t0, 2)
    save()
    torch.backends.cuda.matmul.allow_tf32 = False
    res: dict[str, Any] = rec.setdefault("torch_gpu" if device.startswith("cuda") else "torch_cpu", {})
    for dtype in p["dtypes"]:
        if dl.expired(p["cpu_reserve"] + 5):
            res[dtype] = "skipped: time budget"
            continue
        try:
            res[dtype] = _torch_knn(x, partner, getattr(torch, dtype), k, thr, p["chunk"], p["torch_budget"])
        except Exception as exc:
            res[dtype] = f"error: {_err(exc)}"
        save()
    if dl.expired(5):
        rec["faiss_cpu"] = "skipped: time budget"
        return
    del x
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    index = faiss.IndexFlatIP(d)
    add_s, q, batch = timed(lambda: index.add(xn))[0], xn[: p["cpu_queries"]], ImagesConfig().query_batch
    knn_s = timed(lambda: knn_edges(index, q, k, batch))[0]
    range_s, parts = timed(lambda: range_edges(index, q, thr, batch))
    rec["faiss_cpu"] = {"threads": faiss.omp_get_max_threads(), "queries": len(q), "add_s": _r(add_s, 2),
                        "knn_s_all_queries": _r(knn_s * n / len(q), 2),
                        "range_s_all_queries": _r(range_s * n / len(q), 2),
                        "range_hits_per_query": _r(sum(len(part[0]) for part in parts) / len(q), 2),
                        "extrapolated": len(q) < n}  # fmt: skip
    for dtype, row in res.items():
        if isinstance(row, dict) and row.get("knn_s_all_queries"):
            rec[f"knn_speedup_torch_{dtype}_vs_faiss_cpu"] = _r(
                rec["faiss_cpu"]["knn_s_all_queries"] / row["knn_s_all_queries"], 2
            )


def sec_embedder(p: dict[str, Any], rec: dict[str, Any], save: Save, dl: Deadline) -> None:
    """SSCD throughput (bench_embedders.throughput): torch on the device per dtype vs onnxruntime on the CPU."""
    import numpy as np
    import torch

    from copyguard.common.timing import throughput, timed
    from copyguard.curation.embedders import load_embedder
    from copyguard.mitigation.sscd_torch import load_torch_sscd

    device, n, bs = p["device"], p["images"], p["batch"]
    # random pictures time the same
    images = list(np.random.default_rng(0).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8))
    load_s, model = timed(lambda: load_torch_sscd("sscd-onnx", input_size=p["input_size"], device=device))
    rec.update(torch_load_s=_r(load_s, 2), images=n, batch=bs, input_size=model.input_size,
               device=device,
               model="sscd-onnx (ResNet-50, 320 px, int8 QDQ; torch: converted, fake-quant)")  # fmt: skip
    full = model.resize(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0)  # input size
    save()
    res: dict[str, Any] = rec.setdefault("torch", {})
    for dtype in p["dtypes"]:
        if dl.expired(10):  # onnxruntime's share
            res[dtype] = "skipped: time budget"
            continue
        amp = dtype == "float16" and device.startswith("cuda")

        def embed(fn: Callable[[Any], Any], amp: bool = amp) -> SimpleNamespace:
            def run(batch: Any) -> Any:
                with torch.no_grad(), torch.autocast(device.split(":")[0], torch.float16, enabled=amp):
                    out = fn(batch)
                return out.cpu() if isinstance(out, torch.Tensor) else out  # synchronizes

            return SimpleNamespace(embed=run)

        try:
            res[dtype] = {"model_only_320px": throughput(embed(model.descriptors), full, bs, p["repeats"]),
                          "end_to_end_64px": throughput(embed(model.embed), images, bs, p["repeats"])}  # fmt: skip
        except Exception as exc:
            res[dtype] = f"error: {_err(exc)}"
        save()
    if dl.expired(3):
        rec["onnxruntime_cpu"] = "skipped: time budget"
        return
    ort = load_embedder("sscd-onnx", input_size=p["input_size"], threads=os.cpu_count())
    m = p["ort_images"]
    cpu = rec["onnxruntime_cpu"] = {"threads": os.cpu_count(), "images": m,
                                    "end_to_end_64px": throughput(ort, images[:m], m, 2)}  # fmt: skip
    for dtype, row in res.items():
        if isinstance(row, dict):
            rec[f"speedup_torch_{dtype}_vs_onnxruntime_cpu"] = _r(
                row["end_to_end_64px"]["images_per_s"] / cpu["end_to_end_64px"]["images_per_s"], 2
            )


SECTION_FUNCS: dict[str, Callable[[dict[str, Any], dict[str, Any], Save, Deadline], None]] = {
    "lab_gpu": sec_lab_gpu,
    "sd15_detection": sec_sd15_detection,
    "sd15_amg": sec_sd15_amg,
    "filter_step": sec_filter_step,
    "faiss_1e6": sec_faiss_1e6,
    "embedder": sec_embedder,
}


def run_child(name: str, params: dict[str, Any], result: str, budget: float) -> int:
    """Run section ``name`` in this process, its record rewritten to ``result`` after every step."""
    from copyguard.common.timing import Deadline

    dl, rec = Deadline(budget), {"status": "running", "params": params}

    def save() -> None:
        Path(f"{result}.tmp").write_text(json.dumps(rec, indent=1, default=str))
        os.replace(f"{result}.tmp", result)

    t0 = time.perf_counter()
    try:
        import torch

        cuda = torch.cuda.is_available()
        name_ = torch.cuda.get_device_name(0) if cuda else None
        rec["runtime"] = {"torch": torch.__version__, "cuda": torch.version.cuda, "device_name": name_}
        if not params["device"].startswith("cuda"):
            from copyguard.common.runtime import choose_threads

            torch.set_num_threads(choose_threads(0))  # all cores when idle, 1 on a busy machine
        SECTION_FUNCS[name](params, rec, save, dl)
        rec["status"] = "ok"
    except Exception as exc:
        rec.update(status=f"error: {_err(exc)}", traceback=traceback.format_exc(limit=8)[-3000:])
        traceback.print_exc()
    rec["seconds"] = _r(time.perf_counter() - t0, 2)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(run_child(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], float(sys.argv[4])))
