"""One ``lab-model`` run: train (or reuse) the model, measure its memorization, write the model card.

Outputs in ``MODEL_DIR``: the diffusers folder, ``lab_training.json`` (settings, data, timings, machine),
``memorization.json`` (:func:`copyguard.train.lab_eval.evaluate_memorization`), ``memorization.png``
(training images next to their prompts' generations) and ``README.md`` (the model card).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from copyguard.curation.errors import UsageError
from copyguard.curation.fileops import atomic_write
from copyguard.train.lab_card import CHART, render_model_card, write_memorization_chart
from copyguard.train.lab_config import LabConfig
from copyguard.train.lab_data import load_lab_data
from copyguard.train.lab_eval import evaluate_memorization
from copyguard.train.lab_model import resolve_device, torch_settings, train_lab_model

__all__ = ["machine_info", "run_lab_model"]

log = logging.getLogger(__name__)

TRAINING_INFO = "lab_training.json"
MEMORIZATION = "memorization.json"


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU/GPU, cores, memory, torch version, threads and load: the context the timings need."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "platform": platform.platform(),
    }
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


def run_lab_model(
    cfg: LabConfig,
    data_pattern: str | list[str],
    out_dir: str | Path,
    *,
    resume: bool = False,
    eval_only: bool = False,
    evaluate: bool = True,
) -> dict[str, Any]:
    """Train (unless ``eval_only``), then measure (unless ``evaluate`` is false) and write the card.

    Returns ``{"training": ..., "memorization": ...}`` (the two JSON files' bodies; memorization is
    ``None`` when not measured).
    """
    out = Path(out_dir)
    device = resolve_device(cfg.device)
    if eval_only and not (out / "model_index.json").is_file():
        raise UsageError(f"--eval-only needs a trained model in {out} (no model_index.json there)")
    with torch_settings(cfg, device):
        return _run(cfg, out, device, data_pattern, resume, eval_only, evaluate)


def _run(cfg: LabConfig, out: Path, device: torch.device, data_pattern: str | list[str], resume: bool,
         eval_only: bool, evaluate: bool) -> dict[str, Any]:  # fmt: skip
    preset = cfg.active()
    started = machine_info(device)
    data = load_lab_data(data_pattern, preset.resolution, preset.heldout, cfg.seed)
    info_path = out / TRAINING_INFO
    if eval_only:
        training = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    else:
        result = train_lab_model(cfg, data_pattern, out, resume=resume, data=data)
        training = json.loads(info_path.read_text(encoding="utf-8"))
        training["machine"] = {"start": started, "end_load_average": machine_info(device).get("load_average")}
        atomic_write(str(info_path), json.dumps(training, indent=2, sort_keys=True) + "\n")
        log.info("trained in %.0f s: %s", result.timings.get("train_total_s", 0.0), result.timings)
    memorization = None
    if evaluate:
        t0 = time.perf_counter()
        memorization = evaluate_memorization(
            out,
            data,
            preset.eval,
            device=device,
            seed=cfg.seed,
            nearest_train=preset.eval.nearest_train,
            grid_path=out / "memorization.png",
        )
        memorization["machine"] = machine_info(device)
        atomic_write(str(out / MEMORIZATION), json.dumps(memorization, indent=1, sort_keys=True) + "\n")
        write_memorization_chart(memorization, out / CHART)
        log.info("memorization measured in %.0f s", time.perf_counter() - t0)
    card = render_model_card(cfg.preset, training, memorization, data_pattern)
    atomic_write(str(out / "README.md"), card)
    return {"training": training, "memorization": memorization}
