"""Prompts: encoding with a pipeline's tokenizer and text encoder, and reading prompt files.

Prompt files (``copyguard detect --prompts`` / ``generate --prompts``):

- ``.txt``: one prompt per line; blank lines are skipped.
- ``.jsonl``: one JSON object per line with a ``prompt`` or ``caption`` string; optional ``label`` or
  ``memorized`` (bool, 0/1, "true"/"false") and ``group`` (string or number).
- ``.csv``: a header row with a ``Caption`` or ``prompt`` column (any case), ``;`` or ``,`` separated (the
  separator is read off the header), optional ``label``/``memorized`` and ``group`` columns, as in the
  shared LAION/COCO prompt sets (``;Caption;URL;...``).

Malformed files raise :class:`~copyguard.common.errors.UsageError` with a one-line message that names the
file and, where it applies, the line.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from copyguard.common.errors import UsageError

__all__ = ["PromptRecord", "encode_prompts", "read_prompt_file", "tokenize_prompts"]

PROMPT_KEYS = ("prompt", "caption")
LABEL_KEYS = ("label", "memorized")
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


@dataclass(frozen=True)
class PromptRecord:
    """One prompt, with an optional 0/1 label (1 = memorized) and an optional group name."""

    prompt: str
    label: int | None = None
    group: str | None = None


# --------------------------------------------------------------------------------------------- encoding
def _parts(pipe_or_pair: Any) -> tuple[Any, Any]:
    if isinstance(pipe_or_pair, (tuple, list)):
        tokenizer, text_encoder = pipe_or_pair
        return tokenizer, text_encoder
    return pipe_or_pair.tokenizer, pipe_or_pair.text_encoder


def tokenize_prompts(tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids [B, max_length], padded and truncated exactly as diffusers' SD pipelines do."""
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode_prompts(
    pipe_or_pair: Any, prompts: Sequence[str], device: torch.device | str | None = None
) -> torch.Tensor:
    """Text embeddings [B, 77, D] of ``prompts`` (``""`` gives ``e_0``), equal to the pipeline's own.

    ``pipe_or_pair`` is a ``StableDiffusionPipeline``-like object or a ``(tokenizer, text_encoder)`` pair.
    Mirrors ``StableDiffusionPipeline.encode_prompt`` without CLIP skip: last hidden state, attention mask
    only when the text encoder's config asks for one, output in the encoder's dtype on ``device``
    (default: the encoder's device). Gradients are not disabled here; wrap in ``torch.no_grad()``.
    """
    tokenizer, text_encoder = _parts(pipe_or_pair)
    enc_device = next(text_encoder.parameters()).device
    device = torch.device(device) if device is not None else enc_device
    text = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = text.attention_mask.to(enc_device)
    emb = text_encoder(text.input_ids.to(enc_device), attention_mask=mask)[0]
    return emb.to(device=device, dtype=text_encoder.dtype)


# ------------------------------------------------------------------------------------------------ files
def _label(value: Any, where: str) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return int(value.strip().lower() in _TRUE)
    raise UsageError(f"{where}: label must be 0/1 or true/false, got {value!r}")


def _group(value: Any, where: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value).strip()
    raise UsageError(f"{where}: group must be a string or an integer, got {value!r}")


def _prompt(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{where}: prompt must be a string, got {type(value).__name__}")
    if not value.strip():
        raise UsageError(f"{where}: empty prompt")
    return value.strip()


def _read_txt(text: str, name: str) -> list[PromptRecord]:
    return [PromptRecord(line.strip()) for line in text.splitlines() if line.strip()]


def _read_jsonl(text: str, name: str) -> list[PromptRecord]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise UsageError(f"{where}: expected a JSON object, got {type(row).__name__}")
        key = next((k for k in PROMPT_KEYS if k in row), None)
        if key is None:
            raise UsageError(f"{where}: no 'prompt' or 'caption' field")
        label_key = next((k for k in LABEL_KEYS if k in row), None)
        records.append(
            PromptRecord(
                _prompt(row[key], where),
                _label(row.get(label_key) if label_key else None, where),
                _group(row.get("group"), where),
            )
        )
    return records


def _read_csv(text: str, name: str) -> list[PromptRecord]:
    header = text.splitlines()[0]
    delimiter = ";" if header.count(";") >= max(header.count(","), 1) else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        columns = [c.strip().lower() for c in next(reader)]
    except csv.Error as exc:
        raise UsageError(f"{name}:1: malformed CSV header ({exc})") from None
    col = next((columns.index(k) for k in PROMPT_KEYS if k in columns), None)
    if col is None:
        raise UsageError(f"{name}: no 'Caption' or 'prompt' column in the header (separator '{delimiter}')")
    label_col = next((columns.index(k) for k in LABEL_KEYS if k in columns), None)
    group_col = columns.index("group") if "group" in columns else None
    records = []
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            where = f"{name}:{reader.line_num}"
            if len(row) <= col:
                raise UsageError(f"{where}: {len(row)} fields, the prompt column is field {col + 1}")

            def cell(i: int | None, row: list[str] = row) -> str | None:
                return row[i] if i is not None and i < len(row) else None

            records.append(
                PromptRecord(
                    _prompt(row[col], where), _label(cell(label_col), where), _group(cell(group_col), where)
                )
            )
    except csv.Error as exc:
        raise UsageError(f"{name}:{reader.line_num}: malformed CSV ({exc})") from None
    return records


_READERS = {".txt": _read_txt, ".jsonl": _read_jsonl, ".csv": _read_csv}


def read_prompt_file(path: str | Path) -> list[PromptRecord]:
    """Prompts of a ``.txt`` / ``.jsonl`` / ``.csv`` file (see the module docstring), in file order."""
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise UsageError(f"prompt file {path}: unknown extension '{path.suffix}' (use .txt, .jsonl or .csv)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"prompt file {path} not found") from None
    except UnicodeDecodeError:
        raise UsageError(f"prompt file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"cannot read prompt file {path}: {exc.strerror or exc}") from None
    if not text.strip():
        raise UsageError(f"prompt file {path} is empty")
    records = reader(text, str(path))
    if not records:
        raise UsageError(f"prompt file {path} has no prompts")
    return records
