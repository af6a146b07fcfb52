"""Logging to stderr in WAL-G's shape: ``LEVEL: 2006/01/02 15:04:05.000000 message``."""

from __future__ import annotations

import sys

from walg.core import log


def threshold(level_name: str) -> int:
    """The lowest level shown for ``WALG_LOG_LEVEL``, as WAL-G's logger (tracelog.Setup) has
    it: ERROR shows errors only, NORMAL adds information and warnings, DEVEL debug lines. A
    command's failure is written apart from the log (walg.cli.main) and shows at every level.
    DEBUG and QUIET are walg's other names for DEVEL and ERROR."""
    if level_name in ("DEVEL", "DEBUG"):
        return log.DEBUG
    if level_name in ("ERROR", "QUIET"):
        return log.ERROR
    return log.INFO


def setup(level_name: str) -> None:
    import logging

    class _Formatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            import time

            stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(record.created))
            micros = int((record.created % 1) * 1_000_000)
            level = {"WARNING": "WARNING", "CRITICAL": "ERROR"}.get(
                record.levelname, record.levelname
            )
            text = f"{level}: {stamp}.{micros:06d} {record.getMessage()}"
            if record.exc_info:
                text += "\n" + self.formatException(record.exc_info)
            return text

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(threshold(level_name))


def setup_lazily(level_name: str) -> None:
    """Like :func:`setup`, deferred until walg first logs something at an enabled level."""
    log.configure_lazily(threshold(level_name), lambda: setup(level_name))
