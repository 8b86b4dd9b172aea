"""Fine-tuning checkpoints and resumable logs: file names, lookup, what a resume must not change.

Checkpoints hold only safe formats: accelerate's ``model.safetensors`` and its optimizer/scheduler/RNG files
(loaded with ``weights_only``), ``trainer_state.json`` (step, config, filter state) and ``ema.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from copyguard.common.errors import UsageError
from copyguard.train.config import TrainConfig

__all__ = [
    "EMA_FILE",
    "RESUME_KEYS",
    "STATE_FILE",
    "find_checkpoint",
    "flat_config",
    "truncate_jsonl",
]

STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"

# Settings a checkpoint depends on: resuming with other values would not continue the same run.
RESUME_KEYS = ("seed", "mode", "batch_size", "grad_accum", "lr", "lr_scheduler", "lora", "filter", "ema")


def find_checkpoint(out: Path, resume: str) -> Path | None:
    """``latest`` -> the newest ``RUN_DIR/checkpoints/step-*`` (None if there is none), else that folder."""
    if resume != "latest":
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise UsageError(f"--resume {resume}: not a checkpoint folder (no {STATE_FILE})")
        return path
    found = sorted((out / "checkpoints").glob("step-*[0-9]")) if (out / "checkpoints").is_dir() else []
    found = [p for p in found if (p / STATE_FILE).is_file()]
    return found[-1] if found else None


def flat_config(cfg: TrainConfig) -> dict[str, Any]:
    """The config as flat ``dotted.key -> scalar`` pairs (what experiment trackers accept)."""

    def walk(prefix: str, d: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(walk(f"{prefix}{k}.", v))
            elif isinstance(v, (int, float, str, bool)):
                out[f"{prefix}{k}"] = v
        return out

    return walk("", cfg.model_dump())


def truncate_jsonl(path: Path, before_step: int) -> None:
    """Keep the JSON-lines records of steps <= ``before_step`` (a resumed run rewrites the rest)."""
    keep = []
    if before_step and path.is_file():
        keep = [
            ln + "\n"
            for ln in path.read_text().splitlines()
            if ln.strip() and json.loads(ln)["step"] <= before_step
        ]
    path.write_text("".join(keep), encoding="utf-8")
