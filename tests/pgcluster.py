"""Throwaway PostgreSQL clusters for walg's integration tests and benchmarks.

The PostgreSQL builds are installed by ``scripts/setup.sh`` under ``$WALG_OPT/pg/<major>/``
(default ``/opt/walg``); each has an ``env`` file of ``KEY=VALUE`` lines (``BINDIR``,
optionally ``LD_LIBRARY_PATH``, ``AMCHECK``).

``initdb`` and ``postgres`` refuse to run as root, so when this process is root every server
and client tool runs as the user ``pgtest`` (see :func:`run_as_pg`). Directories handed to
:class:`Cluster` must therefore be writable by ``pgtest``; :func:`pg_tmpdir` makes such
directories under a world-traversable base (pytest's own ``tmp_path`` is mode 0700 and root's).

Every server started here is recorded; :func:`stop_all` stops those still running (also run
at interpreter exit). Nothing here depends on pytest.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from walg.core.lsn import format_lsn, parse_lsn

DEFAULT_OPT = "/opt/walg"
PG_USER = "pgtest"
"""OS user that runs the servers when we are root; also the database superuser's name."""

DEFAULT_TIMEOUT = 120.0
_TAIL = 3000

__all__ = [
    "DEFAULT_OPT",
    "PG_USER",
    "Cluster",
    "CommandError",
    "PgInstall",
    "PgSetupError",
    "available_majors",
    "base_tmpdir",
    "ensure_installs",
    "free_port",
    "make_shared_dir",
    "opt_dir",
    "pg_tmpdir",
    "pg_user_env",
    "run_as_pg",
    "running_clusters",
    "set_conf",
    "stop_all",
    "stop_clusters_under",
]


class PgSetupError(RuntimeError):
    """A PostgreSQL build is missing or broken (run scripts/setup.sh)."""


class CommandError(RuntimeError):
    """A command run by :func:`run_as_pg` failed or timed out."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int | None,
        stdout: str,
        stderr: str,
        note: str = "",
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        status = "timed out" if returncode is None else f"exited with {returncode}"
        parts = [f"command {status}: {shlex.join(self.argv)}"]
        if note:
            parts.append(note)
        if stdout.strip():
            parts.append("--- stdout (tail) ---\n" + _tail(stdout))
        if stderr.strip():
            parts.append("--- stderr (tail) ---\n" + _tail(stderr))
        super().__init__("\n".join(parts))


def _tail(text: str, limit: int = _TAIL) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


# --------------------------------------------------------------------------- installs


def opt_dir() -> Path:
    """Prefix of the test installation ($WALG_OPT, default /opt/walg)."""
    return Path(os.environ.get("WALG_OPT") or DEFAULT_OPT)


def available_majors() -> list[int]:
    """PostgreSQL majors that setup.sh installed and verified, ascending."""
    root = opt_dir() / "pg"
    majors: list[int] = []
    if root.is_dir():
        for child in root.iterdir():
            if child.name.isdigit() and (child / "env").is_file():
                majors.append(int(child.name))
    return sorted(majors)


def _parse_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


@dataclass(frozen=True)
class PgInstall:
    """One PostgreSQL build: where its binaries are and what they need to run."""

    major: int
    bindir: Path
    env_additions: Mapping[str, str] = field(default_factory=dict, hash=False)
    has_amcheck: bool = False
    version: str = ""

    @classmethod
    def load(cls, major: int) -> PgInstall:
        envfile = opt_dir() / "pg" / str(major) / "env"
        if not envfile.is_file():
            raise PgSetupError(
                f"PostgreSQL {major} is not installed ({envfile} missing); run scripts/setup.sh"
            )
        values = _parse_env_file(envfile)
        if "BINDIR" not in values:
            raise PgSetupError(f"{envfile} has no BINDIR")
        bindir = Path(values["BINDIR"])
        if not (bindir / "initdb").is_file():
            raise PgSetupError(f"{bindir}/initdb missing (from {envfile}); run scripts/setup.sh")
        extra = {}
        if values.get("LD_LIBRARY_PATH"):
            extra["LD_LIBRARY_PATH"] = values["LD_LIBRARY_PATH"]
        return cls(
            major=major,
            bindir=bindir,
            env_additions=extra,
            has_amcheck=values.get("AMCHECK") == "1",
            version=values.get("VERSION", ""),
        )

    def tool(self, name: str) -> str:
        """Absolute path of one of this build's programs (psql, pg_basebackup, ...)."""
        path = self.bindir / name
        if not path.is_file():
            raise PgSetupError(f"PostgreSQL {self.major} has no {name} in {self.bindir}")
        return str(path)

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: os.environ) without PG* variables, plus what the build needs.

        PATH starts with this build's bindir, so ``pg_*`` names resolve to this major.
        """
        src = os.environ if base is None else base
        env = {k: v for k, v in src.items() if not k.startswith("PG")}
        for key, value in self.env_additions.items():
            if key == "LD_LIBRARY_PATH" and env.get(key):
                env[key] = f"{value}:{env[key]}"
            else:
                env[key] = value
        env["PATH"] = f"{self.bindir}:{env.get('PATH') or '/usr/bin:/bin'}"
        return env

    @property
    def has_verify_heapam(self) -> bool:
        return self.major >= 14


# --------------------------------------------------------------------------- users, dirs


def _is_root() -> bool:
    return os.geteuid() == 0


def _pg_pw() -> pwd.struct_passwd:
    if _is_root():
        try:
            return pwd.getpwnam(PG_USER)
        except KeyError:
            raise PgSetupError(f"user {PG_USER} does not exist; run scripts/setup.sh") from None
    return pwd.getpwuid(os.geteuid())


def pg_user_env() -> dict[str, str]:
    """HOME and USER of the account that runs the servers."""
    pw = _pg_pw()
    return {"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name}


def run_as_pg(
    argv: Sequence[str | os.PathLike[str]],
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float | None = DEFAULT_TIMEOUT,
    input: str | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``pgtest`` when root (else as ourselves), capturing text output.

    ``env`` is passed as given (default: a copy of os.environ); HOME is set to the target
    user's home when missing (or, for the default environment, when switching users).
    Raises :class:`CommandError` with the output's tail on a non-zero exit (when ``check``)
    and always on timeout.
    """
    args = [os.fspath(a) for a in argv]
    switching = _is_root()
    if env is None:
        full = dict(os.environ)
        if switching:
            full.update(pg_user_env())
    else:
        full = dict(env)
        full.setdefault("HOME", pg_user_env()["HOME"])
    uid = gid = None
    extra_groups: list[int] | None = None
    if switching:
        pw = _pg_pw()
        uid, gid, extra_groups = pw.pw_uid, pw.pw_gid, []
        if cwd is None:
            cwd = "/"  # our cwd may be unreadable for pgtest
    try:
        result = subprocess.run(
            args,
            env=full,
            check=False,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=cwd,
            user=uid,
            group=gid,
            extra_groups=extra_groups,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(
            args, None, _as_text(exc.stdout), _as_text(exc.stderr), f"timeout {timeout}s"
        ) from None
    if check and result.returncode != 0:
        raise CommandError(args, result.returncode, result.stdout, result.stderr)
    return result


def _as_text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data


def _chown_to_pg(path: Path) -> None:
    if _is_root():
        pw = _pg_pw()
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _chown_tree_to_pg(path: Path) -> None:
    if not _is_root():
        return
    pw = _pg_pw()
    os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid, follow_symlinks=False)


def make_shared_dir(path: str | os.PathLike[str], mode: int = 0o700) -> Path:
    """Create ``path`` (and parents) as a directory owned by the server user, with ``mode``.

    Missing parents are created the same way, with mode 0755.
    """
    p = Path(path)
    for parent in reversed(p.parents):
        if not parent.exists():
            parent.mkdir(mode=0o755)
            _chown_to_pg(parent)
    p.mkdir(exist_ok=True)
    _chown_to_pg(p)
    p.chmod(mode)
    return p


def base_tmpdir() -> Path:
    """World-traversable base for test directories: $WALG_TEST_TMP or /tmp/walg-tests-<uid>."""
    base = Path(os.environ.get("WALG_TEST_TMP") or f"/tmp/walg-tests-{os.geteuid()}")
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    st = base.stat()
    if st.st_uid != os.geteuid():
        raise PgSetupError(f"{base} belongs to uid {st.st_uid}, not us")
    if st.st_mode & 0o755 != 0o755:
        base.chmod(0o755)
    return base


def pg_tmpdir(prefix: str = "pg-", base: str | os.PathLike[str] | None = None) -> Path:
    """A fresh directory (mode 0755) the server user owns, under ``base`` (default
    :func:`base_tmpdir`). Remove it with ``shutil.rmtree`` after stopping its clusters
    (:func:`stop_clusters_under`)."""
    parent = Path(base) if base is not None else base_tmpdir()
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    _chown_to_pg(path)
    path.chmod(0o755)
    return path


# --------------------------------------------------------------------------- ports, registry

_lock = threading.RLock()
_handed_ports: set[int] = set()
_running: dict[int, Cluster] = {}
_templates: dict[tuple[int, str, tuple[str, ...]], Path] = {}
_template_root: list[Path] = []  # at most one: this process's template directory
_socket_dirs: set[Path] = set()  # short socket directories made in /tmp, removed at exit


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (never 5432, never handed out twice here)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with _lock:
            if port != 5432 and port not in _handed_ports:
                _handed_ports.add(port)
                return port
    raise RuntimeError("could not find a free port")


def running_clusters() -> list[Cluster]:
    """Clusters started by this process and not yet stopped."""
    with _lock:
        return list(_running.values())


def stop_all(mode: str = "fast") -> list[str]:
    """Stop every cluster this process started and has not stopped; returns their datadirs."""
    stopped = []
    for cluster in running_clusters():
        with contextlib.suppress(Exception):
            cluster.stop(mode=mode)
        stopped.append(str(cluster.datadir))
    return stopped


def stop_clusters_under(path: str | os.PathLike[str], mode: str = "fast") -> list[str]:
    """Stop clusters of this process whose data directory lies under ``path``."""
    root = Path(path).resolve()
    stopped = []
    for cluster in running_clusters():
        if cluster.datadir.resolve().is_relative_to(root):
            cluster.stop(mode=mode)
            stopped.append(str(cluster.datadir))
    return stopped


def _cleanup_templates() -> None:
    with _lock:
        roots = list(_template_root)
        _template_root.clear()
        _templates.clear()
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


def _at_exit() -> None:
    stop_all(mode="immediate")
    _cleanup_templates()
    with _lock:
        dirs = list(_socket_dirs)
        _socket_dirs.clear()
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)


atexit.register(_at_exit)


def _template(install: PgInstall, initdb_args: tuple[str, ...]) -> Path:
    """initdb once per (major, args) per process; clusters are ``cp -a`` copies of it."""
    key = (install.major, str(install.bindir), initdb_args)
    with _lock:
        cached = _templates.get(key)
        if cached is not None and (cached / "PG_VERSION").is_file():
            return cached
        if not _template_root:
            _template_root.append(
                make_shared_dir(base_tmpdir() / f"templates-{os.getpid()}-{time.time_ns()}", 0o755)
            )
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:10]
        path = _template_root[0] / f"pg{install.major}-{digest}"
        if path.exists():
            shutil.rmtree(path)
        _initdb(install, path, initdb_args)
        _templates[key] = path
        return path


def _initdb(install: PgInstall, datadir: Path, initdb_args: Sequence[str]) -> None:
    argv = [
        install.tool("initdb"),
        "-D",
        str(datadir),
        "-U",
        PG_USER,
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
        "--no-sync",
        *initdb_args,
    ]
    run_as_pg(argv, env=install.env(), timeout=300)


# --------------------------------------------------------------------------- config files


def _conf_value(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def _write_as_pg(path: Path, text: str) -> None:
    path.write_text(text)
    _chown_to_pg(path)


def set_conf(path: Path, settings: Mapping[str, str]) -> None:
    """Set ``settings`` in a postgresql.conf-style file: existing lines for those keys are
    dropped, new ones appended (quoted)."""
    keys = {k.lower() for k in settings}
    kept = []
    if path.exists():
        for line in path.read_text().splitlines():
            name = line.split("=", 1)[0].strip().lower() if "=" in line else ""
            if name and not name.startswith("#") and name in keys:
                continue
            kept.append(line)
    kept.extend(f"{k} = {_conf_value(v)}" for k, v in settings.items())
    _write_as_pg(path, "\n".join(kept) + "\n")


# --------------------------------------------------------------------------- clusters


class Cluster:
    """One PostgreSQL data directory, its server and its connection settings.

    Files next to the data directory ``D``: ``D.log`` (server log) and a short socket
    directory (``D.sock`` when the path is short enough, else one under /tmp).
    """

    def __init__(self, install: PgInstall, datadir: Path, port: int, socket_dir: Path) -> None:
        self.install = install
        self.datadir = Path(datadir)
        self.port = port
        self.socket_dir = Path(socket_dir)
        self.logfile = self.datadir.with_name(self.datadir.name + ".log")
        self._auto_port = False
        self._pid: int | None = None

    def __repr__(self) -> str:
        return f"Cluster(pg{self.install.major}, {self.datadir}, port={self.port})"

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        install: PgInstall,
        datadir: str | os.PathLike[str],
        port: int | None = None,
        initdb_args: Sequence[str] = (),
        conf: Mapping[str, str] | None = None,
        use_template: bool = True,
    ) -> Cluster:
        """initdb (a copy of a per-process template) into ``datadir``, configure, don't start.

        ``datadir`` must not exist yet, or be empty; its parent must be writable by pgtest.
        """
        path = Path(datadir).absolute()
        if path.exists() and any(path.iterdir()):
            raise FileExistsError(f"{path} exists and is not empty")
        if path.exists():
            path.rmdir()
        if use_template:
            template = _template(install, tuple(initdb_args))
            run_as_pg(["cp", "-a", str(template), str(path)], env=_plain_env(), timeout=300)
        else:
            _initdb(install, path, initdb_args)
        cluster = cls._configured(install, path, port)
        settings = {
            "port": str(cluster.port),
            "unix_socket_directories": str(cluster.socket_dir),
            "listen_addresses": "127.0.0.1",
            "jit": "off",
            "fsync": "off",
            "wal_level": "replica",
            "max_wal_senders": "4",
            **(conf or {}),
        }
        conf_path = path / "postgresql.conf"
        with conf_path.open("a") as f:
            f.write("\n# walg tests\n")
            f.writelines(f"{k} = {_conf_value(v)}\n" for k, v in settings.items())
        return cluster

    @classmethod
    def from_existing(
        cls,
        install: PgInstall,
        datadir: str | os.PathLike[str],
        port: int | None = None,
        conf: Mapping[str, str] | None = None,
        fix_ownership: bool = True,
    ) -> Cluster:
        """Adopt a data directory (a restored backup, a pg_basebackup copy) without starting it.

        Its own port / socket settings came from the source cluster, so ours are written into
        postgresql.auto.conf (which overrides postgresql.conf). When root and ``fix_ownership``,
        the tree is chowned to pgtest and the directory made mode 0700.
        """
        path = Path(datadir).absolute()
        if not (path / "PG_VERSION").is_file():
            raise FileNotFoundError(f"{path} is not a PostgreSQL data directory")
        if fix_ownership:
            _chown_tree_to_pg(path)
            path.chmod(0o700)
        cluster = cls._configured(install, path, port)
        cluster.set_conf(
            {
                "port": str(cluster.port),
                "unix_socket_directories": str(cluster.socket_dir),
                "listen_addresses": "127.0.0.1",
                "jit": "off",
                **(conf or {}),
            }
        )
        return cluster

    @classmethod
    def _configured(cls, install: PgInstall, path: Path, port: int | None) -> Cluster:
        sock = path.with_name(path.name + ".sock")
        # sun_path holds 107 bytes: "<dir>/.s.PGSQL.<port>.lock" must fit.
        if len(os.fsencode(sock)) > 80:
            sock = Path(tempfile.mkdtemp(prefix="walgsock-", dir="/tmp"))
            with _lock:
                _socket_dirs.add(sock)
        make_shared_dir(sock, 0o700)
        cluster = cls(install, path, port if port is not None else free_port(), sock)
        cluster._auto_port = port is None
        return cluster

    # ------------------------------------------------------------------ configuration
    def set_conf(self, settings: Mapping[str, str], file: str = "postgresql.auto.conf") -> None:
        """Set server settings in ``file`` of the data directory (takes effect on restart or
        reload)."""
        if "port" in settings:
            self.port = int(settings["port"])
        if "unix_socket_directories" in settings:
            self.socket_dir = Path(settings["unix_socket_directories"].split(",")[0].strip())
        set_conf(self.datadir / file, settings)

    def touch(self, name: str) -> Path:
        """Create an empty file in the data directory (``standby.signal``, ...)."""
        path = self.datadir / name
        _write_as_pg(path, "")
        return path

    # ------------------------------------------------------------------ environment
    def conninfo_env(self) -> dict[str, str]:
        return {
            "PGHOST": str(self.socket_dir),
            "PGPORT": str(self.port),
            "PGUSER": PG_USER,
            "PGDATABASE": "postgres",
        }

    def conninfo(self, dbname: str = "postgres") -> str:
        """libpq connection string (for psycopg and friends)."""
        return f"host={self.socket_dir} port={self.port} user={PG_USER} dbname={dbname}"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Full environment for a command run against this cluster (see :func:`run_as_pg`):
        os.environ without PG*, the build's additions, pgtest's HOME, PGHOST... and ``extra``."""
        env = self.install.env()
        if _is_root():
            env.update(pg_user_env())
        env.update(self.conninfo_env())
        env["PGDATA"] = str(self.datadir)
        if extra:
            env.update(extra)
        return env

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        timeout: float | None = DEFAULT_TIMEOUT,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command as pgtest with :meth:`env` (plus ``env``); a bare program name
        found in the build's bindir is replaced by its path."""
        args = [os.fspath(a) for a in argv]
        if args and "/" not in args[0] and (self.install.bindir / args[0]).is_file():
            args[0] = str(self.install.bindir / args[0])
        return run_as_pg(args, env=self.env(env), check=check, timeout=timeout, input=input)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError as exc:
            return f"(no log {self.logfile}: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ server control
    def _pg_ctl(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        argv = [self.install.tool("pg_ctl"), "-D", str(self.datadir), *args]
        return run_as_pg(argv, env=self.env(), check=False, timeout=timeout + 30)

    def postmaster_pid(self) -> int | None:
        """PID from postmaster.pid if that process exists, else None."""
        try:
            # Bytes: its second line is the data directory's path, which may not be UTF-8.
            first = (self.datadir / "postmaster.pid").read_bytes().split(b"\n", 1)[0]
            pid = int(first.strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def is_running(self) -> bool:
        return self.postmaster_pid() is not None

    def start(self, timeout: float = 60.0, wait_ready: bool = True) -> None:
        """``pg_ctl -w -l <log> start``; with an automatically chosen port, a port clash is
        retried on another port."""
        for attempt in range(3):
            res = self._pg_ctl(
                "-l", str(self.logfile), "-w", "-t", str(int(timeout)), "start", timeout=timeout
            )
            pid = self.postmaster_pid()
            if pid is not None:
                self._pid = pid
                with _lock:
                    _running[id(self)] = self
            if res.returncode == 0:
                break
            log = self.log_tail()
            if self._auto_port and attempt < 2 and "could not bind" in log and pid is None:
                self.set_conf({"port": str(free_port())})
                continue
            if pid is not None:
                # pg_ctl gave up waiting but the server exists: don't leak it.
                self.stop(mode="immediate")
            raise CommandError(
                res.args, res.returncode, res.stdout, res.stderr, "server log:\n" + log
            )
        if wait_ready:
            self.wait_ready(timeout=timeout)

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Stop the server if it runs (idempotent). Falls back to immediate, then SIGKILL of
        the postmaster we started."""
        try:
            if self.postmaster_pid() is None:
                return
            res = self._pg_ctl("-m", mode, "-w", "-t", str(int(timeout)), "stop", timeout=timeout)
            if res.returncode == 0 or self.postmaster_pid() is None:
                return
            if mode != "immediate":
                self._pg_ctl("-m", "immediate", "-w", "-t", "30", "stop", timeout=30)
                if self.postmaster_pid() is None:
                    return
            pid = self.postmaster_pid()
            if pid is not None and pid == self._pid:
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 30)
            if self.postmaster_pid() is not None:
                raise CommandError(
                    res.args, res.returncode, res.stdout, res.stderr, "server did not stop"
                )
        finally:
            if self.postmaster_pid() is None:
                with _lock:
                    _running.pop(id(self), None)
                self._pid = None

    def restart(self, mode: str = "fast", timeout: float = 60.0) -> None:
        self.stop(mode=mode, timeout=timeout)
        self.start(timeout=timeout)

    def reload(self) -> None:
        self.psql("SELECT pg_reload_conf()")

    def stop_streaming(self, timeout: float = 30.0) -> None:
        """Cut a standby off its upstream (``primary_conninfo`` emptied) and wait until its
        walreceiver has gone: WAL written upstream from then on does not reach it."""
        self.set_conf({"primary_conninfo": ""})
        self.reload()
        self._await_answer(
            "SELECT count(*) FROM pg_stat_wal_receiver", "0", f"{self} kept streaming", timeout
        )

    def wait_for_streaming(self, timeline: int, timeout: float = 60.0) -> None:
        """Wait until this standby's walreceiver streams ``timeline`` from its upstream.

        A standby with a restore_command may have replayed all there is from the archive
        before its walreceiver connects: caught up is not yet streaming."""
        self._await_answer(
            "SELECT received_tli FROM pg_stat_wal_receiver",
            str(timeline),
            f"{self} not streaming timeline {timeline}",
            timeout,
        )

    def _await_answer(self, sql: str, expected: str, failure: str, timeout: float) -> None:
        """Poll ``sql`` every 0.1 s until it answers ``expected``; past ``timeout`` seconds,
        a TimeoutError that says ``failure`` and shows the tail of the server's log."""
        deadline = time.monotonic() + timeout
        while self.psql(sql) != expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{failure}:\n{self.log_tail()}")
            time.sleep(0.1)

    def promote(self, timeout: float = 60.0) -> None:
        """Promote a standby and wait until it accepts writes."""
        res = self._pg_ctl("-w", "-t", str(int(timeout)), "promote", timeout=timeout)
        if res.returncode != 0:
            raise CommandError(
                res.args, res.returncode, res.stdout, res.stderr, "server log:\n" + self.log_tail()
            )
        self.wait_for_recovery_end(timeout=timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until ``SELECT 1`` succeeds (a hot standby counts as ready)."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            res = self.run(
                [self.install.tool("psql"), "-X", "-A", "-t", "-c", "SELECT 1"],
                check=False,
                timeout=max(5.0, min(30.0, deadline - time.monotonic())),
            )
            if res.returncode == 0 and res.stdout.strip() == "1":
                return
            last = res.stderr
            if not self.is_running():
                raise RuntimeError(f"{self} is not running:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self} not ready after {timeout}s: {last}\n{self.log_tail()}")
            time.sleep(0.1)

    def is_in_recovery(self) -> bool:
        return self.psql("SELECT pg_is_in_recovery()") == "t"

    def wait_for_recovery_end(self, timeout: float = 120.0) -> None:
        """Poll until ``pg_is_in_recovery()`` is false (the server must keep running)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running():
                raise RuntimeError(f"{self} stopped during recovery:\n{self.log_tail()}")
            res = self.run(
                [self.install.tool("psql"), "-X", "-A", "-t", "-c", "SELECT pg_is_in_recovery()"],
                check=False,
                timeout=30,
            )
            if res.returncode == 0 and res.stdout.strip() == "f":
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self} still in recovery after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.2)

    # ------------------------------------------------------------------ clients
    def psql(
        self,
        sql: str,
        dbname: str = "postgres",
        timeout: float | None = DEFAULT_TIMEOUT,
        check: bool = True,
    ) -> str:
        """Run ``sql`` (one or more statements, ON_ERROR_STOP) and return its tuples-only,
        unaligned output without the trailing newline (columns separated by ``|``)."""
        argv = [
            self.install.tool("psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            dbname,
            "-f",
            "-",
        ]
        res = self.run(argv, timeout=timeout, input=sql, check=False)
        if check and res.returncode != 0:
            raise CommandError(res.args, res.returncode, res.stdout, res.stderr, f"SQL: {sql}")
        return res.stdout.rstrip("\n")

    def query(self, sql: str, dbname: str = "postgres") -> list[list[str]]:
        """Rows of one query as lists of strings (NULL as '')."""
        argv = [
            self.install.tool("psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-F",
            "\x1f",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            dbname,
            "-f",
            "-",
        ]
        out = self.run(argv, input=sql).stdout
        return [line.split("\x1f") for line in out.splitlines() if line]

    def pgbench(
        self, args: Sequence[str], dbname: str = "postgres", timeout: float | None = 600
    ) -> str:
        """Run pgbench with ``args`` (e.g. ``["-i", "-s", "1"]``); returns its stdout+stderr."""
        res = self.run([self.install.tool("pgbench"), *args, dbname], timeout=timeout)
        return res.stdout + res.stderr

    def pg_dumpall(self, args: Sequence[str] = (), timeout: float | None = 600) -> str:
        return self.run([self.install.tool("pg_dumpall"), *args], timeout=timeout).stdout

    def checkpoint(self) -> None:
        self.psql("CHECKPOINT")

    def switch_wal(self) -> str:
        """Force a WAL segment switch; returns the switch LSN."""
        fn = "pg_switch_wal()" if self.install.major >= 10 else "pg_switch_xlog()"
        return self.psql(f"SELECT {fn}")

    def databases(self) -> list[str]:
        return self.psql(
            "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname"
        ).splitlines()

    def amcheck(self, timeout: float | None = 600) -> int:
        """Check every connectable database with contrib amcheck: bt_index_check(heapallindexed)
        on each btree index and (14+) verify_heapam on each table, matview and TOAST table.

        The extension is created where missing and dropped again afterwards (on a standby it
        must already exist). Raises :class:`CommandError` on any problem; returns the number
        of relations checked.
        """
        if not self.install.has_amcheck:
            raise PgSetupError(f"PostgreSQL {self.install.major} has no amcheck")
        in_recovery = self.is_in_recovery()
        # Unlogged relations have no contents on a standby; temp ones belong to sessions.
        persistence = "('p')" if in_recovery else "('p', 'u')"
        checked = 0
        for db in self.databases():
            had = self.psql("SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'", db)
            created = had == "0"
            if created:
                if in_recovery:
                    raise RuntimeError(
                        f"amcheck is not installed in database {db!r} of standby {self}"
                    )
                self.psql("CREATE EXTENSION amcheck", db)
            try:
                sql = f"""
                    SELECT c.oid::regclass, bt_index_check(c.oid, true)
                    FROM pg_index i
                    JOIN pg_class c ON c.oid = i.indexrelid
                    JOIN pg_am am ON am.oid = c.relam
                    WHERE am.amname = 'btree' AND c.relpersistence IN {persistence}
                      AND i.indisvalid AND i.indisready;
                """
                checked += len(self.psql(sql, db, timeout=timeout).splitlines())
                if self.install.has_verify_heapam:
                    rels = self.psql(
                        f"""SELECT count(*) FROM pg_class
                            WHERE relkind IN ('r', 'm', 't')
                              AND relpersistence IN {persistence}""",
                        db,
                    )
                    problems = self.psql(
                        f"""
                        SELECT c.oid::regclass, v.blkno, v.offnum, v.attnum, v.msg
                        FROM pg_class c,
                             LATERAL verify_heapam(c.oid, check_toast => c.relkind <> 't') v
                        WHERE c.relkind IN ('r', 'm', 't')
                          AND c.relpersistence IN {persistence};
                        """,
                        db,
                        timeout=timeout,
                    )
                    if problems:
                        raise RuntimeError(f"verify_heapam found corruption in {db!r}:\n{problems}")
                    checked += int(rels)
            finally:
                if created:
                    self.psql("DROP EXTENSION amcheck", db)
        return checked

    # ------------------------------------------------------------------ topology
    def add_tablespace(self, name: str, location: str | os.PathLike[str]) -> Path:
        """Create ``location`` (owned by pgtest, mode 0700) and a tablespace there."""
        loc = make_shared_dir(Path(location).absolute(), 0o700)
        self.psql(f"CREATE TABLESPACE {_ident(name)} LOCATION {_literal(str(loc))}")
        return loc

    def tablespaces(self) -> dict[str, str]:
        """Non-default tablespaces: name -> location."""
        rows = self.query(
            "SELECT spcname, pg_tablespace_location(oid) FROM pg_tablespace "
            "WHERE spcname NOT IN ('pg_default', 'pg_global')"
        )
        return {r[0]: r[1] for r in rows}

    def make_standby(
        self,
        datadir: str | os.PathLike[str],
        port: int | None = None,
        conf: Mapping[str, str] | None = None,
        tablespace_mapping: Mapping[str, str] | None = None,
        start: bool = True,
        timeout: float = 300,
    ) -> Cluster:
        """A streaming standby made with ``pg_basebackup -R -X stream`` from this (running)
        cluster. Tablespaces not in ``tablespace_mapping`` go to ``<datadir>.ts/<name>``."""
        path = Path(datadir).absolute()
        mapping = dict(tablespace_mapping or {})
        for name, location in self.tablespaces().items():
            if location not in mapping:
                mapping[location] = str(path.with_name(path.name + ".ts") / name)
        for target in mapping.values():
            make_shared_dir(target, 0o700)
        argv = [
            self.install.tool("pg_basebackup"),
            "-D",
            str(path),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
        ]
        for old, new in mapping.items():
            old_esc, new_esc = old.replace("=", "\\="), new.replace("=", "\\=")
            argv += ["-T", f"{old_esc}={new_esc}"]
        self.run(argv, timeout=timeout)
        standby = Cluster.from_existing(self.install, path, port=port, conf=conf)
        if start:
            standby.start()
        return standby

    def wait_for_replay(self, standby: Cluster, timeout: float = 120.0) -> None:
        """Wait until ``standby`` has replayed this primary's current WAL insert position.

        At the start of a page the insert position lies past the page's header, where no
        record can end: a standby that replayed everything stands at the page's start, and
        would reach the header's end only with the next record the primary writes (on an idle
        primary, up to 15 s later, the background writer's snapshot). So the wait is for the
        page's start there."""
        row = self.query(
            "SELECT l, (pg_walfile_name_offset(l)).file_offset, current_setting('wal_block_size')"
            " FROM pg_current_wal_insert_lsn() AS l"
        )[0]
        lsn = row[0]
        offset, block = int(row[1]), int(row[2])
        # A segment's first page has the long header (40 bytes), the others the short (24).
        header = 40 if offset < block else 24
        if offset % block == header:
            lsn = format_lsn(parse_lsn(lsn) - header)
        standby._await_answer(
            f"SELECT pg_last_wal_replay_lsn() >= {_literal(lsn)}::pg_lsn",
            "t",
            f"{standby} did not replay {lsn}",
            timeout,
        )

    def control_data(self) -> dict[str, str]:
        """pg_controldata output as a dict."""
        out = self.run([self.install.tool("pg_controldata"), "-D", str(self.datadir)]).stdout
        result = {}
        for line in out.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                result[key.strip()] = value.strip()
        return result

    def destroy(self) -> None:
        """Stop the server and remove the data directory, its log and socket directory."""
        self.stop(mode="immediate")
        shutil.rmtree(self.datadir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.logfile.unlink()
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def _plain_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if _is_root():
        env.update(pg_user_env())
    return env


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def ensure_installs(majors: Iterable[int]) -> list[PgInstall]:
    """Load several builds, raising :class:`PgSetupError` for the first missing one."""
    return [PgInstall.load(m) for m in majors]
