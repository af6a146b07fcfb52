"""Text renderings WAL-G users know: tabwriter tables, go-pretty boxes, RFC 850 times."""

from __future__ import annotations

from collections.abc import Sequence

from walg.core.gotime import GoTime


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
    """go-pretty's default style with a 0-based ``#`` column; headers upper-cased."""
    all_headers = ["#", *[h.upper() for h in headers]]
    body = [[str(i), *row] for i, row in enumerate(rows)]
    widths = [len(h) for h in all_headers]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str], numeric_first: bool) -> str:
        out = []
        for i, cell in enumerate(cells):
            text = cell.rjust(widths[i]) if (i == 0 and numeric_first) else cell.ljust(widths[i])
            out.append(f" {text} ")
        return "|" + "|".join(out) + "|"

    lines = [sep, line(all_headers, False), sep]
    lines.extend(line(row, True) for row in body)
    lines.append(sep)
    return "\n".join(lines) + "\n"


def rfc850(value: GoTime | None) -> str:
    if value is None or value.ns == 0:
        return "-"
    return value.utc().to_datetime().strftime("%A, %d-%b-%y %H:%M:%S UTC")
