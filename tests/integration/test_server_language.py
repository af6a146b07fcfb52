"""walg in other languages and locales: servers that answer in another language
(``lc_messages``), and walg run under a locale whose encoding is not UTF-8.

A server's messages follow its ``lc_messages``, which a DBA may set to the team's language;
walg must tell what happened from what the server does, never from its English words.
PostgreSQL 15 from Debian carries the server's translations (``/usr/share/locale``). The
locales needed are compiled here into a folder of the test's own (``LOCPATH``), as the machine
may have none but C.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pgcluster import PgInstall, make_shared_dir
from walgcli import (
    WalgSetup,
    archive_now,
    archiving_primary,
    normalized_dump,
    restore_and_recover,
    restore_to_target,
    start_daemon,
    stop_daemon,
)

GERMAN = "de_DE.UTF-8"
LATIN1 = "de_DE.ISO-8859-1"


def _german_locales(workdir: Path, name: str = GERMAN) -> Path:
    """A LOCPATH folder holding the German locale ``name``, or a skip where it cannot be
    made."""
    if shutil.which("localedef") is None or not Path("/usr/share/i18n/locales/de_DE").exists():
        pytest.skip("no localedef or no de_DE locale source to build the locale from")
    folder = make_shared_dir(workdir / "locales", 0o755)
    made = subprocess.run(
        ["localedef", "-i", "de_DE", "-f", name.split(".")[1], str(folder / name)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if not (folder / name).is_dir():
        pytest.skip(f"localedef could not build {name}: {made.stderr.strip()}")
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def test_a_standby_promoted_during_its_backup_is_named_as_such_in_another_language(
    pg_workdir: Path, walg_bin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """walg told a promotion during a standby's backup by the word "promoted" in the
    server's error: with lc_messages = 'de_DE.UTF-8' the operator got only "stopping the
    backup failed" and the server's German, not that the backup was unusable and why."""
    install = PgInstall.load(15)
    # The servers read LOCPATH from the environment they start in (the test's).
    monkeypatch.setenv("LOCPATH", str(_german_locales(pg_workdir)))
    walg = WalgSetup.create(walg_bin, pg_workdir)
    primary = archiving_primary(walg, install, pg_workdir / "primary", conf={"lc_messages": GERMAN})
    assert primary.psql("SHOW lc_messages") == GERMAN
    # The server really answers in German: walg's English words will not be in it.
    german = primary.run([install.tool("psql"), "-X", "-c", "SELECT 1/0"], check=False)
    assert "Division durch Null" in german.stderr, german.stderr
    primary.pgbench(["-i", "-s", "2", "-q"])
    standby = primary.make_standby(pg_workdir / "standby")
    assert standby.psql("SHOW lc_messages") == GERMAN
    # Hold the backup just before pg_control is written, long enough to promote the standby.
    faults = json.dumps([{"op": "write", "key": "pg_control\\.tar", "delay": 6}])
    proc = walg.popen(
        ["backup-push", str(standby.datadir)],
        cluster=standby,
        env={"WALG_FAULT_INJECTION": faults},
    )
    deadline = time.monotonic() + 60
    while not list(walg.store.rglob("part_*.tar.lz4")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "backup-push never wrote a partition"
        time.sleep(0.05)
    standby.promote()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    assert "the standby was promoted while the backup was running" in stderr, stderr
    assert "the backup is not usable" in stderr, stderr
    assert not list(walg.store.rglob("*_backup_stop_sentinel.json")), "no backup may be listed"
    standby.stop()
    primary.stop()


@pytest.mark.parametrize("locale", ["C", LATIN1])
def test_walg_under_a_latin1_locale_keeps_file_names_and_user_data_as_they_are(
    pg_workdir: Path, walg_bin: str, locale: str
) -> None:
    """Under a locale whose encoding is not UTF-8 (a cron job's de_DE.ISO-8859-1) Python
    read file names in that encoding: walg stored a data directory's file named in UTF-8
    under other bytes, restored elsewhere under another name. LC_ALL=C (ASCII) must keep
    them too."""
    install = PgInstall.load(16)
    latin1 = {"LC_ALL": locale, "LANG": locale}
    if locale != "C":
        latin1["LOCPATH"] = str(_german_locales(pg_workdir, locale))
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(walg, install, pg_workdir / "src", start=False)
    names = [b"caf\xc3\xa9 \xe2\x9c\x93.txt", b"raw \xe9\xff.txt"]
    for name in names:
        path = os.path.join(os.fsencode(src.datadir), name)
        with open(path, "wb") as handle:
            handle.write(name)
        os.chown(path, src.datadir.stat().st_uid, src.datadir.stat().st_gid)
    src.start()
    src.psql("CREATE TABLE kept AS SELECT i, 'é ✓ ' || i AS v FROM generate_series(1, 1000) i")
    user_data = {"note": "café ✓ \u0007"}
    walg.run(
        ["backup-push", str(src.datadir), "--add-user-data", json.dumps(user_data)],
        cluster=src,
        env=latin1,
    )
    listed = json.loads(walg.run(["backup-list", "--json", "--detail"], env=latin1).stdout)
    assert [b["user_data"] for b in listed] == [user_data]
    archive_now(src)
    expected = src.psql("SELECT md5(string_agg(v, ',' ORDER BY i)) FROM kept")
    src.stop()

    restored = restore_and_recover(install, pg_workdir, walg)  # in the test's UTF-8 locale
    on_disk = os.listdir(os.fsencode(restored.datadir))
    for name in names:
        assert name in on_disk, sorted(n for n in on_disk if n.endswith(b".txt"))
        with open(os.path.join(os.fsencode(restored.datadir), name), "rb") as handle:
            assert handle.read() == name
    assert restored.psql("SELECT md5(string_agg(v, ',' ORDER BY i)) FROM kept") == expected
    restored.stop()


def test_a_german_speaking_server_is_backed_up_and_restored_to_a_restore_point(
    pg_workdir: Path, walg_bin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing walg does on its way through a backup and a point-in-time restore may hang
    on the server's English; both servers here speak German."""
    install = PgInstall.load(15)
    monkeypatch.setenv("LOCPATH", str(_german_locales(pg_workdir)))
    walg = WalgSetup.create(walg_bin, pg_workdir, WALG_STOP_BACKUP_TIMEOUT="60s")
    src = archiving_primary(walg, install, pg_workdir / "src", conf={"lc_messages": GERMAN})
    src.psql("CREATE TABLE kept AS SELECT i, 'ä ' || i AS v FROM generate_series(1, 5000) i")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    src.psql("INSERT INTO kept VALUES (5001, 'vorher')")
    src.psql("SELECT pg_create_restore_point('punkt')")
    expected = normalized_dump(src.pg_dumpall())
    src.psql("INSERT INTO kept VALUES (5002, 'nachher')")
    archive_now(src)
    src.stop()

    restored = restore_to_target(install, walg, pg_workdir / "restored", "--target-name", "punkt")
    assert restored.psql("SHOW lc_messages") == GERMAN
    assert normalized_dump(restored.pg_dumpall()) == expected
    assert restored.psql("SELECT max(i) FROM kept") == "5001"
    restored.stop()


def test_a_latin1_cluster_in_folders_named_in_utf8_is_backed_up_and_restored(
    pg_workdir: Path, walg_bin: str
) -> None:
    """psycopg read a LATIN1 server's data_directory in that encoding: a cluster at
    /…/café src (UTF-8 on disk) was refused as "not the data directory of the server walg
    connected to (/…/cafÃ© src)", exit 2, so it could not be backed up at all."""
    install = PgInstall.load(16)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    ts = make_shared_dir(pg_workdir / "tš é", 0o700)
    src = archiving_primary(
        walg,
        install,
        pg_workdir / "café src",
        initdb_args=["--encoding=LATIN1", "--locale=C"],
        use_template=False,
    )
    assert src.psql("SHOW server_encoding") == "LATIN1"
    src.psql(f"CREATE TABLESPACE t LOCATION '{ts}'")
    src.psql("CREATE TABLE kept TABLESPACE t AS SELECT i FROM generate_series(1, 1000) i")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    archive_now(src)
    src.stop()
    shutil.rmtree(ts)  # the restore puts it back where the tablespace map says

    restored = restore_and_recover(install, pg_workdir, walg)
    [link] = (restored.datadir / "pg_tblspc").iterdir()
    assert os.readlink(link) == str(ts)
    assert restored.psql("SELECT count(*) FROM kept") == "1000"
    restored.stop()


def test_a_server_and_daemon_under_a_latin1_locale_archive_and_restore(
    pg_workdir: Path, walg_bin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything under de_DE.ISO-8859-1: initdb (a LATIN1 cluster) at a non-ASCII path, the
    server, walg's daemon on a socket at a non-ASCII path, its client as archive_command and
    restore_command, backup-push and backup-fetch."""
    install = PgInstall.load(16)
    monkeypatch.setenv("LOCPATH", str(_german_locales(pg_workdir, LATIN1)))
    monkeypatch.setenv("LC_ALL", LATIN1)
    monkeypatch.setenv("LANG", LATIN1)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    client = str(Path(walg_bin).parent / "walg-daemon-client")
    socket = make_shared_dir(pg_workdir / "sock é", 0o755) / "walg é.sock"
    src = archiving_primary(
        walg,
        install,
        pg_workdir / "données",
        archive_command=f"{client} '{socket}' wal-push %p",
        initdb_args=[f"--locale={LATIN1}", "--encoding=LATIN1"],
        use_template=False,
        start=False,
    )
    daemon = start_daemon(walg, socket, src.datadir)
    src.start()
    assert src.psql("SHOW server_encoding") == "LATIN1"
    src.psql("CREATE TABLE kept AS SELECT i, 'é ' || i AS v FROM generate_series(1, 5000) i")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    src.psql("INSERT INTO kept VALUES (5001, 'après')")
    archive_now(src)
    expected = normalized_dump(src.pg_dumpall())
    src.stop()
    stop_log = stop_daemon(daemon)

    dest = pg_workdir / "restauré"
    daemon = start_daemon(walg, socket, dest)
    command = f"{client} '{socket}' wal-fetch %f %p"
    restored = restore_to_target(install, walg, dest, restore_command=command)
    assert normalized_dump(restored.pg_dumpall()) == expected, stop_log
    restored.stop()
    stop_daemon(daemon)
