"""Data directories laid out with symbolic links restore and start: a pg_wal made by
``initdb --waldir`` and a tablespace created at a path that is itself a symbolic link. Also
unusual contents and clusters: a database moved between tablespaces during the backup, a
file whose name is not UTF-8, a cluster whose encoding is SQL_ASCII, a symlinked
postgresql.conf (not archived, but named) and PGDATA given as a symbolic link.

Each test runs the real ``walg`` against real clusters, restores into an empty directory on
a "new host" where the source's links are gone, recovers from the archive and compares the
data (``pg_dumpall`` and amcheck).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path

import lz4.frame
import pytest

from pgcluster import Cluster, PgInstall, make_shared_dir
from walgcli import WalgSetup, archive_now, archiving_primary, normalized_dump, restore_and_recover


def _fill(cluster: Cluster, tablespace: str | None = None) -> None:
    cluster.pgbench(["-i", "-s", "1", "-q"])
    where = f" TABLESPACE {tablespace}" if tablespace else ""
    cluster.psql(
        f"CREATE TABLE kept (id int PRIMARY KEY, v text){where};"
        "INSERT INTO kept SELECT g, md5(g::text) FROM generate_series(1, 20000) g;"
        f"CREATE INDEX kept_v ON kept (v){where};"
    )


# The oldest and the newest major: walg stores a linked pg_wal as a folder by the same walk
# on every major, and the two cover both backup start/stop functions (before 15 and after).
@pytest.mark.majors(13, 18)
def test_cluster_with_symlinked_pg_wal_restores_and_starts(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir)
    waldir = pg_workdir / "waldir"
    # No template: a copy would share the template's WAL directory through the link.
    src = archiving_primary(
        walg,
        pg_install,
        pg_workdir / "src",
        initdb_args=["--waldir", str(waldir)],
        use_template=False,
        archive_timeout="0",
        wal_level="replica",
        start=False,
    )
    assert (src.datadir / "pg_wal").is_symlink()
    src.start()
    _fill(src)
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    src.psql("INSERT INTO kept SELECT g, 'after' FROM generate_series(20001, 21000) g")
    archive_now(src)
    expected = normalized_dump(src.pg_dumpall())
    src.stop()
    # The restore host has no such WAL directory.
    shutil.rmtree(waldir)
    (src.datadir / "pg_wal").unlink()

    restored = restore_and_recover(pg_install, pg_workdir, walg)
    wal = restored.datadir / "pg_wal"
    assert wal.is_dir() and not wal.is_symlink()
    assert stat.S_IMODE(wal.stat().st_mode) == 0o700
    assert normalized_dump(restored.pg_dumpall()) == expected
    assert restored.psql("SELECT count(*) FROM kept") == "21000"
    if pg_install.has_amcheck:
        assert restored.amcheck() > 0
    restored.stop()


# The oldest and the newest major: the tablespace_map checked here comes from pg_stop_backup
# before 15 and from pg_backup_stop after, and walg's handling of it is the same on each.
@pytest.mark.majors(13, 18)
def test_tablespace_at_a_symlinked_path_restores_where_the_spec_says(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir)
    real = make_shared_dir(pg_workdir / "mnt" / "real", 0o700)
    link = pg_workdir / "tslink"
    link.symlink_to(real)
    src = archiving_primary(
        walg, pg_install, pg_workdir / "src", archive_timeout="0", wal_level="replica"
    )
    src.psql(f"CREATE TABLESPACE ts LOCATION '{link}'")
    _fill(src, tablespace="ts")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    # backup_label and tablespace_map are stored as pg_backup_stop gave them: the map names
    # the link, as the server saw it (what WAL-G's restore and PostgreSQL itself read).
    oid = src.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'")
    (label_tar,) = walg.store.rglob("backup_label.tar.lz4")
    with tarfile.open(fileobj=io.BytesIO(lz4.frame.decompress(label_tar.read_bytes()))) as tar:
        stored = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert stored["tablespace_map"] == f"{oid} {link}\n".encode()
    assert stored["backup_label"].startswith(b"START WAL LOCATION: ")
    src.psql("INSERT INTO kept SELECT g, 'after' FROM generate_series(20001, 21000) g")
    archive_now(src)
    expected = normalized_dump(src.pg_dumpall())
    src.stop()
    # The restore host: the link is gone and the spec's (resolved) location is free. The
    # backup's tablespace_map still names the link.
    real.rename(pg_workdir / "mnt" / "real-of-the-old-host")
    link.unlink()

    restored = restore_and_recover(pg_install, pg_workdir, walg)
    assert restored.tablespaces() == {"ts": str(real)}
    oid_links = list((restored.datadir / "pg_tblspc").iterdir())
    assert [os.readlink(p) for p in oid_links] == [str(real)]
    assert not link.exists()
    actual = normalized_dump(restored.pg_dumpall()).replace(str(real), str(link))
    assert actual == expected
    assert restored.psql("SELECT count(*) FROM kept") == "21000"
    if pg_install.has_amcheck:
        assert restored.amcheck() > 0
    restored.stop()


def test_backup_whose_file_list_exceeds_64_mib_restores(pg_workdir: Path, walg_bin: str) -> None:
    """files_metadata.json grows with the number and length of file names (about 190 bytes a
    file: 64 MiB is some 350,000 relation files). Such a backup used to be written and then
    refused by backup-fetch ("larger than 67108864 bytes"). Here 9,000 files with names of
    about 4,000 bytes make a document of over 64 MiB cheaply; the restore must bring them all
    back, checked against the checksums of a document the sentinel vouches for."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(
        walg,
        PgInstall.load(15),
        pg_workdir / "src",
        archive_timeout="0",
        wal_level="replica",
        start=False,
    )
    deep = src.datadir / "extra"
    for level in range(15):
        deep = deep / (f"{level:02d}" + "d" * 240)
    deep.mkdir(parents=True)
    names = [f"{n:05d}" + "f" * 190 for n in range(9000)]
    for name in names:
        (deep / name).write_bytes(name[:5].encode())
    for path in [src.datadir / "extra", *(src.datadir / "extra").rglob("*")]:
        os.chown(path, src.datadir.stat().st_uid, src.datadir.stat().st_gid)
    src.start()
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    archive_now(src)
    src.stop()
    [document] = walg.store.rglob("files_metadata.json")
    assert document.stat().st_size > 64 << 20

    dest = make_shared_dir(pg_workdir / "restored", 0o700)
    walg.run(["backup-fetch", str(dest), "LATEST"])
    restored = dest / deep.relative_to(src.datadir)
    assert sorted(os.listdir(restored)) == names
    assert all((restored / name).read_bytes() == name[:5].encode() for name in names[::500])
    # A document that differs from what the sentinel records is refused, naming it.
    with document.open("r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 1]))
    shutil.rmtree(dest)
    dest = make_shared_dir(pg_workdir / "restored2", 0o700)
    failed = walg.run(["backup-fetch", str(dest), "LATEST"], check=False)
    assert failed.returncode == 1
    assert "files_metadata.json" in failed.stderr and "checksum" in failed.stderr


def _restored_on_a_new_host(src: Cluster, tablespace: Path, walg: WalgSetup) -> Cluster:
    """The latest backup restored and recovered to the end of the archive where the
    tablespace's directory is gone, its data equal to the source's."""
    archive_now(src)
    expected = normalized_dump(src.pg_dumpall())
    src.stop()
    tablespace.rename(tablespace.with_name(f"{tablespace.name}-of-the-old-host"))
    restored = restore_and_recover(src.install, src.datadir.parent, walg)
    assert normalized_dump(restored.pg_dumpall()) == expected
    return restored


@pytest.mark.parametrize(
    "moves", [("pg_default",), ("pg_default", "ts1")], ids=["moved", "moved-and-back"]
)
def test_database_moved_to_another_tablespace_during_backup_fails_it(
    pg_workdir: Path, walg_bin: str, moves: tuple[str, ...]
) -> None:
    """ALTER DATABASE ... SET TABLESPACE copies files without WAL-logging them; recovery
    re-copies the old directory. Moved while backup-push read PGDATA, the database was in
    neither place in the backup, and the restored cluster could not open it: backup-push and
    backup-fetch exited 0. The move is made while part_002's upload is held (fault
    injection), after the walk; the backup must fail and leave nothing, and the next one
    restore the database. Moved away and back, it ends in the tablespace it started in: only
    its directory, made anew, tells."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(
        walg, install, pg_workdir / "src", archive_timeout="0", wal_level="replica"
    )
    location = src.add_tablespace("ts1", pg_workdir / "ts1")
    src.pgbench(["-i", "-s", "2", "-q"])
    src.psql("CREATE DATABASE moved TABLESPACE ts1")
    src.psql(
        "CREATE TABLE keep AS SELECT g id, md5(g::text) v FROM generate_series(1, 100000) g",
        dbname="moved",
    )
    src.checkpoint()
    held = json.dumps([{"op": "write", "key": "part_002", "delay": 6}])
    push = walg.popen(
        ["backup-push", str(src.datadir)],
        cluster=src,
        env={
            "WALG_UPLOAD_DISK_CONCURRENCY": "1",
            "WALG_TAR_SIZE_THRESHOLD": "1000000",
            "WALG_FAULT_INJECTION": held,
        },
    )
    assert push.stderr is not None
    seen = []
    while not seen or "uploaded part_001" not in seen[-1]:
        line = push.stderr.readline()
        assert line, "".join(seen)
        seen.append(line)
    for tablespace in moves:
        src.psql(f"ALTER DATABASE moved SET TABLESPACE {tablespace}")
    _, rest = push.communicate(timeout=300)
    stderr = "".join(seen) + rest
    assert push.returncode == 1, stderr
    assert "database moved moved to another tablespace" in stderr
    assert not [p for p in walg.store.rglob("basebackups_005/**/*") if p.is_file()]

    walg.run(["backup-push", str(src.datadir)], cluster=src)
    src.psql("INSERT INTO pgbench_history VALUES (1, 1, 1, 1, now(), 'after')")
    restored = _restored_on_a_new_host(src, location, walg)
    assert restored.psql("SELECT count(*) FROM keep", dbname="moved") == "100000"


def test_database_moved_after_the_backup_stopped_keeps_the_backup(
    pg_workdir: Path, walg_bin: str
) -> None:
    """A move after pg_backup_stop is WAL after the backup's end: recovery replays it from a
    complete copy of the old directory. backup-push waits for the last segment to be
    archived after the stop, and read the databases' places only after that wait: a move
    during it failed a sound backup. Here archive_command fails until the move is done."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    gate = pg_workdir / "archive-open"
    gate.touch()
    src = archiving_primary(
        walg,
        install,
        pg_workdir / "src",
        # Failing, not waiting: an archiver inside a long command does not take the
        # signal barrier ALTER DATABASE ... SET TABLESPACE waits for.
        archive_command=f"[ -e {gate} ] && {walg.command('wal-push', '%p')}",
        archive_timeout="0",
        wal_level="replica",
    )
    location = src.add_tablespace("ts1", pg_workdir / "ts1")
    src.psql("CREATE DATABASE moved TABLESPACE ts1")
    src.psql(
        "CREATE TABLE keep AS SELECT g id, md5(g::text) v FROM generate_series(1, 50000) g",
        dbname="moved",
    )
    src.checkpoint()
    archive_now(src)
    gate.unlink()
    try:
        push = walg.popen(["backup-push", str(src.datadir)], cluster=src)
        assert push.stderr is not None
        seen = []
        while not seen or "the backup needs" not in seen[-1]:  # archiving fails
            line = push.stderr.readline()
            assert line, "".join(seen)
            seen.append(line)
        src.psql("ALTER DATABASE moved SET TABLESPACE pg_default")
    finally:
        gate.touch()
    # A new .ready file wakes the archiver, which waits up to a minute after failures.
    src.psql("SELECT pg_switch_wal()")
    _, rest = push.communicate(timeout=300)
    stderr = "".join(seen) + rest
    assert push.returncode == 0, stderr
    assert "moved to another tablespace" not in stderr

    src.psql("INSERT INTO keep VALUES (0, 'after the move')", dbname="moved")
    restored = _restored_on_a_new_host(src, location, walg)
    assert restored.psql("SELECT count(*) FROM keep", dbname="moved") == "50001"
    assert (
        restored.psql(
            "SELECT spcname FROM pg_database d JOIN pg_tablespace t ON t.oid = dattablespace"
            " WHERE datname = 'moved'"
        )
        == "pg_default"
    )
    if install.has_amcheck:
        assert restored.amcheck() > 0
    restored.stop()


def test_file_whose_name_is_not_utf8_is_restored_under_the_same_bytes(
    pg_workdir: Path, walg_bin: str
) -> None:
    """One such file anywhere in PGDATA made every backup-push fail at its end
    (UnicodeEncodeError writing files_metadata.json)."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(
        walg, install, pg_workdir / "src", archive_timeout="0", wal_level="replica", start=False
    )
    name = b"stray\xff\xfe caf\xe9.txt"
    odd = os.path.join(os.fsencode(src.datadir), name)
    with open(odd, "wb") as handle:
        handle.write(b"hello")
    os.chown(odd, src.datadir.stat().st_uid, src.datadir.stat().st_gid)
    src.start()
    _fill(src)
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    archive_now(src)
    expected = normalized_dump(src.pg_dumpall())
    src.stop()

    restored = restore_and_recover(install, pg_workdir, walg)
    assert name in os.listdir(os.fsencode(restored.datadir))
    with open(os.path.join(os.fsencode(restored.datadir), name), "rb") as handle:
        assert handle.read() == b"hello"
    assert normalized_dump(restored.pg_dumpall()) == expected
    restored.stop()


# The oldest and the newest major: walg's exclusions do not depend on the major, and every
# major here (12 and later) reads an included conf.d/recovery.conf as any other file.
@pytest.mark.majors(13, 18)
def test_a_configuration_file_under_a_name_the_server_keeps_at_the_top_is_restored(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    """walg dropped every file named recovery.conf, postmaster.pid, standby.signal... at any
    depth, as WAL-G does; an operator's conf.d/recovery.conf, included from postgresql.conf,
    was missing from the restore, and the restored server could not start."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(
        walg, pg_install, pg_workdir / "src", archive_timeout="0", wal_level="replica", start=False
    )
    (src.datadir / "conf.d").mkdir()
    (src.datadir / "conf.d" / "recovery.conf").write_text("work_mem = '7MB'\n")
    with (src.datadir / "postgresql.conf").open("a") as handle:
        handle.write("include 'conf.d/recovery.conf'\n")
    src.start()
    assert src.psql("SHOW work_mem") == "7MB"
    _fill(src)
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    archive_now(src)
    expected = normalized_dump(src.pg_dumpall())
    src.stop()

    restored = restore_and_recover(pg_install, pg_workdir, walg)
    assert (restored.datadir / "conf.d" / "recovery.conf").read_text() == "work_mem = '7MB'\n"
    assert restored.psql("SHOW work_mem") == "7MB"
    assert normalized_dump(restored.pg_dumpall()) == expected
    restored.stop()


@pytest.mark.parametrize("encoding", ["SQL_ASCII", "UTF8"])
def test_cluster_with_a_tablespace_path_that_is_not_utf8(
    pg_workdir: Path, walg_bin: str, encoding: str
) -> None:
    """initdb under LANG=C makes SQL_ASCII clusters; backup-push refused them, saying the
    data directory was not the server's (b'/…/src'): psycopg returned text as bytes. The
    server hands over paths as the file system has them: a tablespace at a path that is not
    UTF-8 then failed every backup at its end, with SQL_ASCII (the tablespace map's text
    could not be encoded) and with UTF8 (psycopg could not decode it)."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(
        walg,
        install,
        pg_workdir / "src",
        initdb_args=[f"--encoding={encoding}", "--locale=C"],
        use_template=False,
        archive_timeout="0",
        wal_level="replica",
        start=False,
    )
    plain = make_shared_dir(pg_workdir / "ts", 0o700)
    src.start()
    assert src.psql("SHOW server_encoding") == encoding
    src.psql(f"CREATE TABLESPACE odd LOCATION '{plain}'")
    _fill(src, "odd")
    src.stop()
    # The same tablespace under a name that is not UTF-8, as PostgreSQL follows its link.
    odd = pg_workdir / os.fsdecode(b"ts_\xff\xfe")
    plain.rename(odd)
    [link] = (src.datadir / "pg_tblspc").iterdir()
    link.unlink()
    link.symlink_to(odd)
    os.lchown(link, src.datadir.stat().st_uid, src.datadir.stat().st_gid)
    src.start()
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    archive_now(src)
    # pg_dumpall would print the location's bytes, which the test's text pipes cannot read.
    check = (
        "SELECT count(*), md5(string_agg(v, ',' ORDER BY id)) FROM kept;"
        "SELECT sum(abalance), count(*) FROM pgbench_accounts"
    )
    expected = src.psql(check)
    src.stop()
    shutil.rmtree(odd)  # the restore puts it back where the tablespace map says

    restored = restore_and_recover(install, pg_workdir, walg)
    assert os.readlink(restored.datadir / "pg_tblspc" / link.name) == str(odd)
    assert restored.psql(check) == expected
    assert restored.psql("SELECT count(*) FROM kept") == "20000"
    if install.has_amcheck:
        assert restored.amcheck() > 0
    restored.stop()


def test_pgdata_given_as_a_link_with_a_symlinked_postgresql_conf(
    pg_workdir: Path, walg_bin: str
) -> None:
    """The symlinked postgresql.conf (a Debian-style /etc layout) is not archived, as in
    WAL-G, but no longer silently: backup-push names it. PGDATA given as a link restored
    with the link's mode (0777, group access on the restored root) instead of 0700."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(
        walg, install, pg_workdir / "src", archive_timeout="0", wal_level="replica", start=False
    )
    conf = pg_workdir / "etc-postgresql.conf"
    shutil.move(src.datadir / "postgresql.conf", conf)
    (src.datadir / "postgresql.conf").symlink_to(conf)
    link = pg_workdir / "pgdata-link"
    link.symlink_to(src.datadir)
    assert stat.S_IMODE(src.datadir.stat().st_mode) == 0o700
    src.start()
    pushed = walg.run(["backup-push", str(link)], cluster=src)
    assert f"not backed up: /postgresql.conf is a symbolic link to {conf}" in pushed.stderr
    src.stop()

    dest = pg_workdir / "restored"
    walg.run(["backup-fetch", str(dest), "LATEST"])
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert (dest / "PG_VERSION").is_file()
    assert not os.path.lexists(dest / "postgresql.conf")
