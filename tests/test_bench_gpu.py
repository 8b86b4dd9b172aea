"""``benchmarks/bench_gpu.py``: the namespace bootstrap, and ``--smoke`` (every section at toy size on the CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A Python without the editable install's finders: copyguard must come from bench_gpu's bootstrap.
_NO_EDITABLE = """
import importlib.util, sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in (type(f).__module__ + repr(f)).lower()]
sys.path_hooks[:] = [h for h in sys.path_hooks if "editable" not in repr(h).lower()]
sys.path[:] = [p for p in sys.path if "__editable__" not in p]
sys.path_importer_cache.clear()
sys.modules.pop("copyguard", None)
try:
    found = importlib.util.find_spec("copyguard.common") is not None
except ModuleNotFoundError:
    found = False
assert not found, "copyguard still importable without the editable install"
"""


def test_bootstrap_links_the_namespace(tmp_path: Path) -> None:
    code = _NO_EDITABLE + textwrap.dedent(
        """
        import os
        from benchmarks.bench_gpu import bootstrap
        tmp = bootstrap()
        assert tmp and tmp in os.environ["PYTHONPATH"].split(os.pathsep)
        import copyguard.common.runtime, copyguard.curation.records, copyguard.pipelines.lab
        assert bootstrap() is None  # now importable: nothing more to do
        print(copyguard.common.runtime.__file__)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(os.path.join("common", "runtime.py"))


def test_section_params_cover_every_section() -> None:
    from benchmarks.bench_gpu import BUDGETS, SECTION_FUNCS, SECTIONS, section_params

    assert set(SECTIONS) == set(SECTION_FUNCS) == set(BUDGETS)
    assert sum(BUDGETS.values()) <= 420  # 8 minutes with imports and the wheel install
    for name in SECTIONS:
        assert section_params(name, True, "cpu")["smoke"] is True
        assert section_params(name, False, "cuda")["device"] == "cuda"


def _numbers(node: object) -> int:
    if isinstance(node, bool):
        return 0
    if isinstance(node, (int, float)):
        return 1
    if isinstance(node, dict):
        return sum(_numbers(v) for v in node.values())
    if isinstance(node, list):
        return sum(_numbers(v) for v in node)
    return 0


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_smoke_records_every_section(tmp_path: Path) -> None:
    """``--smoke`` from a Python without the editable install (the bootstrap path the GPU machine takes)."""
    from benchmarks.bench_gpu import SECTIONS

    code = _NO_EDITABLE + textwrap.dedent(
        f"""
        from benchmarks.bench_gpu import main
        sys.exit(main(["--smoke", "--machine", "smoke-test", "--out", {str(tmp_path / "results")!r}]))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1450)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "results" / "smoke-test" / "bench_gpu.json").read_text())
    assert result["smoke"] is True and result["machine"]["tag"] == "smoke-test"
    assert result["bootstrap"], "the smoke run should have linked the namespace itself"
    sections = result["sections"]
    assert set(sections) == set(SECTIONS)
    for name, rec in sections.items():
        assert rec["status"] == "ok", (name, rec.get("status"), rec.get("traceback"))
        assert _numbers(rec) > 3, name
    s = result["summary"]
    for key in ("lab_unet_steps_per_s", "detect_ms_per_prompt_float32_batch1", "amg_gated_unflagged_vs_plain",
                "amg_memorized_vs_plain", "filter_batched_vs_none", "knn_1e6_faiss_cpu_s",
                "sscd_onnxruntime_cpu_images_per_s"):  # fmt: skip
        assert isinstance(s[key], (int, float)), key
    assert s["lab_memorization_evaluated"] is True
    assert sections["faiss_1e6"]["torch_cpu"]["float32"]["planted_pair_recall_at_k"] > 0.9
    assert sections["sd15_amg"]["runs"][0]["details"]["amg_gated_unique"]["flagged"] is False  # gate above it
    assert isinstance(sections["embedder"]["torch"]["float32"]["model_only_320px"]["images_per_s"], float)
