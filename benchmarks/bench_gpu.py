"""GPU figures in one run of at most 8 minutes on one H100-class GPU (``make bench-gpu``; docs/results.md).

    python -m benchmarks.bench_gpu [--smoke] [--machine TAG] [--out DIR] [--budget 420]
                                   [--sections lab_gpu,sd15_detection,...] [--device cuda]

Each section (:mod:`benchmarks.gpu_sections`) runs in its own process with its own time budget and the
JSON is rewritten after every section; ``--smoke`` runs them all at toy size on the CPU. Writes
``benchmarks/results/<machine>/bench_gpu.json``. On a machine without copyguard installed:
``benchmarks/gpu_device_run.sh``. Sections and method: docs/benchmark-methods-gpu.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu_sections import DTYPES, SECTION_FUNCS, _r

__all__ = ["BUDGETS", "SECTIONS", "SECTION_FUNCS", "bootstrap", "main", "section_params", "summarize"]

log = logging.getLogger("benchmarks.bench_gpu")
ROOT = Path(__file__).resolve().parent.parent
NAME = "bench_gpu"
# section: (the GPU run's sizes, --smoke's toy sizes on the CPU)
PARAMS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "lab_gpu": (
        {"preset": "gpu", "data_preset": "small", "heldout": 100, "vae_steps": 250, "unet_steps": 400,
         "eval": {"seeds": 2, "steps": 25, "unique_prompts": 32, "fid_images": 0, "calibration_images": 16}},
        {"preset": "tiny", "data_preset": "tiny", "heldout": 0, "vae_steps": 3, "unet_steps": 3,
         "eval": {"seeds": 1, "steps": 2, "unique_prompts": 2, "fid_images": 0, "calibration_images": 2,
                  "batch_size": 8}},
    ),
    "sd15_detection": ({"size": 512, "dtypes": list(DTYPES), "repeats": 5},
                       {"size": 64, "dtypes": ["float32"], "repeats": 1}),
    "sd15_amg": ({"size": 512, "steps": 20, "popt_iters": 2, "index_rows": 10_000, "sscd_size": 320, "max_runs": 3},
                 {"size": 64, "steps": 3, "popt_iters": 1, "index_rows": 64, "sscd_size": 96, "max_runs": 1}),
    "filter_step": ({"size": 512, "batch": 4, "steps": 6, "rounds": 2},
                    {"size": 64, "batch": 2, "steps": 2, "rounds": 1}),
    "faiss_1e6": ({"n": 1_000_000, "dtypes": list(DTYPES), "chunk": 2048, "torch_budget": 14, "cpu_queries": 1000,
                   "cpu_reserve": 15},
                  {"n": 20_000, "dtypes": ["float32"], "chunk": 2048, "torch_budget": 10, "cpu_queries": 500,
                   "cpu_reserve": 5}),
    "embedder": ({"images": 256, "batch": 64, "input_size": 320, "dtypes": list(DTYPES), "repeats": 3,
                  "ort_images": 64},
                 {"images": 4, "batch": 2, "input_size": 96, "dtypes": ["float32"], "repeats": 1, "ort_images": 2}),
}  # fmt: skip
SECTIONS = tuple(PARAMS)
# Seconds per section on the GPU machine (child start and imports included), 420 in all; measured on an
# H200: 125, 34, 55, 48, 66 (before the CPU-generated lab descriptors), 17 s.
BUDGETS = {
    "lab_gpu": 130,
    "sd15_detection": 45,
    "sd15_amg": 70,
    "filter_step": 60,
    "faiss_1e6": 85,
    "embedder": 30,
}
SMOKE_BUDGET = 150  # a ceiling; the lab section gets twice that (a busy 2-core machine)
# summary key: its path in the sections
SUMMARY: dict[str, tuple[str, ...]] = {
    "lab_unet_steps_per_s": ("lab_gpu", "unet_steps_per_s"),
    "lab_unet_images_per_s": ("lab_gpu", "unet_images_per_s"),
    "lab_memorization_evaluated": ("lab_gpu", "memorization_evaluated"),
    **{f"detect_ms_per_prompt_{d}_batch{b}": ("sd15_detection", "ms_per_prompt", d, f"batch{b}")
       for d in DTYPES for b in (1, 8)},
    **{k: ("sd15_amg", "ratios_median", k) for k in ("amg_gated_unflagged_vs_plain", "amg_memorized_vs_plain",
                                                       "amg_ungated_unique_vs_plain",
                                                       "detect_1prompt_vs_50step_generation")},
    "amg_plain_s": ("sd15_amg", "seconds_median", "plain_unique"),
    "filter_batched_vs_none": ("filter_step", "ratio_batched_vs_none"),
    "filter_separate_vs_none": ("filter_step", "ratio_separate_vs_none"),
    "faiss_gpu": ("faiss_1e6", "faiss_gpu"),
    **{f"knn_1e6_torch_gpu_{d}_s": ("faiss_1e6", "torch_gpu", d, "knn_s_all_queries") for d in DTYPES},
    "knn_1e6_faiss_cpu_s": ("faiss_1e6", "faiss_cpu", "knn_s_all_queries"),
    **{f"sscd_torch_{d}_images_per_s": ("embedder", "torch", d, "model_only_320px", "images_per_s") for d in DTYPES},
    "sscd_onnxruntime_cpu_images_per_s": ("embedder", "onnxruntime_cpu", "end_to_end_64px", "images_per_s"),
}  # fmt: skip


def section_params(name: str, smoke: bool, device: str) -> dict[str, Any]:
    """Sizes of one section: the GPU run's, or toy sizes for ``--smoke``."""
    if name not in PARAMS:
        raise ValueError(f"unknown section {name!r}")
    return {"device": device, "smoke": smoke, **PARAMS[name][1 if smoke else 0]}


def bootstrap(root: Path = ROOT) -> str | None:
    """Make ``copyguard.*`` importable from a checkout that is not pip-installed: link the code folders into
    a temporary ``copyguard/`` (a namespace package, as installed) put on ``sys.path`` and ``$PYTHONPATH``
    (for the section processes). Returns that folder, or None when ``copyguard.common`` already imports."""
    try:
        if importlib.util.find_spec("copyguard.common") is not None:
            return None
    except ModuleNotFoundError:
        pass
    tmp = Path(tempfile.mkdtemp(prefix="copyguard_ns_"))
    (tmp / "copyguard").mkdir()
    for name in ("common", "curation", "mitigation", "train", "pipelines"):
        (tmp / "copyguard" / name).symlink_to(root / name, target_is_directory=True)
    sys.path.insert(0, str(tmp))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp), os.environ.get("PYTHONPATH")) if p)
    sys.modules.pop("copyguard", None)
    importlib.invalidate_caches()
    return str(tmp)


def run_section(name: str, params: dict[str, Any], budget: float, hard: float) -> dict[str, Any]:
    """One section in a child process (``benchmarks.gpu_sections``, killed after ``hard`` seconds); its
    record, however it ended."""
    from benchmarks.common import run_module

    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        result = Path(tmp) / "section.json"
        code, seconds = run_module(
            "benchmarks.gpu_sections", name, json.dumps(params), str(result), str(budget), timeout=hard
        )
        rec = json.loads(result.read_text()) if result.is_file() else {"params": params}
        status = f"error: section process exited with {code}" if code else None
        status = f"killed: section time budget ({hard:.0f} s) ran out" if code is None else status
        if status is not None and rec.get("status") in (None, "running", "ok"):
            rec["status"] = status
        rec["wall_s"] = _r(seconds, 2)
        return rec


def summarize(sections: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers (:data:`SUMMARY`) of every section that produced them, and each one's status."""

    def get(path: tuple[str, ...]) -> Any:
        node: Any = sections
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    status = {k: (v.get("status") if isinstance(v, dict) else v) for k, v in sections.items()}
    return {**{key: get(path) for key, path in SUMMARY.items()}, "section_status": status}


def _names(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if unknown := sorted(set(names) - set(SECTIONS)):
        raise argparse.ArgumentTypeError(f"unknown sections: {', '.join(unknown)}")
    return names


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--smoke", dest="quick", action="store_true", help="every section at toy size on the CPU"
    )
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds for all sections (420; --smoke 1200)"
    )
    parser.add_argument("--sections", type=_names, default=list(SECTIONS), help="comma-separated subset")
    parser.add_argument("--device", default=None, help="default: cuda when torch sees one (cpu with --smoke)")


def _measure(args: argparse.Namespace, namespace: str | None, t_start: float) -> dict[str, Any]:
    """Every section in turn within the budget (counted from ``t_start``), the result file rewritten after
    each."""
    import torch

    from benchmarks.common import begin, write_result

    log.info("copyguard namespace: %s", f"linked in {namespace}" if namespace else "installed")
    budget = args.budget or (1200.0 if args.quick else 420.0)
    device = args.device or ("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    report = begin(NAME, "benchmarks.bench_gpu", args.argv, args.machine, quick=args.quick)
    report.update(device=device, smoke=args.quick, budget_s=budget, bootstrap=namespace, sections={})
    for name in args.sections:
        write_result({k: v for k, v in report.items() if k != "_t0"}, args.out, args.machine, NAME)
        left = budget - (time.perf_counter() - t_start) - 5
        full = SMOKE_BUDGET * (2 if name == "lab_gpu" else 1) if args.quick else BUDGETS[name]
        if (section_budget := min(full, left)) < 15:
            report["sections"][name] = {"status": "skipped: time budget"}
            log.info("%s: skipped (time budget)", name)
            continue
        log.info("%s: start (budget %.0f s)", name, section_budget)
        params = section_params(name, args.quick, device)
        rec = report["sections"][name] = run_section(name, params, section_budget - 5, hard=section_budget)
        log.info("%s: %s in %s s", name, rec.get("status"), rec.get("wall_s"))
        report["summary"] = summarize(report["sections"])
    report["summary"] = summarize(report["sections"])
    return report


def main(argv: list[str] | None = None) -> int:
    t_start, namespace = time.perf_counter(), bootstrap()
    from benchmarks.common import script_main

    summary = lambda report: json.dumps(report["summary"], indent=1)  # noqa: E731
    return script_main(
        argv, __doc__, NAME, _add_args, lambda args: _measure(args, namespace, t_start), summary
    )


if __name__ == "__main__":
    sys.exit(main())
