"""backup-push runs that meet each other or a signal: the real ``walg`` against a real cluster.

Two runs that start in the same WAL segment (always, on a standby) would both be named
``base_<segment>``; the second must be refused, touching nothing of the first. SIGINT or
SIGTERM must stop a backup (and a restore) within about one partition's time, remove what it
wrote and exit 1, and the next backup-push must work. Storage writes are slowed with
WALG_FAULT_INJECTION so that a backup of a fresh cluster lasts several seconds.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from loglines import undated
from pgcluster import Cluster, PgInstall
from walgcli import WalgSetup, archiving_primary, finish_with_switches

# About 25 partitions of 1 MiB for a fresh cluster, one at a time.
SMALL_PARTS = {"WALG_TAR_SIZE_THRESHOLD": str(1 << 20), "WALG_UPLOAD_DISK_CONCURRENCY": "1"}


def _slow(op: str, seconds: float) -> dict[str, str]:
    return {"WALG_FAULT_INJECTION": json.dumps([{"op": op, "key": "part_", "delay": seconds}])}


@pytest.fixture
def setup(pg_workdir: Path, walg_bin: str) -> tuple[WalgSetup, Cluster]:
    walg = WalgSetup.create(walg_bin, pg_workdir, **SMALL_PARTS)
    cluster = archiving_primary(walg, PgInstall.load(15), pg_workdir / "data")
    return walg, cluster


def _stored(walg: WalgSetup) -> list[str]:
    folder = walg.store / "basebackups_005"
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _wait_for(path_glob: str, root: Path, proc: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not list(root.glob(path_glob)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"nothing matched {path_glob}"
        time.sleep(0.02)


def test_a_second_backup_push_of_the_same_name_is_refused(
    setup: tuple[WalgSetup, Cluster], pg_workdir: Path
) -> None:
    # On a standby two runs always get the same name: it is that of the restart point (a
    # primary switches segments at each start, so only runs started at the same moment meet).
    walg, primary = setup
    standby = primary.make_standby(pg_workdir / "standby")
    first = walg.popen(
        ["backup-push", str(standby.datadir)], cluster=standby, env=_slow("write", 0.2)
    )
    _wait_for("basebackups_005/*/walg_claim.json", walg.store, first)
    second = walg.run(["backup-push", str(standby.datadir)], cluster=standby, check=False)
    assert second.returncode == 1, second.stderr
    assert "is being taken by another backup-push" in second.stderr, second.stderr
    assert f"process {first.pid} on host" in second.stderr

    # The first one finishes once the primary has archived the WAL it needs.
    finish_with_switches(first, primary)
    listing = json.loads(walg.run(["backup-list", "--json"]).stdout)
    assert len(listing) == 1
    assert not [k for k in _stored(walg) if k.endswith("walg_claim.json")]
    # The refused run removed nothing of the first one's: it restores whole.
    walg.run(["backup-fetch", str(pg_workdir / "restored"), "LATEST"])
    standby.stop()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_backup_push_and_backup_fetch_promptly(
    setup: tuple[WalgSetup, Cluster], pg_workdir: Path, signum: signal.Signals
) -> None:
    walg, cluster = setup
    proc = walg.popen(
        ["backup-push", str(cluster.datadir)], cluster=cluster, env=_slow("write", 0.5)
    )
    _wait_for("basebackups_005/*/tar_partitions/part_001.*", walg.store, proc)
    sent = time.monotonic()
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    # Exits on its own (not killed by the signal), with the failure code, within a couple
    # of partitions' time: the rest (about 20 more, 10 s here) is never uploaded.
    assert took < 5, f"took {took:.1f}s to stop\n{stderr}"
    assert proc.returncode == 1, stderr
    assert f"interrupted ({signum.name})" in stderr
    assert _stored(walg) == [], "no sentinel, and the partial backup's objects removed"

    walg.run(["backup-push", str(cluster.datadir)], cluster=cluster)
    assert len(json.loads(walg.run(["backup-list", "--json"]).stdout)) == 1

    dest = pg_workdir / "restored"
    fetch = walg.popen(
        ["backup-fetch", str(dest), "LATEST"],
        env={"WALG_DOWNLOAD_CONCURRENCY": "1", **_slow("read", 0.5)},
    )
    _wait_for("base/*", dest, fetch)
    sent = time.monotonic()
    fetch.send_signal(signum)
    _, stderr = fetch.communicate(timeout=120)
    took = time.monotonic() - sent
    assert took < 5, f"took {took:.1f}s to stop\n{stderr}"
    assert fetch.returncode == 1, stderr
    assert f"interrupted ({signum.name})" in stderr
    assert not (dest / "global" / "pg_control").exists()
    cluster.stop()


def test_an_error_walg_does_not_expect_fails_the_backup_and_leaves_nothing(
    setup: tuple[WalgSetup, Cluster], pg_workdir: Path
) -> None:
    """A storage library may raise what walg does not translate (cloud SDKs do). The backup
    must then fail with exit 1, not report success, and its partial objects and claim go as
    after any other failure; so must a restore that meets such an error."""
    walg, cluster = setup
    unexpected = [{"op": "write", "key": "part_003", "fail": "SDK bug", "unexpected": True}]
    failed = walg.run(
        ["backup-push", str(cluster.datadir)],
        cluster=cluster,
        env={"WALG_FAULT_INJECTION": json.dumps(unexpected)},
        check=False,
    )
    assert failed.returncode == 1, failed.stderr
    assert "ERROR: unexpected RuntimeError: SDK bug" in undated(failed.stderr), failed.stderr
    assert _stored(walg) == [], "no sentinel, and the partial backup's objects removed"

    walg.run(["backup-push", str(cluster.datadir)], cluster=cluster)
    dest = pg_workdir / "restored"
    unexpected = [{"op": "read", "key": "part_003", "fail": "SDK bug", "unexpected": True}]
    fetch = walg.run(
        ["backup-fetch", str(dest), "LATEST"],
        env={"WALG_FAULT_INJECTION": json.dumps(unexpected)},
        check=False,
    )
    assert fetch.returncode == 1, fetch.stderr
    assert "unexpected RuntimeError: SDK bug" in fetch.stderr, fetch.stderr
    assert not (dest / "global" / "pg_control").exists()
    cluster.stop()
