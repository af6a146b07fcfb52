"""A WAL-G user who changes nothing but the binary, on a real PostgreSQL 16 cluster: the
command lines of WAL-G's backup-push (one cluster for the module)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest

import pgcluster
from pgcluster import Cluster, PgInstall
from walgcli import WalgSetup, archive_now, archiving_primary, restore_to_target, start_recovery


@pytest.fixture(scope="module")
def primary(walg_bin: str) -> Iterator[tuple[Cluster, WalgSetup]]:
    try:
        install = PgInstall.load(16)
    except pgcluster.PgSetupError as exc:
        pytest.fail(f"PostgreSQL 16 unavailable: {exc}", pytrace=False)
    workdir = pgcluster.pg_tmpdir(prefix="wal-g-dropin-")
    walg = WalgSetup.create(walg_bin, workdir)
    # WAL-G's own documentation's form: the flags after the command.
    archive = f"{walg_bin} wal-push %p --config {walg.config}"
    cluster = archiving_primary(walg, install, workdir / "data", archive_command=archive)
    yield cluster, walg
    pgcluster.stop_clusters_under(workdir, mode="immediate")
    shutil.rmtree(workdir, ignore_errors=True)


def _newest_backup(walg: WalgSetup) -> tuple[dict[str, object], dict[str, object]]:
    """The sentinel and metadata.json of the backup backup-list names last."""
    listed = json.loads(walg.run(["backup-list", "--json"]).stdout)
    name = listed[-1]["backup_name"]
    base = walg.store / "basebackups_005"
    sentinel = json.loads((base / f"{name}_backup_stop_sentinel.json").read_text())
    metadata = json.loads((base / name / "metadata.json").read_text())
    return sentinel, metadata


Pushed = tuple[dict[str, object], dict[str, object], dict[str, object], dict[str, object]]


@pytest.fixture(scope="module")
def pushed(primary: tuple[Cluster, WalgSetup]) -> Pushed:
    """Two backups taken with WAL-G's backup-push flags, for the module's tests that read
    them (each xdist worker has its own cluster and storage, so no test may count on another
    having run): ``--full --permanent --add-user-data {"job": "nightly"}``, then ``-f`` with
    ``WALG_SENTINEL_USER_DATA="from the environment"``; the sentinel and metadata.json of
    each."""
    cluster, walg = primary
    env = {"WALG_SENTINEL_USER_DATA": '"from the environment"'}
    args = ["backup-push", str(cluster.datadir), "--full", "--permanent"]
    done = walg.run([*args, "--add-user-data", '{"job": "nightly"}'], cluster=cluster, env=env)
    assert done.returncode == 0, done.stderr
    first = _newest_backup(walg)
    # The short forms; without --permanent nor --add-user-data, the setting applies.
    done = walg.run(["backup-push", "-f", str(cluster.datadir)], cluster=cluster, env=env)
    assert done.returncode == 0, done.stderr
    return (*first, *_newest_backup(walg))


def test_wal_g_backup_push_flags(primary: tuple[Cluster, WalgSetup], pushed: Pushed) -> None:
    """``wal-g backup-push --full --permanent --add-user-data DATA``, an operator's nightly
    job: walg refused each flag as a usage error (exit 2), so no backup was taken. --full is
    what walg always does; --permanent marks the backup so (IsPermanent, which WAL-G's delete
    and walg's wal-verify read); --add-user-data is WALG_SENTINEL_USER_DATA, and wins over
    it, as in WAL-G."""
    _, walg = primary
    sentinel, metadata, short_sentinel, short_metadata = pushed
    assert sentinel["IsPermanent"] is True and metadata["is_permanent"] is True
    assert sentinel["UserData"] == {"job": "nightly"} == metadata["user_data"]
    detail = json.loads(walg.run(["backup-list", "--detail", "--json"]).stdout)
    assert [b["is_permanent"] for b in detail[-2:]] == [True, False]

    assert short_sentinel["IsPermanent"] is False and short_metadata["is_permanent"] is False
    assert short_sentinel["UserData"] == "from the environment" == short_metadata["user_data"]


def test_wal_g_backup_push_flags_walg_cannot_honour_are_refused(
    primary: tuple[Cluster, WalgSetup], pushed: Pushed
) -> None:
    """A delta or a page checksum check asked for on the command line is refused before
    anything is done (exit 2, naming the flag): the operator asked for it explicitly."""
    cluster, walg = primary
    before = sorted(p.name for p in (walg.store / "basebackups_005").iterdir())
    for flag in (["--delta-from-name", "base_000000010000000000000002"], ["--verify"]):
        done = walg.run(["backup-push", str(cluster.datadir), *flag], cluster=cluster, check=False)
        assert done.returncode == 2, done.stderr
        assert flag[0] in done.stderr
    assert sorted(p.name for p in (walg.store / "basebackups_005").iterdir()) == before


def test_wal_g_backup_fetch_by_user_data(
    primary: tuple[Cluster, WalgSetup], pushed: Pushed, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``wal-g backup-fetch DEST --target-user-data DATA`` (or WALG_FETCH_TARGET_USER_DATA)
    restores the one backup whose user data is DATA; --reverse-unpack and
    --skip-redundant-tars change nothing for a full backup. walg refused all three (exit 2),
    so a restore script written for WAL-G restored nothing."""
    cluster, walg = primary
    detail = json.loads(walg.run(["backup-list", "--detail", "--json"]).stdout)
    by_data = {json.dumps(b.get("user_data")): b["backup_name"] for b in detail}
    nightly = by_data[json.dumps({"job": "nightly"})]
    work = pgcluster.make_shared_dir(cluster.datadir.parent / "fetched", 0o755)

    args = ["backup-fetch", str(work / "a"), "--target-user-data", '{"job":"nightly"}']
    done = walg.run([*args, "--reverse-unpack", "--skip-redundant-tars", "--json"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == nightly
    assert (work / "a" / "global" / "pg_control").is_file()

    env = {"WALG_FETCH_TARGET_USER_DATA": '"from the environment"'}
    done = walg.run(["backup-fetch", str(work / "b"), "--json"], env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == by_data['"from the environment"']

    # No match, two matches' worth of ambiguity (a name and user data), none given: refused,
    # nothing restored.
    for args, code in (
        (["--target-user-data", '{"job": "weekly"}'], 74),
        (["LATEST", "--target-user-data", '{"job": "nightly"}'], 2),
        ([], 2),
    ):
        done = walg.run(["backup-fetch", str(work / "c"), *args], check=False)
        assert done.returncode == code, (args, done.stderr)
        assert not (work / "c").exists()


def test_wal_g_command_lines_archive_and_restore(primary: tuple[Cluster, WalgSetup]) -> None:
    """PostgreSQL's archiver and recovery run walg with the flags after the command, as WAL-G
    users write them (``wal-g wal-push %p --config FILE``): archived, restored, recovered."""
    cluster, walg = primary
    cluster.psql("CREATE TABLE dropin AS SELECT generate_series(1, 100) AS n")
    walg.run(["backup-push", str(cluster.datadir)], cluster=cluster)
    cluster.psql("INSERT INTO dropin SELECT generate_series(101, 150)")
    archive_now(cluster)
    assert cluster.psql("SELECT failed_count FROM pg_stat_archiver") == "0"

    dest = cluster.datadir.parent / "restored"
    fetch = f"{walg.walg_bin} wal-fetch %f %p --config {walg.config}"
    restored = restore_to_target(cluster.install, walg, dest, restore_command=fetch, until=None)
    try:
        start_recovery(restored, timeout=120)
        assert restored.psql("SELECT count(*) FROM dropin") == "150"
    finally:
        restored.stop(mode="immediate")
