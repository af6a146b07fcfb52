"""walg's loggers: :mod:`logging` underneath, imported only when a record is emitted.

PostgreSQL starts a process for every ``archive_command`` and ``restore_command`` call, and
most of those calls log nothing; importing and configuring :mod:`logging` would still cost each
of them a few milliseconds. So the CLI registers the lowest enabled level and how to configure
logging (:func:`configure_lazily`), and the first record at or above that level runs the
configuration and goes on to :mod:`logging` as usual. Until then nothing is imported.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    from collections.abc import Callable

DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40


def line(level: str, message: str, when: float) -> str:
    """One line of walg's log in WAL-G's shape, its tracelog's (Go's log package with
    LstdFlags | Lmicroseconds, local time): ``LEVEL: 2006/01/02 15:04:05.000000 message``.

    For the log's records and for a command's failure line alike, so that a log file
    (``WALG_LOG_DESTINATION``) dates every line, and parsers made for WAL-G's log read
    walg's. The level comes first: a line is still told by its start (``ERROR: ``).
    ``when`` is seconds since the epoch: the caller reads the clock.
    """
    import time  # built in: nothing is read from disk

    stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(when))
    micros = int(when % 1 * 1_000_000)  # truncated, as Go's log does
    return f"{level}: {stamp}.{micros:06d} {message}"


class _Pending:
    """Process-wide, as logging's own root logger is: the threshold and the set-up to run."""

    def __init__(self) -> None:
        self.level = 0
        self.configure: Callable[[], None] | None = None


_PENDING = _Pending()


def configure_lazily(level: int, configure: Callable[[], None]) -> None:
    """Drop records below ``level`` unseen; run ``configure`` before the first other record."""
    _PENDING.level = level
    _PENDING.configure = configure


class Logger:
    """The subset of :class:`logging.Logger` walg uses, by the same names."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _emit(self, level: int, msg: str, args: tuple[object, ...], exc_info: bool) -> None:
        if level < _PENDING.level:
            return
        import logging

        configure, _PENDING.configure = _PENDING.configure, None
        if configure is not None:
            # Two threads racing here both configure; the set-up replaces handlers, so the
            # second run changes nothing.
            configure()
        logging.getLogger(self.name).log(level, msg, *args, exc_info=exc_info, stacklevel=3)

    def debug(self, msg: str, *args: object, exc_info: bool = False) -> None:
        self._emit(DEBUG, msg, args, exc_info)

    def info(self, msg: str, *args: object, exc_info: bool = False) -> None:
        self._emit(INFO, msg, args, exc_info)

    def warning(self, msg: str, *args: object, exc_info: bool = False) -> None:
        self._emit(WARNING, msg, args, exc_info)

    def error(self, msg: str, *args: object, exc_info: bool = False) -> None:
        self._emit(ERROR, msg, args, exc_info)

    def exception(self, msg: str, *args: object) -> None:
        self._emit(ERROR, msg, args, True)


def get_logger(name: str) -> Logger:
    return Logger(name)
