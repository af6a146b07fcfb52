"""Configuration: WAL-G's environment names and config file, read in one place.

This is the only module that reads the process environment or a config file. It merges the
config file (``--config``, ``WALG_CONFIG_PATH`` or ``~/.walg.{json,yaml,yml,toml}``) under the
environment (the environment wins, as with WAL-G), validates what every command shares, and
hands out a frozen :class:`Settings`. Storage backends read their own keys later through
:meth:`Settings.lookup`, so adding a backend never changes this module's callers.

Secrets (passwords, keys) are kept out of ``repr`` and error messages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from walg.core.pattern import LazyPattern
from walg.errors import ConfigError
from walg_destination import CONFIG_NAMES, destination_key

# Not typing.TYPE_CHECKING: every archive_command call loads settings, and importing typing,
# json or pathlib would cost it milliseconds (mypy treats this name as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

# Storage prefixes in WAL-G's precedence order; each is also accepted with WALE_ instead of WALG_.
STORAGE_PREFIX_KEYS: tuple[tuple[str, str], ...] = (
    ("OSS_PREFIX", "oss"),
    ("S3_PREFIX", "s3"),
    ("FILE_PREFIX", "file"),
    ("GS_PREFIX", "gs"),
    ("AZ_PREFIX", "azure"),
    ("SWIFT_PREFIX", "swift"),
    ("SSH_PREFIX", "ssh"),
)

COMPRESSION_METHODS = ("lz4", "lzma", "zstd", "brotli", "none")

DEFAULT_TAR_SIZE_THRESHOLD = 1073741823
DEFAULT_STOP_BACKUP_TIMEOUT = 1800.0
DEFAULT_PG_CONNECT_TIMEOUT = 30

_DURATION_RE = LazyPattern(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


@dataclass(frozen=True)
class PgConnection:
    """libpq connection parameters, from PG* variables (environment or config file)."""

    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    passfile: str | None = None
    database: str | None = None
    sslmode: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None
    sslrootcert: str | None = None
    application_name: str = "walg"
    connect_timeout: int = DEFAULT_PG_CONNECT_TIMEOUT

    def libpq_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect``; unset values are left to libpq."""
        out: dict[str, Any] = {
            "application_name": self.application_name,
            "connect_timeout": self.connect_timeout,
        }
        for name in (
            "host",
            "port",
            "user",
            "password",
            "passfile",
            "sslmode",
            "sslcert",
            "sslkey",
            "sslrootcert",
        ):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out["dbname"] = self.database or "postgres"
        return out


@dataclass(frozen=True)
class Settings:
    """Everything a walg command needs to know about its configuration."""

    storage_kind: str | None
    storage_prefix: str | None
    storage_prefix_key: str | None
    storage_subfolder: str
    compression: str
    upload_concurrency: int
    upload_disk_concurrency: int | None
    download_concurrency: int
    tar_size_threshold: int
    sentinel_user_data: Any
    pgdata: str | None
    pg: PgConnection
    prevent_wal_overwrite: bool
    stop_backup_timeout: float
    tar_disable_fsync: bool
    total_bg_uploaded_limit: int
    prefetch_dir: str | None
    wal_segment_size: int
    daemon_follow_wal: bool
    file_direct_io: bool
    log_level: str
    config_file: str | None
    # Which archive this process writes to, as a digest (see walg_destination): the suffix of
    # the look-ahead markers it may write and take.
    destination_key: str
    values: Mapping[str, str] = field(repr=False, default_factory=dict)

    def lookup(self, key: str) -> str | None:
        """A storage key as WAL-G resolves it: ``WALG_KEY``, then ``WALE_KEY``, then ``KEY``."""
        for name in (f"WALG_{key}", f"WALE_{key}", key):
            value = self.values.get(name)
            if value not in (None, ""):
                return value
        return None

    def require_storage(self) -> tuple[str, str]:
        """The configured storage kind and prefix, or a one-line error naming the variables.

        Also refuses while an encryption setting is set (see :func:`refuse_encryption`):
        every command that reads or writes storage comes through here.
        """
        refuse_encryption(self.values)
        if self.storage_kind is None or self.storage_prefix is None:
            raise ConfigError(
                "no storage configured: set WALG_FILE_PREFIX (or WALE_S3_PREFIX, WALG_S3_PREFIX, "
                "WALG_GS_PREFIX, WALG_AZ_PREFIX, WALG_SSH_PREFIX)"
            )
        return self.storage_kind, self.storage_prefix

    def require_pgdata(self, given: str | None) -> str:
        path = given or self.pgdata
        if not path:
            raise ConfigError("no data directory: pass PGDATA as an argument or set PGDATA")
        return path


def load(
    environ: Mapping[str, str] | None = None,
    config_path: str | None = None,
) -> Settings:
    """Build :class:`Settings` from the environment and the config file it points to."""
    env = dict(os.environ if environ is None else environ)
    # Before the file is read: if it changes meanwhile, the key names the older file and
    # matches no later call (a mismatch only costs an upload).
    key = destination_key(env, config_path)
    file_path = config_path or env.get("WALG_CONFIG_PATH") or _default_config(env)
    merged: dict[str, str] = {}
    if file_path:
        merged.update(_read_config_file(file_path, explicit=bool(config_path)))
    merged.update({k: v for k, v in env.items() if v != "" or k not in merged})
    return _build(merged, file_path, key)


def _default_config(env: Mapping[str, str]) -> str | None:
    home = env.get("HOME")
    if not home:
        return None
    for name in CONFIG_NAMES:
        candidate = os.path.join(home, name)
        try:
            if os.path.isfile(candidate):
                return candidate
        except OSError:
            return None
    return None


def _read_config_file(path: str, *, explicit: bool) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {path} does not exist") from None
        raise ConfigError(f"WALG_CONFIG_PATH: config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    suffix = os.path.splitext(path)[1].lower()
    data: Any
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            import json

            data = json.loads(text) if text.strip() else {}
    except Exception as exc:
        raise ConfigError(f"config file {path} is not valid {suffix or 'JSON'}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of setting names to values")
    return {str(k): _config_value(v) for k, v in data.items()}


def _config_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        import json

        return json.dumps(value)
    if value is None:
        return ""
    return str(value)


def parse_duration(name: str, text: str) -> float:
    """Seconds from a Go-style duration (``90s``, ``1m30s``) or a plain number of seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    pos = 0
    total = 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ConfigError(f"{name}={text!r} is not a duration (e.g. 30s, 5m, 1h)")
    return total


def _int(values: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = values.get(name, "").strip()
    if not raw:
        return default
    try:
        number = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if number < minimum:
        raise ConfigError(f"{name}={number} must be at least {minimum}")
    return number


def _bool(values: Mapping[str, str], name: str, default: bool) -> bool:
    raw = values.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "t", "yes", "on"):
        return True
    if raw in ("0", "false", "f", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (true or false)")


# WAL-G's encryption settings (its config.go and docs; the format notes, sections 4 and 8):
# client-side crypters, then storage-side encryption of the S3 and GCS backends.
ENCRYPTION_KEYS: tuple[str, ...] = (
    "WALG_LIBSODIUM_KEY",
    "WALG_LIBSODIUM_KEY_PATH",
    "WALG_LIBSODIUM_KEY_TRANSFORM",
    "WALG_PGP_KEY",
    "WALG_PGP_KEY_PATH",
    "WALG_PGP_KEY_PASSPHRASE",
    "WALG_GPG_KEY_ID",
    "WALE_GPG_KEY_ID",
    "GPG_KEY_ID",
    "WALG_ENVELOPE_PGP_KEY",
    "WALG_ENVELOPE_PGP_KEY_PATH",
    "WALG_ENVELOPE_PGP_YC_ENDPOINT",
    "WALG_ENVELOPE_PGP_YC_CSE_KMS_KEY_ID",
    "WALG_ENVELOPE_PGP_YC_SERVICE_ACCOUNT_KEY_FILE",
    "WALG_ENVELOPE_CACHE_EXPIRATION",
    "WALG_CSE_KMS_ID",
    "WALG_CSE_KMS_REGION",
    "YC_CSE_KMS_KEY_ID",
    "YC_SERVICE_ACCOUNT_KEY_FILE",
    *(
        f"{prefix}{key}"
        for key in ("S3_SSE", "S3_SSE_C", "S3_SSE_KMS_ID", "GCS_ENCRYPTION_KEY")
        for prefix in ("WALG_", "WALE_", "")
    ),
)


def refuse_encryption(values: Mapping[str, str]) -> None:
    """ConfigError naming every encryption setting that is set (never its value).

    walg cannot encrypt or decrypt yet. Ignoring such a setting, as it did, would let a WAL-G
    user who switches store backups and WAL in clear without a word, so nothing that touches
    storage runs while one is set.
    """
    found = [name for name in ENCRYPTION_KEYS if values.get(name, "").strip()]
    if found:
        raise ConfigError(
            f"{', '.join(found)} {'is' if len(found) == 1 else 'are'} set, but walg does not "
            "support encryption yet: it would store backups and WAL unencrypted (and cannot "
            "read encrypted ones), so it refuses to touch storage; unset "
            f"{'it' if len(found) == 1 else 'them'} only if unencrypted storage is what you want"
        )


def _storage(values: Mapping[str, str]) -> tuple[str | None, str | None, str | None]:
    found: list[tuple[str, str, str]] = []
    for suffix, kind in STORAGE_PREFIX_KEYS:
        for name in (f"WALG_{suffix}", f"WALE_{suffix}"):
            value = values.get(name, "").strip()
            if value:
                found.append((name, kind, value))
                break
    if not found:
        return None, None, None
    if len(found) > 1:
        names = " and ".join(name for name, _, _ in found)
        raise ConfigError(f"{names} are both set: configure exactly one storage prefix")
    name, kind, value = found[0]
    return kind, value, name


def _pg(values: Mapping[str, str]) -> PgConnection:
    def opt(name: str) -> str | None:
        value = values.get(name, "").strip()
        return value or None

    port_raw = opt("PGPORT")
    port: int | None = None
    if port_raw is not None:
        try:
            port = int(port_raw)
        except ValueError:
            raise ConfigError(f"PGPORT={port_raw!r} is not a port number") from None
        if not 0 < port < 65536:
            raise ConfigError(f"PGPORT={port} is not a port number")
    return PgConnection(
        host=opt("PGHOST"),
        port=port,
        user=opt("PGUSER"),
        password=values.get("PGPASSWORD") or None,
        passfile=opt("PGPASSFILE"),
        database=opt("PGDATABASE"),
        sslmode=opt("PGSSLMODE"),
        sslcert=opt("PGSSLCERT"),
        sslkey=opt("PGSSLKEY"),
        sslrootcert=opt("PGSSLROOTCERT"),
        application_name=opt("PGAPPNAME") or "walg",
        connect_timeout=_int(values, "PGCONNECT_TIMEOUT", DEFAULT_PG_CONNECT_TIMEOUT),
    )


def _build(values: Mapping[str, str], config_file: str | None, destination_key: str) -> Settings:
    kind, prefix, prefix_key = _storage(values)
    compression = values.get("WALG_COMPRESSION_METHOD", "").strip().lower() or "lz4"
    if compression not in COMPRESSION_METHODS:
        raise ConfigError(
            f"WALG_COMPRESSION_METHOD={compression!r} is not one of "
            + ", ".join(COMPRESSION_METHODS)
        )
    user_data: Any = None
    raw_user_data = values.get("WALG_SENTINEL_USER_DATA", "").strip()
    if raw_user_data:
        import json

        try:
            user_data = json.loads(raw_user_data)
        except json.JSONDecodeError:
            # WAL-G stores a value that is not JSON as a JSON string.
            user_data = raw_user_data
    disk_raw = values.get("WALG_UPLOAD_DISK_CONCURRENCY", "").strip()
    stop_timeout_raw = values.get("WALG_STOP_BACKUP_TIMEOUT", "").strip()
    stop_timeout = (
        parse_duration("WALG_STOP_BACKUP_TIMEOUT", stop_timeout_raw)
        if stop_timeout_raw
        else DEFAULT_STOP_BACKUP_TIMEOUT
    )
    if stop_timeout <= 0:
        # WAL-G's 0 means "wait forever"; walg promises never to hang, so 0 means our default.
        stop_timeout = DEFAULT_STOP_BACKUP_TIMEOUT
    return Settings(
        storage_kind=kind,
        storage_prefix=prefix,
        storage_prefix_key=prefix_key,
        storage_subfolder=values.get("WALG_STORAGE_PREFIX", "").strip().strip("/"),
        compression=compression,
        upload_concurrency=_int(values, "WALG_UPLOAD_CONCURRENCY", 16),
        upload_disk_concurrency=(
            _int(values, "WALG_UPLOAD_DISK_CONCURRENCY", 1) if disk_raw else None
        ),
        download_concurrency=_int(values, "WALG_DOWNLOAD_CONCURRENCY", 10),
        tar_size_threshold=_int(values, "WALG_TAR_SIZE_THRESHOLD", DEFAULT_TAR_SIZE_THRESHOLD),
        sentinel_user_data=user_data,
        pgdata=values.get("PGDATA", "").strip() or None,
        pg=_pg(values),
        prevent_wal_overwrite=_bool(values, "WALG_PREVENT_WAL_OVERWRITE", True),
        stop_backup_timeout=stop_timeout,
        tar_disable_fsync=_bool(values, "WALG_TAR_DISABLE_FSYNC", False),
        total_bg_uploaded_limit=_int(values, "TOTAL_BG_UPLOADED_LIMIT", 32, minimum=0),
        prefetch_dir=values.get("WALG_PREFETCH_DIR", "").strip() or None,
        wal_segment_size=_int(values, "WALG_PG_WAL_SIZE", 16) * 1024 * 1024,
        daemon_follow_wal=_bool(values, "WALG_DAEMON_FOLLOW_WAL", True),
        file_direct_io=_bool(values, "WALG_FILE_DIRECT_IO", True),
        log_level=values.get("WALG_LOG_LEVEL", "").strip().upper() or "NORMAL",
        config_file=config_file,
        destination_key=destination_key,
        values=dict(values),
    )
