"""``make mutate``: mutation testing (mutmut 3) of the algorithm modules, one module at a time with its tests.

mutmut 3 copies the code into ``mutants/`` and derives each mutant's name from the file's path, so it needs
the import layout on disk: our setuptools ``package-dir`` mapping (``copyguard.mitigation`` -> ``mitigation/``)
is not. For each module this script therefore builds a stage ``build/mutate/<name>/`` holding
``copyguard/{common,curation,mitigation,train,pipelines}`` (copies), ``tests/``, ``configs/`` and a ``pyproject.toml`` with
a ``[tool.mutmut]`` section (mutate only that module, select only its tests), then runs ``mutmut run`` there.
Inside the stage ``copyguard`` resolves to the copies, since the editable install's finder comes after the
path finder; the repository itself is never modified.

    python tests/mutate.py                      # every module of MODULES (the `make mutate` target)
    python tests/mutate.py magnitude policy     # some modules
    MUTATE_CHILDREN=2 MUTATE_MODULE_TIMEOUT=1800 python tests/mutate.py ...
    MUTATE_RESUME=1 python tests/mutate.py policy   # go on with a stopped run (the stage is kept)

Writes ``build/mutate/summary.json`` (per module: killed, survived, timeout, no tests, seconds) and prints
each survivor's name; ``cd build/mutate/<name> && mutmut show <mutant>`` shows its diff.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "build" / "mutate"
PACKAGES = ("common", "curation", "mitigation", "train", "pipelines")

# module name -> (file to mutate, relative to the repository; its fast tests)
MODULES: dict[str, tuple[str, list[str]]] = {
    "magnitude": (
        "mitigation/magnitude.py",
        ["tests/test_magnitude.py", "tests/test_magnitude_mutants.py", "tests/test_wiring_detection.py"],
    ),
    "detect": ("mitigation/detect.py", ["tests/test_detect.py", "tests/test_wiring_detection.py"]),
    "attribution": ("mitigation/attribution.py", ["tests/test_attribution.py"]),
    "prompt_opt": ("mitigation/prompt_opt.py", ["tests/test_prompt_opt.py"]),
    "guidance": ("mitigation/guidance.py", ["tests/test_guidance.py"]),
    "pipeline_amg": (
        "mitigation/pipeline_amg.py",
        ["tests/test_pipeline_amg.py", "tests/test_amg_wiring.py"],
    ),
    "mem_filter": (
        "train/mem_filter.py",
        ["tests/test_filter_rule.py", "tests/test_train.py", "tests/test_train_filter_wiring.py"],
    ),
    "finetune": ("train/finetune.py", ["tests/test_train_filter_wiring.py", "tests/test_train.py"]),
    "captions": ("curation/captions.py", ["tests/test_captions.py"]),
    "clustering": ("curation/clustering.py", ["tests/test_clustering.py"]),
    "policy": ("curation/policy.py", ["tests/test_policy.py", "tests/test_policy_mutants.py"]),
}

# tests left out of a module's run: they check something else than the mutated module's logic (and a red
# test there would stop mutmut's baseline run)
DESELECT: dict[str, list[str]] = {
    "policy": ["tests/test_policy.py::test_curate_yaml_equals_schema_defaults"],  # configs/curate.yaml
}


def _ignore(_dir: str, names: list[str]) -> set[str]:
    return {n for n in names if n in ("__pycache__", ".pytest_cache", ".hypothesis") or n.endswith(".pyc")}


def build_stage(name: str) -> Path:
    """The stage folder of module ``name`` with its ``[tool.mutmut]`` config."""
    source, tests = MODULES[name]
    stage = STAGE / name
    if os.environ.get("MUTATE_RESUME") and (stage / "mutants").is_dir():
        return stage  # mutmut skips the mutants it has already checked there
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "copyguard").mkdir(parents=True)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, stage / "copyguard" / pkg, ignore=_ignore)
    for folder in ("tests", "configs"):  # the tests read configs/*.yaml
        shutil.copytree(ROOT / folder, stage / folder, ignore=_ignore)
    mutated = f"copyguard/{source}"
    lists = {
        "source_paths": ["copyguard/"],
        "also_copy": ["configs/"],
        "only_mutate": [mutated],
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-x", "-q"]
        + [f"--deselect={t}" for t in DESELECT.get(name, [])],
        "pytest_add_cli_args_test_selection": tests,
    }
    config = "\n[tool.mutmut]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in lists.items())
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (stage / "pyproject.toml").write_text(text + config, encoding="utf-8")
    return stage


def run_module(name: str, children: int, timeout: float) -> dict:
    stage = build_stage(name)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    mutmut = [sys.executable, "-m", "mutmut"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([*mutmut, "run", "--max-children", str(children)], cwd=stage, env=env,
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip
        status = "done" if proc.returncode == 0 else f"mutmut exit {proc.returncode}: {proc.stderr[-600:]}"
    except subprocess.TimeoutExpired:
        status = f"stopped after {timeout:.0f} s"
    seconds = time.perf_counter() - t0
    subprocess.run([*mutmut, "export-cicd-stats"], cwd=stage, env=env, capture_output=True, text=True)
    stats_file = stage / "mutants" / "mutmut-cicd-stats.json"
    stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
    res = subprocess.run([*mutmut, "results"], cwd=stage, env=env, capture_output=True, text=True)
    survivors = [
        ln.split(":")[0].strip() for ln in res.stdout.splitlines() if ln.strip().endswith(": survived")
    ]
    return {"module": MODULES[name][0], "tests": MODULES[name][1], "status": status,
            "seconds": round(seconds, 1), "stats": stats, "survivors": survivors}  # fmt: skip


def main(argv: list[str]) -> int:
    names = argv or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        print(f"unknown module(s) {unknown}; choose from {sorted(MODULES)}", file=sys.stderr)
        return 2
    children = int(os.environ.get("MUTATE_CHILDREN", "2"))
    timeout = float(os.environ.get("MUTATE_MODULE_TIMEOUT", "1800"))
    STAGE.mkdir(parents=True, exist_ok=True)
    summary_path = STAGE / "summary.json"
    for name in names:
        print(f"== {name}: {MODULES[name][0]} with {' '.join(MODULES[name][1])}", flush=True)
        result = run_module(name, children, timeout)
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        summary[name] = result
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        s = result["stats"]
        print(f"   {result['status']} in {result['seconds']} s: "
              + ", ".join(f"{k} {v}" for k, v in s.items()), flush=True)  # fmt: skip
        for m in result["survivors"]:
            print(f"   survived: {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
