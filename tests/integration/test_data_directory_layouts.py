"""Data directories laid out with symbolic links restore and start: a pg_wal made by
``initdb --waldir`` and a tablespace created at a path that is itself a symbolic link.

Each test runs the real ``walg`` against real clusters, restores into an empty directory on
a "new host" where the source's links are gone, recovers from the archive and compares the
data (``pg_dumpall`` and amcheck).
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from pgcluster import Cluster, PgInstall, make_shared_dir
from walgcli import WalgSetup, archive_now, normalized_dump, restore_and_recover

ARCHIVING = {"archive_mode": "on", "archive_timeout": "0", "wal_level": "replica"}


def _fill(cluster: Cluster, tablespace: str | None = None) -> None:
    cluster.pgbench(["-i", "-s", "1", "-q"])
    where = f" TABLESPACE {tablespace}" if tablespace else ""
    cluster.psql(
        f"CREATE TABLE kept (id int PRIMARY KEY, v text){where};"
        "INSERT INTO kept SELECT g, md5(g::text) FROM generate_series(1, 20000) g;"
        f"CREATE INDEX kept_v ON kept (v){where};"
    )


def test_cluster_with_symlinked_pg_wal_restores_and_starts(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir)
    waldir = pg_workdir / "waldir"
    # No template: a copy would share the template's WAL directory through the link.
    src = Cluster.create(
        pg_install,
        pg_workdir / "src",
        initdb_args=["--waldir", str(waldir)],
        use_template=False,
        conf={**ARCHIVING, "archive_command": walg.command("wal-push", "%p")},
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


def test_tablespace_at_a_symlinked_path_restores_where_the_spec_says(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir)
    real = make_shared_dir(pg_workdir / "mnt" / "real", 0o700)
    link = pg_workdir / "tslink"
    link.symlink_to(real)
    src = Cluster.create(
        pg_install,
        pg_workdir / "src",
        conf={**ARCHIVING, "archive_command": walg.command("wal-push", "%p")},
    )
    src.start()
    src.psql(f"CREATE TABLESPACE ts LOCATION '{link}'")
    _fill(src, tablespace="ts")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
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
