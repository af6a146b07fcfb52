"""Logging to stderr in WAL-G's shape: ``LEVEL: 2006/01/02 15:04:05.000000 message``.

With ``WALG_LOG_DESTINATION`` stderr itself is that file (:func:`log_to`), so the one-line
errors and the detached helpers' logs land there too; a resident daemon opens it again when
logrotate has moved it (:func:`log_to` once more, on SIGUSR1 or SIGHUP).
"""

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
            level = {"WARNING": "WARNING", "CRITICAL": "ERROR"}.get(
                record.levelname, record.levelname
            )
            text = log.line(level, record.getMessage(), record.created)
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


def log_to(path: str) -> None:
    """Make the file ``path`` this process's stderr, appended to (``WALG_LOG_DESTINATION``).

    WAL-G writes its whole log there, errors included, and none to stderr; so does walg,
    whose log and one-line errors all go to stderr, as do those of the detached helpers
    it starts. A file that cannot be opened fails the command, as in WAL-G. Called again
    (a daemon told that logrotate moved the file), it opens whatever is at ``path`` now:
    the descriptor is swapped under the logging handlers' locks, so no line is split
    between the old file and the new one.
    """
    import os

    from walg.errors import WalgError

    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise WalgError(f"WALG_LOG_DESTINATION: cannot open {path}: {exc.strerror}") from None
    # Not imported for it: wal-push and wal-fetch import logging only once they log.
    logging = sys.modules.get("logging")
    handlers = list(logging.getLogger().handlers) if logging is not None else []
    for handler in handlers:
        handler.acquire()
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
        os.dup2(fd, 2)  # the copy is inherited: children log there too
    finally:
        for handler in reversed(handlers):
            handler.release()
        os.close(fd)
