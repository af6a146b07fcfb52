"""WAL-G's hidden command-line flag for every setting (``--walg-file-prefix=/x``): the real
``walg`` command honours it where the same setting in the environment reaches, the detached
look-ahead uploader included, and a flag beats the environment and the config file.

WAL-G (internal/config/config.go, AddConfigFlags and ToFlagName) binds a string flag named
after each allowed setting, lower case with ``-`` for ``_``, to its config library, where a
flag given on the command line wins over the environment, which wins over the config file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_backup_fetch_wal_g_layout import NAME, assert_restored, put_wal_g_backup
from test_wal_ahead import SEGMENTS, PgWal

from fakewal import run_walg, segment_bytes, walg_env
from walg.errors import UsageError
from walg.settings import split_setting_flags
from walg.storage.file import FileStorage


@pytest.fixture
def pg_wal(tmp_path: Path, walg_bin: str) -> Iterator[PgWal]:
    wal = PgWal(tmp_path, walg_bin)
    yield wal
    wal.wait_uploader_gone()


def _push_all(pg_wal: PgWal, calls: list[tuple[str, ...]]) -> None:
    """PostgreSQL's archiver with ``archive_command = 'walg wal-push %p FLAGS && ...'``: the
    flags after the command, where WAL-G users write them."""
    ready_dir = pg_wal.dir / "archive_status"
    while names := sorted(p.name[: -len(".ready")] for p in ready_dir.glob("*.ready")):
        name = names[0]
        for flags in calls:
            out = pg_wal.walg("wal-push", f"pg_wal/{name}", *flags)
            assert out.returncode == 0, pg_wal.log.read_text()
        (ready_dir / f"{name}.ready").rename(ready_dir / f"{name}.done")


def test_two_destinations_by_flag_each_get_every_segment(pg_wal: PgWal) -> None:
    """``walg wal-push %p && walg wal-push %p --walg-file-prefix=B`` with a backlog: the
    second call's look-ahead uploads go to B, its markers are not the first call's (nor the
    first's its), and each archive gets every segment with the file's content."""
    contents = {name: pg_wal.add(name).read_bytes() for name in SEGMENTS}
    store_b = pg_wal.root / "store-b"
    store_b.mkdir()
    _push_all(pg_wal, [(), (f"--walg-file-prefix={store_b}",)])
    pg_wal.wait_uploader_gone()
    for store in (pg_wal.store, store_b):
        assert pg_wal.stored(store) == [f"{name}.lz4" for name in SEGMENTS], store
    for name, data in contents.items():
        for flags in ((), ("--walg-file-prefix", str(store_b))):
            fetched = pg_wal.root / f"fetched-{name}"
            fetched.unlink(missing_ok=True)
            out = pg_wal.walg("wal-fetch", name, str(fetched), *flags)
            assert out.returncode == 0, pg_wal.log.read_text()
            assert fetched.read_bytes() == data


def test_the_look_ahead_uploads_go_where_the_flag_says(pg_wal: PgWal) -> None:
    """One call with the flag and a backlog behind it: the detached uploader it starts
    archives the backlog to the flag's folder, not to the environment's."""
    for name in SEGMENTS:
        pg_wal.add(name)
    store_b = pg_wal.root / "store-b"
    store_b.mkdir()
    out = pg_wal.walg(f"--walg-file-prefix={store_b}", "wal-push", f"pg_wal/{SEGMENTS[0]}")
    assert out.returncode == 0, pg_wal.log.read_text()
    deadline = time.monotonic() + 60
    while len(pg_wal.stored(store_b)) < len(SEGMENTS):
        assert time.monotonic() < deadline, pg_wal.log.read_text()
        time.sleep(0.05)
    pg_wal.wait_uploader_gone()
    assert pg_wal.stored(store_b) == [f"{name}.lz4" for name in SEGMENTS]
    assert pg_wal.stored() == []
    # The markers it left answer calls with the same flag, and only those.
    marked = pg_wal.markers()
    assert len(marked) == len(SEGMENTS) - 1
    assert pg_wal.key() not in "".join(marked)
    out = pg_wal.walg("wal-push", f"pg_wal/{SEGMENTS[1]}", "--walg-file-prefix", str(store_b))
    assert out.returncode == 0, pg_wal.log.read_text()
    assert len(pg_wal.markers()) == len(SEGMENTS) - 2
    pg_wal.wait_uploader_gone()


def test_a_flag_beats_the_environment_and_the_config_file(tmp_path: Path, walg_bin: str) -> None:
    store_a, store_b, home = tmp_path / "a", tmp_path / "b", tmp_path / "home"
    for folder in (store_a, store_b, home):
        folder.mkdir()
    config = tmp_path / "walg.json"
    config.write_text(json.dumps({"WALG_FILE_PREFIX": str(store_a)}))
    wal = tmp_path / "000000010000000000000001"
    wal.write_bytes(b"x" * 8192)
    env = {
        **walg_env(store_a, home, WALG_COMPRESSION_METHOD="lz4", TOTAL_BG_UPLOADED_LIMIT="0"),
        "WALG_CONFIG_PATH": str(config),
    }
    argv = [walg_bin, "wal-push", str(wal), f"--walg-file-prefix={store_b}"]
    done = run_walg([*argv, "--walg-compression-method", "none"], env)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (store_b / "wal_005").iterdir()) == [wal.name]
    assert not (store_a / "wal_005").exists()
    # Before the command name too, and with --config: still the flag.
    env.pop("WALG_FILE_PREFIX")
    done = run_walg(
        [walg_bin, "--walg-file-prefix", str(store_b), "--config", str(config), "wal-show"], env
    )
    assert done.returncode == 0, done.stderr
    assert "000000010000000000000001" in done.stdout


def test_backup_commands_honour_the_flag(tmp_path: Path, walg_bin: str) -> None:
    store_a, store_b, home = tmp_path / "a", tmp_path / "b", tmp_path / "home"
    for folder in (store_a, store_b, home):
        folder.mkdir()
    storage = FileStorage(store_b)
    put_wal_g_backup(storage)
    storage.close()
    env = walg_env(store_a, home, WALG_TAR_DISABLE_FSYNC="true")
    flag = f"--walg-file-prefix={store_b}"
    listed = run_walg([walg_bin, "backup-list", flag], env)
    assert listed.returncode == 0 and NAME in listed.stdout, listed.stderr
    detail = run_walg([walg_bin, flag, "backup-list", "--detail", "--json"], env)
    assert detail.returncode == 0 and NAME in detail.stdout, detail.stderr
    assert NAME not in run_walg([walg_bin, "backup-list"], env).stdout
    dest = tmp_path / "dest"
    done = run_walg([walg_bin, "backup-fetch", str(dest), "LATEST", flag], env)
    assert done.returncode == 0, done.stderr
    assert_restored(dest)


def test_flags_that_cannot_be_honoured_are_refused_by_name(tmp_path: Path, walg_bin: str) -> None:
    store, home = tmp_path / "store", tmp_path / "home"
    store.mkdir()
    home.mkdir()
    env = walg_env(store, home)

    def refused(code: int, *argv: str) -> str:
        done = run_walg([walg_bin, *argv], env)
        assert done.returncode == code, (argv, done.stderr)
        return done.stderr

    assert "--walg-file-prefix" in refused(2, "backup-list", "--walg-file-prefix=")
    assert "--walg-file-prefix" in refused(2, "backup-list", "--walg-file-prefix")
    assert "--walg-failover-storages" in refused(78, "--walg-failover-storages=x", "backup-list")
    assert "--walg-no-such-setting" in refused(2, "backup-list", "--walg-no-such-setting=1")
    warned = run_walg([walg_bin, "backup-list", "--walg-statsd-address=127.0.0.1:1"], env)
    assert warned.returncode == 0, warned.stderr
    assert "WALG_STATSD_ADDRESS is set on the command line" in warned.stderr


def test_which_arguments_are_setting_flags() -> None:
    rest, flags = split_setting_flags(
        ["--walg-file-prefix", "/a", "wal-fetch", "--walg-file-prefix=/b", "N", "D", "--pghost=h"]
    )
    assert rest == ["wal-fetch", "N", "D"]
    assert flags == {"WALG_FILE_PREFIX": "/b", "PGHOST": "h"}  # the last one given wins
    # Not after --; not a command's own flag; none for WALG_CONFIG_PATH or environment-only
    # libpq variables; WAL-G's spelling only (lower case, dashes).
    for argv in (
        ["wal-push", "--", "--walg-file-prefix=/x"],
        ["backup-list", "--detail", "--json"],
        ["backup-list", "--walg-config-path=/x"],
        ["backup-list", "--pgtz=UTC"],
        ["backup-list", "--WALG-FILE-PREFIX=/x", "--walg_file_prefix=/x"],
    ):
        assert split_setting_flags(argv) == (argv, {})
    # The next argument is the value, whatever it looks like, as in WAL-G's flag library.
    assert split_setting_flags(["--walg-file-prefix", "--x", "backup-list"]) == (
        ["backup-list"],
        {"WALG_FILE_PREFIX": "--x"},
    )
    with pytest.raises(UsageError, match="--walg-log-level is empty"):
        split_setting_flags(["backup-list", "--walg-log-level= "])


def test_the_prefetcher_reads_where_the_flag_says(tmp_path: Path, walg_bin: str) -> None:
    """wal-fetch with the flag starts the detached prefetcher, which gets no flags: it must
    still read the flag's folder (it was given the environment's, where nothing is)."""
    store_a, store_b, home = tmp_path / "a", tmp_path / "b", tmp_path / "home"
    pg_wal = tmp_path / "data" / "pg_wal"
    for folder in (store_a, store_b, home, pg_wal):
        folder.mkdir(parents=True)
    names = [f"0000000100000000000000{n:02X}" for n in range(1, 5)]
    env = walg_env(store_a, home, TOTAL_BG_UPLOADED_LIMIT="0")
    for name in names:
        (pg_wal / name).write_bytes(segment_bytes(name, 7))
        done = run_walg(
            [walg_bin, "wal-push", str(pg_wal / name), f"--walg-file-prefix={store_b}"], env
        )
        assert done.returncode == 0, done.stderr
        (pg_wal / name).unlink()
    done = run_walg(
        [
            walg_bin,
            "wal-fetch",
            names[0],
            "pg_wal/RECOVERYXLOG",
            "--walg-file-prefix",
            str(store_b),
        ],
        env,
        cwd=pg_wal.parent,
    )
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 60
    while not sorted(n for n in names[1:] if list(pg_wal.glob(f".wal-g/prefetch/*/{n}"))):
        assert time.monotonic() < deadline, "nothing was prefetched"
        time.sleep(0.1)


@pytest.mark.parametrize(
    "argv",
    [
        ("--walg-file-prefix=", "wal-fetch", "N", "pg_wal/RECOVERYXLOG"),
        ("--pghost", "h", "--walg-file-prefix=", "wal-fetch", "N", "pg_wal/RECOVERYXLOG"),
        ("--config", "CONFIG", "--walg-log-level= ", "wal-fetch", "N", "pg_wal/RECOVERYXLOG"),
        ("wal-fetch", "N", "pg_wal/RECOVERYXLOG", "--walg-file-prefix"),
    ],
)
def test_a_refused_setting_flag_stops_archive_recovery_wherever_it_stands(
    tmp_path: Path, walg_bin: str, argv: tuple[str, ...]
) -> None:
    """restore_command = 'walg --walg-file-prefix=$PREFIX wal-fetch %f %p' with the shell
    variable unset, in archive recovery: the refused flag must exit 128 (PostgreSQL stops),
    not the usage error's 2, which PostgreSQL reads as "not in the archive" and so ends
    recovery and promotes without the archived WAL. Before the command as after it."""
    store, home, pgdata = tmp_path / "store", tmp_path / "home", tmp_path / "pgdata"
    for folder in (store, home, pgdata / "pg_wal"):
        folder.mkdir(parents=True)
    (pgdata / "recovery.signal").touch()
    config = tmp_path / "walg.json"
    config.write_text("{}")
    name = "000000010000000000000001"
    line = [str(config) if a == "CONFIG" else name if a == "N" else a for a in argv]
    done = run_walg([walg_bin, *line], walg_env(store, home), cwd=pgdata)
    assert done.returncode == 128, (line, done.returncode, done.stderr)
    assert "--walg-" in done.stderr
    assert not (pgdata / "pg_wal" / "RECOVERYXLOG").exists()


def test_an_unknown_flag_with_a_secret_s_name_is_refused_without_its_value(
    tmp_path: Path, walg_bin: str
) -> None:
    """archive_command's output goes to PostgreSQL's log: a misspelt or unsupported flag
    whose name says it holds a key or a password (--walg-libsodium-keyy=..., WAL-G's
    --gs-encryption-key ..., a misspelt SAS token or credentials file) is refused as unknown
    (exit 2) naming it, but its value is not repeated there; another unknown argument is
    still shown whole."""
    store, home = tmp_path / "store", tmp_path / "home"
    store.mkdir()
    home.mkdir()
    env = walg_env(store, home)
    for argv in (
        ["backup-list", "--walg-libsodium-keyy=SEKRIT1"],
        ["wal-push", "pg_wal/X", "--gs-encryption-key", "SEKRIT1", "--no-such=visible"],
        ["backup-list", "--walg-pgp-passwrd", "SEKRIT1"],
        # Any word that keeps a variable out of the destination key (walg_destination).
        ["backup-list", "--walg-sas-tokn=SEKRIT1"],
        ["backup-list", "--walg-credentialz", "SEKRIT1"],
    ):
        done = run_walg([walg_bin, *argv], env)
        assert done.returncode == 2, (argv, done.stderr)
        assert "unrecognized arguments" in done.stderr, done.stderr
        flag = next(a for a in argv if a.startswith("--")).split("=")[0]
        assert flag in done.stderr, done.stderr
        assert "SEKRIT1" not in done.stderr, done.stderr
    shown = run_walg([walg_bin, "backup-list", "--no-such=visible"], env)
    assert shown.returncode == 2 and "--no-such=visible" in shown.stderr, shown.stderr


def test_a_misspelt_storage_flag_is_refused_and_wal_g_s_own_are_taken(
    tmp_path: Path, walg_bin: str
) -> None:
    """WAL-G binds a flag to each storage setting it allows and refuses any other as
    unknown. walg took every flag in a storage's family (``--aws-...``, ``--azure-...``) as a
    setting, so a misspelt credential flag was ignored without a word. It is now refused
    (exit 2), its value not shown, with the flag it looks like; WAL-G's own are taken."""
    store, home = tmp_path / "store", tmp_path / "home"
    store.mkdir()
    home.mkdir()
    env = walg_env(store, home)
    for argv, meant in (
        (["backup-list", "--aws-secret-acess-key=SEKRIT1"], "--aws-secret-access-key"),
        (["backup-list", "--azure-storage-sas-tokn", "SEKRIT1"], "--azure-storage-sas-token"),
        (["backup-list", "--walg-s3-storage-clas=STANDARD"], "--walg-s3-storage-class"),
        (["backup-list", "--ssh-pasword", "SEKRIT1"], "--ssh-password"),
    ):
        done = run_walg([walg_bin, *argv], env)
        assert done.returncode == 2, (argv, done.stderr)
        assert f"a misspelling of {meant}?" in done.stderr, done.stderr
        assert "SEKRIT1" not in done.stderr, done.stderr
    taken = [
        "--aws-secret-access-key=k",
        "--azure-storage-sas-token=t",
        "--wale-s3-prefix=s3://b/p",
        "--walg-s3-storage-class=STANDARD",
        "--ssh-password=p",
        "--google-application-credentials=/c.json",
    ]
    rest, flags = split_setting_flags(["backup-list", *taken])
    assert rest == ["backup-list"]
    assert sorted(flags) == sorted(a[2:].partition("=")[0].upper().replace("-", "_") for a in taken)
    # A storage setting WAL-G reads from the environment only has no flag there either.
    assert split_setting_flags(["--gcs-context-timeout=1s"]) == (["--gcs-context-timeout=1s"], {})
    listed = run_walg([walg_bin, "backup-list", "--aws-region=eu-west-1"], env)
    assert listed.returncode == 0, listed.stderr


def test_a_misspelt_storage_prefix_or_libpq_flag_is_named_with_the_flag_meant(
    tmp_path: Path, walg_bin: str
) -> None:
    """The README promises an unknown flag is named with the setting flag it looks like a
    misspelling of. The storage prefixes (``--walg-file-prefix``, the one every user of a
    local folder sets) and libpq's settings (``--pghost``) were not among those looked at, so
    ``--walg-file-prefx=/x`` was refused with no hint. Each flag named must be one walg takes."""
    store, home = tmp_path / "store", tmp_path / "home"
    store.mkdir()
    home.mkdir()
    env = walg_env(store, home)
    for typo, meant in (
        ("--walg-file-prefx", "--walg-file-prefix"),
        ("--wale-file-prefx", "--walg-file-prefix"),
        ("--pghots", "--pghost"),
        ("--pgpasword", "--pgpassword"),
    ):
        done = run_walg([walg_bin, "backup-list", f"{typo}=SEKRIT1"], env)
        assert done.returncode == 2, (typo, done.stderr)
        assert f"{typo}: a misspelling of {meant}?" in done.stderr, done.stderr
        rest, flags = split_setting_flags(["backup-list", f"{meant}=v"])
        assert rest == ["backup-list"] and len(flags) == 1, meant
    hidden = run_walg([walg_bin, "backup-list", "--pgpasword=SEKRIT1"], env)
    assert "SEKRIT1" not in hidden.stderr, hidden.stderr
