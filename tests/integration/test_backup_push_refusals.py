"""backup-push / wal-push / wal-fetch refuse what they cannot do right, touching nothing.

The real ``walg`` against a real cluster: an encryption setting (walg cannot encrypt yet, and
storing in clear what a WAL-G user asked to encrypt would be silent), and a data-directory
file the server user cannot read (the error must name that file, not the storage).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pgcluster import Cluster, PgInstall, run_as_pg
from walgcli import WalgSetup

SEGMENT = "000000010000000000000001"


@pytest.fixture
def cluster(pg_install: PgInstall, pg_workdir: Path) -> Cluster:
    src = Cluster.create(pg_install, pg_workdir / "src", conf={"archive_mode": "off"})
    src.start()
    return src


# One major: the settings are refused when read, before any connection or look at the files,
# so no server's version takes part.
@pytest.mark.majors(16)
@pytest.mark.parametrize(
    ("where", "name"),
    [
        ("config", "WALG_LIBSODIUM_KEY"),
        ("env", "WALG_PGP_KEY_PATH"),
        ("env", "WALE_GPG_KEY_ID"),
        ("config", "WALG_CSE_KMS_ID"),
    ],
)
def test_encryption_settings_are_refused_before_storage_is_touched(
    cluster: Cluster, pg_workdir: Path, walg_bin: str, where: str, name: str
) -> None:
    secret = "0123456789abcdef0123456789abcdef"
    settings = {name: secret} if where == "config" else {}
    walg = WalgSetup.create(walg_bin, pg_workdir, **settings)
    env = {name: secret} if where == "env" else {}
    segment = cluster.datadir / "pg_wal" / SEGMENT
    assert segment.is_file()
    calls = [
        ["backup-push", str(cluster.datadir)],
        ["wal-push", str(segment)],
        ["wal-fetch", SEGMENT, str(pg_workdir / "fetched")],
        ["backup-list"],
    ]
    for args in calls:
        result = walg.run(args, cluster=cluster, env=env, check=False)
        assert result.returncode == 78, (args, result.stderr)
        assert name in result.stderr and "encryption" in result.stderr, result.stderr
        assert secret not in result.stderr
    assert not any(walg.store.rglob("*")), "nothing may be written to storage"
    assert not (pg_workdir / "fetched").exists()


def test_unreadable_data_directory_file_is_named(
    cluster: Cluster, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir)
    unreadable = cluster.datadir / "secret.conf"
    run_as_pg(["sh", "-c", f"echo x > {unreadable} && chmod 000 {unreadable}"])
    result = walg.run(["backup-push", str(cluster.datadir)], cluster=cluster, check=False)
    assert result.returncode != 0
    assert f"cannot read {unreadable}" in result.stderr, result.stderr
    assert "Permission denied" in result.stderr
    assert "cannot write" not in result.stderr
    assert not list(walg.store.glob("basebackups_005/*_backup_stop_sentinel.json"))
    # Made readable, the same command succeeds.
    run_as_pg(["chmod", "600", str(unreadable)])
    walg.run(["backup-push", str(cluster.datadir)], cluster=cluster)


def test_a_data_directory_the_server_does_not_run_is_refused(
    cluster: Cluster, pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    """PGDATA and the connection must name one server. A backup of the files of a stopped
    clone, started and stopped through another server, would list as good and restore a
    directory whose backup_label and WAL belong to the other cluster."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    other = Cluster.create(pg_install, pg_workdir / "other", conf={"archive_mode": "off"})
    result = walg.run(["backup-push", str(other.datadir)], cluster=cluster, check=False)
    assert result.returncode != 0, result.stderr
    assert f"{other.datadir} is not the data directory of the server" in result.stderr
    assert str(cluster.datadir) in result.stderr, result.stderr
    assert not any(walg.store.rglob("*")), "nothing may be written to storage"
    walg.run(["backup-push", str(cluster.datadir)], cluster=cluster)


# One major: a folder without PG_VERSION is refused before walg connects to the server.
@pytest.mark.majors(16)
def test_a_folder_that_is_not_a_data_directory_is_refused(
    cluster: Cluster, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir)
    empty = pg_workdir / "empty"
    empty.mkdir()
    result = walg.run(["backup-push", str(empty)], cluster=cluster, check=False)
    assert result.returncode != 0, result.stderr
    assert f"{empty} is not a PostgreSQL data directory (no PG_VERSION)" in result.stderr
    assert not any(walg.store.rglob("*")), "nothing may be written to storage"
