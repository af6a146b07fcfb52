"""Logging to stderr in WAL-G's shape: ``LEVEL: 2006/01/02 15:04:05.000000 message``."""

from __future__ import annotations

import logging
import sys
import time


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(record.created))
        micros = int((record.created % 1) * 1_000_000)
        level = {"WARNING": "WARNING", "CRITICAL": "ERROR"}.get(record.levelname, record.levelname)
        text = f"{level}: {stamp}.{micros:06d} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup(level_name: str) -> None:
    level = logging.DEBUG if level_name in ("DEVEL", "DEBUG") else logging.INFO
    if level_name in ("ERROR", "QUIET"):
        level = logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
