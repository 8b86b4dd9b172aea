"""Fuzzing the prompt-file readers (issue 16): any bytes under a .txt, .jsonl or .csv name give prompt records
or a one-line :class:`UsageError`, never another exception.

Bounded and seeded in ``make test``; ``make fuzz`` (``COPYGUARD_FUZZ_EXAMPLES``) runs a longer one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from copyguard.common.errors import UsageError
from copyguard.mitigation.prompts import PromptRecord, read_prompt_file

EXAMPLES = int(os.environ.get("COPYGUARD_FUZZ_EXAMPLES", "60"))

# Pieces that reach the readers' branches: headers, separators, quotes, JSON fragments, labels, BOM, NUL.
PIECES = st.sampled_from(
    [
        "prompt",
        "caption",
        "label",
        "memorized",
        "group",
        ";Caption;URL",
        ",",
        ";",
        "\t",
        '"',
        "\n",
        "\r\n",
        "{",
        "}",
        '{"prompt": "a cat"}',
        '{"prompt": 3}',
        '{"label": "x"}',
        "[1, 2]",
        "null",
        "true",
        "0",
        "1",
        "-1",
        "nan",
        "a photo of a dog",
        "\ufeff",
        "\x00",
        "é",
        " ",
    ]
)
TEXT = st.one_of(st.lists(PIECES, max_size=30).map("".join), st.text(max_size=200))
PAYLOAD = st.one_of(TEXT.map(lambda s: s.encode("utf-8", "surrogatepass")), st.binary(max_size=200))


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(payload=PAYLOAD, suffix=st.sampled_from([".txt", ".jsonl", ".csv", ".TXT", ".json", ""]))
def test_prompt_files_give_records_or_one_line_usage_errors(payload: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"prompts{suffix}"
        path.write_bytes(payload)
        try:
            records = read_prompt_file(path)
        except UsageError as exc:
            assert "\n" not in str(exc) and str(exc), repr(exc)
            return
        assert records and all(isinstance(r, PromptRecord) and isinstance(r.prompt, str) for r in records)
