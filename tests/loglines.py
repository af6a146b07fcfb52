"""walg's log lines as tests read them: WAL-G's shape, ``LEVEL: 2006/01/02 15:04:05.000000
message``, for the log's records and a command's failure line alike (walg.core.log.line)."""

from __future__ import annotations

import re

STAMP = r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6}"

_DATED = re.compile(rf"\b(DEBUG|INFO|WARNING|ERROR): {STAMP} ")


def undated(text: str) -> str:
    """``text`` with the date and time taken out of each of walg's lines (``ERROR: message``),
    for a test that looks for a message whatever the time."""
    return _DATED.sub(r"\1: ", text)
