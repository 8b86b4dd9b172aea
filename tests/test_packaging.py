"""The wheel installs one namespace, ``copyguard``, and the code imports only through it."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ("common", "curation", "mitigation", "train", "pipelines")
# Which subpackage may import which (curation <- mitigation <- train <- pipelines); every stage may import
# the shared basics in ``common``, which imports none of them.
ALLOWED = {
    "common": {"common"},
    "curation": {"common", "curation"},
    "mitigation": {"common", "curation", "mitigation"},
    "train": {"common", "curation", "mitigation", "train"},
    "pipelines": {"common", "curation", "mitigation", "train", "pipelines"},
}


def _python_files(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> list[tuple[int, str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.module or "", node.level))
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(out),
        str(ROOT),
    ]
    subprocess.run(cmd, check=True, capture_output=True, cwd=out)
    wheels = list(out.glob("copyguard-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_holds_only_the_copyguard_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    meta = {t for t in top if t.endswith(".dist-info")}
    assert top - meta == {"copyguard"}, f"unexpected top-level entries: {sorted(top - meta)}"
    for forbidden in CODE_DIRS:
        assert not any(n.startswith(f"{forbidden}/") for n in names)


def test_wheel_includes_every_nested_package(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in CODE_DIRS:
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.relative_to(ROOT).as_posix()
            assert f"copyguard/{rel}" in names, f"{rel} missing from the wheel"
    assert "copyguard/pipelines/cli.py" in names


def test_no_bare_or_relative_imports_of_our_folders() -> None:
    offenders = []
    for folder in CODE_DIRS + ("tests",):
        for path in _python_files(folder):
            for line, module, level in _imports(path):
                head = module.split(".", 1)[0]
                if level:
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: relative import")
                elif head in CODE_DIRS:
                    offenders.append(
                        f"{path.relative_to(ROOT)}:{line}: import {module} (use copyguard.{module})"
                    )
    assert not offenders, "\n".join(offenders)


def test_dependencies_point_one_way() -> None:
    offenders = []
    for folder in CODE_DIRS:
        for path in _python_files(folder):
            for line, module, _ in _imports(path):
                parts = module.split(".")
                if parts[0] == "copyguard" and len(parts) > 1 and parts[1] not in ALLOWED[folder]:
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {folder} imports {module}")
                if folder == "curation" and parts[0] in ("apache_beam", "diffusers", "accelerate", "peft"):
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: curation imports {module}")
    assert not offenders, "\n".join(offenders)


def test_ruff_bans_bare_imports(tmp_path: Path) -> None:
    """The lint rule (TID251 banned-api) flags ``import train`` in a file under the project config."""
    probe = ROOT / "tests" / "_probe_banned_import.py"
    probe.write_text("import train\nfrom pipelines import cli\n")
    try:
        res = subprocess.run(
            [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "TID251", str(probe)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
    finally:
        probe.unlink()
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stdout.count("TID251") == 2, res.stdout


def _module_graph() -> dict[str, set[str]]:
    """copyguard module -> the copyguard modules it imports, at any level (deferred imports in functions
    count: a cycle hidden in a function body is still a cycle)."""
    modules: dict[str, Path] = {}
    for folder in CODE_DIRS:
        for path in _python_files(folder):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            modules[".".join(["copyguard", folder, *parts])] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
                graph[name].add(node.module)
                graph[name] |= {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names} & modules.keys()
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    """No two copyguard modules import each other, directly or through others, even from a function body
    (package ``__init__`` re-exports are lazy and do not import their submodules)."""
    assert _cycles(_module_graph()) == []
