"""walg.settings.load: WAL-G's environment names, config files, validation and redaction."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from walg import settings as settings_module
from walg.errors import ConfigError
from walg.settings import load

SECRET = "s3cr3t-PGPASSWORD-value"


def env(tmp_path: Path, **values: str) -> dict[str, str]:
    """An environment with HOME pointing at an empty directory (no ~/.walg.* picked up)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"HOME": str(home), **values}


def test_defaults(tmp_path: Path) -> None:
    s = load(environ=env(tmp_path))
    assert s.storage_kind is None
    assert s.storage_prefix is None
    assert s.compression == "lz4"
    assert s.upload_concurrency == 16
    assert s.upload_disk_concurrency is None
    assert s.download_concurrency == 10
    assert s.tar_size_threshold == 1073741823
    assert s.sentinel_user_data is None
    assert s.pgdata is None
    assert s.prevent_wal_overwrite is True  # walg: archived WAL is immutable by default
    assert s.stop_backup_timeout == settings_module.DEFAULT_STOP_BACKUP_TIMEOUT
    assert s.tar_disable_fsync is False
    assert s.log_level == "NORMAL"
    assert s.config_file is None
    assert s.pg.libpq_kwargs() == {
        "fallback_application_name": "wal-g",
        "connect_timeout": 30,
        "dbname": "postgres",
    }
    with pytest.raises(ConfigError) as info:
        s.require_storage()
    assert "WALG_FILE_PREFIX" in str(info.value)


@pytest.mark.parametrize("name", ["WALG_FILE_PREFIX", "WALE_FILE_PREFIX"])
def test_file_prefix(tmp_path: Path, name: str) -> None:
    s = load(environ=env(tmp_path, **{name: "/var/backups/pg"}))
    assert s.storage_kind == "file"
    assert s.storage_prefix == "/var/backups/pg"
    assert s.storage_prefix_key == name
    assert s.require_storage() == ("file", "/var/backups/pg")


def test_walg_prefix_wins_over_wale_spelling_of_the_same_storage(tmp_path: Path) -> None:
    s = load(environ=env(tmp_path, WALG_FILE_PREFIX="/new", WALE_FILE_PREFIX="/old"))
    assert (s.storage_prefix, s.storage_prefix_key) == ("/new", "WALG_FILE_PREFIX")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("WALG_FILE_PREFIX", "WALG_S3_PREFIX"),
        ("WALE_S3_PREFIX", "WALG_GS_PREFIX"),
        ("WALG_SSH_PREFIX", "WALE_FILE_PREFIX"),
    ],
)
def test_two_storage_prefixes_are_an_error_naming_both(
    tmp_path: Path, first: str, second: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(environ=env(tmp_path, **{first: "x://a", second: "y://b"}))
    assert first in str(info.value)
    assert second in str(info.value)


def test_empty_prefix_is_unset(tmp_path: Path) -> None:
    s = load(environ=env(tmp_path, WALG_FILE_PREFIX="", WALG_S3_PREFIX="  "))
    assert s.storage_kind is None


def test_storage_subfolder(tmp_path: Path) -> None:
    s = load(environ=env(tmp_path, WALG_FILE_PREFIX="/b", WALG_STORAGE_PREFIX="/sub/dir/"))
    assert s.storage_subfolder == "sub/dir"


@pytest.mark.parametrize("method", ["lz4", "lzma", "zstd", "brotli", "none", "LZ4"])
def test_known_compression_methods(tmp_path: Path, method: str) -> None:
    assert load(environ=env(tmp_path, WALG_COMPRESSION_METHOD=method)).compression == (
        method.lower()
    )


def test_bad_compression_method_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(environ=env(tmp_path, WALG_COMPRESSION_METHOD="gzip"))
    assert "WALG_COMPRESSION_METHOD" in str(info.value)
    assert "gzip" in str(info.value)


@pytest.mark.parametrize(
    "name",
    [
        "WALG_UPLOAD_CONCURRENCY",
        "WALG_DOWNLOAD_CONCURRENCY",
        "WALG_UPLOAD_DISK_CONCURRENCY",
        "WALG_TAR_SIZE_THRESHOLD",
    ],
)
@pytest.mark.parametrize("value", ["many", "1.5", "-4", "0"])
def test_bad_integers_name_the_variable(tmp_path: Path, name: str, value: str) -> None:
    # Read when used (those only base backups use: when first read, see test_cli).
    with pytest.raises(ConfigError) as info:
        getattr(load(environ=env(tmp_path, **{name: value})), name[5:].lower())
    assert name in str(info.value)


@pytest.mark.parametrize(
    "name", ["WALG_UPLOAD_CONCURRENCY", "WALG_DOWNLOAD_CONCURRENCY", "WALG_UPLOAD_DISK_CONCURRENCY"]
)
def test_concurrency_has_an_upper_bound(tmp_path: Path, name: str) -> None:
    """99999999999999999999 made backup-push submit that many futures (10 GB and growing) and
    the prefetch child build a list of that many names; 1024 is the documented most."""
    assert getattr(load(environ=env(tmp_path, **{name: "1024"})), name[5:].lower()) == 1024
    for value in ("1025", "99999999999999999999"):
        with pytest.raises(ConfigError, match=f"{name}={value} must be at most 1024"):
            getattr(load(environ=env(tmp_path, **{name: value})), name[5:].lower())
    path = tmp_path / "c.yaml"
    path.write_text(f"{name}: 99999999999999999999\n")
    with pytest.raises(ConfigError, match="at most 1024"):
        getattr(load(environ=env(tmp_path), config_path=str(path)), name[5:].lower())


def test_prefetch_depth_is_capped(tmp_path: Path) -> None:
    from walg.ops.wal_prefetch import MAX_PREFETCH_DEPTH, prefetch_depth

    assert prefetch_depth(load(environ=env(tmp_path, WALG_DOWNLOAD_CONCURRENCY="7"))) == 7
    most = load(environ=env(tmp_path, WALG_DOWNLOAD_CONCURRENCY="1024"))
    assert prefetch_depth(most) == MAX_PREFETCH_DEPTH == 64


@pytest.mark.parametrize("mib", [1, 2, 16, 64, 1024])
def test_wal_segment_sizes_postgresql_can_have_are_taken(tmp_path: Path, mib: int) -> None:
    s = load(environ=env(tmp_path, WALG_PG_WAL_SIZE=str(mib)))
    assert s.wal_segment_size == mib << 20


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("3", "is not a WAL segment size"),
        ("48", "is not a WAL segment size"),
        ("2048", "must be at most 1024"),
        ("99999999999999999999", "must be at most 1024"),
        ("0", "must be at least 1"),
        ("16MB", "is not an integer"),
    ],
)
def test_wal_segment_sizes_postgresql_cannot_have_are_refused(
    tmp_path: Path, raw: str, message: str
) -> None:
    """A size that is no power of two from 1 to 1024 MiB puts every segment boundary walg
    computes (prefetch names, wal-show ranges, the size a prefetched file must have) in the
    wrong place; initdb accepts only those."""
    with pytest.raises(ConfigError, match=message) as info:
        load(environ=env(tmp_path, WALG_PG_WAL_SIZE=raw))
    assert "WALG_PG_WAL_SIZE" in str(info.value)


def test_integers_are_parsed(tmp_path: Path) -> None:
    s = load(
        environ=env(
            tmp_path,
            WALG_UPLOAD_CONCURRENCY="3",
            WALG_DOWNLOAD_CONCURRENCY=" 7 ",
            WALG_UPLOAD_DISK_CONCURRENCY="2",
            WALG_TAR_SIZE_THRESHOLD="1000000",
        )
    )
    assert (s.upload_concurrency, s.download_concurrency) == (3, 7)
    assert s.upload_disk_concurrency == 2
    assert s.tar_size_threshold == 1000000


@pytest.mark.parametrize(("raw", "value"), [("true", True), ("FALSE", False), ("1", True)])
def test_booleans(tmp_path: Path, raw: str, value: bool) -> None:
    s = load(
        environ=env(
            tmp_path,
            WALG_PREVENT_WAL_OVERWRITE=raw,
            WALG_TAR_DISABLE_FSYNC=raw,
            WALG_DAEMON_FOLLOW_WAL=raw,
            WALG_FILE_DIRECT_IO=raw,
        )
    )
    assert s.prevent_wal_overwrite is value
    assert s.tar_disable_fsync is value
    assert s.daemon_follow_wal is value
    assert s.file_direct_io is value
    assert load(environ=env(tmp_path)).daemon_follow_wal is True  # on by default
    assert load(environ=env(tmp_path)).file_direct_io is True


@pytest.mark.parametrize(
    "name",
    [
        "WALG_PREVENT_WAL_OVERWRITE",
        "WALG_DAEMON_FOLLOW_WAL",
        "WALG_FILE_DIRECT_IO",
        "WALG_TAR_DISABLE_FSYNC",
    ],
)
def test_bad_boolean_names_the_variable(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        getattr(load(environ=env(tmp_path, **{name: "maybe"})), name[5:].lower())
    assert name in str(info.value)


def test_sentinel_user_data_json(tmp_path: Path) -> None:
    s = load(environ=env(tmp_path, WALG_SENTINEL_USER_DATA='{"env": "prod", "n": [1, 2]}'))
    assert s.sentinel_user_data == {"env": "prod", "n": [1, 2]}
    assert load(environ=env(tmp_path, WALG_SENTINEL_USER_DATA="42")).sentinel_user_data == 42


def test_sentinel_user_data_not_json_is_kept_as_a_string(tmp_path: Path) -> None:
    s = load(environ=env(tmp_path, WALG_SENTINEL_USER_DATA="nightly backup"))
    assert s.sentinel_user_data == "nightly backup"


@pytest.mark.parametrize("raw", ["  nightly backup\n", "\x1c\x1dnightly\x1e\x1f", "\t", " "])
def test_sentinel_user_data_not_json_is_kept_exactly_with_its_surrounding_whitespace(
    tmp_path: Path, raw: str
) -> None:
    # WAL-G (before it refused text that is not JSON) stored the variable's text as it is:
    # only an empty value is no user data.
    s = load(environ=env(tmp_path, WALG_SENTINEL_USER_DATA=raw))
    assert s.sentinel_user_data == raw


def test_sentinel_user_data_json_with_surrounding_whitespace_is_the_json_value(
    tmp_path: Path,
) -> None:
    s = load(environ=env(tmp_path, WALG_SENTINEL_USER_DATA=' \n{"env": "prod"}\t\r\n'))
    assert s.sentinel_user_data == {"env": "prod"}


def test_fetch_target_user_data_is_kept_exactly(tmp_path: Path) -> None:
    s = load(environ=env(tmp_path, WALG_FETCH_TARGET_USER_DATA="  nightly "))
    assert s.fetch_target_user_data == "  nightly "


@pytest.mark.parametrize(
    "raw", ["NaN", '{"x": 1e400}', '{"x": -Infinity}', "[Infinity]", "1" + "0" * 400]
)
def test_sentinel_user_data_beyond_json_numbers_is_kept_as_a_string(
    tmp_path: Path, raw: str
) -> None:
    # Go's encoding/json has no NaN, Infinity or numbers beyond float64: not JSON to WAL-G,
    # so stored as the string itself, never written out as the invalid JSON NaN.
    s = load(environ=env(tmp_path, WALG_SENTINEL_USER_DATA=raw))
    assert s.sentinel_user_data == raw
    json.dumps(s.sentinel_user_data, allow_nan=False)


@pytest.mark.parametrize("raw", ['"\\ud800"', "caf\udce9", '{"k": "\\udfff"}'])
def test_sentinel_user_data_that_is_not_utf8_is_a_config_error_when_read(
    tmp_path: Path, raw: str
) -> None:
    # A lone surrogate escape, or a non-UTF-8 byte as os.environ carries it (surrogateescape).
    s = load(environ=env(tmp_path, WALG_SENTINEL_USER_DATA=raw))  # wal-push must still work
    with pytest.raises(ConfigError) as info:
        _ = s.sentinel_user_data
    assert "WALG_SENTINEL_USER_DATA" in str(info.value)


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("45", 45.0),
        ("2m0.5s", 120.5),
    ],
)
def test_stop_backup_timeout_durations(tmp_path: Path, raw: str, seconds: float) -> None:
    s = load(environ=env(tmp_path, WALG_STOP_BACKUP_TIMEOUT=raw))
    assert s.stop_backup_timeout == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        (".5m", 30.0),
        ("5.m", 300.0),
        ("1h.5h", 5400.0),
        ("+90s", 90.0),
        ("-0s", 0.0),
        ("1500\u03bcs", 0.0015),  # Greek mu, which Go takes beside the micro sign
        ("1500\u00b5s", 0.0015),
    ],
)
def test_go_duration_forms_wal_g_takes_are_taken(raw: str, seconds: float) -> None:
    # WAL-G reads WALG_STOP_BACKUP_TIMEOUT and WALG_DAEMON_WAL_UPLOAD_TIMEOUT with Go's
    # time.ParseDuration, [-+]?([0-9]*(\.[0-9]*)?[a-z]+)+: a number may lack the digits on
    # either side of its point, and a sign may lead. Refused, they stopped a daemon whose
    # configuration WAL-G runs with.
    assert settings_module.parse_duration("X", raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", [".s", "+", "-", "+-5s", "5..5s", "1h+5m", "1h 5m"])
def test_not_go_durations_are_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="X="):
        settings_module.parse_duration("X", raw)


def test_stop_backup_timeout_zero_means_bounded_default(tmp_path: Path) -> None:
    s = load(environ=env(tmp_path, WALG_STOP_BACKUP_TIMEOUT="0"))
    assert s.stop_backup_timeout == settings_module.DEFAULT_STOP_BACKUP_TIMEOUT
    assert s.stop_backup_timeout > 0


@pytest.mark.parametrize("raw", ["soon", "5 minutes", "10x", "s", "1m-3s"])
def test_bad_duration_names_the_variable(tmp_path: Path, raw: str) -> None:
    s = load(environ=env(tmp_path, WALG_STOP_BACKUP_TIMEOUT=raw))  # only backup-push reads it
    with pytest.raises(ConfigError) as info:
        _ = s.stop_backup_timeout
    assert "WALG_STOP_BACKUP_TIMEOUT" in str(info.value)


@pytest.mark.parametrize(
    "raw", ["inf", "-inf", "nan", "NaN", "infinity", "1e400", "-1", "-0.5", "9" * 400 + "h"]
)
def test_non_finite_and_negative_durations_are_refused(tmp_path: Path, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_module.parse_duration("WALG_STOP_BACKUP_TIMEOUT", raw)
    assert "WALG_STOP_BACKUP_TIMEOUT" in str(info.value)
    s = load(environ=env(tmp_path, WALG_STOP_BACKUP_TIMEOUT=raw))
    with pytest.raises(ConfigError, match="WALG_STOP_BACKUP_TIMEOUT"):
        _ = s.stop_backup_timeout


def test_durations_longer_than_go_allows_are_refused() -> None:
    # Go's time.ParseDuration (so WAL-G) stops at 2562047h47m16.854775807s.
    assert settings_module.parse_duration("X", "2562047h") == 2562047 * 3600.0
    with pytest.raises(ConfigError, match="X="):
        settings_module.parse_duration("X", "2562048h")


def test_long_stop_backup_timeout_is_accepted(tmp_path: Path) -> None:
    s = load(environ=env(tmp_path, WALG_STOP_BACKUP_TIMEOUT="720h"))
    assert s.stop_backup_timeout == 720 * 3600.0


# --- config files -----------------------------------------------------------------------------


CONFIG_TEXTS = {
    "walg.json": json.dumps(
        {
            "WALG_FILE_PREFIX": "/from/file",
            "WALG_COMPRESSION_METHOD": "none",
            "WALG_UPLOAD_CONCURRENCY": 4,
            "WALG_PREVENT_WAL_OVERWRITE": False,
            "WALG_SENTINEL_USER_DATA": {"from": "file"},
            "PGHOST": "db.example",
            "PGPORT": 6543,
            "PGUSER": "backup",
            "PGDATABASE": "app",
            "PGPASSWORD": SECRET,
            "WALG_S3_SSE": "aws:kms",
        }
    ),
    "walg.yaml": (
        "WALG_FILE_PREFIX: /from/file\n"
        "WALG_COMPRESSION_METHOD: none\n"
        "WALG_UPLOAD_CONCURRENCY: 4\n"
        "WALG_PREVENT_WAL_OVERWRITE: false\n"
        "WALG_SENTINEL_USER_DATA:\n  from: file\n"
        "PGHOST: db.example\n"
        "PGPORT: 6543\n"
        "PGUSER: backup\n"
        "PGDATABASE: app\n"
        f"PGPASSWORD: {SECRET}\n"
        "WALG_S3_SSE: aws:kms\n"
    ),
    "walg.toml": (
        'WALG_FILE_PREFIX = "/from/file"\n'
        'WALG_COMPRESSION_METHOD = "none"\n'
        "WALG_UPLOAD_CONCURRENCY = 4\n"
        "WALG_PREVENT_WAL_OVERWRITE = false\n"
        'PGHOST = "db.example"\n'
        "PGPORT = 6543\n"
        'PGUSER = "backup"\n'
        'PGDATABASE = "app"\n'
        f'PGPASSWORD = "{SECRET}"\n'
        'WALG_S3_SSE = "aws:kms"\n'
        "[WALG_SENTINEL_USER_DATA]\n"
        'from = "file"\n'
    ),
}


@pytest.mark.parametrize("file_name", sorted(CONFIG_TEXTS))
def test_config_file_formats(tmp_path: Path, file_name: str) -> None:
    path = tmp_path / file_name
    path.write_text(CONFIG_TEXTS[file_name])
    s = load(environ=env(tmp_path), config_path=str(path))
    assert s.config_file == str(path)
    assert s.storage_kind == "file"
    assert s.storage_prefix == "/from/file"
    assert s.compression == "none"
    assert s.upload_concurrency == 4
    assert s.prevent_wal_overwrite is False
    assert s.sentinel_user_data == {"from": "file"}
    assert s.lookup("S3_SSE") == "aws:kms"
    kwargs = s.pg.libpq_kwargs()
    assert kwargs["host"] == "db.example"
    assert kwargs["port"] == "6543"
    assert kwargs["user"] == "backup"
    assert kwargs["dbname"] == "app"
    assert kwargs["password"] == SECRET
    assert SECRET not in repr(s)


@pytest.mark.parametrize("file_name", sorted(CONFIG_TEXTS))
def test_environment_wins_over_config_file(tmp_path: Path, file_name: str) -> None:
    path = tmp_path / file_name
    path.write_text(CONFIG_TEXTS[file_name])
    s = load(
        environ=env(
            tmp_path,
            WALG_COMPRESSION_METHOD="lz4",
            WALG_UPLOAD_CONCURRENCY="9",
            PGHOST="db.env",
        ),
        config_path=str(path),
    )
    assert s.compression == "lz4"
    assert s.upload_concurrency == 9
    assert s.pg.libpq_kwargs()["host"] == "db.env"
    assert s.storage_prefix == "/from/file"  # not set in the environment: the file's value


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"WALG_FILE_PREFIX": "/via/env/path"}))
    s = load(environ=env(tmp_path, WALG_CONFIG_PATH=str(path)))
    assert s.storage_prefix == "/via/env/path"
    assert s.config_file == str(path)


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load(environ=env(tmp_path), config_path=str(missing))
    assert str(missing) in str(info.value)
    with pytest.raises(ConfigError):
        load(environ=env(tmp_path, WALG_CONFIG_PATH=str(missing)))


@pytest.mark.parametrize(
    ("file_name", "text"),
    [
        ("bad.json", "{not json"),
        ("bad.yaml", "a: [unclosed"),
        ("bad.toml", "a = "),
        ("list.json", "[1, 2]"),
    ],
)
def test_malformed_config_file_is_a_config_error(tmp_path: Path, file_name: str, text: str) -> None:
    path = tmp_path / file_name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(environ=env(tmp_path), config_path=str(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("file_name", ["walg.conf", "walg", "walg.cfg.bak"])
def test_a_config_file_of_another_name_is_read_as_json_and_says_so(
    tmp_path: Path, file_name: str
) -> None:
    # YAML in /etc/walg/walg.conf: the error must tell which format walg expected.
    path = tmp_path / file_name
    path.write_text("WALG_FILE_PREFIX: /var/backups/pg\n")
    with pytest.raises(ConfigError) as info:
        load(environ=env(tmp_path), config_path=str(path))
    message = str(info.value)
    assert f"config file {path} is not valid JSON" in message
    assert ".yaml" in message and ".toml" in message
    path.write_text('{"WALG_FILE_PREFIX": "/var/backups/pg"}')
    assert load(environ=env(tmp_path), config_path=str(path)).storage_prefix == "/var/backups/pg"


@pytest.mark.parametrize(
    ("file_name", "text", "kind"),
    [
        ("dict.json", '{"WALG_FILE_PREFIX": {"path": "/var/backups/pg"}}', "a mapping"),
        ("list.yaml", "WALG_FILE_PREFIX:\n  - /var/backups/pg\n", "a list"),
        ("list.json", '{"WALG_FILE_PREFIX": "/b", "WALG_UPLOAD_CONCURRENCY": [1, 2]}', "a list"),
        ("table.toml", 'WALG_FILE_PREFIX = "/b"\n[WALG_COMPRESSION_METHOD]\na = 1\n', "a mapping"),
        ("date.toml", "WALG_FILE_PREFIX = 1979-05-27T07:32:00Z\n", "datetime"),
        ("date.yaml", "WALG_FILE_PREFIX: 2026-11-26\n", "date"),
        ("bytes.yaml", "WALG_FILE_PREFIX: !!binary aGVsbG8=\n", "bytes"),
        ("alias.yaml", "WALG_FILE_PREFIX: &a [*a]\n", "a list"),
    ],
)
def test_config_values_that_are_not_single_values_are_refused(
    tmp_path: Path, file_name: str, text: str, kind: str
) -> None:
    """A mapping or list was turned into its JSON text and used: WALG_FILE_PREFIX became a
    relative folder named '{"path": ...}' in PostgreSQL's data directory, and wal-push
    archived there with exit 0."""
    path = tmp_path / file_name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(environ=env(tmp_path), config_path=str(path))
    name = "WALG_UPLOAD_CONCURRENCY" if "CONCURRENCY" in text else "WALG_FILE_PREFIX"
    name = "WALG_COMPRESSION_METHOD" if "toml" in file_name and "[" in text else name
    message = str(info.value)
    assert str(path) in message and name in message and f"not {kind}" in message
    assert "/var/backups" not in message  # values are never shown: they may be secrets


def test_null_config_values_leave_the_setting_unset(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("WALG_FILE_PREFIX: /b\nWALG_COMPRESSION_METHOD:\nWALG_LOG_LEVEL: ~\n")
    s = load(environ=env(tmp_path), config_path=str(path))
    assert (s.compression, s.log_level) == ("lz4", "NORMAL")


def test_sentinel_user_data_in_a_file_that_contains_itself_is_a_config_error(
    tmp_path: Path,
) -> None:
    """A recursive YAML alias was "unexpected ValueError: Circular reference detected", exit 1."""
    path = tmp_path / "c.yaml"
    path.write_text("WALG_FILE_PREFIX: /b\nWALG_SENTINEL_USER_DATA: &a {self: *a}\n")
    with pytest.raises(ConfigError, match="WALG_SENTINEL_USER_DATA cannot be written as JSON"):
        load(environ=env(tmp_path), config_path=str(path))
    # A key walg does not read is only named, never written out: any value is taken.
    path.write_text("WALG_FILE_PREFIX: /b\na: &a [*a]\n")
    warned = load(environ=env(tmp_path), config_path=str(path)).not_honoured("wal-push")
    assert len(warned) == 1 and warned[0].startswith("A in the config file")


def _make_not_a_regular_file(path: Path, kind: str) -> None:
    """A FIFO, a device (a link to /dev/zero) or a folder at ``path``."""
    import os

    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()


@pytest.mark.parametrize("how", ["--config", "WALG_CONFIG_PATH"])
@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_a_config_file_that_is_not_a_regular_file_is_refused_at_once(
    tmp_path: Path, how: str, kind: str
) -> None:
    """Opening a FIFO for reading waits for a writer: every walg call, archive_command's
    included, hung on it."""
    import os
    import subprocess
    import sys

    path = tmp_path / "walg.json"
    _make_not_a_regular_file(path, kind)
    environ = env(tmp_path, WALG_FILE_PREFIX="/b")
    if how == "WALG_CONFIG_PATH":
        environ["WALG_CONFIG_PATH"] = str(path)
    # In a child, with a time limit: on the old code the open never returned.
    code = (
        "import json, sys; from walg.settings import load; from walg.errors import ConfigError\n"
        "try:\n"
        "    load(environ=json.loads(sys.argv[1]), config_path=sys.argv[2] or None)\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    argv = [sys.executable, "-c", code, json.dumps(environ), str(path) if how == "--config" else ""]
    child_env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=30, env=child_env
    )
    assert result.returncode == 0, result.stderr
    assert str(path) in result.stdout
    assert "not a regular file" in result.stdout


def test_home_walg_json_is_used_by_default(tmp_path: Path) -> None:
    environ = env(tmp_path)
    home_config = Path(environ["HOME"]) / ".walg.json"
    home_config.write_text(json.dumps({"WALG_FILE_PREFIX": "/from/home", "PGPORT": "7000"}))
    s = load(environ=environ)
    assert s.config_file == str(home_config)
    assert s.storage_prefix == "/from/home"
    assert s.pg.port == "7000"


def test_home_yaml_is_used_when_there_is_no_json(tmp_path: Path) -> None:
    environ = env(tmp_path)
    (Path(environ["HOME"]) / ".walg.yaml").write_text("WALG_FILE_PREFIX: /yaml/home\n")
    assert load(environ=environ).storage_prefix == "/yaml/home"


def test_no_home_no_config(tmp_path: Path) -> None:
    s = load(environ={"WALG_FILE_PREFIX": "/x"})
    assert s.config_file is None


def test_empty_environment_value_does_not_hide_config_file_value(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"WALG_FILE_PREFIX": "/from/file"}))
    s = load(environ=env(tmp_path, WALG_FILE_PREFIX=""), config_path=str(path))
    assert s.storage_prefix == "/from/file"


# --- PG connection and secrets ----------------------------------------------------------------


def test_pg_environment_reaches_libpq_kwargs(tmp_path: Path) -> None:
    s = load(
        environ=env(
            tmp_path,
            PGHOST="/run/postgresql",
            PGPORT="5433",
            PGUSER="postgres",
            PGPASSWORD=SECRET,
            PGDATABASE="db",
            PGSSLMODE="require",
            PGAPPNAME="myapp",
            PGCONNECT_TIMEOUT="5",
            PGDATA="/pgdata",
        )
    )
    assert s.pg.libpq_kwargs() == {
        "application_name": "myapp",
        "connect_timeout": 5,
        "host": "/run/postgresql",
        "port": "5433",
        "user": "postgres",
        "password": SECRET,
        "sslmode": "require",
        "dbname": "db",
    }
    assert s.pgdata == "/pgdata"
    assert s.require_pgdata(None) == "/pgdata"
    assert s.require_pgdata("/other") == "/other"


@pytest.mark.parametrize("port", ["abc", "0", "70000", "-1", "5432,x", "5432;5433", "+5432"])
def test_bad_pgport(tmp_path: Path, port: str) -> None:
    s = load(environ=env(tmp_path, PGPORT=port))  # commands that never connect don't care
    with pytest.raises(ConfigError) as info:
        _ = s.pg
    assert "PGPORT" in str(info.value)


def test_require_pgdata_without_pgdata(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load(environ=env(tmp_path)).require_pgdata(None)


def test_repr_never_contains_the_password(tmp_path: Path) -> None:
    s = load(
        environ=env(
            tmp_path,
            PGPASSWORD=SECRET,
            WALG_FILE_PREFIX="/b",
            AWS_SECRET_ACCESS_KEY="aws-" + SECRET,
        )
    )
    assert s.pg.password == SECRET
    assert SECRET not in repr(s)
    assert SECRET not in str(s)
    assert SECRET not in repr(s.pg)


def test_errors_never_contain_the_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(environ=env(tmp_path, PGPASSWORD=SECRET, PGPORT="bad", WALG_COMPRESSION_METHOD="x"))
    assert SECRET not in str(info.value)


def test_lookup_order_walg_then_wale_then_bare(tmp_path: Path) -> None:
    all_three = env(tmp_path, WALG_S3_SSE="g", WALE_S3_SSE="e", S3_SSE="bare")
    assert load(environ=all_three).lookup("S3_SSE") == "g"
    wale_and_bare = env(tmp_path, WALE_S3_SSE="e", S3_SSE="bare")
    assert load(environ=wale_and_bare).lookup("S3_SSE") == "e"
    assert load(environ=env(tmp_path, S3_SSE="bare")).lookup("S3_SSE") == "bare"
    assert load(environ=env(tmp_path, WALG_S3_SSE="", S3_SSE="bare")).lookup("S3_SSE") == "bare"
    assert load(environ=env(tmp_path)).lookup("S3_SSE") is None


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load(environ=env(tmp_path))
    with pytest.raises(AttributeError):
        s.compression = "none"  # type: ignore[misc]


def test_log_level(tmp_path: Path) -> None:
    assert load(environ=env(tmp_path, WALG_LOG_LEVEL="devel")).log_level == "DEVEL"


# --- PG* variables as libpq takes them ------------------------------------------------------


@pytest.mark.parametrize("port", ["5432,5433", "5432, 5433", ",5433", "5432,", "65535"])
def test_port_lists_are_accepted_as_libpq_does(tmp_path: Path, port: str) -> None:
    s = load(environ=env(tmp_path, PGHOST="h1,h2", PGPORT=port))
    assert s.pg.libpq_kwargs()["host"] == "h1,h2"
    assert s.pg.libpq_kwargs()["port"] == port.strip()


@pytest.mark.parametrize("raw", ["0", "-1"])
def test_connect_timeout_without_limit_keeps_walgs_bound_and_says_so(
    tmp_path: Path, raw: str, caplog: pytest.LogCaptureFixture
) -> None:
    s = load(environ=env(tmp_path, PGCONNECT_TIMEOUT=raw))
    with caplog.at_level("WARNING"):
        assert s.pg.libpq_kwargs()["connect_timeout"] == settings_module.DEFAULT_PG_CONNECT_TIMEOUT
    assert any("PGCONNECT_TIMEOUT" in r.getMessage() for r in caplog.records)


def test_connect_timeout_not_an_integer(tmp_path: Path) -> None:
    s = load(environ=env(tmp_path, PGCONNECT_TIMEOUT="soon"))
    with pytest.raises(ConfigError, match="PGCONNECT_TIMEOUT"):
        _ = s.pg


def test_the_variable_table_is_the_linked_libpqs() -> None:
    """Every pair matches libpq's own PQconndefaults table, and no variable of it is missing
    (apart from the ones handled apart), so none is forwarded under a wrong keyword."""
    from psycopg import pq

    libpq = {d.envvar.decode(): d.keyword.decode() for d in pq.Conninfo.get_defaults() if d.envvar}
    for name, keyword in settings_module.LIBPQ_VARIABLES.items():
        if name in libpq:  # an older libpq lacks the newest ones
            assert libpq[name] == keyword, name
    if pq.version() >= 180000:
        assert set(libpq) == set(settings_module.LIBPQ_VARIABLES)


# Each of these was dropped before, silently: several are security settings.
FORWARDED = {
    "PGCHANNELBINDING": ("channel_binding", "require"),
    "PGSSLCRL": ("sslcrl", "/etc/ssl/crl.pem"),
    "PGSSLCRLDIR": ("sslcrldir", "/etc/ssl/crls"),
    "PGREQUIREAUTH": ("require_auth", "scram-sha-256"),
    "PGTARGETSESSIONATTRS": ("target_session_attrs", "read-write"),
    "PGOPTIONS": ("options", "-c statement_timeout=5s"),
    "PGSSLMINPROTOCOLVERSION": ("ssl_min_protocol_version", "TLSv1.3"),
    "PGGSSENCMODE": ("gssencmode", "disable"),
    "PGHOSTADDR": ("hostaddr", "127.0.0.1"),
    "PGLOADBALANCEHOSTS": ("load_balance_hosts", "random"),
    "PGSSLCERTMODE": ("sslcertmode", "require"),
}


@pytest.mark.parametrize("where", ["config", "environment"])
def test_every_libpq_variable_reaches_libpq(tmp_path: Path, where: str) -> None:
    values = {name: value for name, (_, value) in FORWARDED.items()}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(values if where == "config" else {}))
    environ = env(tmp_path, **(values if where == "environment" else {}))
    kwargs = load(environ=environ, config_path=str(path)).pg.libpq_kwargs()
    for keyword, value in FORWARDED.values():
        assert kwargs[keyword] == value


def test_environment_wins_over_config_file_for_libpq_variables(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("PGCHANNELBINDING: prefer\nPGSSLMODE: require\n")
    s = load(environ=env(tmp_path, PGCHANNELBINDING="require"), config_path=str(path))
    kwargs = s.pg.libpq_kwargs()
    assert (kwargs["channel_binding"], kwargs["sslmode"]) == ("require", "require")


def test_a_service_supplies_the_database_and_application_name(tmp_path: Path) -> None:
    kwargs = load(environ=env(tmp_path, PGSERVICE="backup")).pg.libpq_kwargs()
    assert kwargs["service"] == "backup"
    assert "dbname" not in kwargs  # the service file's, else libpq's default
    assert "application_name" not in kwargs
    assert kwargs["fallback_application_name"] == "wal-g"


@pytest.mark.parametrize(
    ("sslmode", "expected"),
    [
        (None, "require"),
        ("disable", "require"),
        ("prefer", "require"),
        ("verify-full", "verify-full"),
    ],
)
def test_requiressl_still_requires_ssl(tmp_path: Path, sslmode: str | None, expected: str) -> None:
    extra = {"PGSSLMODE": sslmode} if sslmode else {}
    kwargs = load(environ=env(tmp_path, PGREQUIRESSL="1", **extra)).pg.libpq_kwargs()
    assert kwargs["sslmode"] == expected
    assert "requiressl" not in kwargs


def test_unknown_pg_names_in_the_config_file_warn_and_do_not_fail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.json"
    path.write_text(
        json.dumps(
            {
                "PGHOSTNAME": "typo",
                "PGSERVICEFILE": "/etc/pg_service.conf",
                "PGDATA": "/pgdata",
                "PG_READY_RENAME": "true",
                "PGSSLMODE": "verify-full",
            }
        )
    )
    environ = env(tmp_path, PGSOMETHING_ELSE="set by another tool")
    s = load(environ=environ, config_path=str(path))
    with caplog.at_level("WARNING"):
        kwargs = s.pg.libpq_kwargs()
    assert kwargs["sslmode"] == "verify-full"
    assert "typo" not in kwargs.values()
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "PGHOSTNAME" in warned
    assert "PGSERVICEFILE" in warned
    for quiet in ("PGDATA", "PG_READY_RENAME", "PGSSLMODE", "PGSOMETHING_ELSE"):
        assert quiet not in warned


# --- config-file keys in any case -------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_name", "text"),
    [
        ("c.json", json.dumps({"walg_file_prefix": "/lower", "PgPassword": SECRET})),
        ("c.yaml", f"walg_file_prefix: /lower\nPgPassword: {SECRET}\n"),
        ("c.toml", f'walg_file_prefix = "/lower"\nPgPassword = "{SECRET}"\n'),
    ],
)
def test_config_file_keys_match_in_any_case(tmp_path: Path, file_name: str, text: str) -> None:
    path = tmp_path / file_name
    path.write_text(text)
    s = load(environ=env(tmp_path), config_path=str(path))
    assert s.require_storage() == ("file", "/lower")
    assert s.pg.password == SECRET


def test_environment_names_stay_case_sensitive(tmp_path: Path) -> None:
    assert load(environ=env(tmp_path, walg_file_prefix="/lower")).storage_prefix is None


def test_a_key_set_twice_in_different_cases_is_an_error_without_values(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"PGPASSWORD": SECRET, "pgpassword": SECRET + "2"}))
    with pytest.raises(ConfigError) as info:
        load(environ=env(tmp_path), config_path=str(path))
    assert "PGPASSWORD" in str(info.value)
    assert SECRET not in str(info.value)


# --- parse errors never quote the file --------------------------------------------------------


@pytest.mark.parametrize(
    ("file_name", "text", "line"),
    [
        ("bad.yaml", f"WALG_FILE_PREFIX: /x\nPGPASSWORD: {SECRET}: pw\n", 2),
        ("bad.yaml", f'WALG_FILE_PREFIX: /x\nPGPASSWORD: "{SECRET}\\q"\n', 2),
        ("bad.yaml", f"a: 1\nb: !!python/object:{SECRET} {{}}\n", 2),
        ("bad.yaml", f"a: 1\n\tPGPASSWORD: {SECRET}\n", 2),
        ("bad.yml", f"PGPASSWORD: [{SECRET}\n", None),
        ("bad.json", f'{{\n"PGPASSWORD": {SECRET}\n}}', 2),
        ("bad.json", f'{{\n"PGPASSWORD": "{SECRET}\\q"\n}}', 2),
        ("bad.toml", f"WALG_FILE_PREFIX = '/x'\nPGPASSWORD = {SECRET}\n", 2),
        ("bad.toml", f"[{SECRET}]\n[{SECRET}]\n", 2),
        ("bad.toml", f'PGPASSWORD = "{SECRET}\\q"\n', 1),
    ],
)
def test_parse_errors_give_the_position_never_the_text(
    tmp_path: Path, file_name: str, text: str, line: int | None
) -> None:
    path = tmp_path / file_name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(environ=env(tmp_path), config_path=str(path))
    message = str(info.value)
    assert str(path) in message
    assert len(message.splitlines()) == 1
    for piece in (SECRET, "s3cr3t", "pw", "PGPASSWORD"):
        assert piece not in message
    if line is not None:
        assert f"line {line}" in message


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_bytes(b'{"PGPASSWORD": "\xff\xfe"}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(environ=env(tmp_path), config_path=str(path))


@pytest.mark.parametrize("name", ["PGHOST", "PGUSER", "PGPASSWORD", "PGOPTIONS"])
def test_libpq_settings_that_are_not_utf8_are_named(name: str) -> None:
    """Bytes that are not UTF-8 reach Python as surrogates: a clear error naming the variable
    (never its value, which may be a password), not an encoding error from the driver."""
    s = load(environ={"WALG_FILE_PREFIX": "/x", name: "db\udcff"})
    with pytest.raises(ConfigError, match=f"^{name} is not valid UTF-8$"):
        _ = s.pg


@pytest.mark.parametrize(
    "secret",
    ["PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "WALG_LIBSODIUM_KEY", "WALG_PGP_KEY_PASSPHRASE"],
)
def test_a_config_file_every_user_may_read_with_a_secret_in_it_is_warned_about(
    tmp_path: Path, secret: str
) -> None:
    """libpq warns about a .pgpass others may read; walg said nothing of a config file mode
    0644 holding a password or a key. It warns now, naming the file and the key, never the
    value; a file only its owner (or its group: /etc/walg/walg.json root:postgres 0640) may
    read, or with no secret in it, gets no such warning."""
    path = tmp_path / "walg.json"
    path.write_text(json.dumps({"WALG_FILE_PREFIX": "/b", secret: "hunter2-value"}))

    def warned() -> list[str]:
        loaded = load(environ=env(tmp_path), config_path=str(path))
        return [m for m in loaded.not_honoured("wal-push") if "read" in m]

    path.chmod(0o644)
    (message,) = warned()
    assert str(path) in message and secret in message and "0644" in message
    assert "hunter2" not in message
    path.chmod(0o640)
    assert warned() == []
    path.chmod(0o600)
    assert warned() == []
    path.write_text(json.dumps({"WALG_FILE_PREFIX": "/b", "AWS_ACCESS_KEY_ID": "AKIA"}))
    path.chmod(0o644)
    assert warned() == []


def test_the_installed_walg_warns_of_a_readable_config_file_with_a_password(
    walg_bin: str, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    path = tmp_path / "walg.env"
    path.write_text(f"WALG_FILE_PREFIX={store}\nPGPASSWORD=hunter2-value\n")
    path.chmod(0o604)
    listed = subprocess.run(
        [walg_bin, "--config", str(path), "backup-list"],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert f"config file {path} holds PGPASSWORD" in listed.stderr
    assert "hunter2" not in listed.stderr + listed.stdout


def test_a_daemon_is_keyed_as_a_call_in_the_data_directory_only_where_no_path_is_relative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """walg daemon takes the destination key PostgreSQL's own calls get in the data directory
    (Settings.keyed_as_run_in), so that they share markers and prefetched files. With a
    relative config path that folder may hold another configuration, and a shared key would
    let a call take markers for WAL its own storage does not hold: the key stays the
    daemon's own then."""
    for name in [n for n in os.environ if n.startswith(("WALG_", "WALE_"))]:
        monkeypatch.delenv(name)
    store = tmp_path / "store"
    store.mkdir()
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    (tmp_path / "walg.json").write_text(json.dumps({"WALG_FILE_PREFIX": str(store)}))
    monkeypatch.chdir(tmp_path)

    monkeypatch.setenv("WALG_CONFIG_PATH", "walg.json")
    relative = load()
    assert relative.keyed_as_run_in(str(pgdata), None) == relative

    monkeypatch.setenv("WALG_CONFIG_PATH", str(tmp_path / "walg.json"))
    elsewhere = load()
    keyed = elsewhere.keyed_as_run_in(str(pgdata), None)
    assert keyed.destination_key != elsewhere.destination_key
    assert keyed.storage_prefix == elsewhere.storage_prefix
    monkeypatch.chdir(pgdata)
    assert load().destination_key == keyed.destination_key  # a call in the data directory


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_a_home_config_name_that_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    """WAL-G's config library takes the first ~/.walg.* name that is not a folder. A FIFO or
    a device at ~/.walg.json was passed over, so ~/.walg.yaml, a file WAL-G would not have
    read, configured every call; it is refused now, named, without waiting on it. A folder
    is passed over, as in WAL-G."""
    import os
    import subprocess
    import sys

    environ = env(tmp_path)
    home = Path(environ["HOME"])
    (home / ".walg.yaml").write_text("WALG_FILE_PREFIX: /from/yaml\n")
    first = home / ".walg.json"
    _make_not_a_regular_file(first, kind)
    code = (
        "import json, sys; from walg.settings import load; from walg.errors import ConfigError\n"
        "try:\n"
        "    print(load(environ=json.loads(sys.argv[1])).storage_prefix)\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    child_env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(environ)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env,
    )
    assert result.returncode == 0, result.stderr
    if kind == "folder":
        assert result.stdout.strip() == "/from/yaml"
    else:
        assert str(first) in result.stdout
        assert "not a regular file" in result.stdout
