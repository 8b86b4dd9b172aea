"""GPU figures in one run of at most 8 minutes on one H100-class GPU (``make bench-gpu``; docs/results.md).

    python -m benchmarks.bench_gpu [--smoke] [--machine TAG] [--out DIR] [--budget 420]
                                   [--sections lab_gpu,sd15_detection,...] [--device cuda]

Sections, each in its own process (a CUDA error, an out-of-memory or a hang in one cannot take the others
down) with its own time budget; a section whose budget runs out is killed and recorded as such, one that
fails records its error, and the JSON is rewritten after every section, so a run cut short still leaves
every finished figure:

- ``lab_gpu``: the ``gpu`` lab preset (64 px), shortened (``--lab-vae-steps``/``--lab-unet-steps``, a small
  memorization evaluation, no FID) on the ``small`` sample data, through ``run_lab_model``: steps/s and
  images/s of both training stages, and whether the memorization evaluation ran;
- ``sd15_detection``: first-step text-conditional magnitude (``copyguard.mitigation.detect``) on Stable
  Diffusion 1.5's UNet/VAE architecture (``benchmarks.bench_mitigation.build_sd15_arch``, random weights)
  at 512 px (64x64x4 latents), fp32 and fp16, batch 1 and 8: ms per prompt, and one CFG UNet call;
- ``sd15_amg``: ``benchmarks.bench_mitigation.measure_model`` on the same model at 512 px and
  ``--amg-steps`` steps: plain vs AMG gated with an unflagged prompt vs the forced worst case ("memorized":
  every term at every step), ungated, first-step detection and prompt optimization, with CUDA-synchronized
  timings; a random 512-d training-set index (exact FAISS) stands in for the curated one;
- ``filter_step``: the §5 memorization filter (``copyguard.train.mem_filter.filtered_prediction``) on a full
  fine-tuning step (forward, backward, AdamW) of SD 1.5's UNet at 512 px, bf16 autocast: no filter vs
  batched (one UNet call on 2B samples, ``filter.batched=true``) vs separate no-grad unconditional call;
- ``faiss_1e6``: exact inner-product k-NN (k=10) and range search (cosine >= 0.75) over 1e6 x 512 unit
  descriptors with planted near-copies: GPU FAISS where it loads, else the same search with torch on the GPU
  (chunked matmul + top-k, what ``IndexFlatIP`` computes) and the reason GPU FAISS is missing; faiss-cpu on
  the machine's cores (a query sample, extrapolated) for the ratio;
- ``embedder``: SSCD descriptor throughput (``copyguard.mitigation.sscd_torch`` on the GPU, batch 64, fp32
  and fp16 autocast, model only at 320 px and end to end from 64 px images) against the onnxruntime CPU
  embedder of curation on the same machine.

``--smoke`` runs every section at toy size on the CPU (tiny UNet/VAE configs, tiny lab preset) in a few
minutes: the test of this script. Writes ``benchmarks/results/<machine>/bench_gpu.json`` and copies it to
``$OUT/bench_gpu.json`` when ``OUT`` is set. Runs from a checkout without installing copyguard: when the
``copyguard`` namespace does not import, :func:`bootstrap` links the code folders into a temporary
``copyguard/`` folder and puts it on ``sys.path`` and ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NAME = "bench_gpu"
SUBPACKAGES = ("common", "curation", "mitigation", "train", "pipelines")
SECTIONS = ("lab_gpu", "sd15_detection", "sd15_amg", "filter_step", "faiss_1e6", "embedder")
# Seconds per section on the GPU machine (child start and imports included); 420 in all.
BUDGETS = {  # measured on an H200 (docs/results.md): 125, 34, 55, 48, 66, 17 s
    "lab_gpu": 130,
    "sd15_detection": 45,
    "sd15_amg": 70,
    "filter_step": 60,
    "faiss_1e6": 75,
    "embedder": 40,
}
SMOKE_BUDGET = 150  # a ceiling; the lab section gets twice that (a busy 2-core machine)


# ------------------------------------------------------------------------------------------ bootstrap
def bootstrap(root: Path = ROOT) -> str | None:
    """Make ``copyguard.*`` importable from a checkout that is not pip-installed.

    Returns the temporary folder holding the ``copyguard/`` links (also put on ``sys.path`` and prepended
    to ``$PYTHONPATH`` for child processes), or None when ``copyguard.common`` already imports.
    """
    try:
        if importlib.util.find_spec("copyguard.common") is not None:
            return None
    except ModuleNotFoundError:
        pass
    tmp = Path(tempfile.mkdtemp(prefix="copyguard_ns_"))
    pkg = tmp / "copyguard"  # an implicit namespace package, as installed: no __init__.py
    pkg.mkdir()
    for name in SUBPACKAGES:
        (pkg / name).symlink_to(root / name, target_is_directory=True)
    sys.path.insert(0, str(tmp))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp), os.environ.get("PYTHONPATH")) if p)
    sys.modules.pop("copyguard", None)
    importlib.invalidate_caches()
    return str(tmp)


from benchmarks.gpu_helpers import Deadline, _err, _log, _r  # noqa: E402
from benchmarks.gpu_sections import SECTION_FUNCS, section_params  # noqa: E402


# ------------------------------------------------------------------------------------------ driver
def _child(name: str, params_json: str, result: str, budget: float) -> int:
    """Run one section in this process, writing its record to ``result`` after every step."""
    dl = Deadline(budget)
    bootstrap()
    params = json.loads(params_json)
    rec: dict[str, Any] = {"status": "running", "params": params}

    def save() -> None:
        tmp = f"{result}.tmp"
        Path(tmp).write_text(json.dumps(rec, indent=1, default=str))
        os.replace(tmp, result)

    t0 = time.perf_counter()
    try:
        import torch

        rec["runtime"] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                        "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}  # fmt: skip
        if not params["device"].startswith("cuda"):
            from copyguard.common.runtime import choose_threads

            torch.set_num_threads(choose_threads(0))  # all cores when idle, 1 on a busy machine
        SECTION_FUNCS[name](params, rec, save, dl)
        rec["status"] = "ok"
    except Exception as exc:
        rec["status"] = f"error: {_err(exc)}"
        rec["traceback"] = traceback.format_exc(limit=8)[-3000:]
        traceback.print_exc()
    rec["seconds"] = _r(time.perf_counter() - t0, 2)
    save()
    return 0


def _write(report: dict[str, Any], out: str, machine: str) -> Path:
    from benchmarks.common import result_path
    from copyguard.common.fileops import atomic_write

    body = {k: v for k, v in report.items() if not k.startswith("_")}
    path = result_path(out, machine, NAME)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(path), json.dumps(body, indent=2, default=str) + "\n")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(os.environ["OUT"]) / f"{NAME}.json")
    return path


def run_section(name: str, params: dict[str, Any], budget: float, hard: float) -> dict[str, Any]:
    """One section in a child process (killed after ``hard`` seconds); its record, however it ended."""
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        result = Path(tmp) / "section.json"
        cmd = [sys.executable, "-m", "benchmarks.bench_gpu", "--child", name, "--child-params",
               json.dumps(params), "--child-result", str(result), "--budget", str(budget)]  # fmt: skip
        t0 = time.perf_counter()
        status = None
        try:
            proc = subprocess.run(cmd, cwd=ROOT, timeout=hard, check=False)
            if proc.returncode != 0:
                status = f"error: section process exited with {proc.returncode}"
        except subprocess.TimeoutExpired:
            status = f"killed: section time budget ({hard:.0f} s) ran out"
        rec = json.loads(result.read_text()) if result.is_file() else {"params": params}
        if status is not None and rec.get("status") in (None, "running", "ok"):
            rec["status"] = status
        rec["wall_s"] = _r(time.perf_counter() - t0, 2)
        return rec


def summarize(sections: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of every section that produced them."""
    out: dict[str, Any] = {}

    def get(*path: str) -> Any:
        node: Any = sections
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node

    out["lab_unet_steps_per_s"] = get("lab_gpu", "unet_steps_per_s")
    out["lab_unet_images_per_s"] = get("lab_gpu", "unet_images_per_s")
    out["lab_memorization_evaluated"] = get("lab_gpu", "memorization_evaluated")
    for dtype in ("float32", "float16"):
        for b in (1, 8):
            out[f"detect_ms_per_prompt_{dtype}_batch{b}"] = get(
                "sd15_detection", "ms_per_prompt", dtype, f"batch{b}"
            )
    for key in ("amg_gated_unflagged_vs_plain", "amg_memorized_vs_plain", "amg_ungated_unique_vs_plain",
                "detect_1prompt_vs_50step_generation"):  # fmt: skip
        out[key] = get("sd15_amg", "ratios_median", key)
    out["amg_plain_s"] = get("sd15_amg", "seconds_median", "plain_unique")
    out["filter_batched_vs_none"] = get("filter_step", "ratio_batched_vs_none")
    out["filter_separate_vs_none"] = get("filter_step", "ratio_separate_vs_none")
    out["faiss_gpu"] = get("faiss_1e6", "faiss_gpu")
    for dtype in ("float32", "float16"):
        out[f"knn_1e6_torch_gpu_{dtype}_s"] = get("faiss_1e6", "torch_gpu", dtype, "knn_s_all_queries")
    out["knn_1e6_faiss_cpu_s"] = get("faiss_1e6", "faiss_cpu", "knn_s_all_queries")
    for dtype in ("float32", "float16"):
        out[f"sscd_torch_{dtype}_images_per_s"] = get(
            "embedder", "torch", dtype, "model_only_320px", "images_per_s"
        )
    out["sscd_onnxruntime_cpu_images_per_s"] = get(
        "embedder", "onnxruntime_cpu", "end_to_end_64px", "images_per_s"
    )
    out["section_status"] = {k: (v.get("status") if isinstance(v, dict) else v) for k, v in sections.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every section at toy size on the CPU")
    parser.add_argument("--machine", default=None, help="results folder (default: common.default_machine())")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results root")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for all sections together (420; 1200 with --smoke)",
    )
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    parser.add_argument("--device", default=None, help="default: cuda when torch sees one (cpu with --smoke)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-params", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child, args.child_params, args.child_result, args.budget)
    t_start = time.perf_counter()
    if args.budget is None:
        args.budget = 1200.0 if args.smoke else 420.0
    ns = bootstrap()
    _log(f"copyguard namespace: {'linked in ' + ns if ns else 'installed'}")
    from benchmarks.common import begin, default_machine, finish

    machine = args.machine or default_machine()
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections: {', '.join(unknown)}")
    report = begin(NAME, "benchmarks.bench_gpu", argv, machine, quick=args.smoke)
    report.update(device=device, smoke=args.smoke, budget_s=args.budget, bootstrap=ns, sections={})
    path = _write(report, args.out, machine)
    for name in names:
        left = args.budget - (time.perf_counter() - t_start)
        budget = min(
            SMOKE_BUDGET * (2 if name == "lab_gpu" else 1) if args.smoke else BUDGETS[name], left - 5
        )
        if budget < 15:
            report["sections"][name] = {"status": "skipped: time budget"}
            _log(f"{name}: skipped (time budget)")
            continue
        _log(f"{name}: start (budget {budget:.0f} s)")
        params = section_params(name, args.smoke, device)
        report["sections"][name] = run_section(name, params, budget - 5, hard=budget)
        _log(
            f"{name}: {report['sections'][name].get('status')} in {report['sections'][name].get('wall_s')} s"
        )
        report["summary"] = summarize(report["sections"])
        _write(report, args.out, machine)
    finish(report)
    report["summary"] = summarize(report["sections"])
    path = _write(report, args.out, machine)
    print(json.dumps(report["summary"], indent=1), flush=True)
    _log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
