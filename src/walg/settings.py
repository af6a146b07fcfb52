"""Configuration: WAL-G's environment names and config file, read in one place.

This is the only module that reads the process environment or a config file. It merges the
config file (``--config``, ``WALG_CONFIG_PATH`` or ``~/.walg.{json,toml,yaml,yml,dotenv,env}``)
under the environment, and both under the settings given as WAL-G's command-line flags
(``--walg-file-prefix=/x``: :func:`split_setting_flags`), in WAL-G's precedence, validates
what every command shares, and hands out a frozen :class:`Settings`. Storage backends read
their own keys later through :meth:`Settings.lookup`, so adding a backend never changes this
module's callers.

Secrets (passwords, keys) are kept out of ``repr`` and error messages.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import cached_property

from walg.core.pattern import LazyPattern
from walg.errors import ConfigError, UsageError
from walg_destination import config_candidates, destination_key

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

# Go's time.ParseDuration, as WAL-G reads durations: [-+]?([0-9]*(\.[0-9]*)?[a-z]+)+, a number
# needing a digit on one side of its point; micro as the micro sign or the Greek mu.
_DURATION_RE = LazyPattern(r"(\d*(?:\.\d*)?)(ns|us|µs|\u03bcs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


# libpq's environment variables and the connection keywords they stand for (libpq's
# "Environment Variables" page; PQconndefaults of libpq 18 lists the same pairs). WAL-G exports
# every config-file value into its environment, where libpq finds them; walg passes them as
# keywords instead, from the file and the environment alike, so that the environment wins
# over the file here too.
LIBPQ_VARIABLES: dict[str, str] = {
    "PGHOST": "host",
    "PGHOSTADDR": "hostaddr",
    "PGPORT": "port",
    "PGDATABASE": "dbname",
    "PGUSER": "user",
    "PGPASSWORD": "password",
    "PGPASSFILE": "passfile",
    "PGREQUIREAUTH": "require_auth",
    "PGCHANNELBINDING": "channel_binding",
    "PGSERVICE": "service",
    "PGOPTIONS": "options",
    "PGAPPNAME": "application_name",
    "PGSSLMODE": "sslmode",
    "PGSSLNEGOTIATION": "sslnegotiation",
    "PGSSLCOMPRESSION": "sslcompression",
    "PGSSLCERT": "sslcert",
    "PGSSLKEY": "sslkey",
    "PGSSLCERTMODE": "sslcertmode",
    "PGSSLROOTCERT": "sslrootcert",
    "PGSSLCRL": "sslcrl",
    "PGSSLCRLDIR": "sslcrldir",
    "PGSSLSNI": "sslsni",
    "PGREQUIREPEER": "requirepeer",
    "PGSSLMINPROTOCOLVERSION": "ssl_min_protocol_version",
    "PGSSLMAXPROTOCOLVERSION": "ssl_max_protocol_version",
    "PGMINPROTOCOLVERSION": "min_protocol_version",
    "PGMAXPROTOCOLVERSION": "max_protocol_version",
    "PGGSSENCMODE": "gssencmode",
    "PGKRBSRVNAME": "krbsrvname",
    "PGGSSLIB": "gsslib",
    "PGGSSDELEGATION": "gssdelegation",
    "PGCONNECT_TIMEOUT": "connect_timeout",
    "PGCLIENTENCODING": "client_encoding",
    "PGTARGETSESSIONATTRS": "target_session_attrs",
    "PGLOADBALANCEHOSTS": "load_balance_hosts",
}
# libpq reads these from its environment only: no connection keyword carries them, so a
# config file cannot hand them to libpq (walg does not change its own environment).
LIBPQ_ENVIRONMENT_ONLY = (
    "PGSERVICEFILE",
    "PGSYSCONFDIR",
    "PGLOCALEDIR",
    "PGDATESTYLE",
    "PGTZ",
    "PGGEQO",
)
# PG* names that are not libpq's: PGDATA is walg's (and WAL-G's) data directory; PGREQUIRESSL
# was libpq's until PostgreSQL 17 and is translated into sslmode (see pg_connection).
OTHER_PG_VARIABLES = ("PGDATA", "PGREQUIRESSL")
_STRONG_SSLMODES = ("require", "verify-ca", "verify-full")


@dataclass(frozen=True)
class PgConnection:
    """libpq connection parameters, from PG* variables (environment or config file).

    ``host`` and ``port`` have fields of their own because messages name them; ``params``
    holds every other keyword, except the password, which stays out of ``repr``.
    """

    host: str | None = None
    port: str | None = None
    password: str | None = field(default=None, repr=False)
    params: Mapping[str, str] = field(default_factory=dict)
    connect_timeout: int = DEFAULT_PG_CONNECT_TIMEOUT

    def libpq_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect``; unset values are left to libpq."""
        out: dict[str, Any] = dict(self.params)
        if self.host is not None:
            out["host"] = self.host
        if self.port is not None:
            out["port"] = self.port
        if self.password is not None:
            out["password"] = self.password
        out["connect_timeout"] = self.connect_timeout
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
    download_concurrency: int
    pgdata: str | None
    prevent_wal_overwrite: bool
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
    # The settings given as command-line flags, by setting name (values may be secrets).
    flags: Mapping[str, str] = field(repr=False, default_factory=dict)
    # The (upper-cased) keys the config file set: PG* names among them that libpq cannot take
    # are worth a warning, the environment's are not (it holds whatever other tools need).
    config_keys: frozenset[str] = frozenset()

    # pg and stop_backup_timeout are checked when first used, not by load(): only commands
    # that connect to PostgreSQL use them, and a value valid for libpq but not for walg (or
    # a typo) in the environment of the server must never stop wal-push, wal-fetch or the
    # daemon, that is archiving and recovery. backup-push reads both before it starts.
    @cached_property
    def pg(self) -> PgConnection:
        """The libpq parameters; ConfigError naming the variable when one is malformed."""
        return pg_connection(self.values, self.config_keys)

    # Settings only base backups use are checked when first read too, for the same reason:
    # a typo in one (WALG_TAR_SIZE_THRESHOLD=1GB) must not stop archiving. backup-push and
    # backup-fetch read theirs before they start.
    @cached_property
    def upload_disk_concurrency(self) -> int | None:
        """``WALG_UPLOAD_DISK_CONCURRENCY``; None when unset (the caller's default)."""
        if not self.values.get("WALG_UPLOAD_DISK_CONCURRENCY", "").strip():
            return None
        return _int(self.values, "WALG_UPLOAD_DISK_CONCURRENCY", 1, maximum=MAX_CONCURRENCY)

    @cached_property
    def tar_size_threshold(self) -> int:
        """``WALG_TAR_SIZE_THRESHOLD``: bytes of a tar partition before the next one starts."""
        return _int(self.values, "WALG_TAR_SIZE_THRESHOLD", DEFAULT_TAR_SIZE_THRESHOLD)

    @cached_property
    def tar_disable_fsync(self) -> bool:
        """``WALG_TAR_DISABLE_FSYNC``: restored files are not fsynced."""
        return _bool(self.values, "WALG_TAR_DISABLE_FSYNC", False)

    @cached_property
    def stop_backup_timeout(self) -> float:
        """Seconds ``pg_backup_stop`` may take (``WALG_STOP_BACKUP_TIMEOUT``)."""
        raw = self.values.get("WALG_STOP_BACKUP_TIMEOUT", "").strip()
        if not raw:
            return DEFAULT_STOP_BACKUP_TIMEOUT
        timeout = parse_duration("WALG_STOP_BACKUP_TIMEOUT", raw)
        # WAL-G's 0 means "wait forever"; walg promises never to hang, so 0 means our default.
        return timeout if timeout > 0 else DEFAULT_STOP_BACKUP_TIMEOUT

    @cached_property
    def sentinel_user_data(self) -> Any:
        """``WALG_SENTINEL_USER_DATA`` as stored in the sentinel and metadata (None: unset).

        Checked when first used, as ``pg``: a bad value must not stop archiving; backup-push
        reads it before the backup starts, not after everything is uploaded.
        """
        return parse_user_data(self.values.get("WALG_SENTINEL_USER_DATA", ""))

    @property
    def log_destination(self) -> str | None:
        """``WALG_LOG_DESTINATION``: the file WAL-G writes its log to; None for stderr."""
        path = self.values.get("WALG_LOG_DESTINATION", "").strip()
        return None if path in ("", "stderr") else path

    @property
    def wal_segment_size_set(self) -> bool:
        """Was ``WALG_PG_WAL_SIZE`` given? Where it was not, commands that can learn the size
        (from the server, or a stored segment's first page) use that rather than 16 MiB."""
        return bool(self.values.get("WALG_PG_WAL_SIZE", "").strip())

    @property
    def fetch_target_user_data(self) -> str:
        """``WALG_FETCH_TARGET_USER_DATA``: backup-fetch's backup, chosen by its user data."""
        return self.values.get("WALG_FETCH_TARGET_USER_DATA", "")

    def lookup(self, key: str) -> str | None:
        """A storage key as WAL-G resolves it: ``WALG_KEY``, then ``WALE_KEY``, then ``KEY``."""
        for name in (f"WALG_{key}", f"WALE_{key}", key):
            value = self.values.get(name)
            if value not in (None, ""):
                return value
        return None

    def require_storage(self) -> tuple[str, str]:
        """The configured storage kind and prefix, or a one-line error naming the variables.

        Also refuses while an encryption setting is set (see :func:`refuse_encryption`), or
        ``WALG_TARGET_STORAGE`` names a storage other than the primary one: every command
        that reads or writes storage comes through here.
        """
        refuse_encryption(self.values)
        target = self.values.get("WALG_TARGET_STORAGE", "").strip()
        if target not in ("", "default"):
            # WAL-G would use that failover storage (or fail without it); the primary instead
            # would archive to, or restore from, another place than the one asked for.
            raise ConfigError(
                f"WALG_TARGET_STORAGE={target!r} is set {self._set_in('WALG_TARGET_STORAGE')}, "
                "but walg has no failover storages, only the primary storage ('default')"
            )
        if self.storage_kind is None or self.storage_prefix is None:
            raise ConfigError(
                # Only the storage walg has: the others would be refused on the next run.
                "no storage configured: set WALG_FILE_PREFIX (a local folder, the one storage "
                f"this walg has){self._misspelt_storage()}"
            )
        return self.storage_kind, self.storage_prefix

    def _misspelt_storage(self) -> str:
        """Names a set key that looks like a storage prefix's, for the "no storage" error: a
        config file with ``WALG_FILE_PREFX`` reads as "set" to the DBA looking at it."""
        known = [f"{p}_{suffix}" for suffix, _ in STORAGE_PREFIX_KEYS for p in ("WALG", "WALE")]
        for name in sorted(self.values):
            if not name.startswith(("WALG_", "WALE_")) or not self.values[name].strip():
                continue
            close = _look_alike(name, known)
            if close:
                return f"; {name} is set {self._set_in(name)}: a misspelling of {close}?"
        return ""

    def _set_in(self, name: str) -> str:
        """Where setting ``name`` comes from, for a message: the command line, the config
        file or the environment."""
        if name in self.flags:
            return f"on the command line ({flag_name(name)})"
        if name in self.config_keys and self.config_file:
            return f"in the config file {self.config_file}"
        return "in the environment"

    def keyed_as_run_in(self, folder: str, config_path: str | None) -> Settings:
        """These settings with the destination key of a walg run in ``folder`` with this
        process's environment, flags and ``--config config_path``: the key PostgreSQL's own
        calls get, run in its data directory, for a daemon started elsewhere, so that the
        daemon and walg run by its client while it is down share look-ahead markers and
        prefetched files. Unchanged where the configuration names a relative path (the config
        file, the storage folder): in ``folder`` that path may name another configuration,
        and a call that took the other's markers would take WAL for archived that its own
        storage does not hold."""
        import dataclasses

        env = {**os.environ, **self.flags}
        paths = config_candidates(env, config_path)
        if self.storage_kind == "file" and self.storage_prefix is not None:
            paths.append(self.storage_prefix)
        if not all(os.path.isabs(path) for path in paths):
            return self
        key = destination_key(env, config_path, os.path.realpath(folder))
        return dataclasses.replace(self, destination_key=key)

    def child_environment(self) -> dict[str, str] | None:
        """The environment of a walg helper this process starts (the look-ahead uploader, the
        prefetcher): this one's, with the settings given as flags added, so that the helper,
        which gets no flags, reaches the same settings (a non-empty variable beats the config
        file as a flag does). None: inherit this one's unchanged."""
        if not self.flags:
            return None
        return {**os.environ, **self.flags}

    def not_honoured(self, command: str) -> list[str]:
        """Warnings for ``command``: the config file's keys that neither walg nor WAL-G reads
        (WAL-G warns about them too), and WAL-G's settings, from the file or the environment,
        that would change what this command does in WAL-G and that walg does not implement
        (:data:`NOT_IMPLEMENTED`). Never a value: it may be a secret."""
        messages: list[str] = []
        unknown = sorted(name for name in self.config_keys if not _known_setting(name))
        known = [*WALG_SETTINGS, *NOT_IMPLEMENTED, *WAL_G_OTHER_SETTINGS] if unknown else []
        for name in unknown:
            close = _look_alike(name, known)
            hint = f": a misspelling of {close}?" if close else ""
            messages.append(
                f"{name} in the config file {self.config_file} is unknown, and ignored{hint}"
            )
        readable = self._secrets_every_user_may_read()
        if readable:
            messages.append(readable)
        if self.log_level not in ("NORMAL", "DEVEL", "ERROR", "DEBUG", "QUIET"):
            messages.append(
                f"WALG_LOG_LEVEL={self.log_level!r} is not a log level (NORMAL, DEVEL or "
                "ERROR): logging at NORMAL"
            )
        for name, (commands, defaults) in NOT_IMPLEMENTED.items():
            if commands != _EVERY and command not in commands:
                continue
            value = self.values.get(name)
            if value is None or value.strip().lower() in defaults:
                continue
            messages.append(
                f"{name} is set {self._set_in(name)}, but walg does not implement it: {command} "
                "goes on without it"
            )
        return messages

    def _secrets_every_user_may_read(self) -> str:
        """A warning if the config file holds a password or a key and every user may read it
        (as libpq gives for a ``.pgpass`` others may read); empty otherwise. Group access is
        not warned about: a file of root's that the server's group reads is the usual way."""
        secrets = sorted(name for name in self.config_keys if is_secret_setting(name))
        if not secrets or not self.config_file:
            return ""
        try:
            mode = os.stat(self.config_file).st_mode & 0o7777
        except OSError:
            return ""
        if not mode & 0o004:
            return ""
        return (
            f"config file {self.config_file} holds {', '.join(secrets)} and every user may "
            f"read it (mode {mode:04o}); make it readable by its owner only (chmod 600), or "
            "by its group"
        )

    def require_pgdata(self, given: str | None) -> str:
        path = given or self.pgdata
        if not path:
            raise ConfigError("no data directory: pass PGDATA as an argument or set PGDATA")
        return path


def load(
    environ: Mapping[str, str] | None = None,
    config_path: str | None = None,
    flags: Mapping[str, str] | None = None,
) -> Settings:
    """Build :class:`Settings` from the environment, the config file it points to and the
    settings given as command-line flags (:func:`split_setting_flags`)."""
    env = dict(os.environ if environ is None else environ)
    flags = dict(flags or {})
    if flags.get("WALG_FAILOVER_STORAGES", "").strip():
        raise ConfigError(
            f"{flag_name('WALG_FAILOVER_STORAGES')} is given, but walg does not support "
            "failover storages yet: it would neither use them nor find what WAL-G stored there; "
            "nothing was done"
        )
    # Before the file is read: if it changes meanwhile, the key names the older file and
    # matches no later call (a mismatch only costs an upload). A flag counts as the variable
    # it beats: two calls with different flags are two destinations.
    key = destination_key({**env, **flags}, config_path)
    file_path = config_path or env.get("WALG_CONFIG_PATH") or _default_config(env)
    merged: dict[str, str] = {}
    if file_path:
        try:
            merged.update(_read_config_file(file_path, explicit=bool(config_path)))
        except ConfigError as exc:
            # Nothing has run yet: say so, the DBA wonders whether this call archived.
            raise ConfigError(f"{exc}; nothing was done") from None
    config_keys = frozenset(merged)
    merged.update({k: v for k, v in env.items() if v != "" or k not in merged})
    merged.update(flags)
    return _build(merged, file_path, key, config_keys, flags)


# Settings walg knows that get no flag: walg's own ones that other programs read
# (walg-daemon-client), the config file's path (--config is its flag, in WAL-G too), and USER,
# which WAL-G has no flag for either.
_NO_FLAG = frozenset(
    ("WALG_CONFIG_PATH", "WALG_DAEMON_CLIENT_TIMEOUT", "WALG_DAEMON_CLIENT_PYTHON", "USER")
)


# Words in a setting's name that make its value a secret; and the keys that end in _KEY
# (WALG_LIBSODIUM_KEY, WALG_PGP_KEY, AZURE_STORAGE_ACCESS_KEY), not their _PATH or _ID.
_SECRET_WORDS = ("PASSWORD", "SECRET", "PASSPHRASE", "TOKEN")
_SECRET_NAMES = frozenset(("S3_SSE_C",))


def is_secret_setting(name: str) -> bool:
    """Whether the value of the setting ``name`` (upper case) is a password or a key."""
    return name.endswith("_KEY") or name in _SECRET_NAMES or any(w in name for w in _SECRET_WORDS)


def flag_name(setting: str) -> str:
    """WAL-G's flag for ``setting`` (its config.ToFlagName): ``--walg-file-prefix``."""
    return "--" + setting.lower().replace("_", "-")


def flag_setting(flag: str) -> str | None:
    """The setting a command-line flag names (``--walg-file-prefix``: WALG_FILE_PREFIX), or
    None for any other argument. WAL-G has one for every setting it allows; walg takes those
    of the settings it knows (:func:`_known_setting`), of libpq's only the variables it hands
    to libpq (its environment-only ones, PGTZ..., cannot reach it from a flag)."""
    if not flag.startswith("--") or flag != flag.lower() or "_" in flag:
        return None
    name = flag[2:].upper().replace("-", "_")
    if not name or name in _NO_FLAG:
        return None
    if name.startswith("PG") and not name.startswith("PG_"):
        return name if name in LIBPQ_VARIABLES or name == "PGDATA" else None
    if name.startswith(_STORAGE_FAMILIES) and name not in WAL_G_STORAGE_FLAGS:
        # A misspelt credential flag matched its family and was ignored without a word.
        wale = name.startswith("WALE_") and "WALG_" + name[5:] in WAL_G_STORAGE_FLAGS
        return name if wale else None
    return name if _known_setting(name) else None


def flag_look_alike(name: str) -> str | None:
    """The setting with a flag whose name ``name`` (that of a flag walg does not take, upper
    case, ``_`` for ``-``) looks like a misspelling of."""
    # The storage prefixes and libpq's settings too: --walg-file-prefix is the flag most set.
    prefixes = [f"WALG_{suffix}" for suffix, _ in STORAGE_PREFIX_KEYS]
    libpq = [k for k in (*LIBPQ_VARIABLES, "PGDATA") if k not in LIBPQ_ENVIRONMENT_ONLY]
    known = [*WALG_SETTINGS, *NOT_IMPLEMENTED, *WAL_G_STORAGE_FLAGS, *ENCRYPTION_KEYS]
    known = list(dict.fromkeys([*known, *prefixes, *libpq]))
    return _look_alike(name, [k for k in known if k not in _NO_FLAG])


def split_setting_flags(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """``argv`` without WAL-G's setting flags, and the settings they give.

    WAL-G binds a hidden string flag to each setting on its root command, so it stands
    anywhere on the line, as ``--walg-file-prefix=/x`` or ``--walg-file-prefix /x`` (the next
    argument is the value, whatever it is); the last one given wins. Nothing after ``--`` is
    looked at. An empty value is refused (UsageError): WAL-G would take it as the setting
    set to nothing, over the environment and the file, which for a storage prefix or a key
    is never what was meant (an unset shell variable).
    """
    if not any(arg.startswith("--") for arg in argv):
        return argv, {}
    rest: list[str] = []
    flags: dict[str, str] = {}
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            rest.extend(argv[index:])
            break
        flag, equals, value = arg.partition("=")
        name = flag_setting(flag)
        if name is None:
            rest.append(arg)
            index += 1
            continue
        if equals:
            index += 1
        elif index + 1 < len(argv):
            value = argv[index + 1]
            index += 2
        else:
            raise UsageError(f"{flag} needs a value ({name}); nothing was done")
        if not value.strip():
            raise UsageError(
                f"{flag} is empty: give {name} a value, or leave the flag out; nothing was done"
            )
        flags[name] = value
    return rest, flags


def _default_config(env: Mapping[str, str]) -> str | None:
    """The first ``~/.walg.*`` file, in the order the look-ahead key follows them.

    Chosen as WAL-G's config library chooses it: the first name that can be looked at and is
    not a folder. So a FIFO or a device there is this file, and reading it refuses it
    (:func:`_read_regular_file`): passing over it took the next name, a configuration WAL-G
    would not have read (it would have hung on the FIFO)."""
    import stat

    for candidate in config_candidates(env, None):
        try:
            mode = os.stat(candidate).st_mode
        except (OSError, ValueError):
            continue
        if not stat.S_ISDIR(mode):
            return candidate
    return None


# WAL-G (internal/config/config.go, ReadConfigFromFile) warns about a config file it cannot
# read or parse and goes on with the environment alone; walg stops, and says why.
_NOT_WITHOUT_IT = (
    " (WAL-G would warn and go on with the environment alone; walg does not, as that could "
    "store backups and WAL in another place or unencrypted)"
)


def _read_config_file(path: str, *, explicit: bool) -> dict[str, str]:
    try:
        text = _read_regular_file(path)
    except FileNotFoundError:
        given = "" if explicit else "WALG_CONFIG_PATH: "
        raise ConfigError(f"{given}config file {path} does not exist{_NOT_WITHOUT_IT}") from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read config file {path}: {exc.strerror or exc}{_NOT_WITHOUT_IT}"
        ) from None
    except UnicodeDecodeError as exc:
        # Its own message shows the offending byte: file content, so only the offset here.
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    suffix = os.path.splitext(path)[1].lower()
    data: Any
    try:
        if suffix in (".env", ".dotenv"):
            data = _parse_dotenv(path, text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            import json

            data = json.loads(text) if text.strip() else {}
    except ConfigError:
        raise
    except Exception as exc:
        if suffix in (".yaml", ".yml", ".toml"):
            kind = suffix.lstrip(".").upper()
        else:
            # Named after no format: say which one walg took it for, and how to pick another.
            kind = "JSON (the format of a name not ending in .yaml, .yml, .toml or .env)"
        raise ConfigError(
            f"config file {path} is not valid {kind}: {_parse_error(exc)}{_NOT_WITHOUT_IT}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of setting names to values")
    # Keys match in any case, as WAL-G's (viper) do: `walg_file_prefix` is WALG_FILE_PREFIX.
    out: dict[str, str] = {}
    spelled: dict[str, str] = {}
    for raw_key, value in data.items():
        name = str(raw_key).upper()
        if name in spelled:
            raise ConfigError(
                f"config file {path} sets {name} twice ({spelled[name]!r} and {str(raw_key)!r}): "
                "keys are compared without regard to case"
            )
        spelled[name] = str(raw_key)
        if name == "WALG_FAILOVER_STORAGES" and value not in (None, "", {}):
            raise ConfigError(
                f"config file {path} sets WALG_FAILOVER_STORAGES, but walg does not support "
                "failover storages yet: it would neither use them while the primary storage "
                "is down nor find the WAL and backups WAL-G stored there (a restore would end "
                "early); remove it only if the primary storage holds everything"
            )
        out[name] = _config_value(path, name, value)
    return out


def _parse_dotenv(path: str, text: str) -> dict[str, str]:
    """A dotenv file as WAL-G's config library reads one (``*.env``, ``*.dotenv``): a
    ``KEY=VALUE`` or ``KEY: VALUE`` line each, maybe after ``export``; ``#`` comments, also
    in an unquoted value, which ends at its first ``#``; a value in single quotes as it
    stands, one in double quotes with backslash escapes. WAL-G expands ``$NAME`` and
    ``${NAME}`` in values that are not in single quotes; walg refuses them (naming the key)
    rather than guess at the rules of that expansion, as it refuses any line it cannot
    read. Values are never shown."""
    out: dict[str, str] = {}
    escapes = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\", "$": "$"}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[7:].lstrip()
        separator = min((i for i in (line.find("="), line.find(":")) if i > 0), default=-1)
        key = line[:separator].strip() if separator > 0 else ""
        if not key or not all(c.isalnum() or c in "_.-" for c in key):
            raise ConfigError(f"config file {path}: line {number} is not KEY=VALUE")
        value = line[separator + 1 :].strip()
        expands = False
        if value[:1] == "'":
            end = value.find("'", 1)
            rest = value[end + 1 :].strip() if end > 0 else ""
            if end < 0 or (rest and not rest.startswith("#")):
                raise ConfigError(
                    f"config file {path}: {key} (line {number}) has an unclosed quote"
                )
            value = value[1:end]
        elif value[:1] == '"':
            chars: list[str] = []
            index, closed = 1, False
            while index < len(value):
                char = value[index]
                if char == "\\" and index + 1 < len(value):
                    chars.append(escapes.get(value[index + 1], "\\" + value[index + 1]))
                    index += 2
                    continue
                if char == '"':
                    closed = True
                    break
                expands = expands or char == "$"
                chars.append(char)
                index += 1
            rest = value[index + 1 :].strip()
            if not closed or (rest and not rest.startswith("#")):
                raise ConfigError(
                    f"config file {path}: {key} (line {number}) has an unclosed quote"
                )
            value = "".join(chars)
        else:
            # As WAL-G's dotenv reader: an unquoted value ends at the first #.
            value = value.split("#", 1)[0].strip()
            expands = "$" in value
        if expands:
            raise ConfigError(
                f"config file {path}: {key} (line {number}) uses $ (a variable WAL-G would "
                "expand): walg does not expand them; write the value out, or quote it in '…'"
            )
        out[key] = value
    return out


def _read_regular_file(path: str) -> str:
    """The text of the regular file at ``path``; OSError for anything else.

    Opened non-blocking and checked before reading: a FIFO would block the open (and every
    archive_command call with it) until something writes to it, and a device may never end.
    """
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"config file {path} is not a regular file (a FIFO, a device?)")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    with open(fd, encoding="utf-8") as handle:
        return handle.read()


def _parse_error(exc: Exception) -> str:
    """What a parser found wrong and where, without the text of the file.

    The parsers' own messages can quote the offending line (PyYAML prints it with a caret),
    and that line may hold a password. So only the problem and the position are kept, and
    any quoted piece longer than a punctuation mark or a token name (``'<stream end>'``) is
    masked, since it could be a value from the file.
    """
    import json

    problem: str
    line: int | None = None
    column: int | None = None
    if isinstance(exc, json.JSONDecodeError):
        problem, line, column = exc.msg, exc.lineno, exc.colno
    elif type(exc).__module__.startswith("yaml"):
        problem = str(getattr(exc, "problem", None) or type(exc).__name__)
        context = getattr(exc, "context", None)
        if context:
            problem = f"{context}: {problem}"
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            line, column = mark.line + 1, mark.column + 1
    elif type(exc).__name__ == "TOMLDecodeError":
        # tomllib's message is the problem followed by "(at line L, column C)".
        problem = str(exc)
    else:
        problem = type(exc).__name__
    import re

    problem = re.sub(
        r"'([^']*)'|\"([^\"]*)\"",
        lambda m: m.group(0) if _harmless_quote(m.group(1) or m.group(2) or "") else "'…'",
        problem.splitlines()[0] if problem.strip() else type(exc).__name__,
    )
    if line is not None:
        problem += f" at line {line}, column {column}"
    return problem


def _harmless_quote(text: str) -> bool:
    return len(text) <= 2 or (text.startswith("<") and text.endswith(">"))


# Keys whose value may be a mapping or a list in a config file: it is used as its JSON text.
STRUCTURED_KEYS = ("WALG_SENTINEL_USER_DATA",)

# The settings walg reads (beside the storage prefixes, the encryption settings it refuses and
# the PG* ones, which pg_connection checks).
WALG_SETTINGS = frozenset(
    (
        "WALG_STORAGE_PREFIX", "WALG_COMPRESSION_METHOD", "WALG_UPLOAD_CONCURRENCY",
        "WALG_DOWNLOAD_CONCURRENCY", "WALG_UPLOAD_DISK_CONCURRENCY", "WALG_TAR_SIZE_THRESHOLD",
        "WALG_TAR_DISABLE_FSYNC", "WALG_SENTINEL_USER_DATA", "WALG_PREVENT_WAL_OVERWRITE",
        "WALG_STOP_BACKUP_TIMEOUT", "TOTAL_BG_UPLOADED_LIMIT", "WALG_PREFETCH_DIR",
        "WALG_PG_WAL_SIZE", "WALG_DAEMON_WAL_UPLOAD_TIMEOUT", "WALG_DAEMON_WAL_FETCH_TIMEOUT",
        "WALG_DAEMON_FOLLOW_WAL", "WALG_DAEMON_CLIENT_TIMEOUT", "WALG_DAEMON_CLIENT_PYTHON",
        "WALG_FILE_DIRECT_IO", "WALG_INTEGRITY_MAX_DELAYED_WALS", "WALG_LOG_LEVEL",
        "WALG_FAULT_INJECTION", "WALG_CONFIG_PATH", "WALG_FETCH_TARGET_USER_DATA",
        "WALG_LOG_DESTINATION",
        # Only its default, the primary storage: see require_storage.
        "WALG_TARGET_STORAGE",
        # No effect on the full backups walg restores, as in WAL-G.
        "WALG_USE_REVERSE_UNPACK", "WALG_SKIP_REDUNDANT_TARS",
    )
)  # fmt: skip

# WAL-G's settings for PostgreSQL (its internal/config/config.go, the common and PostgreSQL
# lists of allowed settings) that change what a command walg has does there, and that walg
# does not implement: each with the commands it changes in WAL-G and the values that mean
# WAL-G's default (nothing to say). A WAL-G user who switches keeps them in the file or the
# environment: each command names those it does not honour instead of ignoring them
# silently. None of them loses data when ignored: a full backup instead of a delta, no rate
# limit, no metrics. (Failover storages would, and are refused: _read_config_file.)
_BACKUP = ("backup-push",)
_RESTORE = ("backup-fetch",)
_UPLOADS = ("backup-push", "wal-push", "daemon")
_EVERY = ("*",)
_FALSE = ("", "0", "f", "false", "no", "off")
NOT_IMPLEMENTED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "WALG_DELTA_MAX_STEPS": (_BACKUP, ("", "0")),
    "WALG_DELTA_ORIGIN": (_BACKUP, ("",)),
    "WALG_DELTA_FROM_NAME": (_BACKUP, ("",)),
    "WALG_DELTA_FROM_USER_DATA": (_BACKUP, ("",)),
    "WALG_USE_WAL_DELTA": (_UPLOADS, _FALSE),
    "WALG_FORCE_WAL_DELTA": (_BACKUP, _FALSE),
    "WALG_VERIFY_PAGE_CHECKSUMS": (_BACKUP, _FALSE),
    "WALG_STORE_ALL_CORRUPT_BLOCKS": (_BACKUP, _FALSE),
    "WALG_USE_RATING_COMPOSER": (_BACKUP, _FALSE),
    "WALG_USE_COPY_COMPOSER": (_BACKUP, _FALSE),
    "WALG_USE_DATABASE_COMPOSER": (_BACKUP, _FALSE),
    "WALG_WITHOUT_FILES_METADATA": (_BACKUP, _FALSE),
    "WALG_UPLOAD_QUEUE": (_BACKUP, ("", "2")),
    "WALG_ALIVE_CHECK_INTERVAL": (_BACKUP, ("", "1m")),
    "WALG_DISK_RATE_LIMIT": (_BACKUP, ("",)),
    "WALG_NETWORK_RATE_LIMIT": (_UPLOADS, ("",)),
    "WALG_UPLOAD_WAL_METADATA": (("wal-push", "daemon"), ("", "nometadata")),
    "WALG_DOWNLOAD_FILE_RETRIES": (("backup-fetch", "wal-fetch", "daemon"), ("", "15")),
    "WALG_DIRECT_IO": (_BACKUP, _FALSE),
    "WALG_DIRECT_IO_BLOCK_COUNT": (_BACKUP, ("", "32")),
    "WALG_STATSD_ADDRESS": (_EVERY, ("",)),
    "WALG_STATSD_EXTRA_TAGS": (_EVERY, ("", "{}")),
    "WALG_PG_WAL_PAGE_SIZE": (_EVERY, ("", "8192")),
    "WALG_PG_BLOCK_SIZE": (_EVERY, ("", "8192")),
    "HTTP_LISTEN": (_EVERY, ("",)),
    "HTTP_EXPOSE_PPROF": (_EVERY, _FALSE),
    "HTTP_EXPOSE_EXPVAR": (_EVERY, _FALSE),
    "PROFILE_MODE": (_EVERY, ("",)),
    "PROFILE_PATH": (_EVERY, ("",)),
    "PROFILE_SAMPLING_RATIO": (_EVERY, ("",)),
}

# WAL-G's other settings for PostgreSQL: those of commands or storages walg does not have, or
# of its Go runtime. A config file may hold them without a word.
WAL_G_OTHER_SETTINGS = frozenset(
    (
        "WALG_ZSTD_LEVEL", "WALG_STREAM_CREATE_COMMAND", "WALG_STREAM_RESTORE_COMMAND",
        "WALG_SERIALIZER_TYPE", "WALG_SLOTNAME",
        "PG_READY_RENAME", "PGBACKREST_STANZA", "WALG_DISABLE_PARTIAL_RESTORE",
        "GOMAXPROCS", "GODEBUG", "USER",
    )
)  # fmt: skip
# Key families of storages walg does not have yet (and of their SDKs), and of failover storage.
_STORAGE_FAMILIES = (
    "AWS_", "S3_", "WALG_S3_", "WALE_S3_", "GOOGLE_", "GCS_", "WALG_GS_", "AZURE_", "WALG_AZ",
    "OSS_", "WALG_OSS_", "OS_", "WALG_SWIFT_", "SSH_", "WALG_SSH_", "YC_", "WALG_FAILOVER_",
)  # fmt: skip


# WAL-G's flags in those families: it binds a flag to each setting it allows (its
# internal/config/config.go, AddConfigFlags over the common and PostgreSQL lists), and refuses
# any other as an unknown flag. The storages' other settings (GCS_CONTEXT_TIMEOUT, ...) are
# read from the environment or the file only.
WAL_G_STORAGE_FLAGS = frozenset(
    (
        "WALG_S3_PREFIX", "WALE_S3_PREFIX", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_DEFAULT_OUTPUT", "AWS_PROFILE",
        "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME", "AWS_CA_BUNDLE", "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE", "AWS_REGION", "AWS_ENDPOINT", "AWS_S3_FORCE_PATH_STYLE",
        "WALG_S3_CA_CERT_FILE", "WALG_S3_STORAGE_CLASS", "WALG_S3_SSE", "WALG_S3_SSE_C",
        "WALG_S3_SSE_KMS_ID", "WALG_S3_MAX_PART_SIZE", "WALG_S3_ENDPOINT_SOURCE",
        "WALG_S3_ENDPOINT_PORT", "WALG_S3_USE_LIST_OBJECTS_V1", "WALG_S3_LOG_LEVEL",
        "WALG_S3_RANGE_BATCH_ENABLED", "WALG_S3_RANGE_MAX_RETRIES", "WALG_S3_MAX_RETRIES",
        "WALG_AZ_PREFIX", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_ACCESS_KEY",
        "AZURE_STORAGE_SAS_TOKEN", "AZURE_ENVIRONMENT_NAME", "WALG_AZURE_BUFFER_SIZE",
        "WALG_AZURE_MAX_BUFFERS",
        "WALG_GS_PREFIX", "GOOGLE_APPLICATION_CREDENTIALS",
        "WALG_OSS_PREFIX", "OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_SESSION_TOKEN",
        "OSS_ENDPOINT", "OSS_REGION", "OSS_ROLE_ARN", "OSS_ROLE_SESSION_NAME", "OSS_MAX_RETRIES",
        "OSS_CONNECT_TIMEOUT", "OSS_UPLOAD_PART_SIZE", "OSS_COPY_PART_SIZE",
        "WALG_SWIFT_PREFIX", "OS_AUTH_URL", "OS_USERNAME", "OS_PASSWORD", "OS_TENANT_NAME",
        "OS_REGION_NAME",
        "YC_CSE_KMS_KEY_ID", "YC_SERVICE_ACCOUNT_KEY_FILE",
        "WALG_SSH_PREFIX", "SSH_PORT", "SSH_PASSWORD", "SSH_USERNAME", "SSH_PRIVATE_KEY_PATH",
        "WALG_FAILOVER_STORAGES", "WALG_FAILOVER_STORAGES_CHECK",
        "WALG_FAILOVER_STORAGES_CHECK_TIMEOUT", "WALG_FAILOVER_STORAGES_CACHE_LIFETIME",
        "WALG_FAILOVER_STORAGES_CACHE_EMA_ALIVE_LIMIT",
        "WALG_FAILOVER_STORAGES_CACHE_EMA_DEAD_LIMIT",
        "WALG_FAILOVER_STORAGES_CACHE_EMA_ALPHA_ALIVE_MAX",
        "WALG_FAILOVER_STORAGES_CACHE_EMA_ALPHA_ALIVE_MIN",
        "WALG_FAILOVER_STORAGES_CACHE_EMA_ALPHA_DEAD_MAX",
        "WALG_FAILOVER_STORAGES_CACHE_EMA_ALPHA_DEAD_MIN", "WALG_FAILOVER_STORAGES_CHECK_SIZE",
    )
)  # fmt: skip


def _look_alike(name: str, known: list[str]) -> str | None:
    """The one of ``known`` that ``name`` looks like a misspelling of, if any."""
    import difflib

    close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
    return close[0] if close else None


def _known_setting(name: str) -> bool:
    """Is ``name`` a setting walg or WAL-G reads (for PostgreSQL)?"""
    if name.startswith("WALE_") and _known_setting("WALG_" + name[5:]):
        return True
    return (
        name in WALG_SETTINGS
        or name in NOT_IMPLEMENTED
        or name in WAL_G_OTHER_SETTINGS
        or name in ENCRYPTION_KEYS
        or any(name == f"WALG_{suffix}" for suffix, _ in STORAGE_PREFIX_KEYS)
        or name.startswith(_STORAGE_FAMILIES)
        or (name.startswith("PG") and not name.startswith("PG_"))  # pg_connection's
    )


def _config_value(path: str, name: str, value: Any) -> str:
    """A config file's value as the text the environment would hold.

    Only single values are settings (text, numbers, booleans; null is unset): a mapping or a
    list turned into text would be taken as a path, a name or a number that nobody wrote
    (``WALG_FILE_PREFIX: {path: /backups}`` was a folder named by its JSON in the working
    folder). Structured values are kept, as JSON, for :data:`STRUCTURED_KEYS` only. Never
    shows the value: it may be a secret.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, float) and math.isfinite(value):
        # WAL-G holds every config-file number as a float64 and hands it on as Go's shortest
        # fixed-point text (strconv.FormatFloat 'f', -1): 5432.0 is "5432", 1e-07 "0.0000001".
        if value.is_integer():
            return str(int(value))
        from decimal import Decimal

        return format(Decimal(repr(value)), "f")
    if isinstance(value, str | int | float):
        return str(value)
    # A setting walg does not read may be a mapping in WAL-G (WALG_STATSD_EXTRA_TAGS, read as
    # one): refusing it stopped every command, archiving included, for a setting it ignores.
    # Its value is never used, only named in a warning (Settings.not_honoured).
    ignored = not _known_setting(name) or name in NOT_IMPLEMENTED or name in WAL_G_OTHER_SETTINGS
    if ignored and isinstance(value, dict | list):
        return "(a mapping)" if isinstance(value, dict) else "(a list)"
    if name in STRUCTURED_KEYS and isinstance(value, dict | list):
        import json

        try:
            return json.dumps(value)
        except (ValueError, TypeError, RecursionError) as exc:
            # A YAML alias that contains itself (`a: &a [*a]`), dates, nesting too deep.
            raise ConfigError(
                f"config file {path}: {name} cannot be written as JSON ({type(exc).__name__})"
            ) from None
    if isinstance(value, dict):
        kind = "a mapping"
    elif isinstance(value, list):
        kind = "a list"
    else:
        kind = type(value).__name__
    raise ConfigError(
        f"config file {path}: {name} must be a single value (text, a number or true/false), "
        f"not {kind}"
    )


# Go's time.ParseDuration refuses anything longer (an int64 of nanoseconds, about 292 years),
# so WAL-G does too; it also keeps every duration within what threading's waits accept.
MAX_DURATION = (2**63 - 1) / 1e9


def parse_duration(name: str, text: str) -> float:
    """Seconds from a Go duration (``90s``, ``1m30s``, ``.5h``, ``+90s``) or a number of seconds.

    Negative, infinite and NaN values (``float`` parses ``inf``, ``nan`` and ``1e400``) are
    refused, as are durations longer than Go's: no caller could honour them.
    """
    text = text.strip()
    try:
        total = float(text)
    except ValueError:
        sign = text[:1] if text[:1] in ("+", "-") else ""
        pos = len(sign)
        total = 0.0
        for match in _DURATION_RE.compiled().finditer(text, pos):
            number = match.group(1)
            if match.start() != pos or number.strip(".") == "":
                break
            total += float(number) * _DURATION_UNITS[match.group(2)]
            pos = match.end()
        if sign == "-":
            total = -total
        if pos != len(text) or pos == len(sign):
            raise ConfigError(f"{name}={text!r} is not a duration (e.g. 30s, 5m, 1h)") from None
    if not math.isfinite(total) or total < 0:
        raise ConfigError(f"{name}={text!r} is not a duration of zero or more seconds")
    if total > MAX_DURATION:
        raise ConfigError(f"{name}={text!r} is longer than the longest duration, 2562047h")
    return total


# The most threads, parts or downloads a concurrency setting may ask for. WAL-G takes any int
# (and so would start that many goroutines); walg starts one thread or future per unit, and
# 10^20 of them only ever fill memory.
MAX_CONCURRENCY = 1024


def _int(
    values: Mapping[str, str],
    name: str,
    default: int,
    minimum: int = 1,
    maximum: int | None = None,
) -> int:
    raw = values.get(name, "").strip()
    if not raw:
        return default
    number = go_int(raw)
    if number is None:
        raise ConfigError(f"{name}={raw!r} is not an integer")
    if number < minimum:
        raise ConfigError(f"{name}={number} must be at least {minimum}")
    if maximum is not None and number > maximum:
        raise ConfigError(f"{name}={number} must be at most {maximum}")
    return number


def go_int(text: str) -> int | None:
    """An integer as WAL-G's config library casts a setting's text (Go's ``strconv.ParseInt``
    with base 0): ``0x``/``0o``/``0b`` prefixes, a leading ``0`` for octal, ``_`` between
    digits; None for anything else. A decimal part of zeros is dropped (``16.0``: a JSON
    number is a float64 to WAL-G, and config tools write it so). WAL-G also drops any other
    decimal part (``16.5`` is 16); walg refuses that, as a value it would not read as written.
    """
    head, point, tail = text.partition(".")
    if point:
        if tail.strip("0"):
            return None
        text = head
    sign = text[:1] if text[:1] in "+-" else ""
    digits = text[len(sign) :]
    if not digits.isascii():
        return None
    try:
        if len(digits) > 1 and digits[0] == "0" and digits[1] not in "xXoObB":
            number = int(digits, 8)  # Go's base 0 reads a leading zero as octal (020 is 16)
        else:
            number = int(digits, 0)
    except ValueError:
        return None
    return -number if sign == "-" else number


def _wal_segment_size(values: Mapping[str, str]) -> int:
    """``WALG_PG_WAL_SIZE`` in bytes. PostgreSQL's segments are a power of two from 1 to 1024
    MiB (``initdb --wal-segsize``); any other size would make every WAL position walg computes
    from it wrong, so it is refused rather than used."""
    mib = _int(values, "WALG_PG_WAL_SIZE", 16, maximum=1024)
    if mib & (mib - 1):
        raise ConfigError(
            f"WALG_PG_WAL_SIZE={mib} is not a WAL segment size: PostgreSQL's are a power of "
            "two from 1 to 1024 (MiB)"
        )
    return mib * 1024 * 1024


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


# WAL-G's defaults of settings that only tune its encryption: a config that writes them out
# (as templates listing every setting do) asks for no encryption, and WAL-G stores in clear.
_ENCRYPTION_DEFAULTS = {
    "WALG_LIBSODIUM_KEY_TRANSFORM": "none",
    "WALG_ENVELOPE_CACHE_EXPIRATION": "0",
}


def refuse_encryption(values: Mapping[str, str]) -> None:
    """ConfigError naming every encryption setting that is set (never its value).

    walg cannot encrypt or decrypt yet. Ignoring such a setting, as it did, would let a WAL-G
    user who switches store backups and WAL in clear without a word, so nothing that touches
    storage runs while one is set.
    """
    found = [
        name
        for name in ENCRYPTION_KEYS
        if values.get(name, "").strip()
        and values[name].strip().lower() != _ENCRYPTION_DEFAULTS.get(name)
    ]
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


def pg_connection(
    values: Mapping[str, str], config_keys: frozenset[str] = frozenset()
) -> PgConnection:
    """libpq parameters from the PG* variables libpq knows, checked as libpq checks them.

    Walg's own choices: the database ``postgres`` unless PGDATABASE or a service names one,
    ``wal-g`` (WAL-G's) as the fallback application name, and a connect timeout even where
    libpq would wait forever. PG* variables given here are explicit keywords, so they take
    precedence over the entries of a PGSERVICE service file (libpq lets the service file
    override its environment variables).
    """
    from walg.core.log import get_logger

    log = get_logger(__name__)
    for name in sorted(config_keys):
        if not (len(name) > 2 and name.startswith("PG") and name[2] != "_"):
            continue  # not a PG* name (PG_READY_RENAME is one of WAL-G's own settings)
        if name in LIBPQ_ENVIRONMENT_ONLY:
            log.warning(
                "%s in the config file is ignored: libpq reads it only from the environment",
                name,
            )
        elif name not in LIBPQ_VARIABLES and name not in OTHER_PG_VARIABLES:
            log.warning("%s in the config file is not a libpq variable walg knows: ignored", name)

    for name in LIBPQ_VARIABLES:
        try:
            values.get(name, "").encode("utf-8")
        except UnicodeEncodeError:
            # Bytes that are not UTF-8 reach Python as surrogates, which libpq's keywords
            # cannot carry; the password's value is never shown.
            raise ConfigError(f"{name} is not valid UTF-8") from None
    params: dict[str, str] = {}
    for name, keyword in LIBPQ_VARIABLES.items():
        value = values.get(name, "").strip()
        if value and name not in ("PGHOST", "PGPORT", "PGPASSWORD", "PGCONNECT_TIMEOUT"):
            params[keyword] = value
    # libpq before 17 took PGREQUIRESSL=1 for sslmode=require; later ones ignore it. Dropping
    # it would weaken what the user asked for, so it still means at least "require".
    if values.get("PGREQUIRESSL", "").strip().startswith("1") and (
        params.get("sslmode") not in _STRONG_SSLMODES
    ):
        params["sslmode"] = "require"
    if "dbname" not in params and "service" not in params:
        params["dbname"] = "postgres"
    if "application_name" not in params:
        # WAL-G's name, so monitoring that looks for it in pg_stat_activity still finds the
        # backup; a fallback, so a service file's application_name still wins, as in psql.
        params["fallback_application_name"] = "wal-g"

    port = values.get("PGPORT", "").strip() or None
    if port is not None:
        # libpq takes one port per host (PGHOST=h1,h2 PGPORT=5432,5433); an empty entry means
        # the default port. Pairing ports with hosts is left to libpq.
        for raw_entry in port.split(","):
            entry = raw_entry.strip()
            if entry and not (entry.isascii() and entry.isdigit() and 0 < int(entry) < 65536):
                raise ConfigError(f"PGPORT={port!r}: {entry!r} is not a port number")

    connect_timeout = DEFAULT_PG_CONNECT_TIMEOUT
    raw_timeout = values.get("PGCONNECT_TIMEOUT", "").strip()
    if raw_timeout:
        try:
            seconds = int(raw_timeout)
        except ValueError:
            raise ConfigError(f"PGCONNECT_TIMEOUT={raw_timeout!r} is not an integer") from None
        if seconds > 0:
            connect_timeout = seconds
        else:
            # libpq waits forever for 0 or less; walg promises that no wait is unbounded.
            log.warning(
                "PGCONNECT_TIMEOUT=%s means no time limit to libpq; walg waits at most %d s",
                raw_timeout,
                DEFAULT_PG_CONNECT_TIMEOUT,
            )
    return PgConnection(
        host=values.get("PGHOST", "").strip() or None,
        port=port,
        password=values.get("PGPASSWORD") or None,
        params=params,
        connect_timeout=connect_timeout,
    )


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _float64_int(text: str) -> int:
    # Go reads every JSON number of an interface{} as a float64.
    if not math.isfinite(float(text)):
        raise ValueError(f"{text} is out of range")
    return int(text)


def _reject_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def parse_user_data(raw: str) -> Any:
    """User data for the sentinel: the JSON value, or the text itself when it is not JSON.

    WAL-G (Go's encoding/json) has no NaN, Infinity or numbers beyond float64: such a value is
    not JSON to it, so it is kept as a string here too, rather than written as the invalid
    JSON ``NaN`` that no reader would accept. Text that cannot be stored as UTF-8 (a lone
    surrogate, bytes that are not UTF-8 in the environment) is refused.
    """
    import json

    # Kept exactly, as WAL-G keeps it: only an empty value is no user data (JSON may have
    # whitespace around it; text that is not JSON keeps its own).
    if not raw:
        return None
    try:
        value: Any = json.loads(
            raw,
            parse_float=_finite_float,
            parse_int=_float64_int,
            parse_constant=_reject_constant,
        )
    except ValueError:
        value = raw
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError) as exc:
        raise ConfigError(
            f"WALG_SENTINEL_USER_DATA cannot be stored as UTF-8 JSON ({exc}); "
            "use valid UTF-8 text without lone \\u surrogate escapes"
        ) from None
    return value


def _build(
    values: Mapping[str, str],
    config_file: str | None,
    destination_key: str,
    config_keys: frozenset[str] = frozenset(),
    flags: Mapping[str, str] | None = None,
) -> Settings:
    kind, prefix, prefix_key = _storage(values)
    compression = values.get("WALG_COMPRESSION_METHOD", "").strip().lower() or "lz4"
    if compression not in COMPRESSION_METHODS:
        raise ConfigError(
            f"WALG_COMPRESSION_METHOD={compression!r} is not one of "
            + ", ".join(COMPRESSION_METHODS)
        )
    return Settings(
        storage_kind=kind,
        storage_prefix=prefix,
        storage_prefix_key=prefix_key,
        storage_subfolder=values.get("WALG_STORAGE_PREFIX", "").strip().strip("/"),
        compression=compression,
        upload_concurrency=_int(values, "WALG_UPLOAD_CONCURRENCY", 16, maximum=MAX_CONCURRENCY),
        download_concurrency=_int(values, "WALG_DOWNLOAD_CONCURRENCY", 10, maximum=MAX_CONCURRENCY),
        pgdata=values.get("PGDATA", "").strip() or None,
        prevent_wal_overwrite=_bool(values, "WALG_PREVENT_WAL_OVERWRITE", True),
        # Negative too, as WAL-G takes it: below 2 there is no look-ahead.
        total_bg_uploaded_limit=_int(values, "TOTAL_BG_UPLOADED_LIMIT", 32, minimum=-(2**31)),
        prefetch_dir=values.get("WALG_PREFETCH_DIR", "").strip() or None,
        wal_segment_size=_wal_segment_size(values),
        daemon_follow_wal=_bool(values, "WALG_DAEMON_FOLLOW_WAL", True),
        file_direct_io=_bool(values, "WALG_FILE_DIRECT_IO", True),
        log_level=values.get("WALG_LOG_LEVEL", "").strip().upper() or "NORMAL",
        config_file=config_file,
        destination_key=destination_key,
        values=dict(values),
        flags=dict(flags or {}),
        config_keys=config_keys,
    )
