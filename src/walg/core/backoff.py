"""Pacing of background work that keeps failing: per-name retry delays and thinned-out warnings.

The daemon's look-ahead uploader and WAL follower retry on their own, with nobody waiting for
them. On a full or unwritable storage folder every retry fails the same way, so without a delay
they would compress segments and log warnings in a tight loop for as long as the fault lasts.
A name that failed is left alone for a delay that doubles with each failure in a row (up to a
cap), and a warning already logged is not repeated within an interval: the next one says how
many were held back. Work that someone waits for (PostgreSQL's own ``wal-push``) never asks
this and is always tried.
"""

from __future__ import annotations

import time

from walg.core.pattern import LazyPattern

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    from collections.abc import Callable

FIRST_DELAY = 1.0
LONGEST_DELAY = 60.0
REPORT_EVERY = 60.0
# Temporary object names carry a time stamp and random letters: two messages that differ only
# by them report the same fault.
_TEMP_NAME = LazyPattern(r"\.tmp\.[0-9A-Za-z-]+")


def doubling_delay(count: int, first: float = FIRST_DELAY, longest: float = LONGEST_DELAY) -> float:
    """The delay after ``count`` failures in a row: ``first``, doubled with each, up to
    ``longest``."""
    return min(longest, first * (1 << min(count - 1, 30)))


class _Failing:
    __slots__ = ("count", "retry_at")

    def __init__(self, count: int, retry_at: float) -> None:
        self.count = count
        self.retry_at = retry_at


class _Reported:
    __slots__ = ("at", "held")

    def __init__(self, at: float) -> None:
        self.at = at
        self.held = 0


class FailureBackoff:
    """Which names are waiting out a delay after a failure, and which warnings to log."""

    def __init__(
        self,
        first: float = FIRST_DELAY,
        longest: float = LONGEST_DELAY,
        report_every: float = REPORT_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._first = first
        self._longest = longest
        self._report_every = report_every
        self._clock = clock
        self._failing: dict[str, _Failing] = {}
        self._reported: dict[str, _Reported] = {}

    def waiting(self, name: str) -> bool:
        """Is ``name`` within its delay after a failure (background work leaves it alone)?"""
        entry = self._failing.get(name)
        return entry is not None and self._clock() < entry.retry_at

    def delay(self, name: str) -> float:
        """Seconds until ``name`` may be tried again (0 when it may now)."""
        entry = self._failing.get(name)
        return 0.0 if entry is None else max(0.0, entry.retry_at - self._clock())

    def failed(self, name: str, message: str) -> str | None:
        """Record a failure of ``name``; the warning to log, or None if an identical one was
        logged less than ``report_every`` seconds ago. ``message`` may name ``name``: the same
        fault on another name counts as identical."""
        now = self._clock()
        self._forget_stale(now)
        entry = self._failing.get(name)
        count = 1 if entry is None else entry.count + 1
        wait = doubling_delay(count, self._first, self._longest)
        self._failing[name] = _Failing(count, now + wait)
        text = message.replace(name, "*") if name else message
        key = _TEMP_NAME.compiled().sub(".tmp.*", text)
        reported = self._reported.get(key)
        if reported is not None and now - reported.at < self._report_every:
            reported.held += 1
            return None
        self._reported[key] = _Reported(now)
        if reported is not None and reported.held:
            return (
                f"{message} ({reported.held} more like it in the last "
                f"{now - reported.at:.0f} s not logged)"
            )
        return message

    def succeeded(self, name: str) -> None:
        self._failing.pop(name, None)

    def _forget_stale(self, now: float) -> None:
        # A name not retried for a while after its delay ran out is no longer wanted (archived
        # by PostgreSQL's own call): forgetting it bounds the memory of a long-lived daemon.
        for name in [n for n, e in self._failing.items() if now - e.retry_at > self._longest]:
            del self._failing[name]
        stale = 2 * self._report_every
        for key in [k for k, r in self._reported.items() if now - r.at > stale]:
            del self._reported[key]
