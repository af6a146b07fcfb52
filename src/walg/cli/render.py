"""Text renderings WAL-G users know: tabwriter tables, go-pretty boxes, RFC 850 times."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from walg.core.gotime import GoTime

if TYPE_CHECKING:
    from walg.ops.backup_list import BackupListing


def tabwriter(rows: Sequence[Sequence[str]]) -> str:
    """Go's text/tabwriter with minwidth 0, padding 1, space padding: cells left-aligned."""
    if not rows:
        return ""
    widths = [0] * max(len(r) for r in rows)
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i] + 1) for i, cell in enumerate(row[:-1])]
        lines.append("".join(cells) + row[-1])
    return "\n".join(lines) + "\n"


def box_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """go-pretty's default style with a 0-based ``#`` column, as ``backup-list --pretty``."""
    return pretty_table(["#", *headers], [[i, *row] for i, row in enumerate(rows)])


class Number(str):
    """A table cell that go-pretty treats as a number (right-aligned) but prints as text."""

    __slots__ = ()


Cell = str | int


def pretty_table(headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    """go-pretty's ``StyleDefault`` table without auto-index, as WAL-G renders it.

    Headers are upper-cased. A column whose data cells are all numbers (``int`` or
    :class:`Number`; vacuously so when there are no rows) is right-aligned, header included;
    other columns are left-aligned. A table without rows is border, header, border.
    """
    head = [h.upper() for h in headers]
    body = [[str(c) for c in row] for row in rows]
    numeric = [all(isinstance(row[i], int | Number) for row in rows) for i in range(len(head))]
    widths = [len(h) for h in head]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            text = cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i])
            out.append(f" {text} ")
        return "|" + "|".join(out) + "|"

    # Without data rows go-pretty (v6.7.6 on, as in WAL-G v3.0.9) draws no separator under
    # the header: the bottom border follows it.
    lines = [sep, line(head), *([sep, *(line(row) for row in body)] if body else []), sep]
    return "\n".join(lines) + "\n"


# What Go's encoding/json escapes beyond what Python's json does with ensure_ascii=False:
# <, > and & (HTML-safe output, the default of json.Marshal and of json.Encoder without
# SetEscapeHTML(false)) and U+2028/U+2029 (always). These characters occur only inside strings
# of the JSON text, so replacing them afterwards cannot touch its structure.
_GO_ESCAPES = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def _dumps(doc: Any, indent: int | None) -> str:
    if indent is None:
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return json.dumps(
        doc, indent=indent, separators=(",", ": "), ensure_ascii=False, allow_nan=False
    )


def _without_non_finite(doc: Any) -> Any:
    """``doc`` with every NaN / Infinity float replaced by its name as a string."""
    if isinstance(doc, float) and not math.isfinite(doc):
        return repr(doc).replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(doc, dict):
        return {k: _without_non_finite(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_without_non_finite(v) for v in doc]
    return doc


def go_json(doc: Any, indent: int | None = None) -> str:
    """Go's encoding/json text, without the final newline ``Encoder.Encode`` adds.

    Compact (``json.Marshal``, ``Encoder.Encode``) or, with ``indent``, as ``SetIndent("",
    " " * indent)``; UTF-8 kept, HTML characters escaped (see ``_GO_ESCAPES``).
    """
    try:
        text = _dumps(doc, indent)
    except ValueError:
        # NaN or Infinity, which walg before 2026-11 stored from WALG_SENTINEL_USER_DATA: not
        # JSON, so no reader of this output could load them; Go has no such numbers either.
        text = _dumps(_without_non_finite(doc), indent)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate reaches a Python string only from a "\ud800"-style escape in a
        # document; Go decodes that to U+FFFD, and it could not be written as UTF-8 anyway.
        text = "".join("\ufffd" if 0xD800 <= ord(c) < 0xE000 else c for c in text)
    return text.translate(_GO_ESCAPES)


def backup_doc(item: BackupListing) -> dict[str, Any]:
    """One backup as ``backup-list --json --detail`` shows it."""
    doc: dict[str, Any] = {
        "backup_name": item.ref.name,
        "time": item.ref.modified.utc().format(),
        "wal_file_name": item.ref.wal_file_name,
        "storage_name": "default",
    }
    if item.metadata is not None:
        doc.update(item.metadata.to_json())
    return doc


def rfc850(value: GoTime | None) -> str:
    """Go's ``Format(time.RFC850)`` as WAL-G's ``PrettyFormatTime``: ``-`` for the zero time.

    The time is shown in its own offset; Go names a parsed non-UTC offset ``-0700``-style.
    """
    if value is None or value.is_zero:
        return "-"
    zone = "UTC"
    if value.offset:
        minutes = abs(value.offset) // 60
        zone = f"{'-' if value.offset < 0 else '+'}{minutes // 60:02d}{minutes % 60:02d}"
    return value.to_datetime().strftime("%A, %d-%b-%y %H:%M:%S ") + zone


def rfc3339(value: GoTime | None) -> str:
    """Go's ``Format(time.RFC3339)`` as WAL-G's ``FormatTime``: ``-`` for the zero time."""
    if value is None or value.is_zero:
        return "-"
    return value.format_rfc3339()
