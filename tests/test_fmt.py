"""copyguard.common.fmt: the one number and table formatter (exact strings, since docs and reports diff)."""

from __future__ import annotations

import pytest

from copyguard.common.fmt import cell, fixed, html_table, markdown_table, num, pct, text_table


@pytest.mark.parametrize(
    ("value", "digits", "expected"),
    [
        (None, 3, "-"),
        (0.012345, 3, "0.0123"),
        (226.123, 4, "226.1"),
        (123.456, 3, "123"),
        (999.7, 3, "1,000"),  # 3 significant digits would need an exponent
        (1234.5, 4, "1,234"),  # from 1000 on: whole number with separators
        (1_234_567.0, 3, "1,234,567"),
        (3, 3, "3"),
        (1e-5, 2, "1e-05"),
    ],
)
def test_num(value: float | None, digits: int, expected: str) -> None:
    assert num(value, digits) == expected


def test_fixed_and_pct() -> None:
    assert fixed(0.5) == "0.500" and fixed(2, 1) == "2.0" and fixed(1.25, 0) == "1"
    assert fixed(None) == "-" and fixed(None, missing="–") == "–"
    assert fixed(1.5, 1, sign=True) == "+1.5" and fixed(-0.04, 1, sign=True) == "-0.0"
    assert fixed(True) == "True" and fixed("n/a") == "n/a"  # not numbers: as written
    assert pct(62.5) == "62.5" and pct(7.07, 0) == "7" and pct(None) == "-" and pct(3, sign=True) == "+3.0"


def test_cell() -> None:
    assert [cell(v) for v in (None, True, False, 0.98765, 12, "a|b")] == [
        "-",
        "yes",
        "no",
        "0.988",
        "12",
        "a\\|b",
    ]
    assert cell(106.41, 4) == "106.4"


def test_markdown_table() -> None:
    text = markdown_table(["a", "b", "c"], [[1, 0.5, None], ["x|y", True, 2500.0]])
    assert text.splitlines() == [
        "| a | b | c |",
        "|---|---|---|",
        "| 1 | 0.5 | - |",
        "| x\\|y | yes | 2,500 |",
    ]
    assert markdown_table(["only"], []) == "| only |\n|---|"


def test_text_table_aligns_and_formats_floats_only() -> None:
    lines = text_table(["", "p", "pairs"], [["images", 0.91234, 12], ["(none)", None, 7]], widths=(8, 7, 6))
    assert lines == [
        "              p pairs",
        "images    0.912    12",
        "(none)        -     7",
    ]
    assert text_table(["k", "v"], [["a", 1.0]], widths=(2, 6), digits=1) == ["k      v", "a    1.0"]
    with pytest.raises(ValueError, match="2 columns but 3 widths"):
        text_table(["k", "v"], [], widths=(1, 2, 3))


def test_html_table_escapes_and_marks_numeric_columns() -> None:
    assert html_table(("status", "samples"), [("kept", 3), ("a<b", 0.5)]) == (
        "<table><tr><th>status</th><th>samples</th></tr>"
        '<tr><td>kept</td><td class="num">3</td></tr>'
        '<tr><td>a&lt;b</td><td class="num">0.5</td></tr></table>'
    )
    assert 'class="num"' not in html_table(("a",), [("x",)])
