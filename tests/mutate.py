"""``make mutate``: mutation testing (mutmut 3) of the algorithm modules, one module at a time with its tests.

mutmut 3 copies the code into ``mutants/`` and derives each mutant's name from the file's path, so it needs
the import layout on disk: our setuptools ``package-dir`` mapping (``copyguard.mitigation`` -> ``mitigation/``)
is not. For each module this script therefore builds a stage ``build/mutate/<name>/`` holding
``copyguard/{common,curation,mitigation,train,pipelines}`` (copies), ``tests/``, ``configs/`` and a ``pyproject.toml`` with
a ``[tool.mutmut]`` section (mutate only that module, select only its tests), then runs ``mutmut run`` there.
Inside the stage ``copyguard`` resolves to the copies, since the editable install's finder comes after the
path finder; the repository itself is never modified.

    python tests/mutate.py                      # a seeded sample of every module (the `make mutate` target)
    python tests/mutate.py magnitude policy     # some modules
    MUTATE_SAMPLE=0 python tests/mutate.py      # every mutant (hours on 2 cores)
    MUTATE_SAMPLE=40 MUTATE_SEED=3 python tests/mutate.py   # another, larger sample
    MUTATE_CHILDREN=2 MUTATE_MODULE_TIMEOUT=1800 python tests/mutate.py ...
    MUTATE_RESUME=1 python tests/mutate.py policy   # go on with a stopped run (the stage is kept)

The eleven modules hold several thousand mutants, and those of the AMG pipeline and the trainer run tiny
Stable Diffusion models, so checking all of them takes hours on two cores. By default each module is
therefore checked on a simple random sample of ``MUTATE_SAMPLE`` mutants (30), drawn with ``MUTATE_SEED``
(1; seed 0 is the sample the survivors were triaged on) from the names mutmut generated: the killed share of a sample estimates the module's (the summary gives
a 95 % Wilson interval), and another seed checks other mutants.

A survivor is either a missing test or an equivalent mutant (no input can tell it apart). The equivalent
ones are listed in ``tests/mutate_equivalent.json`` by module, function and the changed line (before and
after, whitespace-normalized), with the reason; they leave the denominator. Every other survivor is printed
with its diff and needs a test. Writes ``build/mutate/summary.json`` (per module: the sample, killed,
survived, equivalent, timeout, no tests, seconds); ``cd build/mutate/<name> && mutmut show <mutant>`` shows a
mutant's diff. Exits 1 when the killed share of all sampled modules is below ``MUTATE_MIN_KILLED`` (0.9).
"""

from __future__ import annotations

import ast
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "build" / "mutate"
PACKAGES = ("common", "curation", "mitigation", "train", "pipelines")
EQUIVALENT_FILE = ROOT / "tests" / "mutate_equivalent.json"
_NO_SUCH_MUTANT = "copyguard.no_such_mutant__generate_only"

# module name -> (file to mutate, relative to the repository; its fast tests)
MODULES: dict[str, tuple[str, list[str]]] = {
    "magnitude": (
        "mitigation/magnitude.py",
        [
            "tests/test_magnitude.py",
            "tests/test_magnitude_mutants.py",
            "tests/test_wiring_detection.py",
            "tests/test_filter_rule.py",
        ],  # robust_threshold lives here, its tests there
    ),
    "detect": ("mitigation/detect.py", ["tests/test_detect.py", "tests/test_wiring_detection.py"]),
    "attribution": (
        "mitigation/attribution.py",
        ["tests/test_attribution.py", "tests/test_wiring_detection.py"],
    ),
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
    # the CLI's quiet flag, not the filter or the loop; the filter's resume is checked in test_filter_rule.py
    "mem_filter": ["tests/test_train.py::test_quiet_turns_off_the_training_bar",
                   "tests/test_train.py::test_kill_and_resume_matches_an_uninterrupted_run"],
    "finetune": ["tests/test_train.py::test_quiet_turns_off_the_training_bar"],
}  # fmt: skip


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


def _mutmut(stage: Path, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=stage, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def exit_codes(stage: Path) -> dict[str, int | None]:
    """Every mutant mutmut generated in ``stage``, with its exit code (None: not checked yet)."""
    codes: dict[str, int | None] = {}
    for meta in sorted((stage / "mutants").rglob("*.py.meta")):
        codes.update(json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"])
    return codes


def sample_names(names: list[str], size: int, seed: int, module: str) -> list[str]:
    """A simple random sample of ``size`` mutant names (all when ``size`` is 0 or covers them), the same for
    the same names, size, seed and module."""
    names = sorted(names)
    if size <= 0 or size >= len(names):
        return names
    return sorted(random.Random(f"{seed}:{module}").sample(names, size))


def changed_lines(diff: str) -> tuple[str, str]:
    """The removed and the added lines of a mutant's diff (``mutmut show``), whitespace-normalized: the key
    that names a mutant in ``tests/mutate_equivalent.json`` whatever number mutmut gives it."""

    def norm(sign: str) -> str:
        lines = [ln[1:] for ln in diff.splitlines() if ln.startswith(sign) and not ln.startswith(sign * 3)]
        return " | ".join(re.sub(r"\s+", " ", ln).strip() for ln in lines)

    return norm("-"), norm("+")


def function_of(mutant: str) -> str:
    """``copyguard.curation.policy.x_decide__mutmut_7`` -> ``decide``, ``x__templated`` -> ``_templated``;
    a method (mutmut writes ``x\u01c1Class\u01c1method``) as ``Class.method``."""
    tail = mutant.rsplit(".", 1)[-1].split("__mutmut_")[0]
    if tail.startswith("x\u01c1"):
        return tail[2:].replace("\u01c1", ".")
    return tail.removeprefix("x_")


LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}


def _log_call_lines(source: str) -> set[int]:
    """Line numbers inside a ``log.info(...)``-style call (``log``/``logger``/``_log`` objects)."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in LOG_METHODS
        ):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            if name.lower().lstrip("_") in ("log", "logger"):
                lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def only_logging(source_file: Path, removed: str) -> bool:
    """True when every line a mutant changes lies inside a logging call of ``source_file``: it changes what is
    logged, not what is computed (such mutants are counted apart and leave the denominator)."""
    if not removed:
        return False
    source = source_file.read_text(encoding="utf-8")
    norm = [re.sub(r"\s+", " ", ln).strip() for ln in source.splitlines()]
    inside = _log_call_lines(source)
    for part in removed.split(" | "):
        hits = [i + 1 for i, ln in enumerate(norm) if ln == part]
        if not hits or any(h not in inside for h in hits):
            return False
    return True


def load_equivalent(path: Path = EQUIVALENT_FILE) -> dict[tuple[str, str, str, str], str]:
    """(module, function, removed, added) -> reason, from ``tests/mutate_equivalent.json``. A reason that
    starts with ``CPU:`` marks a mutant that only a CUDA run could tell apart (counted apart)."""
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text(encoding="utf-8"))
    return {(r["module"], r["function"], r["removed"], r["added"]): r["reason"] for r in rows}


def wilson(killed: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """95 % Wilson score interval of a killed share ``killed / n``."""
    if n == 0:
        return None
    p = killed / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return round(centre - half, 3), round(centre + half, 3)


def run_module(name: str, children: int, timeout: float, size: int, seed: int) -> dict:
    from mutmut.stats import status_by_exit_code  # mutmut's names: "killed", "survived", "no tests", ...

    stage = build_stage(name)
    t0 = time.perf_counter()
    status = "done"
    try:
        if not exit_codes(stage):  # generate the mutants and the test stats, check none
            gen = _mutmut(stage, "run", "--max-children", str(children), _NO_SUCH_MUTANT, timeout=timeout)
            if not exit_codes(stage):
                raise RuntimeError(f"mutmut generated no mutants: {gen.stdout[-400:]} {gen.stderr[-600:]}")
        codes = exit_codes(stage)
        chosen = sample_names(list(codes), size, seed, name)
        todo = [m for m in chosen if codes[m] is None] if os.environ.get("MUTATE_RESUME") else chosen
        if todo:
            left = max(timeout - (time.perf_counter() - t0), 1.0)
            proc = _mutmut(stage, "run", "--max-children", str(children), *todo, timeout=left)
            if proc.returncode != 0:
                status = f"mutmut exit {proc.returncode}: {(proc.stdout + proc.stderr)[-600:]}"
    except subprocess.TimeoutExpired:
        status = f"stopped after {timeout:.0f} s"
    seconds = time.perf_counter() - t0
    codes = exit_codes(stage)  # the run's results
    chosen = sample_names(list(codes), size, seed, name)
    equivalent = load_equivalent()
    counts = {"killed": 0, "survived": 0, "equivalent": 0, "log text": 0, "timeout": 0, "no tests": 0,
              "not checked": 0}  # fmt: skip
    survivors, equivalents = [], []
    for m in chosen:
        state = status_by_exit_code[codes[m]]
        if state in ("survived", "no tests"):
            removed, added = changed_lines(_mutmut(stage, "show", m).stdout)
            reason = equivalent.get((name, function_of(m), removed, added))
            if only_logging(ROOT / MODULES[name][0], removed):
                state = "log text"
            elif reason is not None:
                state = "equivalent"
                equivalents.append({"mutant": m, "reason": reason})
            else:
                survivors.append({"mutant": m, "function": function_of(m), "removed": removed, "added": added,
                                  "state": state})  # fmt: skip
        counts[state] = counts.get(state, 0) + 1
    # a timeout kills (the mutant hangs the code); a survivor or an untested mutant does not
    killed = counts["killed"] + counts["timeout"]
    judged = len(chosen) - counts["equivalent"] - counts["log text"] - counts["not checked"]
    return {"module": MODULES[name][0], "tests": MODULES[name][1], "status": status,
            "seconds": round(seconds, 1), "mutants": len(codes), "sample": len(chosen), "seed": seed,
            "counts": counts, "killed_share": round(killed / judged, 3) if judged else None,
            "killed_ci95": wilson(killed, judged), "survivors": survivors,
            "equivalent": equivalents}  # fmt: skip


def main(argv: list[str]) -> int:
    names = argv or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        print(f"unknown module(s) {unknown}; choose from {sorted(MODULES)}", file=sys.stderr)
        return 2
    children = int(os.environ.get("MUTATE_CHILDREN", "2"))
    timeout = float(os.environ.get("MUTATE_MODULE_TIMEOUT", "1800"))
    size = int(os.environ.get("MUTATE_SAMPLE", "30"))
    seed = int(os.environ.get("MUTATE_SEED", "1"))
    STAGE.mkdir(parents=True, exist_ok=True)
    summary_path = STAGE / "summary.json"
    for name in names:
        print(f"== {name}: {MODULES[name][0]} with {' '.join(MODULES[name][1])}", flush=True)
        result = run_module(name, children, timeout, size, seed)
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        summary[name] = result
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        c = result["counts"]
        print(f"   {result['status']} in {result['seconds']} s: {result['sample']} of {result['mutants']} mutants, "
              + ", ".join(f"{k} {v}" for k, v in c.items() if v)
              + f"; killed {result['killed_share']} (95 % CI {result['killed_ci95']})", flush=True)  # fmt: skip
        for m in result["survivors"]:
            print(f"   {m['state']}: {m['mutant']}\n      - {m['removed']}\n      + {m['added']}")
    summary = json.loads(summary_path.read_text())
    killed = sum(r["counts"]["killed"] + r["counts"]["timeout"] for n, r in summary.items() if n in names)
    judged = sum(
        r["sample"] - r["counts"]["equivalent"] - r["counts"].get("log text", 0) - r["counts"]["not checked"]
        for n, r in summary.items()
        if n in names
    )
    goal = float(os.environ.get("MUTATE_MIN_KILLED", "0.9"))
    if not judged:
        return 0
    share = killed / judged
    print(f"== all: killed {killed} of {judged} non-equivalent sampled mutants ({share:.1%}, "
          f"95 % CI {wilson(killed, judged)}); goal {goal:.0%}")  # fmt: skip
    return 0 if share >= goal else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
