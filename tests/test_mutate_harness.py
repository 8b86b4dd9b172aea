"""``make mutate``'s harness (tests/mutate.py): the seeded sample, the key of an equivalent mutant, the
log-only classification, the interval; these decide the figures in docs/testing.md."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("mutate_harness", ROOT / "tests" / "mutate.py")
mutate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mutate)

NAMES = [f"copyguard.curation.policy.x_decide__mutmut_{i}" for i in range(1, 201)]


def test_the_sample_is_seeded_sized_and_drawn_from_all_names() -> None:
    a = mutate.sample_names(NAMES, 30, 0, "policy")
    assert a == mutate.sample_names(
        list(reversed(NAMES)), 30, 0, "policy"
    )  # order of the names is irrelevant
    assert len(set(a)) == 30 and set(a) <= set(NAMES)
    assert a != mutate.sample_names(NAMES, 30, 1, "policy")
    assert a != mutate.sample_names(NAMES, 30, 0, "detect")
    assert mutate.sample_names(NAMES, 0, 0, "policy") == sorted(NAMES)  # 0: every mutant
    assert mutate.sample_names(NAMES[:5], 30, 0, "policy") == sorted(NAMES[:5])
    late = {int(n.rsplit("_", 1)[1]) for n in mutate.sample_names(NAMES, 100, 0, "policy")}
    assert min(late) <= 20 and max(late) >= 180  # not the first names only


def test_equivalent_mutants_are_keyed_by_function_and_changed_lines() -> None:
    diff = (
        "--- copyguard/curation/policy.py\n+++ copyguard/curation/policy.py\n@@ -1,3 +1,3 @@\n"
        " def _templated(keys):\n-    if key  < best:\n+    if key <= best:\n         pass\n"
    )
    assert mutate.changed_lines(diff) == ("if key < best:", "if key <= best:")
    assert mutate.function_of("copyguard.curation.policy.x__templated__mutmut_24") == "_templated"
    assert mutate.function_of("copyguard.curation.policy.x_decide__mutmut_7") == "decide"
    assert (
        mutate.function_of("copyguard.mitigation.detect.x\u01c1Detector\u01c1score__mutmut_10")
        == "Detector.score"
    )
    rows = json.loads((ROOT / "tests" / "mutate_equivalent.json").read_text(encoding="utf-8"))
    for row in rows:
        assert row["module"] in mutate.MODULES and row["reason"] and row["removed"] != row["added"]


def test_only_mutants_inside_logging_calls_count_as_log_text(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "import logging\nlog = logging.getLogger(__name__)\n\n"
        "def f(x):\n"
        "    y = x + 1\n"
        "    log.info(\n"
        '        "got %d",\n'
        "        y,\n"
        "    )\n"
        "    return (\n"
        "        y,\n"
        "    )\n",
        encoding="utf-8",
    )
    assert mutate.only_logging(src, '"got %d",')
    assert not mutate.only_logging(src, "y = x + 1")
    assert not mutate.only_logging(src, "y,")  # also the returned tuple: not only logging
    assert not mutate.only_logging(src, "")


@pytest.mark.parametrize(("killed", "n"), [(27, 30), (30, 30), (0, 10)])
def test_wilson_interval_brackets_the_share(killed: int, n: int) -> None:
    lo, hi = mutate.wilson(killed, n)
    assert 0 <= lo <= killed / n <= hi <= 1 and hi - lo < 0.5
    assert mutate.wilson(0, 0) is None
