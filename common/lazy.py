"""Lazy public API of a package: names re-exported from submodules, imported on first use (PEP 562).

A stage package lists its public names and where they live; ``import copyguard.curation`` then imports no
submodule (Beam workers must not pay for torch), and ``from copyguard.curation import TrainingIndex``
imports only ``copyguard.curation.index``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, table: str) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``__all__``, a module-level ``__getattr__`` and ``__dir__`` for ``package``.

    ``table`` has one line per submodule, ``module: Name Name ...`` (module relative to ``package``); each
    name is imported from its module on first access and cached in the package. Usage in
    ``copyguard/pkg/__init__.py``::

        __all__, __getattr__, __dir__ = lazy_exports(__name__, \"\"\"
            index: TrainingIndex IndexEntry
        \"\"\")
    """
    exports: dict[str, str] = {}
    for line in filter(None, (ln.strip() for ln in table.splitlines())):
        module, _, names = line.partition(":")
        exports.update(dict.fromkeys(names.split(), f"{package}.{module.strip()}"))

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:  # also lets ``from package import submodule`` fall back to the import system
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return sorted(exports), __getattr__, __dir__
