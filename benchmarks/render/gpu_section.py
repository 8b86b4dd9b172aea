"""The GPU section of ``docs/results.md``: ``make bench-gpu`` (``benchmarks/bench_gpu.json``) per GPU machine."""

from __future__ import annotations

from typing import Any

from benchmarks.render.base import Results, partial, source
from copyguard.common.fmt import fixed, markdown_table

__all__ = ["gpu_section"]

# (summary key, what it is, unit)
ROWS = (
    ("lab_unet_steps_per_s", "lab `gpu` preset: UNet training steps per second", "steps/s"),
    ("lab_unet_images_per_s", "lab `gpu` preset: UNet training images per second", "images/s"),
    (
        "detect_ms_per_prompt_float32_batch1",
        "first-step detection, SD 1.5 at 512 px, fp32, batch 1",
        "ms/prompt",
    ),
    ("detect_ms_per_prompt_float32_batch8", "first-step detection, fp32, batch 8", "ms/prompt"),
    ("detect_ms_per_prompt_float16_batch8", "first-step detection, fp16, batch 8", "ms/prompt"),
    ("detect_1prompt_vs_50step_generation", "detection of one prompt / one 50-step generation", "ratio"),
    ("amg_plain_s", "plain generation, SD 1.5 at 512 px, 20 steps", "s"),
    ("amg_gated_unflagged_vs_plain", "AMG gated, unflagged prompt / plain (goal <= 1.15)", "ratio"),
    (
        "amg_memorized_vs_plain",
        "AMG on a memorized prompt (every term, every step) / plain (goal <= 3)",
        "ratio",
    ),
    ("amg_ungated_unique_vs_plain", "AMG ungated on a unique prompt / plain", "ratio"),
    (
        "filter_batched_vs_none",
        "training step with the batched filter / no filter (SD 1.5 UNet, bf16)",
        "ratio",
    ),
    ("filter_separate_vs_none", "training step with a separate no-grad filter pass / no filter", "ratio"),
    ("knn_1e6_torch_gpu_float32_s", "exact k-NN + range search, 1e6 x 512 descriptors, torch fp32", "s"),
    ("knn_1e6_torch_gpu_float16_s", "the same in fp16", "s"),
    ("knn_1e6_faiss_cpu_s", "the same with faiss-cpu IndexFlatIP on the machine's CPUs (extrapolated)", "s"),
    ("sscd_torch_float32_images_per_s", "SSCD descriptors, torch on the GPU, fp32, batch 64", "images/s"),
    ("sscd_torch_float16_images_per_s", "SSCD descriptors, torch on the GPU, fp16 autocast", "images/s"),
    ("sscd_onnxruntime_cpu_images_per_s", "SSCD descriptors, onnxruntime on the machine's CPUs", "images/s"),
)


def _machine_line(data: dict[str, Any]) -> str:
    m = data.get("machine", {})
    return f"{m.get('gpu') or '?'}, {m.get('cpu_count', '?')} CPU cores, torch {m.get('versions', {}).get('torch')}"


def gpu_section(res: Results) -> str:
    """One table per GPU machine that has a ``bench_gpu`` result; the partial's note when there is none."""
    runs = {m: d for m, d in res.get("bench_gpu", {}).items() if not d.get("smoke")}
    lines = ["## GPU", ""]
    if not runs:
        return "\n".join([*lines, partial("results", "gpu_none"), ""])
    lines += [partial("results", "gpu_intro"), ""]
    for machine, data in sorted(runs.items()):
        s = data.get("summary", {})
        rows = [[what, fixed(s.get(key), 3), unit] for key, what, unit in ROWS]
        lines += [
            f"**{machine}** ({_machine_line(data)}):",
            "",
            markdown_table(["measure", "value", "unit"], rows),
            "",
            f"GPU FAISS: {s.get('faiss_gpu') or 'measured'}.",
            "",
        ]
        if data.get("merge_note"):
            lines += [data["merge_note"], ""]
        lines += [source("bench_gpu", data), ""]
    return "\n".join(lines)
