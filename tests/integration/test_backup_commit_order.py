"""The order in which backup-push commits its objects and backup-fetch writes its files.

A crash cannot be staged here, so the real ``walg`` runs under strace against a real cluster
and the system calls it made are read back: the renames and links that commit objects in
local storage, and the files a restore creates and fsyncs. The promises watched:

- backup-push: every data partition before ``pg_control.tar``, that before
  ``backup_label.tar``, then ``files_metadata.json``, ``metadata.json`` and the sentinel last
  (a backup exists if and only if its sentinel does; a restore never starts from a
  ``pg_control`` older than some data file).
- backup-fetch: every restored file is fsynced, and so is every folder; ``global/pg_control``
  is created last, only after every other file is durable, ``backup_label`` included, so that a
  restore interrupted by a crash never leaves a startable directory with data missing.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from pgcluster import Cluster, PgInstall, make_shared_dir, run_as_pg
from walgcli import WalgSetup

_COMMIT = re.compile(r"\b(?:rename|renameat|renameat2|link|linkat)\(")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_CREATED = re.compile(r"\bopenat\([^\n]*O_CREAT[^\n]*\) +(?:= \d+)<([^>]+)>")
_SYNCED = re.compile(r"\bfsync\(\d+<([^>]+)>")


def _strace() -> str:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (scripts/setup.sh installs it)")
    return strace


def _traced(walg: WalgSetup, cluster: Cluster, args: list[str], trace: Path, calls: str) -> None:
    argv = [_strace(), "-f", "-qq", "-y", "-e", f"trace={calls}", "-o", str(trace)]
    argv += [walg.walg_bin, "--config", str(walg.config), *args]
    run_as_pg(argv, env=walg.env(cluster), timeout=600)


_UNFINISHED = " <unfinished ...>"
_RESUMED = re.compile(r"^(\d+) +<\.\.\. \w+ resumed>(.*)$")


def _calls(trace: Path) -> list[str]:
    """The traced calls in the order they returned, each on one line: a call another thread
    interrupted is printed in two pieces, which are joined where it returned."""
    calls: list[str] = []
    pending: dict[str, str] = {}
    for line in trace.read_text().splitlines():
        if line.endswith(_UNFINISHED):
            pending[line.split(" ", 1)[0]] = line.removesuffix(_UNFINISHED)
        elif resumed := _RESUMED.match(line):
            calls.append(pending.pop(resumed.group(1)) + resumed.group(2))
        else:
            calls.append(line)
    return calls


@pytest.fixture
def source(pg_install: PgInstall, pg_workdir: Path) -> Cluster:
    cluster = Cluster.create(pg_install, pg_workdir / "src", conf={"archive_mode": "off"})
    cluster.start()
    # Enough data for several partitions at the threshold below.
    cluster.psql(
        "CREATE TABLE t AS SELECT g, md5(g::text) AS v FROM generate_series(1, 60000) g; "
        "CHECKPOINT;"
    )
    return cluster


def test_backup_push_commits_data_then_pg_control_then_label_then_metadata_then_sentinel(
    source: Cluster, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir, WALG_TAR_SIZE_THRESHOLD="1000000")
    trace = make_shared_dir(pg_workdir / "trace", 0o777) / "push"
    commits = "rename,renameat,renameat2,link,linkat"
    _traced(walg, source, ["backup-push", str(source.datadir)], trace, commits)
    store = str(walg.store) + "/"
    committed: list[str] = []
    for line in _calls(trace):
        if _COMMIT.search(line):
            target = _QUOTED.findall(line)[-1]
            in_backup = target.endswith(".json") or "/tar_partitions/" in target
            if target.startswith(store) and in_backup:
                committed.append(target[len(store) :])
    (sentinel,) = [c for c in committed if c.endswith("_backup_stop_sentinel.json")]
    name = sentinel.split("/")[1].removesuffix("_backup_stop_sentinel.json")
    folder = f"basebackups_005/{name}/"
    parts = [c for c in committed if c.startswith(folder + "tar_partitions/part_")]
    assert len(parts) >= 3, committed
    order = [
        folder + "tar_partitions/pg_control.tar.lz4",
        folder + "tar_partitions/backup_label.tar.lz4",
        folder + "files_metadata.json",
        folder + "metadata.json",
        sentinel,
    ]
    for later in order:
        assert committed.count(later) == 1, (later, committed)
    assert committed[-len(order) :] == order, committed
    assert set(committed[: -len(order)]) <= {*parts, f"{folder}walg_claim.json"}, committed


def test_backup_fetch_syncs_everything_and_writes_the_label_then_pg_control_last(
    source: Cluster, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir, WALG_TAR_SIZE_THRESHOLD="1000000")
    walg.run(["backup-push", str(source.datadir)], cluster=source)
    dest = make_shared_dir(pg_workdir / "restored")
    trace = make_shared_dir(pg_workdir / "trace", 0o777) / "fetch"
    _traced(walg, source, ["backup-fetch", str(dest), "LATEST"], trace, "openat,fsync")
    prefix = str(dest) + "/"
    created: list[str] = []
    synced: list[str] = []
    trace_lines = _calls(trace)
    for line in trace_lines:
        made = _CREATED.search(line)
        if made and made.group(1).startswith(prefix):
            created.append(made.group(1))
        done = _SYNCED.search(line)
        if done:
            synced.append(done.group(1))
    files = sorted(str(p) for p in dest.rglob("*") if p.is_file())
    assert sorted(created) == files
    control = prefix + "global/pg_control"
    label = prefix + "backup_label"
    first_control = created.index(control)
    # pg_control last, after backup_label: with pg_control and without the label, recovery
    # would start from pg_control's later checkpoint and replay too little.
    assert first_control == len(created) - 1, created
    assert label in created[:first_control], created
    # Every file is fsynced; each other file (backup_label too) before pg_control is even created.
    for path in files:
        assert path in synced, path
    control_opened = next(
        i for i, line in enumerate(trace_lines) if _CREATED.search(line) and control in line
    )
    synced_before = {
        m.group(1) for line in trace_lines[:control_opened] if (m := _SYNCED.search(line))
    }
    for path in created[:first_control]:
        assert path in synced_before, f"{path} was not durable before pg_control was written"
    # And every folder, so that the files' names are durable too.
    for folder in [dest, *(p for p in dest.rglob("*") if p.is_dir())]:
        assert str(folder) in synced, folder


def test_backup_fetch_makes_the_recovery_settings_durable(pg_workdir: Path, walg_bin: str) -> None:
    """The restore is durable before backup-fetch exits 0, and so are the settings it then
    writes. postgresql.auto.conf was replaced by a rename of a file never fsynced, and neither
    the signal file nor DEST's folder was fsynced after: after a power loss the settings could
    be an empty file, or the old ones with the inherited recovery targets this restore had
    turned off, beside a durable recovery.signal."""
    install = PgInstall.load(16)
    cluster = Cluster.create(install, pg_workdir / "src", conf={"archive_mode": "off"})
    cluster.start()
    walg = WalgSetup.create(walg_bin, pg_workdir)
    walg.run(["backup-push", str(cluster.datadir)], cluster=cluster)
    dest = make_shared_dir(pg_workdir / "restored")
    trace = make_shared_dir(pg_workdir / "trace", 0o777) / "fetch"
    args = ["backup-fetch", str(dest), "LATEST", "--restore-command", "walg wal-fetch %f %p"]
    _traced(walg, cluster, args, trace, "openat,fsync,rename,renameat,renameat2")
    calls = _calls(trace)
    auto, tmp = str(dest / "postgresql.auto.conf"), str(dest / "postgresql.auto.conf.walg-tmp")
    signal = str(dest / "recovery.signal")
    (renamed,) = [
        i
        for i, line in enumerate(calls)
        if _COMMIT.search(line) and _QUOTED.findall(line)[-1] == auto
    ]
    synced = [(i, m.group(1)) for i, line in enumerate(calls) if (m := _SYNCED.search(line))]
    assert any(path == tmp for i, path in synced if i < renamed), "settings fsynced before rename"
    (made,) = [
        i for i, line in enumerate(calls) if (m := _CREATED.search(line)) and m.group(1) == signal
    ]
    assert any(path == signal for i, path in synced if i > made), "recovery.signal fsynced"
    last = max(renamed, made)
    assert any(path == str(dest) for i, path in synced if i > last), "DEST fsynced after both"
    assert "restore_command" in (dest / "postgresql.auto.conf").read_text()
