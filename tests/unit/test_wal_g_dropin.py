"""A WAL-G user who changes nothing but the binary: WAL-G's command lines and configuration
files, run through the real ``walg`` command against a local storage folder."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_backup_fetch_wal_g_layout import put_wal_g_backup

from fakewal import in_mount_namespace, run_walg, segment_bytes, walg_env
from walg.cli.main import _boolean_flag_values
from walg.errors import BackupNotFound, ConfigError
from walg.ops.backup_list import backup_with_user_data, same_json
from walg.settings import load
from walg.storage.file import FileStorage

SEG = "000000010000000000000001"
SYSID = 7000000000000000001


@pytest.fixture
def dropin(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A storage folder named only in a config file, a data directory with one segment, and
    an environment without walg settings."""
    store = tmp_path / "store"
    store.mkdir()
    config = tmp_path / "walg.json"
    config.write_text(json.dumps({"WALG_FILE_PREFIX": str(store)}))
    pg_wal = tmp_path / "pgdata" / "pg_wal"
    (pg_wal / "archive_status").mkdir(parents=True)
    (pg_wal / SEG).write_bytes(segment_bytes(SEG, SYSID))
    home = tmp_path / "home"
    home.mkdir()
    env = walg_env(store, home)
    del env["WALG_FILE_PREFIX"]
    return store, config, env


@pytest.mark.parametrize(
    "placement",
    [
        ["wal-push", "pg_wal/" + SEG, "--config", "{config}"],
        ["wal-push", "--config={config}", "pg_wal/" + SEG],
        ["--turbo", "wal-push", "pg_wal/" + SEG, "--config", "{config}"],
        ["wal-push", "pg_wal/" + SEG, "--config", "{config}", "--turbo"],
    ],
)
def test_config_and_turbo_after_the_command_name(
    walg_bin: str, dropin: tuple[Path, Path, dict[str, str]], placement: list[str]
) -> None:
    """WAL-G's --config and --turbo are flags of its root command, which cobra takes anywhere
    on the line: ``archive_command = 'wal-g wal-push %p --config /etc/wal-g.json'`` works
    there. walg refused it as a usage error (exit 2), so archiving stopped on every call.
    --turbo lifts WAL-G's throttling; walg has none to lift."""
    store, config, env = dropin
    argv = [walg_bin, *(a.format(config=config) for a in placement)]
    done = run_walg(argv, env, cwd=config.parent / "pgdata")
    assert done.returncode == 0, done.stderr
    assert (store / "wal_005" / f"{SEG}.lz4").is_file()
    listed = run_walg([walg_bin, "backup-list", "--json", "--config", str(config)], env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout or "[]") == []


def test_config_after_the_command_name_in_archive_recovery_reaches_the_file(
    walg_bin: str, dropin: tuple[Path, Path, dict[str, str]]
) -> None:
    """``restore_command = 'wal-g wal-fetch %f %p --config FILE'``: fetched, not a usage error
    (which walg turned into 128, stopping recovery)."""
    store, config, env = dropin
    pgdata = config.parent / "pgdata"
    pushed = run_walg([walg_bin, "--config", str(config), "wal-push", "pg_wal/" + SEG], env, pgdata)
    assert pushed.returncode == 0, pushed.stderr
    (pgdata / "recovery.signal").touch()
    argv = [walg_bin, "wal-fetch", SEG, "pg_wal/RECOVERYXLOG", "--config", str(config)]
    done = run_walg([*argv, "--turbo"], {**env, "WALG_DOWNLOAD_CONCURRENCY": "1"}, pgdata)
    assert done.returncode == 0, done.stderr
    wal = pgdata / "pg_wal"
    assert (wal / "RECOVERYXLOG").read_bytes() == (wal / SEG).read_bytes()
    assert os.path.isfile(store / "wal_005" / f"{SEG}.lz4")


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("WARNING")]


def test_wal_g_config_with_settings_walg_does_not_implement(
    walg_bin: str, dropin: tuple[Path, Path, dict[str, str]]
) -> None:
    """A WAL-G YAML config with a statsd tag mapping (which WAL-G reads as a map), delta
    backups and a rate limit. walg refused the whole file for the mapping (exit 78 on every
    archive_command call) and ignored the rest without a word. Now each command archives and
    names every setting it does not honour (only those that change that command in WAL-G)."""
    store, config, env = dropin
    yaml = config.with_suffix(".yaml")
    yaml.write_text(
        f"WALG_FILE_PREFIX: {store}\n"
        "WALG_STATSD_ADDRESS: localhost:8125\n"
        "WALG_STATSD_EXTRA_TAGS:\n  cluster: prod\n"
        "WALG_DELTA_MAX_STEPS: 6\n"
        "WALG_VERIFY_PAGE_CHECKSUMS: 'false'\n"  # WAL-G's default: nothing to say
        "GOMAXPROCS: 2\n"  # Go's own: nothing to say
    )
    pgdata = config.parent / "pgdata"
    argv = [walg_bin, "--config", str(yaml), "wal-push", "pg_wal/" + SEG]
    done = run_walg(argv, {**env, "WALG_NETWORK_RATE_LIMIT": "1048576"}, pgdata)
    assert done.returncode == 0, done.stderr
    assert (store / "wal_005" / f"{SEG}.lz4").is_file()
    warned = _warnings(done.stderr)
    assert len(warned) == 3, done.stderr
    for name in ("WALG_STATSD_ADDRESS", "WALG_STATSD_EXTRA_TAGS", "WALG_NETWORK_RATE_LIMIT"):
        assert any(name in line and "walg does not" in line for line in warned), (name, warned)
    # Delta backups change backup-push, not wal-push; backup-push would name them.
    assert not any("WALG_DELTA_MAX_STEPS" in line for line in warned)
    listed = run_walg([walg_bin, "--config", str(yaml), "backup-list"], env)
    assert listed.returncode == 0, listed.stderr
    assert len(_warnings(listed.stderr)) == 2, listed.stderr  # the statsd pair


def test_unknown_key_in_the_config_file_is_named(
    walg_bin: str, dropin: tuple[Path, Path, dict[str, str]]
) -> None:
    """WAL-G warns about a config file key it does not know; walg said nothing, so a
    misspelt setting (WALG_UPLOAD_CONCURENCY) was silently without effect."""
    store, config, env = dropin
    config.write_text(
        json.dumps({"WALG_FILE_PREFIX": str(store), "walg_upload_concurency": "4", "WALG_FOO": "1"})
    )
    argv = [walg_bin, "--config", str(config), "wal-push", "pg_wal/" + SEG]
    done = run_walg(argv, env, config.parent / "pgdata")
    assert done.returncode == 0, done.stderr
    warned = _warnings(done.stderr)
    assert len(warned) == 2, done.stderr
    misspelt = next(line for line in warned if "WALG_UPLOAD_CONCURENCY" in line)
    assert "unknown" in misspelt and "WALG_UPLOAD_CONCURRENCY?" in misspelt
    assert "WALG_FOO" in next(line for line in warned if line is not misspelt)
    # The environment holds whatever other tools need: WAL-G does not look at its names.
    done = run_walg(
        [walg_bin, "backup-list"], {**env, "WALG_FILE_PREFIX": str(store), "WALG_X": "1"}
    )
    assert done.returncode == 0 and _warnings(done.stderr) == [], done.stderr


def test_failover_storages_are_refused_by_name(
    walg_bin: str, dropin: tuple[Path, Path, dict[str, str]]
) -> None:
    """WAL-G's failover storages hold the WAL and backups it stored while the primary storage
    was down; walg cannot read them, and a wal-fetch that reported such a segment "not in the
    archive" would end a recovery early. Refused, saying why, not as a malformed value."""
    store, config, env = dropin
    yaml = config.with_suffix(".yaml")
    yaml.write_text(
        f"WALG_FILE_PREFIX: {store}\nWALG_FAILOVER_STORAGES:\n  s2:\n    WALG_FILE_PREFIX: /x\n"
    )
    done = run_walg([walg_bin, "--config", str(yaml), "backup-list"], env)
    assert done.returncode == 78
    assert "WALG_FAILOVER_STORAGES" in done.stderr and "failover" in done.stderr
    assert "single value" not in done.stderr


def test_home_config_files_are_searched_in_wal_g_s_order(tmp_path: Path) -> None:
    """WAL-G's config library looks for ~/.walg.json, then .toml, then .yaml and .yml; walg
    took .yaml before .toml, so with both in the home folder it archived elsewhere."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".walg.yaml").write_text("WALG_FILE_PREFIX: /from/yaml\n")
    (home / ".walg.toml").write_text('WALG_FILE_PREFIX = "/from/toml"\n')
    assert load(environ={"HOME": str(home)}).storage_prefix == "/from/toml"


def test_dotenv_config_file(tmp_path: Path) -> None:
    """WAL-G reads a config file named ``*.env`` (or ``~/.walg.env``) as a dotenv file; walg
    took it for JSON and refused it."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".walg.env").write_text(
        "# WAL-G settings\n"
        "export WALG_FILE_PREFIX=/from/env\n"
        "walg_compression_method = none# no lz4 here\n"
        "PGPORT: 7000\n"
        'WALG_SENTINEL_USER_DATA=\'{"a": "x # y"}\'  # kept as written\n'
        'PGAPPNAME="nightly \\"job\\""\n'
        "\n"
    )
    s = load(environ={"HOME": str(home)})
    assert s.config_file == str(home / ".walg.env")
    assert (s.storage_prefix, s.compression, s.pg.port) == ("/from/env", "none", "7000")
    assert s.sentinel_user_data == {"a": "x # y"}
    assert s.pg.params["application_name"] == 'nightly "job"'
    assert s.not_honoured("wal-push") == []

    # What walg cannot read as WAL-G would is refused, naming the line's key.
    for line, key in (("WALG_FILE_PREFIX=${HOME}/b", "WALG_FILE_PREFIX"), ("garbage", "line 1")):
        path = tmp_path / "other.env"
        path.write_text(line + "\n")
        with pytest.raises(ConfigError, match=key):
            load(environ={"HOME": str(home)}, config_path=str(path))


@pytest.mark.parametrize(
    ("value", "expected"),
    [(16.0, 16), ("16.0", 16), ("16.", 16), ("0x10", 16), ("0o20", 16), ("020", 16), ("1_6", 16)],
)
def test_integer_settings_take_what_wal_g_takes(
    tmp_path: Path, value: object, expected: int
) -> None:
    """WAL-G reads these through its config library's integer cast: a JSON number is a
    float64 (16.0 as config tools write it), a zero decimal part is dropped, and Go's base
    prefixes (a leading 0 is octal) and digit separators are read. walg refused all of them
    (exit 78 on every command, archiving included)."""
    config = tmp_path / "walg.json"
    config.write_text(json.dumps({"WALG_FILE_PREFIX": "/b", "WALG_UPLOAD_CONCURRENCY": value}))
    s = load(environ={"HOME": str(tmp_path)}, config_path=str(config))
    assert s.upload_concurrency == expected
    s = load(environ={"WALG_FILE_PREFIX": "/b", "WALG_DOWNLOAD_CONCURRENCY": str(value)})
    assert s.download_concurrency == expected


@pytest.mark.parametrize("value", ["16.5", "1e3", "16 threads", "0x", "09", "٣"])
def test_integer_settings_wal_g_refuses_are_refused(tmp_path: Path, value: str) -> None:
    """And what it does not read as written: WAL-G takes 16.5 for 16; walg refuses it."""
    with pytest.raises(ConfigError, match="WALG_UPLOAD_CONCURRENCY"):
        load(environ={"WALG_FILE_PREFIX": "/b", "WALG_UPLOAD_CONCURRENCY": value})


def test_config_file_numbers_read_as_wal_g_reads_them(tmp_path: Path) -> None:
    """A number in a config file is a float64 to WAL-G and becomes the shortest text of its
    value: 5432.0 is "5432" (so a PGPORT written by a config tool as 5432.0 reaches libpq
    as 5432; walg refused it as not a port number), 1e-07 is "0.0000001"."""
    config = tmp_path / "walg.json"
    config.write_text(
        '{"WALG_FILE_PREFIX": "/b", "PGPORT": 5432.0, "WALG_SENTINEL_USER_DATA": 1e-7}'
    )
    s = load(environ={"HOME": str(tmp_path)}, config_path=str(config))
    assert s.pg.port == "5432"
    assert s.values["WALG_SENTINEL_USER_DATA"] == "0.0000001"


def test_encryption_settings_at_wal_g_s_defaults_are_not_encryption(tmp_path: Path) -> None:
    """A config that writes out WAL-G's defaults (WALG_LIBSODIUM_KEY_TRANSFORM: none,
    WALG_ENVELOPE_CACHE_EXPIRATION: 0, as config templates do) asks for no encryption; WAL-G
    stores in clear with it. walg refused to touch storage (exit 78 on every command,
    archiving included). Any other value still is refused."""
    config = tmp_path / "walg.yaml"
    config.write_text(
        "WALG_FILE_PREFIX: /b\nWALG_LIBSODIUM_KEY_TRANSFORM: none\n"
        "WALG_ENVELOPE_CACHE_EXPIRATION: 0\n"
    )
    s = load(environ={"HOME": str(tmp_path)}, config_path=str(config))
    assert s.require_storage() == ("file", "/b")
    s = load(
        environ={"HOME": str(tmp_path), "WALG_LIBSODIUM_KEY_TRANSFORM": "hex"},
        config_path=str(config),
    )
    with pytest.raises(ConfigError, match="WALG_LIBSODIUM_KEY_TRANSFORM is set"):
        s.require_storage()


def test_unknown_log_level_is_named(tmp_path: Path) -> None:
    """WAL-G refuses a WALG_LOG_LEVEL other than NORMAL, DEVEL or ERROR; walg logged at
    NORMAL without a word. It goes on (a log level must not stop archiving), and says so."""
    s = load(environ={"WALG_FILE_PREFIX": "/b", "WALG_LOG_LEVEL": "verbose"})
    assert any("WALG_LOG_LEVEL" in line for line in s.not_honoured("wal-push"))
    for level in ("NORMAL", "devel", "ERROR"):
        assert load(environ={"WALG_LOG_LEVEL": level}).not_honoured("wal-push") == []


def test_integrity_max_delayed_wals_is_read_as_wal_g_reads_it(
    walg_bin: str, dropin: tuple[Path, Path, dict[str, str]]
) -> None:
    """WALG_INTEGRITY_MAX_DELAYED_WALS is an integer setting like the others (see above)."""
    store, _, env = dropin
    env = {**env, "WALG_FILE_PREFIX": str(store), "WALG_INTEGRITY_MAX_DELAYED_WALS": "2.0"}
    argv = [walg_bin, "wal-verify", "integrity", "--timeline", "1", "--lsn", "0/3000000"]
    done = run_walg([*argv, "--json"], env)
    assert done.returncode == 0, done.stderr
    assert "integrity" in json.loads(done.stdout)


def test_log_destination_is_honoured(
    walg_bin: str, dropin: tuple[Path, Path, dict[str, str]]
) -> None:
    """WALG_LOG_DESTINATION: WAL-G writes its log, errors included, to that file (appended)
    instead of stderr. walg ignored it, so the log an operator watched stayed silent."""
    store, _, env = dropin
    log = store.parent / "wal-g.log"
    log.write_text("earlier\n")
    env = {**env, "WALG_FILE_PREFIX": str(store), "WALG_LOG_DESTINATION": str(log)}
    done = run_walg([walg_bin, "backup-list"], env)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    fetch = [walg_bin, "wal-fetch", "000000010000000000000042", str(store.parent / "x")]
    done = run_walg(fetch, {**env, "WALG_DOWNLOAD_CONCURRENCY": "1"})
    assert done.returncode == 74 and done.stderr == "", done.stderr
    lines = log.read_text().splitlines()
    assert lines[0] == "earlier"
    assert "No backups found" in lines[1] and "000000010000000000000042" in lines[2]
    # "stderr" is WAL-G's name for the default; a file that cannot be opened is an error.
    done = run_walg([walg_bin, "backup-list"], {**env, "WALG_LOG_DESTINATION": "stderr"})
    assert done.returncode == 0 and "No backups found" in done.stderr
    done = run_walg([walg_bin, "backup-list"], {**env, "WALG_LOG_DESTINATION": str(store)})
    assert done.returncode == 1 and "WALG_LOG_DESTINATION" in done.stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"),
    reason="a private mount over the user's home folder needs root and unshare",
)
@pytest.mark.parametrize("home", [None, "elsewhere"])
def test_default_config_of_the_user_running_it(
    walg_bin: str, tmp_path: Path, home: str | None
) -> None:
    """WAL-G reads ~/.walg.json from the home folder of the user running it (its passwd
    entry), whatever $HOME says. A server started by ``su postgres -c 'pg_ctl start'`` keeps
    root's HOME, and one started with a cleared environment has none: walg found no config
    there ("no storage configured", exit 78 on every archive_command call). $HOME's file is
    still taken first when there is one."""
    store = tmp_path / "store"
    store.mkdir()
    passwd_home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    private = tmp_path / "passwd-home"
    private.mkdir()
    (private / ".walg.json").write_text(json.dumps({"WALG_FILE_PREFIX": str(store)}))
    env = {"PATH": os.environ["PATH"]}
    if home is not None:
        # Another user's folder, as root's HOME is to a server started by su postgres.
        (tmp_path / home).mkdir()
        os.chown(tmp_path / home, pwd.getpwnam("pgtest").pw_uid, -1)
        env["HOME"] = str(tmp_path / home)
    # The passwd home folder, seen through a private mount: the real one is left alone.
    namespace = in_mount_namespace('mount --bind "$0" "$1" && shift && exec "$@"', str(private))
    argv = [*namespace[:-1], namespace[-1], str(passwd_home), walg_bin, "backup-list", "--json"]
    done = run_walg(argv, env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_user_data_selection_skips_backups_without_metadata(tmp_path: Path) -> None:
    """A backup without metadata.json (WAL-E's, WAL-G's oldest) has no user data: the
    search passes it by instead of failing as backup-list --detail does."""
    store = tmp_path / "store"
    base = store / "basebackups_005"
    golden = Path(__file__).parent / "golden"
    for name in ("base_000000010000000000000002", "base_000000010000000000000004"):
        (base / name).mkdir(parents=True)
        sentinel = (golden / "sentinel_v2_full.json").read_bytes()
        (base / f"{name}_backup_stop_sentinel.json").write_bytes(sentinel)
    metadata = (golden / "metadata.json").read_bytes()
    (base / "base_000000010000000000000004" / "metadata.json").write_bytes(metadata)
    storage = FileStorage(store)
    wanted = {"tags": ["a", "b"], "env": "prod"}
    assert backup_with_user_data(storage, wanted) == "base_000000010000000000000004"
    with pytest.raises(BackupNotFound):
        backup_with_user_data(storage, {"env": "prod", "tags": ["a", "b", 1.0]})
    assert same_json(1, 1.0) and not same_json(True, 1) and not same_json("1", 1)


def test_not_honoured_settings_are_named_by_the_commands_they_change() -> None:
    env = {"WALG_DIRECT_IO": "true", "WALG_DOWNLOAD_FILE_RETRIES": "3"}
    s = load(environ=env)
    assert [m.split()[0] for m in s.not_honoured("backup-push")] == ["WALG_DIRECT_IO"]
    assert [m.split()[0] for m in s.not_honoured("wal-fetch")] == ["WALG_DOWNLOAD_FILE_RETRIES"]
    assert s.not_honoured("wal-push") == []


@pytest.mark.parametrize("how", ["--config", "WALG_CONFIG_PATH"])
@pytest.mark.parametrize("content", [None, '{"WALG_FILE_PREFIX": ', "WALG_FILE_PREFIX: [\n"])
def test_a_missing_or_unparsable_config_file_stops_and_says_so(
    tmp_path: Path, walg_bin: str, how: str, content: str | None
) -> None:
    """WAL-G (internal/config/config.go ReadConfigFromFile) warns about a config file it cannot
    read or parse and goes on with the environment alone; walg refuses (exit 78), since going
    on could archive to another place or unencrypted. The message names the file, says why,
    and that nothing was done (it said neither that nothing was done nor why it stopped)."""
    config = tmp_path / ("walg.yaml" if content and content.endswith("\n") else "walg.json")
    if content is not None:
        config.write_text(content)
    store = tmp_path / "store"
    store.mkdir()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "WALG_FILE_PREFIX": str(store),
    }
    argv = [walg_bin, "backup-list"]
    if how == "--config":
        argv[1:1] = ["--config", str(config)]
    else:
        env["WALG_CONFIG_PATH"] = str(config)
    for command in (["backup-list"], ["wal-fetch", "000000010000000000000001", "x"]):
        done = subprocess.run(
            [*argv[:-1], *command],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 78, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        assert str(config) in done.stderr
        assert ("does not exist" if content is None else "is not valid") in done.stderr
        assert "nothing was done" in done.stderr
        assert "WAL-G" in done.stderr and "environment" in done.stderr
    assert not (tmp_path / "x").exists()


def test_target_storage_default_is_the_primary_and_another_is_refused(
    tmp_path: Path, walg_bin: str
) -> None:
    """WAL-G's --target-storage (wal-push, wal-fetch, backup-list, backup-push, backup-fetch;
    cmd/pg/*.go) and WALG_TARGET_STORAGE pick one of its failover storages; 'default' is the
    primary (internal/multistorage). walg refused the flag as unknown (exit 2) even for
    'default', and went on with the primary for any other name in the setting, where WAL-G
    stores to or reads from that storage, or fails without it. Now 'default' is accepted and
    changes nothing; another name is refused by name and nothing is done."""
    store, home = tmp_path / "store", tmp_path / "home"
    store.mkdir()
    home.mkdir()
    env = walg_env(store, home, TOTAL_BG_UPLOADED_LIMIT="0")
    wal = tmp_path / "000000010000000000000001"
    wal.write_bytes(b"x" * 8192)
    pushed = run_walg([walg_bin, "wal-push", str(wal), "--target-storage", "default"], env)
    assert pushed.returncode == 0, pushed.stderr
    fetched = run_walg(
        [walg_bin, "wal-fetch", "--target-storage=default", wal.name, str(tmp_path / "got")], env
    )
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "got").read_bytes() == wal.read_bytes()
    listed = run_walg([walg_bin, "backup-list", "--target-storage", "default"], env)
    assert listed.returncode == 0, listed.stderr
    other = tmp_path / "000000010000000000000002"
    other.write_bytes(b"y" * 8192)
    refused = run_walg([walg_bin, "wal-push", str(other), "--target-storage", "backup2"], env)
    assert refused.returncode == 2, refused.stderr
    assert "--target-storage backup2" in refused.stderr
    refused = run_walg([walg_bin, "wal-push", str(other)], {**env, "WALG_TARGET_STORAGE": "b2"})
    assert refused.returncode == 78, refused.stderr
    assert "WALG_TARGET_STORAGE" in refused.stderr
    assert sorted(p.name for p in (store / "wal_005").iterdir()) == [f"{wal.name}.lz4"]


def test_wal_g_boolean_flags_take_a_value(tmp_path: Path, walg_bin: str) -> None:
    """WAL-G's boolean flags are pflag's, which take ``--detail=true`` or ``--json=false`` (Go's
    strconv.ParseBool: 1 t T TRUE true True, 0 f F FALSE false False), and short ones too
    (``-f=true``). walg refused every such value (exit 2, 'ignored explicit argument'), so a
    script that wrote one failed. A value Go does not read stays an error."""
    store, home = tmp_path / "store", tmp_path / "home"
    store.mkdir()
    home.mkdir()
    storage = FileStorage(store)
    put_wal_g_backup(storage)
    storage.close()
    env = walg_env(store, home)
    plain = run_walg([walg_bin, "backup-list", "--detail"], env)
    assert plain.returncode == 0, plain.stderr
    for argv in (
        ["backup-list", "--detail=true", "--json=false"],
        ["backup-list", "--detail=1", "--pretty=F"],
        ["backup-list", "--json=False", "--detail=T"],
    ):
        done = run_walg([walg_bin, *argv], env)
        assert done.returncode == 0, (argv, done.stderr)
        assert done.stdout == plain.stdout, argv
    json_out = run_walg([walg_bin, "backup-list", "--json=TRUE"], env)
    assert json_out.returncode == 0, json_out.stderr
    assert json.loads(json_out.stdout)
    shown = run_walg([walg_bin, "wal-show", "--without-backups=true", "--detailed-json=true"], env)
    assert shown.returncode == 0, shown.stderr
    for argv in (["backup-list", "--detail=yes"], ["wal-push", "--json=false", "x"]):
        assert run_walg([walg_bin, *argv], env).returncode == 2, argv
    # backup-push's short forms, as pflag reads them, and --config before the command.
    argv = ["--config", "c.json", "backup-push", "-f=true", "-p=0", "--permanent=t", "/d"]
    assert _boolean_flag_values(argv) == [
        "--config",
        "c.json",
        "backup-push",
        "-f",
        "--permanent",
        "/d",
    ]
    assert _boolean_flag_values(["backup-push", "--", "-f=true"]) == [
        "backup-push",
        "--",
        "-f=true",
    ]


def test_a_plain_wal_push_or_wal_fetch_loads_no_target_storage_code(tmp_path: Path) -> None:
    """PostgreSQL pays every import of its calls: --target-storage's module is loaded only when
    the flag is given."""
    store = tmp_path / "store"
    store.mkdir()
    wal = tmp_path / "000000010000000000000001"
    wal.write_bytes(b"x" * 8192)
    code = (
        "import sys; from walg.cli.main import _run; "
        "code = _run(sys.argv[1:])[0]; "
        "print(code, 'walg.cli.target_storage' in sys.modules)"
    )
    env = {**walg_env(store, tmp_path), "TOTAL_BG_UPLOADED_LIMIT": "0"}
    for argv, loaded in (
        (["wal-push", str(wal)], "False"),
        (["wal-fetch", wal.name, str(tmp_path / "got")], "False"),
        (["wal-push", str(wal), "--target-storage", "default"], "True"),
    ):
        done = subprocess.run(
            [sys.executable, "-c", code, *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.stdout.split() == ["0", loaded], (argv, done.stdout, done.stderr)
