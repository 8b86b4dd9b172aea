"""Parts of the audit's ``report.json`` that :func:`copyguard.mitigation.audit.run_audit` adds to the job's data.

- :func:`top_similar`: the generations most similar to their nearest training image over all prompts and
  settings, whatever the detector said (a gate on ``share_above_0.5`` can fail on an unflagged prompt).
- :func:`gate_details`: each gate condition with its setting, metric, operator and threshold next to the
  measured value.
- :func:`run_facts`: what a CI record needs to tie a verdict to its inputs: copyguard version, model path and
  a content hash of its weights files, index path and entry count, the configuration, UTC date, machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from copyguard.common.runtime import machine_info, package_version

__all__ = ["WEIGHT_SUFFIXES", "gate_details", "run_facts", "top_similar", "weights_hash"]

# files whose content is the model: hashed by :func:`weights_hash`
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
_CHUNK = 1 << 20


def top_similar(prompts: Sequence[Mapping[str, Any]], similarity: str, n: int) -> list[dict[str, Any]]:
    """The ``n`` generations closest to the training set (SSCD: highest cosine first; nL2: lowest first).

    Each entry: ``prompt_index``, ``prompt``, ``setting``, ``seed``, ``similarity``, ``nearest_key``,
    ``image`` (relative to the audit folder), ``flagged`` and the detection ``score``. Generations without a
    measured similarity are left out. Ties keep prompt, setting and seed order.
    """
    sign = -1.0 if similarity == "sscd" else 1.0
    gens = [
        {
            "prompt_index": r["index"],
            "prompt": r["prompt"],
            "setting": setting,
            "seed": g["seed"],
            "similarity": float(g["similarity"]),
            "nearest_key": g.get("nearest_key"),
            "image": g["image"],
            "flagged": bool(r["flagged"]),
            "score": r.get("score"),
        }
        for r in prompts
        for setting, entries in r.get("generations", {}).items()
        for g in entries
        if g.get("similarity") is not None
    ]
    return sorted(gens, key=lambda g: sign * g["similarity"])[: max(n, 0)]


def gate_details(section: Mapping[str, Any], results: Sequence[Any]) -> dict[str, Any]:
    """``section`` (:func:`~copyguard.mitigation.audit_gate.gate_section`) with each condition's ``setting``,
    ``metric``, ``op`` and ``threshold`` taken from the matching :class:`GateResult` of ``results``."""
    conditions = []
    for c, r in zip(section["conditions"], results, strict=True):
        cond = r.condition
        conditions.append(
            {**c, "setting": cond.setting, "metric": cond.metric, "op": cond.op, "threshold": cond.value}
        )
    return {**section, "conditions": conditions}


def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def weights_hash(path: str | Path | None) -> dict[str, Any] | None:
    """sha256 over the weights files of ``path`` (a file, or every ``*.safetensors``/``*.bin``/... below a
    folder, in path order; each file's relative path and content enter the hash, read in 1 MiB chunks).

    Returns ``{"sha256", "files", "bytes"}``, or None when ``path`` is not a local file or folder or holds no
    weights file.
    """
    if path is None:
        return None
    root = Path(path)
    files = _weight_files(root)
    if not files:
        return None
    digest, total = hashlib.sha256(), 0
    for f in files:
        rel = f.name if f == root else f.relative_to(root).as_posix()
        digest.update(rel.encode("utf-8") + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
                total += len(chunk)
    return {"sha256": digest.hexdigest(), "files": len(files), "bytes": total}


def _local(value: Any) -> str | None:
    if value is None:
        return None
    p = Path(str(value))
    return str(p) if p.exists() else None


def run_facts(
    identity: Mapping[str, Any],
    config: Mapping[str, Any],
    index_entries: int | None,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The report's ``run`` section (see the module docstring).

    ``identity``: the audit's inputs (``model``, ``lora``, ``index``, ...; paths as strings); ``config``: the
    configuration dump; ``index_entries``: the index's entry count. The model and LoRA hashes are None when
    they are not local paths (a pipeline object passed in).
    """
    model, lora = identity.get("model"), identity.get("lora")
    return {
        "copyguard_version": package_version("copyguard"),
        "date_utc": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": model,
        "model_weights": weights_hash(_local(model)),
        "lora": lora,
        "lora_weights": weights_hash(_local(lora)),
        "index": identity.get("index"),
        "index_entries": index_entries,
        "prompts": identity.get("prompts"),
        "inputs": {k: v for k, v in identity.items() if k not in ("model", "lora", "index", "prompts")},
        "config": dict(config),
        "machine": machine_info(),
    }
