#!/usr/bin/env python3
"""Benchmark walg backup-push / backup-fetch against pg_basebackup and pgBackRest.

One run of this script, for each requested pgbench scale:

1. creates a fresh PostgreSQL 15 cluster (run as the unprivileged user ``pgtest``; a port chosen
   at run time, never 5432; ``jit=off``, ``wal_level=replica``, fsync on, autovacuum off,
   ``archive_mode=on`` with an ``archive_command`` that always succeeds: it does nothing, like
   ``/bin/true``, so that stop-backup does not wait, except while walg-push is measured, when it
   runs ``walg wal-push`` into walg's storage, because walg backup-push waits for the backup's
   last WAL segment to be there), fills it with ``pgbench -i -s SCALE`` and runs ``CHECKPOINT``;
2. measures, ``--repeat`` times on the same warm page cache and interleaved per repetition:

   * ``walg backup-push PGDATA`` to local storage (``WALG_FILE_PREFIX``, lz4),
   * ``walg backup-fetch DEST LATEST`` into an empty directory,
   * ``pg_basebackup -Ft --compress=client-lz4 -X none -c fast`` (PostgreSQL 15's own),
   * ``pgbackrest backup --type=full`` (posix repo, lz4, process-max=2, a fresh repository and
     an unmeasured ``stanza-create`` per repetition),
   * ``pgbackrest restore`` into an empty directory;

3. prints a table of medians and writes every single measurement to
   ``bench/results/<timestamp>.json``.

What is measured for each step (the tool runs as a child of this script, in its own session):

* ``wall_s``: ``time.perf_counter()`` from spawn to reap of the tool's main process.
* ``sync_s``: the time of an ``os.sync()`` issued right after the tool exited. Tools differ in
  whether they fsync what they wrote (pg_basebackup and pgBackRest do); ``wall_s + sync_s`` is the
  time until the data is durable and is comparable across tools. A ``sync`` also runs, unmeasured,
  before each step so that one step's dirty pages are not flushed during the next one.
* ``cpu_s``: user + system CPU of the tool's process tree, from ``os.wait4`` (the rusage of the
  child plus all its descendants that were waited for).
* ``server_cpu_s``: CPU consumed meanwhile by the PostgreSQL server tree (utime+stime+cutime+
  cstime of its live processes from /proc, delta over the step). This matters for
  pg_basebackup, whose files are read and sent by a walsender in the server, and for walg-push,
  whose last WAL segment is pushed by ``walg wal-push`` run by the server's archiver.
* ``peak_rss_mb``: the maximum over time of the SUM of the resident set sizes (VmRSS, from
  /proc/PID/statm) of the tool's process and all its descendants, sampled every 20 ms by scanning
  /proc. Shared pages (libraries, fork-shared memory) are counted once per process, so this
  over-counts a multi-process tool slightly; ``peak_pss_mb`` (sum of Pss from
  /proc/PID/smaps_rollup, read every 5th sample, i.e. every 100 ms, because it is ~100x dearer
  than statm) splits shared pages between processes and is the tighter figure.
  ``max_proc_rss_mb`` is ``ru_maxrss`` from ``os.wait4``: the exact high-water mark of the largest
  single process of the tree (what ``/usr/bin/time`` would show), not a sum; for a one-process
  tool it also shows how much a 20 ms sampling missed. The sampler runs as a thread of this
  script and its own CPU time is recorded (``sampler_cpu_s``).
* ``stored_mb``: apparent size (sum of file sizes) of what the step left behind: the storage
  prefix / pg_basebackup directory / pgBackRest repository for backups, the restored data
  directory for restores.

Run as root (the tools and the server are then run as ``pgtest``, created if missing, and
pgBackRest is apt-installed if missing) or as the ``pgtest`` user itself.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import filecmp
import json
import os
import platform
import pwd
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
PG_USER = "pgtest"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MB = 1024 * 1024
DEFAULT_PG_BINDIR = Path("/usr/lib/postgresql/15/bin")
STEPS = ("walg-push", "walg-fetch", "pg_basebackup", "pgbackrest-backup", "pgbackrest-restore")
PSQL_FLAGS = ("-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c")


def log(msg: str) -> None:
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Running things as the PostgreSQL user
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PgUser:
    name: str
    uid: int
    gid: int
    home: str
    switch: bool  # True when we are root and must drop privileges for each child

    @classmethod
    def resolve(cls, name: str) -> PgUser:
        if os.geteuid() == 0:
            pw = pwd.getpwnam(name)
            return cls(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, True)
        pw = pwd.getpwuid(os.geteuid())
        return cls(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, False)

    def base_env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": self.home,
            "USER": self.name,
            "LOGNAME": self.name,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "TZ": "UTC",
        }

    def popen_kwargs(self) -> dict[str, Any]:
        if not self.switch:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        if self.switch:
            os.chown(path, self.uid, self.gid)

    def mkdir(self, path: Path, mode: int = 0o700) -> Path:
        path.mkdir(parents=False, exist_ok=False)
        path.chmod(mode)
        self.chown(path)
        return path


def ensure_prerequisites(pgbackrest: Path) -> None:
    """As root, create the pgtest user and install pgBackRest when they are missing."""
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        log(f"creating user {PG_USER}")
        subprocess.run(["useradd", "-m", PG_USER], check=True)
    if not pgbackrest.exists() and str(pgbackrest) == "/usr/bin/pgbackrest":
        log("installing pgbackrest with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        rc = subprocess.run(
            ["apt-get", "install", "-y", "pgbackrest"], env=env, check=False
        ).returncode
        if rc != 0:
            subprocess.run(["apt-get", "update"], env=env, check=True)
            subprocess.run(["apt-get", "install", "-y", "pgbackrest"], env=env, check=True)


def run_plain(
    user: PgUser,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 3600,
) -> subprocess.CompletedProcess[str]:
    """Run an unmeasured helper command as the PostgreSQL user, capturing its output."""
    full_env = {**user.base_env(), **(env or {})}
    return subprocess.run(
        list(argv),
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        start_new_session=True,
        **user.popen_kwargs(),
    )


def must(proc: subprocess.CompletedProcess[str], what: str) -> str:
    if proc.returncode != 0:
        raise RuntimeError(
            f"{what} failed with exit code {proc.returncode}:\n{tail(proc.stdout + proc.stderr)}"
        )
    return proc.stdout


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# /proc helpers
# --------------------------------------------------------------------------------------------


def read_stat(pid: int) -> list[bytes] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is the state)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].split()


def process_table(min_pid: int = 0) -> dict[int, int]:
    """pid -> ppid for every process whose pid is at least min_pid."""
    table: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) < min_pid:
            continue
        fields = read_stat(int(name))
        if fields is not None:
            table[int(name)] = int(fields[1])
    return table


def descendants(root: int, table: Mapping[int, int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in table.items():
        children.setdefault(ppid, []).append(pid)
    out: list[int] = []
    stack = [root] if root in table else []
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, ()))
    return out


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def proc_kb_field(pid: int, name: str, field: bytes) -> int:
    """A ``kB`` field of /proc/PID/<name> in bytes; 0 when the process or the field is gone."""
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        return 0
    return 0


def pss_bytes(pid: int) -> int:
    return proc_kb_field(pid, "smaps_rollup", b"Pss:")


def tree_cpu_seconds(root: int) -> float:
    """CPU of a live process tree including everything its members have reaped (from /proc).

    A reaped process's CPU lands in its reaper's cutime/cstime, so summing own + children's
    time over the live members counts every process, dead or alive, exactly once (e.g. the
    archive_command children of the archiver).
    """
    table = process_table()
    total = 0
    for pid in descendants(root, table):
        fields = read_stat(pid)
        if fields is None:
            continue
        # utime, stime, cutime, cstime are fields 14-17 of stat, i.e. 11-14 after the name.
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / CLK_TCK


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process tree every `interval` seconds (PSS every 5th time).

    Sampling costs CPU on the machine being measured, so it is kept cheap: PIDs grow, so the
    descendants of `root` are looked for among the PIDs >= root, with a full /proc scan every
    10th sample (in case the PID counter wrapped); Pss (smaps_rollup, ~1 ms for a 200 MB process)
    is read every 5th sample only.
    """

    FULL_SCAN_EVERY = 10
    PSS_EVERY = 5

    def __init__(self, root: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_procs = 0
        self.samples = 0
        self.own_cpu_s = 0.0
        self._stop_event = threading.Event()

    def sample(self) -> None:
        full = self.samples % self.FULL_SCAN_EVERY == 0
        pids = descendants(self.root, process_table(0 if full else self.root))
        rss = sum(rss_bytes(p) for p in pids)
        self.peak_rss = max(self.peak_rss, rss)
        if self.samples % self.PSS_EVERY == 0:
            pss = sum(pss_bytes(p) for p in pids)
            self.peak_pss = max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, len(pids))
        self.samples += 1

    def run(self) -> None:
        start = time.thread_time()
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)
        self.own_cpu_s = time.thread_time() - start

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def dir_size(path: Path) -> int:
    """Apparent size: the sum of the sizes of the regular files under path."""
    total = 0
    if path.is_file():
        return path.stat().st_size
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                total += st.st_size
    return total


def file_count(path: Path) -> int:
    return sum(len(files) for _d, _s, files in os.walk(path))


# --------------------------------------------------------------------------------------------
# Measured runs
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Measurement:
    step: str
    scale: int
    rep: int
    argv: list[str]
    ok: bool = False
    exit_code: int | None = None
    error: str = ""
    stderr_tail: str = ""
    wall_s: float = 0.0
    sync_s: float = 0.0
    cpu_user_s: float = 0.0
    cpu_sys_s: float = 0.0
    cpu_s: float = 0.0
    server_cpu_s: float | None = None
    peak_rss_mb: float = 0.0
    peak_pss_mb: float = 0.0
    max_proc_rss_mb: float = 0.0
    peak_procs: int = 0
    rss_samples: int = 0
    sampler_cpu_s: float = 0.0
    stored_bytes: int | None = None
    stored_files: int | None = None
    loadavg_before: str = ""
    verify: dict[str, Any] | None = None


class Measurer:
    def __init__(self, user: PgUser, log_dir: Path, timeout: float, interval: float) -> None:
        self.user = user
        self.log_dir = log_dir
        self.timeout = timeout
        self.interval = interval
        self.current: subprocess.Popen[bytes] | None = None

    def run(
        self,
        step: str,
        scale: int,
        rep: int,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        server_pid: int | None,
    ) -> Measurement:
        m = Measurement(step=step, scale=scale, rep=rep, argv=list(argv))
        out_path = self.log_dir / f"s{scale}-r{rep}-{step}.out"
        err_path = self.log_dir / f"s{scale}-r{rep}-{step}.err"
        full_env = {**self.user.base_env(), **env}
        os.sync()  # do not let the previous step's dirty pages be written back during this one
        srv_before = tree_cpu_seconds(server_pid) if server_pid else None
        with open("/proc/loadavg") as f:
            m.loadavg_before = f.read().strip()
        timed_out = threading.Event()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            t0 = time.perf_counter()
            try:
                proc = subprocess.Popen(
                    list(argv),
                    env=full_env,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    **self.user.popen_kwargs(),
                )
            except OSError as exc:
                m.error = f"cannot start: {exc}"
                return m
            self.current = proc
            sampler = TreeSampler(proc.pid, self.interval)
            sampler.start()

            def on_timeout() -> None:
                timed_out.set()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

            watchdog = threading.Timer(self.timeout, on_timeout)
            watchdog.start()
            try:
                _pid, status, usage = os.wait4(proc.pid, 0)
            except BaseException:
                self.kill_current()
                raise
            finally:
                watchdog.cancel()
                sampler.stop()
            m.wall_s = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
            self.current = None
            # Anything the tool left running in its session would distort the next step.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        t1 = time.perf_counter()
        os.sync()
        m.sync_s = time.perf_counter() - t1
        if server_pid and srv_before is not None:
            m.server_cpu_s = tree_cpu_seconds(server_pid) - srv_before
        m.exit_code = proc.returncode
        m.cpu_user_s = usage.ru_utime
        m.cpu_sys_s = usage.ru_stime
        m.cpu_s = usage.ru_utime + usage.ru_stime
        m.max_proc_rss_mb = usage.ru_maxrss * 1024 / MB
        m.peak_rss_mb = sampler.peak_rss / MB
        m.peak_pss_mb = sampler.peak_pss / MB
        m.peak_procs = sampler.peak_procs
        m.rss_samples = sampler.samples
        m.sampler_cpu_s = sampler.own_cpu_s
        stderr_text = err_path.read_text(errors="replace")
        stdout_text = out_path.read_text(errors="replace")
        m.stderr_tail = tail(stderr_text if stderr_text.strip() else stdout_text, 15)
        if timed_out.is_set():
            m.error = f"timed out after {self.timeout:.0f} s and was killed"
        elif proc.returncode != 0:
            m.error = f"exit code {proc.returncode}"
        else:
            m.ok = True
        return m

    def kill_current(self) -> None:
        proc = self.current
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(proc.pid, 0)
        proc.returncode = -9
        self.current = None


# --------------------------------------------------------------------------------------------
# PostgreSQL servers
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != 5432:
            return port


class PgServer:
    """A PostgreSQL data directory and its postmaster, run as the PostgreSQL user.

    The class attributes are the waits and messages of this script's Cluster; wal_bench.py's
    Server, a subclass, sets its own.
    """

    READY_TIMEOUT: float = 60
    READY_POLL = 0.1
    ISREADY_ARGS: tuple[str, ...] = ()
    EXITED = "postgres exited with {rc}:\n{log}"
    NOT_READY = "postgres did not become ready within {timeout} s"
    LOG_LINES = 25
    PSQL_TIMEOUT: float = 3600
    STOP_TIMEOUT: float = 60

    def __init__(
        self, user: PgUser, bindir: Path, datadir: Path, sockdir: Path, logfile: Path
    ) -> None:
        self.user = user
        self.bindir = bindir
        self.datadir = datadir
        self.sockdir = sockdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.logfile = logfile

    def env(self) -> dict[str, str]:
        return {
            "PGHOST": str(self.sockdir),
            "PGPORT": str(self.port),
            "PGUSER": self.user.name,
            "PGDATABASE": "postgres",
        }

    def initdb(self) -> None:
        must(
            run_plain(
                self.user,
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.datadir),
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--no-instructions",
                ],
                cwd=self.datadir.parent,
            ),
            "initdb",
        )

    def spawn(self, argv: Sequence[str], out: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv),
            env=self.user.base_env(),
            cwd=self.datadir.parent,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            **self.user.popen_kwargs(),
        )

    def start(self, wait: bool = True) -> float:
        """Spawn postgres; returns the perf_counter time just before the spawn."""
        t0 = time.perf_counter()
        with open(self.logfile, "ab") as logf:
            self.proc = self.spawn([str(self.bindir / "postgres"), "-D", str(self.datadir)], logf)
        if wait:
            self.wait_ready()
        return t0

    def wait_ready(self, timeout: float | None = None) -> None:
        timeout = self.READY_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                rc = self.proc.returncode if self.proc is not None else None
                raise RuntimeError(self.EXITED.format(rc=rc, log=self.log_tail()))
            ready = run_plain(
                self.user,
                [
                    str(self.bindir / "pg_isready"),
                    "-q",
                    *self.ISREADY_ARGS,
                    "-h",
                    str(self.sockdir),
                    "-p",
                    str(self.port),
                ],
            )
            if ready.returncode == 0:
                return
            time.sleep(self.READY_POLL)
        raise RuntimeError(self.NOT_READY.format(timeout=timeout, log=self.log_tail()))

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("server not running")
        return self.proc.pid

    def log_tail(self, lines: int | None = None) -> str:
        try:
            return tail(
                self.logfile.read_text(errors="replace"), self.LOG_LINES if lines is None else lines
            )
        except OSError as exc:
            return f"(no log: {exc})"

    def psql(self, sql: str, timeout: float | None = None) -> str:
        return must(
            run_plain(
                self.user,
                [str(self.bindir / "psql"), *PSQL_FLAGS, sql],
                env=self.env(),
                timeout=self.PSQL_TIMEOUT if timeout is None else timeout,
            ),
            f"psql {sql!r}",
        ).strip()

    def pgbench(self, args: Sequence[str], timeout: float = 3600, what: str = "") -> str:
        return must(
            run_plain(
                self.user,
                [str(self.bindir / "pgbench"), *args],
                env=self.env(),
                timeout=timeout,
            ),
            what or f"pgbench {' '.join(args)}",
        )

    def stop(self, immediate: bool = False) -> None:
        """Fast shutdown, or immediate (no shutdown checkpoint, no final WAL switch and
        archive_command: for throwaway copies, so they add nothing to an archive)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGQUIT if immediate else signal.SIGINT)
            try:
                proc.wait(timeout=self.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGQUIT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.proc = None


class Cluster(PgServer):
    """The benchmark's one server per scale; its settings go into postgresql.conf."""

    def __init__(
        self, user: PgUser, bindir: Path, datadir: Path, sockdir: Path, archive_command: str
    ) -> None:
        super().__init__(user, bindir, datadir, sockdir, datadir.parent / "postgres.log")
        self.archive_command = archive_command

    def initdb(self) -> None:
        super().initdb()
        conf = {
            "port": str(self.port),
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.sockdir}'",
            "jit": "off",
            "fsync": "on",
            "wal_level": "replica",
            "max_wal_senders": "4",
            "archive_mode": "on",
            "archive_command": "'" + self.archive_command.replace("'", "''") + "'",
            "shared_buffers": "128MB",
            "max_wal_size": "2GB",
            "logging_collector": "off",
            # pgbench -i vacuums; autovacuum would only add background noise and change
            # catalog files (template1's pg_statistic) between a backup and its verification.
            "autovacuum": "off",
        }
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write("\n# walg backup benchmark\n")
            for key, value in conf.items():
                f.write(f"{key} = {value}\n")


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ScaleInfo:
    scale: int
    pgdata_bytes: int = 0
    pgdata_without_wal_bytes: int = 0
    load_s: float = 0.0
    error: str = ""


class Bench:
    def __init__(self, args: argparse.Namespace, user: PgUser, rundir: Path) -> None:
        self.args = args
        self.user = user
        self.rundir = rundir
        self.bindir: Path = args.pg_bindir
        self.walg: Path = args.walg
        self.pgbackrest: Path = args.pgbackrest
        self.log_dir = user.mkdir(rundir / "logs", 0o755)
        self.measurer = Measurer(user, self.log_dir, args.timeout, args.interval)
        self.results: list[Measurement] = []
        self.scales: list[ScaleInfo] = []
        self.cluster: Cluster | None = None

    def record(self, m: Measurement) -> Measurement:
        self.results.append(m)
        if m.ok:
            extra = f", stored {m.stored_bytes / MB:.0f} MB" if m.stored_bytes is not None else ""
            log(
                f"  {m.step:<19} rep {m.rep}: wall {m.wall_s:.2f} s (+sync {m.sync_s:.2f}), "
                f"cpu {m.cpu_s:.2f} s, srv cpu {m.server_cpu_s or 0:.2f} s, "
                f"peak rss {m.peak_rss_mb:.0f} MB (pss {m.peak_pss_mb:.0f}, "
                f"max proc {m.max_proc_rss_mb:.0f}){extra}"
            )
        else:
            log(f"  {m.step:<19} rep {m.rep}: FAILED ({m.error})\n{m.stderr_tail}")
        return m

    def skipped(self, step: str, scale: int, rep: int, why: str) -> None:
        m = Measurement(step=step, scale=scale, rep=rep, argv=[], error=f"skipped: {why}")
        self.results.append(m)
        log(f"  {step:<19} rep {rep}: skipped ({why})")

    def remove(self, path: Path) -> None:
        if not self.args.keep:
            shutil.rmtree(path, ignore_errors=True)

    def run_scale(self, scale: int) -> None:
        info = ScaleInfo(scale)
        self.scales.append(info)
        sdir = self.user.mkdir(self.rundir / f"scale-{scale}", 0o755)
        datadir = sdir / "pgdata"
        sockdir = self.user.mkdir(sdir / "sock", 0o755)
        archive_script = self.write_archive_script(sdir)
        cluster = Cluster(self.user, self.bindir, datadir, sockdir, f"{archive_script} %p")
        self.cluster = cluster
        try:
            log(f"scale {scale}: initdb + start on port {cluster.port}")
            cluster.initdb()
            cluster.start()
            t0 = time.perf_counter()
            log(f"scale {scale}: pgbench -i -s {scale}")
            cluster.pgbench(["-i", "-q", "-s", str(scale)], timeout=7200, what="pgbench -i")
            cluster.psql("CHECKPOINT")
            info.load_s = time.perf_counter() - t0
            info.pgdata_bytes = dir_size(datadir)
            info.pgdata_without_wal_bytes = info.pgdata_bytes - dir_size(datadir / "pg_wal")
            log(
                f"scale {scale}: loaded in {info.load_s:.0f} s, PGDATA "
                f"{info.pgdata_bytes / MB:.0f} MB ({info.pgdata_without_wal_bytes / MB:.0f} MB "
                "without pg_wal)"
            )
            for rep in range(1, self.args.repeat + 1):
                self.run_rep(cluster, sdir, scale, rep)
        except Exception as exc:
            info.error = f"{type(exc).__name__}: {exc}"
            log(f"scale {scale}: ERROR {info.error}")
        finally:
            cluster.stop()
            self.cluster = None
            self.remove(sdir)

    def write_archive_script(self, sdir: Path) -> Path:
        """The cluster's archive_command: /bin/true, except while walg is measured.

        walg backup-push (like WAL-G with archive checking) does not finish before the last WAL
        segment of the backup is in its storage, so while walg-push runs, sdir/archive-target
        names walg's storage and the segments go there with `walg wal-push` (run by the
        server's archiver: its CPU shows in the server CPU, not in walg's). Otherwise the
        script does nothing. It always exits 0, so that a broken walg cannot stall the other
        tools' stop-backup (walg-push then fails on its own stop timeout).
        """
        target = sdir / "archive-target"
        target.write_text("")
        target.chmod(0o644)
        extra = "".join(
            f"export {shlex.quote(kv)}\n"
            for kv in ["WALG_COMPRESSION_METHOD=lz4", *self.args.walg_env]
        )
        q_log = shlex.quote(str(sdir / "archive.log"))
        script = sdir / "archive.sh"
        script.write_text(
            "#!/bin/sh\n"
            "# archive_command of the walg benchmark cluster (see backup_bench.py)\n"
            f"target=$(cat {shlex.quote(str(target))} 2>/dev/null)\n"
            '[ -n "$target" ] || exit 0\n'
            'export WALG_FILE_PREFIX="$target"\n'
            f"{extra}"
            f'{shlex.quote(str(self.walg))} wal-push "$1" >>{q_log} 2>&1 || '
            f'echo "wal-push $1 failed with exit code $?" >>{q_log}\n'
            "exit 0\n"
        )
        script.chmod(0o755)
        return script

    def set_archive_target(self, sdir: Path, store: Path | None) -> None:
        (sdir / "archive-target").write_text(f"{store}\n" if store is not None else "")

    def run_rep(self, cluster: Cluster, sdir: Path, scale: int, rep: int) -> None:
        env = cluster.env()
        pid = cluster.pid
        datadir = cluster.datadir

        def measure(step: str, argv: Sequence[str], step_env: Mapping[str, str]) -> Measurement:
            return self.record(self.measurer.run(step, scale, rep, argv, step_env, sdir, pid))

        def stored(m: Measurement, path: Path) -> None:
            m.stored_bytes = dir_size(path)
            m.stored_files = file_count(path)

        # 1 + 2: walg backup-push, backup-fetch
        store = self.user.mkdir(sdir / f"walg-store-{rep}")
        walg_env = {
            **env,
            "WALG_FILE_PREFIX": str(store),
            "WALG_COMPRESSION_METHOD": "lz4",
            "WALG_STOP_BACKUP_TIMEOUT": "300",
            **dict(kv.split("=", 1) for kv in self.args.walg_env),
        }
        self.set_archive_target(sdir, store)
        push = measure("walg-push", [str(self.walg), "backup-push", str(datadir)], walg_env)
        if push.ok:
            stored(push, store)
            dest = self.user.mkdir(sdir / f"walg-restore-{rep}")
            fetch = measure(
                "walg-fetch", [str(self.walg), "backup-fetch", str(dest), "LATEST"], walg_env
            )
            stored(fetch, dest)
            if fetch.ok:
                fetch.verify = self.verify(datadir, dest, fetch)
            self.remove(dest)
        else:
            self.skipped("walg-fetch", scale, rep, "walg-push failed")
        self.set_archive_target(sdir, None)
        self.remove(store)

        # 3: pg_basebackup
        bbdir = sdir / f"basebackup-{rep}"
        bb = measure(
            "pg_basebackup",
            [
                str(self.bindir / "pg_basebackup"),
                "-D",
                str(bbdir),
                "-Ft",
                "--compress=client-lz4",
                "-X",
                "none",
                "-c",
                "fast",
            ],
            env,
        )
        if bb.ok:
            stored(bb, bbdir)
        self.remove(bbdir)

        # 4: pgBackRest
        repo = self.user.mkdir(sdir / f"pgbackrest-repo-{rep}")
        conf = sdir / f"pgbackrest-{rep}.conf"
        self.write_pgbackrest_conf(conf, repo, cluster)
        pgbr = [str(self.pgbackrest), f"--config={conf}", "--stanza=bench"]
        stanza = measure("pgbackrest-stanza", [*pgbr, "stanza-create"], env)
        if stanza.ok:
            backup = measure("pgbackrest-backup", [*pgbr, "--type=full", "backup"], env)
            if backup.ok:
                stored(backup, repo)
                dest = self.user.mkdir(sdir / f"pgbackrest-restore-{rep}")
                restore = measure(
                    "pgbackrest-restore", [*pgbr, f"--pg1-path={dest}", "restore"], env
                )
                stored(restore, dest)
                if restore.ok:
                    restore.verify = self.verify(datadir, dest, restore)
                self.remove(dest)
            else:
                self.skipped("pgbackrest-restore", scale, rep, "pgbackrest backup failed")
        else:
            self.skipped("pgbackrest-backup", scale, rep, "stanza-create failed")
            self.skipped("pgbackrest-restore", scale, rep, "stanza-create failed")
        self.remove(repo)

    def verify(self, source: Path, restored: Path, m: Measurement) -> dict[str, Any]:
        """Compare the restored relation files (base/, global/) with the source PGDATA.

        The cluster is idle after the CHECKPOINT, so the files should be identical; sizes are
        always compared, contents too with --verify.
        """
        missing: list[str] = []
        size_diff: list[str] = []
        content_diff: list[str] = []
        checked = 0
        for sub in ("base", "global"):
            for dirpath, _dirs, files in os.walk(source / sub):
                for name in files:
                    if name in ("pg_internal.init", "pg_filenode.map.tmp") or name.startswith(
                        "pgsql_tmp"
                    ):
                        continue
                    src = Path(dirpath) / name
                    rel = src.relative_to(source)
                    dst = restored / rel
                    checked += 1
                    if not dst.exists():
                        missing.append(str(rel))
                    elif dst.stat().st_size != src.stat().st_size:
                        size_diff.append(str(rel))
                    elif self.args.verify and not filecmp.cmp(src, dst, shallow=False):
                        content_diff.append(str(rel))
        result: dict[str, Any] = {
            "files_checked": checked,
            "contents_compared": bool(self.args.verify),
            "missing": missing[:20],
            "missing_count": len(missing),
            "size_mismatch": size_diff[:20],
            "size_mismatch_count": len(size_diff),
            "content_mismatch": content_diff[:20],
            "content_mismatch_count": len(content_diff),
            "backup_label": (restored / "backup_label").exists(),
        }
        if missing or size_diff or content_diff:
            log(
                f"  {m.step} rep {m.rep}: VERIFY: {len(missing)} missing, {len(size_diff)} size "
                f"and {len(content_diff)} content mismatches of {checked} files"
            )
        return result

    def write_pgbackrest_conf(self, conf: Path, repo: Path, cluster: Cluster) -> None:
        pgbr_dir = self.rundir / "pgbackrest"
        if not pgbr_dir.exists():
            self.user.mkdir(pgbr_dir, 0o755)
            self.user.mkdir(pgbr_dir / "lock")
            self.user.mkdir(pgbr_dir / "log")
            self.user.mkdir(pgbr_dir / "spool")
        text = "\n".join(
            [
                "[global]",
                "repo1-type=posix",
                f"repo1-path={repo}",
                "repo1-retention-full=1",
                "compress-type=lz4",
                f"process-max={self.args.pgbackrest_process_max}",
                "start-fast=y",
                "archive-check=n",
                "log-level-console=warn",
                "log-level-file=info",
                f"log-path={pgbr_dir / 'log'}",
                f"lock-path={pgbr_dir / 'lock'}",
                f"spool-path={pgbr_dir / 'spool'}",
                "",
                "[bench]",
                f"pg1-path={cluster.datadir}",
                f"pg1-port={cluster.port}",
                f"pg1-socket-path={cluster.sockdir}",
                f"pg1-user={self.user.name}",
                "",
            ]
        )
        conf.write_text(text)
        conf.chmod(0o644)


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(results: Sequence[Measurement], scales: Sequence[ScaleInfo]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for info in scales:
        per_step: dict[str, Any] = {}
        for step in STEPS:
            runs = [m for m in results if m.scale == info.scale and m.step == step]
            ok = [m for m in runs if m.ok]
            entry: dict[str, Any] = {"runs": len(runs), "ok": len(ok)}
            for key in (
                "wall_s",
                "sync_s",
                "cpu_s",
                "peak_rss_mb",
                "peak_pss_mb",
                "max_proc_rss_mb",
            ):
                entry[key] = median([float(getattr(m, key)) for m in ok])
            entry["wall_plus_sync_s"] = median([m.wall_s + m.sync_s for m in ok])
            entry["server_cpu_s"] = median(
                [m.server_cpu_s for m in ok if m.server_cpu_s is not None]
            )
            stored = [m.stored_bytes for m in ok if m.stored_bytes is not None]
            entry["stored_mb"] = median([b / MB for b in stored])
            entry["failures"] = [
                {"rep": m.rep, "error": m.error, "stderr_tail": m.stderr_tail}
                for m in runs
                if not m.ok
            ]
            verified = [m.verify for m in ok if m.verify is not None]
            if verified:
                entry["verify"] = {
                    key: max(v[key] for v in verified)
                    for key in (
                        "files_checked",
                        "missing_count",
                        "size_mismatch_count",
                        "content_mismatch_count",
                    )
                }
                entry["verify"]["contents_compared"] = all(v["contents_compared"] for v in verified)
            per_step[step] = entry
        ratios: dict[str, float | None] = {}

        def ratio(a: str, b: str, key: str, per_step: dict[str, Any] = per_step) -> float | None:
            x, y = per_step[a][key], per_step[b][key]
            return x / y if x is not None and y else None

        for key in ("wall_s", "wall_plus_sync_s", "cpu_s", "peak_rss_mb"):
            ratios[f"walg-push/pgbackrest-backup {key}"] = ratio(
                "walg-push", "pgbackrest-backup", key
            )
            ratios[f"walg-push/pg_basebackup {key}"] = ratio("walg-push", "pg_basebackup", key)
            ratios[f"walg-fetch/pgbackrest-restore {key}"] = ratio(
                "walg-fetch", "pgbackrest-restore", key
            )
        summary[str(info.scale)] = {
            "pgdata_mb": info.pgdata_bytes / MB,
            "pgdata_without_wal_mb": info.pgdata_without_wal_bytes / MB,
            "load_s": info.load_s,
            "error": info.error,
            "steps": per_step,
            "ratios": ratios,
        }
    return summary


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(summary: Mapping[str, Any], repeat: int) -> None:
    header = (
        f"{'step':<19} {'ok':>5} {'wall s':>8} {'+sync s':>8} {'CPU s':>8} {'srvCPU s':>9} "
        f"{'RSS MB':>7} {'PSS MB':>7} {'maxproc':>7} {'size MB':>8}"
    )
    for scale, s in summary.items():
        print()
        print(
            f"== pgbench scale {scale}: PGDATA {s['pgdata_mb']:.0f} MB "
            f"({s['pgdata_without_wal_mb']:.0f} MB without pg_wal), medians of {repeat} runs =="
        )
        if s["error"]:
            print(f"   ERROR: {s['error']}")
        print(header)
        print("-" * len(header))
        for step, e in s["steps"].items():
            print(
                f"{step:<19} {e['ok']:>2}/{e['runs']:<2} {fmt(e['wall_s']):>8} "
                f"{fmt(e['wall_plus_sync_s']):>8} {fmt(e['cpu_s']):>8} "
                f"{fmt(e['server_cpu_s']):>9} {fmt(e['peak_rss_mb'], '.0f'):>7} "
                f"{fmt(e['peak_pss_mb'], '.0f'):>7} {fmt(e['max_proc_rss_mb'], '.0f'):>7} "
                f"{fmt(e['stored_mb'], '.0f'):>8}"
            )
        print("ratios (walg / other):")
        for name, value in s["ratios"].items():
            print(f"   {name:<48} {fmt(value)}")
        for step, e in s["steps"].items():
            if "verify" in e:
                v = e["verify"]
                what = "sizes and contents" if v["contents_compared"] else "sizes"
                print(
                    f"verify {step}: {v['files_checked']} files of base/ and global/ "
                    f"({what}): worst run had {v['missing_count']} missing, "
                    f"{v['size_mismatch_count']} size and {v['content_mismatch_count']} "
                    "content mismatches"
                )
        for step, e in s["steps"].items():
            for failure in e["failures"]:
                print(f"FAILED {step} rep {failure['rep']}: {failure['error']}")
                if failure["stderr_tail"]:
                    for line in failure["stderr_tail"].splitlines():
                        print(f"    | {line}")
    print()
    print(
        "RSS = peak of the summed VmRSS of the tool's process tree (sampled every 20 ms); "
        "PSS = same with Pss (every 100 ms);\nmaxproc = ru_maxrss of the largest single process; "
        "size = stored backup (push/backup) or restored data dir (fetch/restore);\n"
        "+sync = wall + an os.sync() right after the tool exits; "
        "srvCPU = PostgreSQL server CPU during the step."
    )


def tool_version(user: PgUser, argv: Sequence[str]) -> str:
    try:
        proc = run_plain(user, argv, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable: {exc}"
    return (
        (proc.stdout + proc.stderr).strip().splitlines()[0]
        if proc.returncode == 0
        else (f"exit {proc.returncode}: {tail(proc.stdout + proc.stderr, 3)}")
    )


def git_head() -> str:
    git = subprocess.run(
        ["git", "-C", str(REPO_DIR), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return git.stdout.strip()


def environment(args: argparse.Namespace, user: PgUser) -> dict[str, Any]:
    with open("/proc/meminfo") as f:
        mem = f.readline().split()[1]
    return {
        "command": [sys.executable, *sys.argv],
        "git_head": git_head(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "mem_total_kb": int(mem),
        "pg_user": user.name,
        "walg": str(args.walg),
        "walg_version": tool_version(user, [str(args.walg), "--version"]),
        "pg_basebackup_version": tool_version(
            user, [str(args.pg_bindir / "pg_basebackup"), "--version"]
        ),
        "pgbackrest_version": tool_version(user, [str(args.pgbackrest), "version"]),
        "walg_env": args.walg_env,
        "pgbackrest_process_max": args.pgbackrest_process_max,
        "rss_sample_interval_s": args.interval,
    }


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def default_pg_bindir() -> Path:
    env_file = Path("/opt/walg/pg/15/env")
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            if line.startswith("BINDIR="):
                return Path(line.split("=", 1)[1].strip().strip("\"'"))
    return DEFAULT_PG_BINDIR


def parse_scales(text: str) -> list[int]:
    try:
        scales = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text}") from exc
    if not scales or any(s <= 0 for s in scales):
        raise argparse.ArgumentTypeError("scales must be positive integers")
    return scales


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(
            "Benchmark walg backup-push/backup-fetch against pg_basebackup and pgBackRest on a "
            "pgbench-filled PostgreSQL 15 cluster (wall time, CPU, peak RSS of the process tree, "
            "stored size)."
        ),
    )
    p.add_argument(
        "--scales",
        "--sizes",
        type=parse_scales,
        default=[100],
        help="comma-separated pgbench scales, one cluster each "
        "(default 100: ~1.5 GB of relation data, PGDATA ~2.7 GB with pg_wal)",
    )
    p.add_argument("--repeat", type=int, default=3, help="runs per step; medians are reported")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/walg-bench"),
        help="parent of the run directory, must be reachable by pgtest (default /tmp/walg-bench)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the run directory, backups and restores (default: remove them)",
    )
    p.add_argument(
        "--walg",
        type=Path,
        default=Path("/opt/walg/venv/bin/walg"),
        help="walg executable (default /opt/walg/venv/bin/walg)",
    )
    p.add_argument(
        "--walg-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for walg (repeatable)",
    )
    p.add_argument(
        "--pg-bindir",
        type=Path,
        default=default_pg_bindir(),
        help="PostgreSQL 15 bin directory (default: /opt/walg/pg/15/env BINDIR, "
        "else /usr/lib/postgresql/15/bin)",
    )
    p.add_argument("--pgbackrest", type=Path, default=Path("/usr/bin/pgbackrest"))
    p.add_argument("--pgbackrest-process-max", type=int, default=2)
    p.add_argument(
        "--verify",
        action="store_true",
        help="also compare the contents of restored relation files with PGDATA (sizes always)",
    )
    p.add_argument("--timeout", type=float, default=3600, help="per-step timeout in seconds")
    p.add_argument("--interval", type=float, default=0.02, help="RSS sampling interval (s)")
    p.add_argument(
        "--results-dir",
        type=Path,
        default=BENCH_DIR / "results",
        help="where the JSON result goes (default bench/results)",
    )
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    for kv in args.walg_env:
        if "=" not in kv:
            p.error(f"--walg-env wants KEY=VALUE, got {kv!r}")
    return args


def raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_signals() -> None:
    # Installed explicitly: a shell starts background jobs with SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_keyboard_interrupt)


def bench_user(pgbackrest: Path) -> PgUser:
    """The user the servers and tools run as (created if missing, see ensure_prerequisites)."""
    ensure_prerequisites(pgbackrest)
    user = PgUser.resolve(PG_USER)
    if user.uid == 0:
        raise SystemExit("refusing to run PostgreSQL as root")
    return user


@contextlib.contextmanager
def run_directory(
    args: argparse.Namespace, user: PgUser, stamp: str, prefix: str = "run"
) -> Iterator[Path]:
    parent: Path = args.workdir
    parent.mkdir(parents=True, exist_ok=True)
    if user.switch:
        parent.chmod(0o755)
    rundir = user.mkdir(parent / f"{prefix}-{stamp}-{os.getpid()}", 0o755)
    try:
        yield rundir
    finally:
        if args.keep:
            log(f"kept {rundir}")
        else:
            shutil.rmtree(rundir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_signals()
    user = bench_user(args.pgbackrest)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    env_info = environment(args, user)
    log(
        f"walg: {env_info['walg_version']}; pgBackRest: {env_info['pgbackrest_version']}; "
        f"{env_info['pg_basebackup_version']}"
    )
    interrupted = False
    bench: Bench | None = None
    with run_directory(args, user, stamp) as rundir:
        bench = Bench(args, user, rundir)
        try:
            for scale in args.scales:
                bench.run_scale(scale)
        except KeyboardInterrupt:
            interrupted = True
            log("interrupted; cleaning up")
            bench.measurer.kill_current()
            if bench.cluster is not None:
                bench.cluster.stop()
    summary = summarize(bench.results, bench.scales)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"{stamp}.json"
    doc = {
        "started": stamp,
        "interrupted": interrupted,
        "environment": env_info,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "scales": [dataclasses.asdict(s) for s in bench.scales],
        "summary": summary,
        "measurements": [dataclasses.asdict(m) for m in bench.results],
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print_table(summary, args.repeat)
    if interrupted:
        print("\nINTERRUPTED: the results above are incomplete")
    print(f"\nJSON: {out}")
    failed = any(not m.ok for m in bench.results) or any(s.error for s in bench.scales)
    return 130 if interrupted else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
