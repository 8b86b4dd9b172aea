"""Number and table formatting shared by every stage: reports, CLI output and the generated docs.

One place decides how a figure is written: :func:`num` (significant digits, large values with thousands
separators), :func:`fixed` (a fixed number of decimals), :func:`pct` (a percentage already in 0-100),
:func:`cell` (any table value: missing, yes/no, number or text), :func:`markdown_table` and
:func:`text_table` (fixed-width columns for a terminal) and :func:`html_table`. A missing value (``None``) is written as ``-``
unless the caller names another mark.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

__all__ = ["MISSING", "cell", "fixed", "html_table", "markdown_table", "num", "pct", "text_table"]

MISSING = "-"


def num(value: float | int | None, digits: int = 3, *, missing: str = MISSING) -> str:
    """``value`` to ``digits`` significant digits (``0.012345`` -> ``0.0123`` at 3); from 1000 on, or
    when the digits would need an exponent, a whole number with thousands separators (``1234.5`` ->
    ``1,234``)."""
    if value is None:
        return missing
    text = f"{value:.{digits}g}"
    return f"{value:,.0f}" if abs(value) >= 1000 or "e+" in text else text


def fixed(value: Any, digits: int = 3, *, missing: str = MISSING, sign: bool = False) -> str:
    """A number with ``digits`` decimals (``sign``: always with ``+``/``-``); other values as ``str``."""
    if value is None:
        return missing
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
    return str(value)


def pct(value: float | None, digits: int = 1, *, missing: str = MISSING, sign: bool = False) -> str:
    """A percentage already scaled to 0-100, with ``digits`` decimals and no ``%`` sign."""
    return fixed(None if value is None else float(value), digits, missing=missing, sign=sign)


def cell(value: Any, digits: int = 3) -> str:
    """A table cell: ``-`` for None, ``yes``/``no`` for booleans, floats by :func:`num`, other values as
    text with ``|`` escaped (so a cell never splits a Markdown row)."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return num(value, digits)
    return str(value).replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A GitHub Markdown table; each value goes through :func:`cell` (strings are kept as written)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], widths: Sequence[int], digits: int = 3
) -> list[str]:
    """Fixed-width plain-text lines: the first column left-aligned, the others right-aligned, floats with
    ``digits`` decimals (:func:`fixed`), None as ``-``. ``widths`` gives each column's width."""
    if not len(header) == len(widths):
        raise ValueError(f"{len(header)} columns but {len(widths)} widths")

    def line(values: Sequence[Any]) -> str:
        texts = [fixed(v, digits) if isinstance(v, float) or v is None else str(v) for v in values]
        first = f"{texts[0]:{widths[0]}}"
        return first + "".join(f"{t:>{w}}" for t, w in zip(texts[1:], widths[1:], strict=True))

    return [line(header), *(line(row) for row in rows)]


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric_from: int = 1) -> str:
    """An HTML ``<table>``, every header and value escaped; the cells of columns ``numeric_from`` and later
    carry ``class="num"`` (right-aligned by the page's style). Floats go through :func:`num`."""

    def text(value: Any) -> str:
        return html.escape(num(value) if isinstance(value, float) else str(value), quote=True)

    head = "".join(f"<th>{text(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{text(v)}</td>' if i >= numeric_from else f"<td>{text(v)}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"
