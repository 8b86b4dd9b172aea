"""Job configs: YAML defaults from ``configs/<job>.yaml``, ``--set`` overrides, pydantic validation.

Each stage keeps its jobs' pydantic schemas in one light module (``copyguard.curation.config``,
``copyguard.mitigation.config``, ``copyguard.train.config``, ``copyguard.pipelines.lab.config``). A config
file holds one top-level section named after the job::

    curate:
      minhash:
        threshold: 0.8

and command-line overrides address keys by their dotted path, section included
(``--set curate.minhash.threshold=0.8``). Values are parsed as YAML scalars, so ``0.8`` is a float,
``true`` a bool and ``[2, 5]`` a list. Unknown keys and bad values raise :class:`ConfigError` with a
one-line message that names the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from copyguard.common.errors import ConfigError

__all__ = ["ConfigError", "StrictModel", "apply_overrides", "load_config", "default_config_path"]

M = TypeVar("M", bound=BaseModel)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class StrictModel(BaseModel):
    """Base for every config schema: unknown keys are errors and assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def default_config_path(job: str) -> Path | None:
    """``configs/<job>.yaml`` of the source checkout (or the current directory), when it exists."""
    for base in (Path.cwd() / "configs", CONFIG_DIR):
        path = base / f"{job}.yaml"
        if path.is_file():
            return path
    return None


def _read_yaml(path: Path, section: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not a UTF-8 YAML file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or set(data) != {section}:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"config {path} must have exactly one top-level key '{section}', found {found}")
    body = data[section] or {}
    if not isinstance(body, dict):
        raise ConfigError(f"config {path}: '{section}' must be a mapping")
    return body


def apply_overrides(data: dict[str, Any], overrides: list[str], section: str) -> dict[str, Any]:
    """Apply ``section.a.b=value`` overrides to a nested dict (a copy is returned)."""
    result: dict[str, Any] = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like {section}.key=value")
        parts = key.split(".")
        if parts[0] != section or len(parts) < 2:
            raise ConfigError(f"override key '{key}' must start with '{section}.'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"override {key}: cannot parse value '{raw}'") from None
        node = result
        for name in parts[1:-1]:
            child = node.get(name)
            if child is None:
                child = node[name] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {key}: '{name}' is not a section")
            node = child
        node[parts[-1]] = value
    return result


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def _format_error(exc: ValidationError, section: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in (section, *err["loc"]))
    if err["type"] == "extra_forbidden":
        msg = f"unknown key '{loc}'"
    else:
        given = err.get("input")
        shown = f" (got {given!r})" if given is not None and not isinstance(given, dict) else ""
        msg = f"{loc}: {err['msg']}{shown}"
    more = len(exc.errors()) - 1
    return msg + (f" (and {more} more error{'s' if more > 1 else ''})" if more else "")


def validate(schema: type[M], data: dict[str, Any], section: str) -> M:
    """Validate a plain dict against ``schema``; errors become one-line :class:`ConfigError`."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"config error: {_format_error(exc, section)}") from None


def load_config(
    schema: type[M],
    section: str,
    path: str | Path | None = None,
    overrides: list[str] | None = None,
) -> M:
    """Load ``section`` from ``path`` (default: ``configs/<section>.yaml``), apply overrides, validate.

    Without a file the schema's own defaults are used; the shipped YAML files and the schema defaults are
    kept equal by a test.
    """
    if path is None:
        path = default_config_path(section)
    data = _read_yaml(Path(path), section) if path is not None else {}
    data = apply_overrides(data, list(overrides or []), section)
    return validate(schema, data, section)
