"""Two walg processes at once on one cluster and one prefix: the real ``walg`` against real
PostgreSQL 16 clusters (a primary that archives and its streaming standby, one pair for the
module).

Each run must either succeed with a correct result or fail naming what it collided with;
what is stored must restore. Races are staged with WALG_FAULT_INJECTION delays, which hold
one process at a known point while the other goes on.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pgcluster
from pgcluster import Cluster, PgInstall, make_shared_dir, run_as_pg
from walg.ops.wal_push import uploader_running
from walgcli import (
    WalgSetup,
    archive_now,
    archiving_primary,
    normalized_dump,
    restore_and_recover,
    start_daemon,
    stop_daemon,
)

MAJOR = 16


def _faults(*rules: dict[str, object]) -> dict[str, str]:
    return {"WALG_FAULT_INJECTION": json.dumps(list(rules))}


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = pgcluster.pg_tmpdir(prefix="concurrent-runs-")
    yield path
    pgcluster.stop_clusters_under(path, mode="immediate")
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def pair(workdir: Path, walg_bin: str) -> tuple[WalgSetup, Cluster, Cluster]:
    # Small partitions, one at a time: a backup lasts seconds when part_ writes are slowed.
    walg = WalgSetup.create(
        walg_bin,
        workdir,
        WALG_TAR_SIZE_THRESHOLD=str(1 << 20),
        WALG_UPLOAD_DISK_CONCURRENCY="1",
    )
    primary = archiving_primary(walg, PgInstall.load(MAJOR), workdir / "primary")
    primary.pgbench(["-i", "-s", "1", "-q"])
    standby = primary.make_standby(workdir / "standby")
    return walg, primary, standby


def _standby_backup_name(standby: Cluster) -> str:
    """The name a backup-push on ``standby`` takes: that of its last restartpoint's segment."""
    tli, redo = standby.query("SELECT timeline_id, redo_lsn FROM pg_control_checkpoint()")[0]
    high, low = (int(part, 16) for part in redo.split("/"))
    return f"base_{int(tli):08X}{high:08X}{low >> 24:08X}"


def _plant(path: Path, data: str) -> None:
    run_as_pg(["mkdir", "-p", str(path.parent)])
    run_as_pg(["dd", "status=none", f"of={path}"], input=data)


def _read_until(proc: subprocess.Popen[str], text: str, timeout: float = 60) -> list[str]:
    """Lines of ``proc``'s stderr up to the first holding ``text``."""
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} never logged:\n{''.join(lines)}")


def test_two_runs_taking_over_a_dead_runs_claim_at_once_leave_one_backup(
    pair: tuple[WalgSetup, Cluster, Cluster], workdir: Path
) -> None:
    """A backup-push killed on a standby (OOM, a reboot) leaves its claim; the next two runs
    (cron and an operator, overlapping) both find it stale. Only one may take it over: the
    other, deleting the claim it had judged stale after the first had replaced it, went on
    beside the first under the same name, each removing and overwriting the other's objects.
    """
    walg, primary, standby = pair
    primary.wait_for_replay(standby)
    name = _standby_backup_name(standby)
    backups = walg.store / "basebackups_005"
    dead = subprocess.Popen(["true"])
    dead.wait()
    claim = {"host": socket.gethostname(), "pid": dead.pid, "start_time": "2026-01-01T00:00:00Z"}
    _plant(backups / name / "walg_claim.json", json.dumps(claim))

    slow_parts = {"op": "write", "key": "part_", "delay": 0.4}
    # The first run is held for 3 s just before it removes the dead run's claim.
    first = walg.popen(
        ["backup-push", str(standby.datadir)],
        cluster=standby,
        env=_faults({"op": "delete", "key": "walg_claim", "delay": 3}, slow_parts),
    )
    _read_until(first, "taking over backup")
    second = walg.popen(
        ["backup-push", str(standby.datadir)], cluster=standby, env=_faults(slow_parts)
    )
    deadline = time.monotonic() + 180
    while (first.poll() is None or second.poll() is None) and time.monotonic() < deadline:
        primary.psql("SELECT pg_switch_wal()")
        time.sleep(0.3)
    _, err_first = first.communicate(timeout=30)
    _, err_second = second.communicate(timeout=30)
    codes = sorted([first.returncode, second.returncode])
    both = f"first:\n{err_first}\nsecond:\n{err_second}"
    assert codes == [0, 1], both
    loser = err_first if first.returncode else err_second
    assert "is being taken by another backup-push" in loser, both

    listing = json.loads(walg.run(["backup-list", "--json"]).stdout)
    assert [b["backup_name"] for b in listing] == [name], listing
    assert not list(backups.rglob("walg_claim*")), "no claim is left behind"
    # What is stored is one run's backup, whole: it restores and holds the primary's data.
    archive_now(primary)
    expected = normalized_dump(primary.pg_dumpall())
    restored = restore_and_recover(PgInstall.load(MAJOR), workdir, walg)
    assert normalized_dump(restored.pg_dumpall()) == expected
    restored.stop()
    shutil.rmtree(restored.datadir)


def _stored_names(walg: WalgSetup) -> list[str]:
    return [b["backup_name"] for b in json.loads(walg.run(["backup-list", "--json"]).stdout)]


def _stored_at_least(walg: WalgSetup, primary: Cluster, count: int) -> list[str]:
    """The stored backups' names, after backing the primary up until there are ``count``:
    with the module's tests split between xdist workers (or one test run alone), the earlier
    tests that store backups may have run elsewhere."""
    names = _stored_names(walg)
    while len(names) < count:
        walg.run(["backup-push", str(primary.datadir)], cluster=primary)
        names = _stored_names(walg)
    return names


def test_two_backups_of_the_primary_at_once_and_a_restore_while_they_upload(
    pair: tuple[WalgSetup, Cluster, Cluster], workdir: Path
) -> None:
    """Cron overlap: two backup-push of the primary started together. PostgreSQL takes both
    (non-exclusive); each must end as a whole backup or be refused naming the other. While
    they upload, backup-list shows only complete backups and backup-fetch LATEST takes the
    newest complete one."""
    walg, primary, _ = pair
    before = _stored_at_least(walg, primary, 1)
    slow = _faults({"op": "write", "key": "part_", "delay": 0.3})
    runs = [
        walg.popen(["backup-push", str(primary.datadir)], cluster=primary, env=slow)
        for _ in range(2)
    ]
    backups = walg.store / "basebackups_005"
    deadline = time.monotonic() + 60
    while not [p for p in backups.glob("*/tar_partitions/part_002.*") if p.parts[-3] not in before]:
        # One may be refused at once: both started in one segment, so under one name.
        assert any(r.poll() is None for r in runs), [r.communicate() for r in runs]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert _stored_names(walg) == before, "an unfinished backup is listed"
    dest = workdir / "while-pushing"
    fetched = walg.run(["backup-fetch", str(dest), "LATEST"])
    assert before[-1] in fetched.stderr, fetched.stderr
    shutil.rmtree(dest)

    errors = []
    for run in runs:
        _, err = run.communicate(timeout=120)
        errors.append((run.returncode, err))
    both = "\n".join(f"exit {code}:\n{err}" for code, err in errors)
    made = [err for code, err in errors if code == 0]
    refused = [err for code, err in errors if code != 0]
    assert made, both
    for err in refused:
        assert "is being taken by another backup-push" in err, both
    after = _stored_names(walg)
    assert len(after) == len(before) + len(made), (after, both)
    assert len(set(after)) == len(after), after
    assert not list(backups.rglob("walg_claim*")), "no claim is left behind"
    for name in after[len(before) :]:
        assert any(f"Wrote backup with name {name}" in err for err in made), both


def test_a_second_backup_fetch_into_the_same_destination_is_refused(
    pair: tuple[WalgSetup, Cluster, Cluster], workdir: Path
) -> None:
    """An operator (or a retry of automation) starts a second backup-fetch into the DEST a
    first one is filling, before its first file lands: both found DEST empty and both wrote
    into it, leaving a data directory of two backups' files (with the last one's pg_control
    and backup_label) that starts. The second must be refused, naming the first."""
    walg, primary, _ = pair
    names = _stored_at_least(walg, primary, 2)
    dest = workdir / "twice"
    first = walg.popen(
        ["backup-fetch", str(dest), "LATEST"],
        env=_faults({"op": "read", "key": "part_", "delay": 1.5}),
    )
    deadline = time.monotonic() + 30
    while not dest.exists():
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    second = walg.run(["backup-fetch", str(dest), names[0]], check=False)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert f"restored {names[-1]}" in err, err
    assert second.returncode == 1, second.stderr
    assert "being restored into by another backup-fetch" in second.stderr, second.stderr
    assert f"process {first.pid}" in second.stderr, second.stderr
    shutil.rmtree(dest)


def test_a_run_that_meets_a_claim_let_go_as_it_looks_says_what_it_met(
    pair: tuple[WalgSetup, Cluster, Cluster],
) -> None:
    """Two runs on a standby (one name): the second's claim write fails on the first's
    claim, and the first ends, removing its claim, before the second looks at it. The second
    failed with the error of its write ("walg_claim.json exists already; not replaced") instead of
    trying the claim again and saying that a backup of that name exists."""
    walg, primary, standby = pair
    primary.checkpoint()
    primary.wait_for_replay(standby)
    standby.psql("CHECKPOINT")  # a restartpoint: a name no backup has yet
    name = _standby_backup_name(standby)
    backups = walg.store / "basebackups_005"
    first = walg.popen(
        ["backup-push", str(standby.datadir)],
        cluster=standby,
        env=_faults({"op": "write", "key": "part_", "delay": 0.1}),
    )
    deadline = time.monotonic() + 60
    while not (backups / name / "walg_claim.json").exists():
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # The second looks at the claim it failed on only after 8 s.
    second = walg.popen(
        ["backup-push", str(standby.datadir)],
        cluster=standby,
        env=_faults({"op": "stat", "key": "walg_claim", "delay": 8}),
    )
    while first.poll() is None and time.monotonic() < deadline + 60:
        primary.psql("SELECT pg_switch_wal()")
        time.sleep(0.3)
    _, err_first = first.communicate(timeout=30)
    assert first.returncode == 0, err_first
    _, err_second = second.communicate(timeout=60)
    assert second.returncode == 1, err_second
    assert f"a backup named {name} already exists" in err_second, err_second
    assert _stored_names(walg).count(name) == 1
    assert not list(backups.rglob("walg_claim*"))


def test_a_takeover_left_by_a_killed_run_is_removed_and_a_live_one_is_not(
    pair: tuple[WalgSetup, Cluster, Cluster],
) -> None:
    """A run killed while it took over a dead run's claim leaves walg_claim_takeover.json;
    every later run of that name (a standby's, named by its restart point) was refused for
    good, until the object was removed by hand. Its writer, on this host and no longer
    running, now proves it stale: the next run removes it and backs up. One whose writer
    still runs is left, and the run refused, as before."""
    walg, primary, standby = pair
    primary.checkpoint()
    primary.wait_for_replay(standby)
    standby.psql("CHECKPOINT")  # a restartpoint: a name no backup has yet
    name = _standby_backup_name(standby)
    folder = walg.store / "basebackups_005" / name
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    claim = {"host": host, "pid": dead.pid, "start_time": "2026-01-01T00:00:00Z"}
    _plant(folder / "walg_claim.json", json.dumps(claim))
    live = {"host": host, "pid": os.getpid(), "start_time": "2026-01-01T00:00:01Z"}
    _plant(folder / "walg_claim_takeover.json", json.dumps(live))
    refused = walg.run(["backup-push", str(standby.datadir)], cluster=standby, check=False)
    assert refused.returncode == 1, refused.stderr
    assert f"process {os.getpid()}" in refused.stderr, refused.stderr
    assert json.loads((folder / "walg_claim_takeover.json").read_text()) == live

    killed = {"host": host, "pid": dead.pid, "start_time": "2026-01-01T00:00:02Z"}
    _plant(folder / "walg_claim_takeover.json", json.dumps(killed))
    run = walg.popen(["backup-push", str(standby.datadir)], cluster=standby)
    deadline = time.monotonic() + 180
    while run.poll() is None and time.monotonic() < deadline:
        primary.psql("SELECT pg_switch_wal()")
        time.sleep(0.3)
    _, err = run.communicate(timeout=30)
    assert run.returncode == 0, err
    assert "walg_claim_takeover.json" in err and "no longer running" in err, err
    assert name in _stored_names(walg)
    assert not list(folder.rglob("walg_claim*")), "no claim or takeover object is left"


def _ready(cluster: Cluster) -> list[str]:
    status = cluster.datadir / "pg_wal" / "archive_status"
    return sorted(p.name[: -len(".ready")] for p in status.glob("*.ready"))


def _archived_up_to(cluster: Cluster, last: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while cluster.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < last:
        assert time.monotonic() < deadline, cluster.log_tail()
        time.sleep(0.1)


def _new_segments(cluster: Cluster, count: int) -> list[str]:
    names = []
    for i in range(count):
        cluster.psql(f"INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES ({i}, 1, 1, 1)")
        names.append(cluster.psql("SELECT pg_walfile_name(pg_switch_wal())"))
    return names


def test_archiving_switched_to_two_daemons_mid_backlog_beside_a_hand_wal_push(
    pair: tuple[WalgSetup, Cluster, Cluster], workdir: Path, walg_bin: str
) -> None:
    """A backlog drained by cold ``walg wal-push`` calls (slowed, so their detached
    look-ahead uploader is mid-way) when ``archive_command`` is switched by a reload to the
    daemon's client, with a second daemon serving the same data directory, and an operator's
    ``walg wal-push`` by hand on the segment being archived then. Each segment must be
    stored once and whole: wal-verify finds the archive complete and a restore to its end
    equals the primary."""
    walg, primary, standby = pair
    standby.stop()  # two clusters at most: the restore below is the second
    # A backup of its own: with the module's tests split between xdist workers, this one may
    # run on a worker where no other test has taken one.
    walg.run(["backup-push", str(primary.datadir)], cluster=primary)
    status = primary.datadir / "pg_wal" / "walg_data" / "walg_archive_status"
    primary.set_conf({"archive_command": "false"})
    primary.reload()
    backlog = _new_segments(primary, 8)
    slow = workdir / "walg-slow.json"
    slow.write_text(
        json.dumps(
            {
                "WALG_FILE_PREFIX": str(walg.store),
                "WALG_UPLOAD_CONCURRENCY": "3",
                "WALG_FAULT_INJECTION": json.dumps(
                    [{"op": "write", "key": "wal_005/0", "delay": 0.4}]
                ),
            }
        )
    )
    slow.chmod(0o644)
    primary.set_conf({"archive_command": f"{walg_bin} --config {slow} wal-push %p"})
    primary.reload()
    deadline = time.monotonic() + 60
    while not uploader_running(str(status)):
        assert time.monotonic() < deadline, primary.log_tail()
        time.sleep(0.01)

    sockets = make_shared_dir(workdir / "sock", 0o755)
    daemons = [
        start_daemon(walg, sockets / f"{n}.sock", primary.datadir, env={"WALG_LOG_LEVEL": "DEVEL"})
        for n in ("a", "b")
    ]
    # The operator's hand push of the file PostgreSQL is archiving now.
    waiting = _ready(primary)
    assert waiting, "the backlog drained before the switch"
    by_hand = walg.popen(
        ["wal-push", str(primary.datadir / "pg_wal" / waiting[0])], cluster=primary
    )
    native = str(Path(walg_bin).with_name("walg-daemon-client-native"))
    primary.set_conf({"archive_command": f"{native} {sockets / 'a.sock'} wal-push %p"})
    primary.reload()
    _, err = by_hand.communicate(timeout=120)
    assert by_hand.returncode == 0, err
    more = _new_segments(primary, 4)
    _archived_up_to(primary, more[-1])
    archive_now(primary)
    expected = normalized_dump(primary.pg_dumpall())
    logs = [stop_daemon(d) for d in daemons]
    for log in logs:
        # Nothing failed; a look-ahead upload of a file archived meanwhile through the other
        # daemon or the cold calls is dropped quietly.
        assert " failed: " not in log, log[-3000:]

    stored = sorted(p.name for p in (walg.store / "wal_005").iterdir())
    for name in backlog + more:
        assert [s for s in stored if s.startswith(name)] == [f"{name}.lz4"], stored
    assert not [n for n in _ready(primary) if n <= more[-1]], "left .ready"
    verified = walg.run(["wal-verify", "integrity", "timeline"], cluster=primary)
    assert "FAILURE" not in verified.stdout and "WARNING" not in verified.stdout, (
        verified.stdout + verified.stderr
    )
    primary.stop()  # the restore below compares with what it had archived
    restored = restore_and_recover(PgInstall.load(MAJOR), workdir, walg)
    assert normalized_dump(restored.pg_dumpall()) == expected
    restored.stop()
