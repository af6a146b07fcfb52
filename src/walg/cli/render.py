"""Text renderings WAL-G users know: tabwriter tables, go-pretty boxes, RFC 850 times."""

from __future__ import annotations

import json
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
    other columns are left-aligned.
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

    lines = [sep, line(head), sep, *(line(row) for row in body), sep]
    return "\n".join(lines) + "\n"


def go_json(doc: Any) -> str:
    """``json.Marshal``'s shape: one line, no spaces, UTF-8 kept."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


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
    if value is None or value.ns == 0:
        return "-"
    return value.utc().to_datetime().strftime("%A, %d-%b-%y %H:%M:%S UTC")
