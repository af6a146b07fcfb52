"""walg.core.backoff: per-name delays after failures, and warnings thinned out."""

from __future__ import annotations

from walg.core.backoff import FailureBackoff


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delays_double_up_to_the_cap_and_reset_on_success() -> None:
    clock = Clock()
    backoff = FailureBackoff(first=1, longest=60, clock=clock)
    delays = []
    for _ in range(9):
        backoff.failed("A", "full")
        delays.append(backoff.delay("A"))
        clock.now += backoff.delay("A")
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    # The clock now stands exactly at the retry time: no delay left, so no waiting either.
    assert backoff.delay("A") == 0 and not backoff.waiting("A")
    backoff.failed("A", "full")
    assert backoff.waiting("A") and not backoff.waiting("B")
    backoff.succeeded("A")
    assert not backoff.waiting("A")
    backoff.failed("A", "full")
    assert backoff.delay("A") == 1


def test_an_identical_warning_is_logged_once_per_interval_with_a_count() -> None:
    clock = Clock()
    backoff = FailureBackoff(report_every=60, clock=clock)
    tmp = ".tmp.20260101T000000Z-{}"
    first = backoff.failed("A", f"upload of A failed: cannot create A.lz4{tmp.format('aa')}")
    assert first == "upload of A failed: cannot create A.lz4.tmp.20260101T000000Z-aa"
    # The same fault on another name, with another temporary file: held back.
    assert backoff.failed("B", f"upload of B failed: cannot create B.lz4{tmp.format('bb')}") is None
    assert backoff.failed("A", "upload of A failed: permission denied") is not None
    clock.now += 61
    again = backoff.failed("A", f"upload of A failed: cannot create A.lz4{tmp.format('cc')}")
    assert again is not None and again.endswith("(1 more like it in the last 61 s not logged)")


def test_names_no_longer_retried_are_forgotten() -> None:
    clock = Clock()
    backoff = FailureBackoff(first=1, longest=60, clock=clock)
    for name in ("A", "B"):
        backoff.failed(name, "full")
    clock.now += 200
    backoff.failed("C", "full")
    assert backoff._failing.keys() == {"C"}
