"""Shared fixtures: PostgreSQL builds and clusters (see tests/pgcluster.py).

A test that takes a ``pg_major`` argument runs once per installed PostgreSQL major
(``scripts/setup.sh`` installs them); 15 is always among them, and when 15 is missing such
tests fail instead of skipping. ``WALG_TEST_MAJORS=14,17`` narrows the list (15 stays).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

import pgcluster
from pgcluster import Cluster, PgInstall

REQUIRED_MAJOR = 15
_FAILED = pytest.StashKey[bool]()


def selected_majors() -> list[int]:
    """Majors to parametrize over: installed ones (or $WALG_TEST_MAJORS) plus 15."""
    wanted = os.environ.get("WALG_TEST_MAJORS", "").strip()
    if wanted:
        majors = {int(m) for m in wanted.replace(",", " ").split()}
    else:
        majors = set(pgcluster.available_majors())
    majors.add(REQUIRED_MAJOR)
    return sorted(majors)


def pytest_configure(config: pytest.Config) -> None:
    # A suite started in the background by a shell without job control inherits SIGINT
    # ignored, and so would every walg it starts (Python then installs no KeyboardInterrupt):
    # the tests of how walg stops on SIGINT need it delivered, as a terminal delivers it.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "pg_major" in metafunc.fixturenames:
        majors = selected_majors()
        # Slow scenarios whose version-dependent part is covered by the oldest, the required
        # and the newest major: the suite's time is CI's budget.
        marker = metafunc.definition.get_closest_marker("majors")
        if marker is not None:
            majors = [m for m in majors if m in marker.args] or [REQUIRED_MAJOR]
        metafunc.parametrize("pg_major", majors, ids=[f"pg{m}" for m in majors])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    pg_fixtures = {"pg_major", "pg_install", "pg_cluster", "pg_workdir"}
    for item in items:
        if pg_fixtures & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.pg)


@pytest.fixture(scope="session")
def pg_majors() -> list[int]:
    """All majors the ``pg_major`` parametrization covers."""
    return selected_majors()


@pytest.fixture(scope="session", autouse=True)
def _stop_pg_clusters_at_end() -> Iterator[None]:
    yield
    pgcluster.stop_all()


@pytest.fixture
def pg_install(pg_major: int) -> PgInstall:
    try:
        return PgInstall.load(pg_major)
    except pgcluster.PgSetupError as exc:
        pytest.fail(f"PostgreSQL {pg_major} unavailable: {exc}", pytrace=False)


@pytest.fixture
def pg_workdir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory owned by pgtest (mode 0755) under /tmp/walg-tests-<uid>.

    Clusters whose data directory is inside it are stopped afterwards and it is removed
    (kept when the test failed and WALG_KEEP_TMP=1).
    """
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40]
    path = pgcluster.pg_tmpdir(prefix=f"{name}-")
    yield path
    pgcluster.stop_clusters_under(path, mode="immediate")
    failed = request.node.stash.get(_FAILED, False)
    if failed and os.environ.get("WALG_KEEP_TMP") == "1":
        sys.stderr.write(f"\nkept {path}\n")
        return
    shutil.rmtree(path, ignore_errors=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


@pytest.fixture
def pg_cluster(pg_install: PgInstall, pg_workdir: Path) -> Iterator[Cluster]:
    """A started cluster of ``pg_install`` in ``pg_workdir/data``; stopped afterwards."""
    cluster = Cluster.create(pg_install, pg_workdir / "data")
    cluster.start()
    yield cluster
    cluster.stop(mode="immediate")


@pytest.fixture(scope="session")
def walg_bin() -> str:
    """The ``walg`` console script installed next to this interpreter."""
    path = Path(sys.executable).parent / "walg"
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} missing: run scripts/setup.sh", pytrace=False)
    return str(path)
