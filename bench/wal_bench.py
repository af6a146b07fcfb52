#!/usr/bin/env python3
"""Benchmark WAL archiving and restore: walg (cold, daemon) against pgBackRest and cp.

Usage (as root; servers and tools run as ``pgtest``)::

    /opt/walg/venv/bin/python bench/wal_bench.py [--repeat 3] [--segments 64] [--only a,b,c]

One run measures, on one machine, local storage only, PostgreSQL 15 (ports chosen at run
time, never 5432; fsync on, ``synchronous_commit=off``, autovacuum off, lz4 everywhere):

**The WAL.** One template cluster produces all of it: ``pgbench -i -s --scale`` (archived with
``archive_command='true'``, or with (c)'s command below); with part (c) also ``walg
backup-push`` and then ``pgbackrest backup --type=full``, back to back; then ``archive_command``
becomes ``''`` (PostgreSQL keeps every finished segment ``.ready``) and pgbench TPC-B (4
clients) runs until exactly ``--segments`` segments are ``.ready``, the last ones closed by
``pg_switch_wal()``. The template is stopped and never started again; every part works on
copies of it (``cp -a``, stopped with an immediate shutdown so that they never add a
segment to an archive). So every tool handles the very same segments.

(a) **one archive_command call** (``--only a``). The first ``--call-segments`` (20) segments are
    archived from a stand-in data directory per series (``PG_VERSION``, ``global/pg_control``,
    ``pg_wal/``) as a busy server produces them: each segment file is created at its full size
    (zeros, as PostgreSQL preallocates), its content is written in order in 128 KiB writes over
    ``--write-ms`` (250 ms: 64 MB/s of WAL) and fsynced; then, as PostgreSQL's archiver does it,
    ``archive_status/<seg>.ready`` is created, the command runs through ``/bin/sh`` in the data
    directory with ``%p = pg_wal/<seg>``, ``.ready`` becomes ``.done``. One segment is
    ``.ready`` at a time (a server that keeps up), ``--gap`` seconds between calls, every process
    new (cold), page cache warm. The daemon's WAL follower (on by default) reads the segment
    while it is being written, as it would on a real server; the other tools cannot start
    before ``.ready``. Every series has a fresh
    empty storage (an archived segment would only be compared, not uploaded). Variants: ``cp``
    (no fsync); ``walg wal-push`` with ``TOTAL_BG_UPLOADED_LIMIT=1`` (look-ahead uploader off)
    and with defaults; ``walg-daemon-client SOCK wal-push`` against ``walg daemon SOCK PGDATA``
    with ``WALG_UPLOAD_CONCURRENCY=1`` (no look-ahead: every call uploads) and with defaults;
    ``pgbackrest archive-push`` sync and ``archive-async=y`` (``process-max=2``, own spool).
    Floors: ``/bin/true`` (this harness: the spawn, ``sh``, one fork), the venv's ``python3 -S
    -E -c pass``, ``walg --version``, ``walg-daemon-client SOCK check`` (a daemon round trip
    doing nothing) and ``bench/floor_push.py`` (the least work a Python program does to store
    the segment durably as walg does: map, LZ4 on two threads, XXH3, write, fsync, rename; no
    walg import, no checks). Reported: median and p95 of the wall time per call, spawn to reap.

(b) **backlog drain** (``--only b``). Per variant and repetition, a fresh copy of the template
    is started with all ``--segments`` segments ``.ready`` and ``archive_command=''``; the
    tool's storage is prepared (pgBackRest: a new repository, ``stanza-create``); the tool's
    ``archive_command`` goes into ``postgresql.auto.conf`` and the postmaster gets SIGHUP.
    Timed: from just before the SIGHUP (daemon variant: from just before ``walg daemon`` is
    spawned, so its start-up counts; it is also reported) until every segment is ``.done``
    (polled every 5 ms; ``pg_stat_archiver`` changes at the same moment). Afterwards
    ``pg_stat_archiver.archived_count`` must have grown by the number of segments,
    ``failed_count`` not at all, ``last_archived_wal`` must be the last segment and the
    storage must hold every segment. ``''`` rather than ``'false'`` queues the backlog
    because after a failure the archiver sleeps 1 s between retries (``pg_usleep``), which
    would delay picking up the new command by up to a second. Variants: ``cp``, ``walg
    wal-push %p`` (defaults: ``WALG_UPLOAD_CONCURRENCY=16``, ``TOTAL_BG_UPLOADED_LIMIT=32``),
    walg daemon + client (defaults; the compiled client also with ``WALG_FILE_DIRECT_IO=false``,
    writes through the page cache), pgBackRest async ``process-max`` 2 and 4, pgBackRest sync,
    and WAL-E 1.1.1's parallel push (``wal-e wal-push --pool-size 8 %p``: lzop, and up to 7
    other ``.ready`` segments per call, whose status files WAL-E itself renames to ``.done``;
    so PostgreSQL counts only its own calls and ``archived_count``/``last_archived_wal`` are
    not checked for it). WAL-E runs when ``--wale`` exists (``bench/setup_wale.sh``).

(c) **restore replay** (``--only c``). The template's ``archive_command`` before the backlog, and
    then a copy of it draining the backlog, run ``walg wal-push %p && pgbackrest ...
    archive-push %p && cp %p DIR/%f``, so walg's storage, the pgBackRest repository and a
    plain directory hold the same WAL: the base backups' segments and the ``--segments`` TPC-B
    ones. (walg's backup starts one segment earlier than pgBackRest's, so walg restores one
    more, nearly empty, segment; the table shows how many each restored.) Each variant
    restores its base backup (walg: ``walg backup-fetch DEST LATEST --restore-command CMD``;
    pgBackRest: ``pgbackrest restore --type=default``, which writes its own
    ``restore_command``), gets ``archive_mode=off`` (the promoted server must not archive a
    new timeline into the shared archives) and is timed from spawning ``postgres`` until its
    log says ``database system is ready to accept connections`` (end of archive recovery and
    promotion; polled every 5 ms). Then ``pg_is_in_recovery()`` must be false and
    ``pgbench_history`` (row count and ``sum(delta)``) must equal the template's. The same
    duration from the log's own time stamps is reported too. Variants: ``walg wal-fetch %f
    %p`` (cold; prefetch on, ``WALG_DOWNLOAD_CONCURRENCY`` default 10), the daemon client with
    ``walg daemon SOCK <restored PGDATA>`` started before the server (not timed), ``cp`` from
    the plain directory (with walg's base backup), pgBackRest ``archive-get`` async
    (``archive-async=y``, ``--archive-get-queue-max``, ``process-max=2``) and sync.

How CPU and memory are counted. The script is a child subreaper
(``prctl(PR_SET_CHILD_SUBREAPER)``): processes that detach themselves (pgBackRest's async
worker, walg's ``wal-prefetch`` child) are re-parented to it and reaped with ``wait4``, which
gives their exact CPU time and ``ru_maxrss``.

* (a) A call runs as ``sh -c 'CMD >&2 & echo $!'``: the shell starts the command, prints its
  PID and exits, and the command, re-parented here, is reaped with ``wait4``. That costs one
  fork of the 1 MB shell (see the ``/bin/true`` floor) and gives the command its own
  ``ru_maxrss``; a direct child of this script would report at least this Python process's
  size, inherited before its exec. ``cpu_ms``: user+system CPU of the shell and the command's
  process tree (exact), plus detached processes reaped after the call. ``+daemon``: the
  daemon's CPU over the series (``/proc/PID/stat``, 10 ms ticks) per call. ``RSS MB``:
  ``ru_maxrss`` of the largest process of the call; ``dmnHWM``: the daemon's ``VmHWM``.
* (b) CPU: the archiver's ``cutime+cstime`` delta (every ``archive_command`` tree it waited
  for), plus detached processes, plus the daemon (spawn to exit, ``wait4``). (c) CPU: the
  startup process's ``cutime+cstime`` (it runs ``restore_command``), read every 5 ms, the last
  value before it exits (a call ending in the last 5 ms would be missed), plus detached
  processes, plus the daemon's CPU during the timed window. ``startup CPU`` is the startup
  process's own CPU (replay). Both: ``RSS MB`` is the largest SUM of VmRSS over the tool's
  processes (descendants of this script named walg, pgbackrest, python3, sh, cp or
  walg-daemon-client), sampled every 20 ms by a thread whose own CPU is recorded;
  ``maxproc``: the largest single-process high-water mark seen (sampled VmHWM, ``ru_maxrss``
  of detached processes, the daemon's VmHWM).

Noise. These VMs give freed memory back to the host (free page reporting); memory allocated
again after that is faulted in by the host at ~2.5 ms per MB, so a 16 MB write can cost ~40 ms
more than usual, in phases that come and go (a loop of 16 MB cp's: ~8 ms each, then ~49 ms
after ~570 MB). It hits whichever tool runs then, so every step is repeated (``--repeat``,
variants interleaved) and medians are reported; parts (a) and (b) start with an unrecorded
``cp`` round, and the ``cp`` rows are the yardstick for the state of the machine.

Before measuring, the script waits up to ``--quiet-wait`` minutes for no other
``backup_bench.py`` / ``wal_bench.py`` / pytest process and a 1-minute load average below
``--max-load`` (before each part it only waits for the other processes: its own set-up raises
the load). Results: a table on stdout, every measurement in ``bench/results/wal-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from backup_bench import (  # noqa: E402
    CLK_TCK,
    MB,
    PgServer,
    PgUser,
    TreeSampler,
    bench_user,
    default_pg_bindir,
    dir_size,
    git_head,
    interrupt_on_signals,
    log,
    median,
    must,
    proc_kb_field,
    rss_bytes,
    run_directory,
    run_plain,
    tail,
    tool_version,
)

REPO_DIR = BENCH_DIR.parent
PARTS = ("a", "b", "c")
TOOL_COMMS = frozenset(
    {"walg", "pgbackrest", "python3", "sh", "cp", "walg-daemon-cl", "walg-daemon-cli"}
)
PR_SET_CHILD_SUBREAPER = 36
# The daemon round trip doing nothing, per client: a floor for a daemon-backed call.
CHECK_FLOORS = {
    "python": "floor: walg-daemon-client check",
    "native": "floor: native client check",
}
READY_LINE = "database system is ready to accept connections"
LOG_TS_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})")
TARGETS = {
    "daemon_call_ms": 10.0,
    "cold_call_ms": 40.0,
    "drain_vs_pgbackrest_async": 2.0,
    "drain_segments_per_s": 84.0,
}


# --------------------------------------------------------------------------------------------
# Processes: /proc, the subreaper, spawning
# --------------------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[str, list[bytes]] | None:
    """(comm, fields after the command name) of /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    lp, rp = data.index(b"("), data.rindex(b")")
    return data[lp + 1 : rp].decode(errors="replace"), data[rp + 2 :].split()


def cpu_ticks(pid: int) -> tuple[int, int] | None:
    """(utime+stime, cutime+cstime) of a live process, in clock ticks."""
    st = proc_stat(pid)
    if st is None:
        return None
    f = st[1]
    return int(f[11]) + int(f[12]), int(f[13]) + int(f[14])


def hwm_bytes(pid: int) -> int:
    return proc_kb_field(pid, "status", b"VmHWM:")


def proc_table(min_pid: int = 0) -> dict[int, tuple[int, str, str]]:
    """pid -> (ppid, state, comm) for every process with pid >= min_pid."""
    out: dict[int, tuple[int, str, str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) < min_pid:
            continue
        st = proc_stat(int(name))
        if st is not None:
            out[int(name)] = (int(st[1][1]), st[1][0].decode(), st[0])
    return out


def subtree(root: int, table: Mapping[int, tuple[int, str, str]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _s, _c) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: list[int] = []
    stack = list(children.get(root, ()))
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, ()))
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@dataclasses.dataclass
class Reaped:
    pid: int
    comm: str
    cpu_s: float
    maxrss_mb: float
    killed: bool = False


class Reaper:
    """This process as a child subreaper: detached descendants come back here to be reaped.

    Only zombies that are not "owned" (spawned here and waited for by their own code) are
    reaped, and only from the main thread between subprocess.run calls, so nothing else's
    wait is disturbed.
    """

    def __init__(self) -> None:
        self.me = os.getpid()
        self.owned: set[int] = set()
        libc = ctypes.CDLL(None, use_errno=True)
        rc: int = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self.enabled = rc == 0
        if not self.enabled:
            log("WARNING: prctl(PR_SET_CHILD_SUBREAPER) failed: detached processes not counted")

    def strays(self) -> dict[int, tuple[str, str]]:
        """Children of this process that nobody here waits for: pid -> (state, comm)."""
        out = {}
        for pid, (ppid, state, comm) in proc_table().items():
            if ppid == self.me and pid not in self.owned:
                out[pid] = (state, comm)
        return out

    def reap(self) -> list[Reaped]:
        got = []
        for pid, (state, comm) in self.strays().items():
            if state != "Z":
                continue
            with contextlib.suppress(ChildProcessError):
                wpid, _status, ru = os.wait4(pid, os.WNOHANG)
                if wpid == pid:
                    got.append(Reaped(pid, comm, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024))
        return got

    def settle(self, timeout: float = 30.0) -> list[Reaped]:
        """Reap detached leftovers until none is alive; kill them after ``timeout``."""
        got: list[Reaped] = []
        deadline = time.monotonic() + timeout
        while True:
            got += self.reap()
            alive = {p: c for p, (s, c) in self.strays().items() if s != "Z"}
            if not alive:
                return got
            if time.monotonic() > deadline:
                log(f"WARNING: killing leftover processes {alive}")
                for pid in alive:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.2)
                killed = self.reap()
                for r in killed:
                    r.killed = True
                return got + killed
            time.sleep(0.01)


@dataclasses.dataclass
class Finished:
    rc: int
    wall_s: float
    cpu_s: float
    maxrss_mb: float
    timed_out: bool


class Runner:
    """Spawns the tools and servers as the PostgreSQL user and waits for them itself."""

    def __init__(self, user: PgUser, reaper: Reaper) -> None:
        self.user = user
        self.reaper = reaper
        self.current: subprocess.Popen[bytes] | None = None

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**self.user.base_env(), **(extra or {})}

    def spawn(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        out: IO[bytes] | int | None = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            list(argv),
            env=self.env(env),
            cwd=cwd or Path("/"),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            **self.user.popen_kwargs(),
        )
        self.reaper.owned.add(proc.pid)
        return proc

    def wait(self, proc: subprocess.Popen[bytes], timeout: float | None = None) -> Finished:
        """wait4 the process (its rusage covers everything it waited for)."""
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill) if timeout else None
        if timer is not None:
            timer.start()
        try:
            _pid, status, ru = os.wait4(proc.pid, 0)
        finally:
            if timer is not None:
                timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        self.reaper.owned.discard(proc.pid)
        return Finished(
            proc.returncode,
            0.0,
            ru.ru_utime + ru.ru_stime,
            ru.ru_maxrss / 1024,
            timed_out.is_set(),
        )

    def timed(self, command: str, cwd: Path, out: IO[bytes], timeout: float) -> Finished:
        """Run ``command`` through ``/bin/sh`` as PostgreSQL would; wall time spawn -> reap.

        The shell starts the command in the background and replaces itself with ``echo`` of its
        PID (no shell is left that could reap the command); the command is then re-parented to
        this subreaper and reaped with ``wait4``. That costs one extra
        fork of the (1 MB) shell but gives the command a fresh ``ru_maxrss``: a direct child
        of this script would report at least this Python process's size, which it inherited
        before its exec. CPU is the shell's plus the command tree's.
        """
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            ["/bin/sh", "-c", f"{command} >&2 & exec /bin/echo $!"],
            env=self.env(),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=out,
            start_new_session=True,
            **self.user.popen_kwargs(),
        )
        self.reaper.owned.add(proc.pid)
        self.current = proc
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            proc.stdout.close()
            shell = self.wait(proc, timeout)
            pid = int(line)
            self.reaper.owned.add(pid)
            timed_out = threading.Event()

            def kill() -> None:
                timed_out.set()
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

            timer = threading.Timer(timeout, kill)
            timer.start()
            try:
                _pid, status, ru = os.wait4(pid, 0)
            except ChildProcessError:
                # Not re-parented here (should not happen): its status and rusage are lost.
                return Finished(-1000, time.perf_counter() - t0, shell.cpu_s, 0.0, False)
            finally:
                timer.cancel()
                self.reaper.owned.discard(pid)
        finally:
            self.current = None
        return Finished(
            os.waitstatus_to_exitcode(status),
            time.perf_counter() - t0,
            shell.cpu_s + ru.ru_utime + ru.ru_stime,
            ru.ru_maxrss / 1024,
            timed_out.is_set() or shell.timed_out,
        )

    def kill_current(self) -> None:
        proc = self.current
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(proc.pid, 0)
            self.reaper.owned.discard(proc.pid)
            self.current = None


class ToolSampler(TreeSampler):
    """Peak summed VmRSS of the tool processes (descendants of ``root``, this script, by
    command name) and the largest VmHWM among them; no PSS."""

    def __init__(self, root: int, interval: float = 0.02) -> None:
        super().__init__(root, interval)
        self.peak_hwm = 0

    def sample(self) -> None:
        full = self.samples % self.FULL_SCAN_EVERY == 0
        table = proc_table(0 if full else self.root)
        pids = [p for p in subtree(self.root, table) if table[p][2] in TOOL_COMMS]
        rss = 0
        for pid in pids:
            rss += rss_bytes(pid)
            self.peak_hwm = max(self.peak_hwm, hwm_bytes(pid))
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_procs = max(self.peak_procs, len(pids))
        self.samples += 1


# --------------------------------------------------------------------------------------------
# PostgreSQL servers
# --------------------------------------------------------------------------------------------


def conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


class Server(PgServer):
    """One PostgreSQL data directory and its postmaster (a direct child of this script)."""

    READY_TIMEOUT = 120
    READY_POLL = 0.05
    ISREADY_ARGS = ("-d", "postgres")
    EXITED = "postgres exited:\n{log}"
    NOT_READY = "postgres not ready after {timeout} s:\n{log}"
    LOG_LINES = 30
    PSQL_TIMEOUT = 600
    STOP_TIMEOUT = 120

    def __init__(self, bench: Bench, datadir: Path, sockdir: Path) -> None:
        super().__init__(
            bench.user,
            bench.args.pg_bindir,
            datadir,
            sockdir,
            datadir.parent / f"{datadir.name}.log",
        )
        self.bench = bench

    def spawn(self, argv: Sequence[str], out: IO[bytes]) -> subprocess.Popen[bytes]:
        # Through the runner: the subreaper must not reap the postmaster, Popen waits for it.
        return self.bench.runner.spawn(argv, cwd=self.datadir.parent, out=out)

    def set_conf(self, settings: Mapping[str, str]) -> None:
        """Set server settings in postgresql.auto.conf (the same keys' old lines dropped)."""
        path = self.datadir / "postgresql.auto.conf"
        keys = {k.lower() for k in settings}
        kept = []
        if path.exists():
            for line in path.read_text().splitlines():
                name = line.split("=", 1)[0].strip().lower() if "=" in line else ""
                if name in keys:
                    continue
                kept.append(line)
        kept += [f"{k} = {conf_quote(v)}" for k, v in settings.items()]
        path.write_text("\n".join(kept) + "\n")
        self.user.chown(path)
        path.chmod(0o600)

    def base_settings(self) -> dict[str, str]:
        return {
            "port": str(self.port),
            "listen_addresses": "",
            "unix_socket_directories": str(self.sockdir),
            "jit": "off",
            "fsync": "on",
            "synchronous_commit": "off",
            "wal_level": "replica",
            "max_wal_senders": "4",
            "shared_buffers": "128MB",
            "autovacuum": "off",
            "logging_collector": "off",
            "log_timezone": "UTC",
            "log_line_prefix": "%m [%p] ",
        }

    def pgbench_background(self, args: Sequence[str], out: Path) -> subprocess.Popen[bytes]:
        with open(out, "ab") as f:
            return self.bench.runner.spawn(
                [str(self.bindir / "pgbench"), *args], env=self.env(), out=f
            )

    def reload(self) -> None:
        os.kill(self.pid, signal.SIGHUP)

    def aux_pid(self, title: str) -> int | None:
        """PID of the server's child whose process title starts with ``postgres: <title>``."""
        if self.proc is None:
            return None
        table = proc_table(self.pid)
        for pid, (ppid, _state, _comm) in table.items():
            if ppid == self.pid and cmdline(pid).startswith(f"postgres: {title}"):
                return pid
        return None

    def archiver(self) -> dict[str, str]:
        row = self.psql(
            "SELECT archived_count, failed_count, coalesce(last_archived_wal, ''), "
            "coalesce(last_failed_wal, '') FROM pg_stat_archiver"
        ).split("|")
        return dict(zip(("archived", "failed", "last_archived", "last_failed"), row, strict=True))

    def stop(self, immediate: bool = False) -> None:
        proc = self.proc
        super().stop(immediate)
        if proc is not None:
            self.bench.reaper.owned.discard(proc.pid)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Call:
    variant: str
    rep: int
    segment: str
    ok: bool
    rc: int
    wall_ms: float
    cpu_ms: float
    detached_cpu_ms: float
    maxrss_mb: float
    error: str = ""


@dataclasses.dataclass
class DaemonStats:
    start_s: float = 0.0
    window_cpu_s: float = 0.0
    total_cpu_s: float = 0.0
    hwm_mb: float = 0.0
    maxrss_mb: float = 0.0
    rc: int | None = None
    log_errors: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Series:
    variant: str
    rep: int
    command: str
    calls: list[Call] = dataclasses.field(default_factory=list)
    daemon: DaemonStats | None = None
    stored_objects: int | None = None
    stored_mb: float | None = None
    walg_before: str = ""
    walg_after: str = ""
    loadavg_before: str = ""
    error: str = ""


@dataclasses.dataclass
class Drain:
    variant: str
    rep: int
    command: str
    segments: int
    ok: bool = False
    error: str = ""
    wall_s: float = 0.0
    segments_per_s: float = 0.0
    daemon_ready_s: float | None = None
    tool_cpu_s: float = 0.0
    archiver_children_cpu_s: float = 0.0
    detached_cpu_s: float = 0.0
    detached: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    daemon: DaemonStats | None = None
    peak_rss_mb: float = 0.0
    max_proc_mb: float = 0.0
    peak_procs: int = 0
    sampler_cpu_s: float = 0.0
    archived_delta: int | None = None
    failed_delta: int | None = None
    last_archived_wal: str = ""
    archiver_replaced: bool = False
    server_log_notes: list[str] = dataclasses.field(default_factory=list)
    stored_objects: int | None = None
    stored_mb: float | None = None
    walg_before: str = ""
    walg_after: str = ""
    loadavg_before: str = ""


@dataclasses.dataclass
class Replay:
    variant: str
    rep: int
    restore_command: str
    ok: bool = False
    error: str = ""
    base_restore_s: float = 0.0
    wall_s: float = 0.0
    log_s: float | None = None
    segments_restored: int = 0
    restore_calls_ok: int = 0
    first_segment: str = ""
    last_segment: str = ""
    data_ok: bool | None = None
    data: str = ""
    tool_cpu_s: float = 0.0
    restore_children_cpu_s: float = 0.0
    startup_own_cpu_s: float = 0.0
    detached_cpu_s: float = 0.0
    detached_count: int = 0
    daemon: DaemonStats | None = None
    peak_rss_mb: float = 0.0
    max_proc_mb: float = 0.0
    peak_procs: int = 0
    sampler_cpu_s: float = 0.0
    walg_before: str = ""
    walg_after: str = ""
    loadavg_before: str = ""


def set_memory(rec: Drain | Replay, sampler: ToolSampler, detached: Sequence[Reaped]) -> None:
    """The memory columns of (b) and (c), counted alike (see the module docstring)."""
    rec.peak_rss_mb = sampler.peak_rss / MB
    rec.max_proc_mb = max(
        [sampler.peak_hwm / MB]
        + [x.maxrss_mb for x in detached]
        + ([rec.daemon.hwm_mb] if rec.daemon else [])
    )
    rec.peak_procs = sampler.peak_procs
    rec.sampler_cpu_s = sampler.own_cpu_s


def count_segments(root: Path) -> int:
    """Files under ``root`` whose name starts with a WAL segment name."""
    return sum(1 for _d, _s, files in os.walk(root) for f in files if re.match(r"[0-9A-F]{24}", f))


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return f.read().strip()


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PushVariant:
    name: str
    kind: str  # cp | walg | daemon | pgbackrest | wale | floor
    walg_env: tuple[tuple[str, str], ...] = ()
    pgbr_async: bool = False
    process_max: int = 2
    note: str = ""
    client: str = "python"  # daemon variants: walg-daemon-client (python) or the native one


CALL_VARIANTS = (
    PushVariant("cp", "cp", note="cp pg_wal/SEG DIR/SEG (no fsync)"),
    PushVariant(
        "walg cold (no look-ahead)",
        "walg",
        (("TOTAL_BG_UPLOADED_LIMIT", "1"),),
        note="walg wal-push %p, TOTAL_BG_UPLOADED_LIMIT=1",
    ),
    PushVariant(
        "walg cold (no look-ahead, buffered writes)",
        "walg",
        (("TOTAL_BG_UPLOADED_LIMIT", "1"), ("WALG_FILE_DIRECT_IO", "false")),
        note="walg wal-push %p, TOTAL_BG_UPLOADED_LIMIT=1, WALG_FILE_DIRECT_IO=false",
    ),
    PushVariant("walg cold (defaults)", "walg", note="walg wal-push %p, look-ahead on"),
    PushVariant(
        "walg daemon (no look-ahead)",
        "daemon",
        (("WALG_UPLOAD_CONCURRENCY", "1"),),
        note="walg-daemon-client SOCK wal-push %p; daemon WALG_UPLOAD_CONCURRENCY=1",
    ),
    PushVariant(
        "walg daemon (look-ahead, no follower)",
        "daemon",
        (("WALG_DAEMON_FOLLOW_WAL", "false"),),
        note="daemon with look-ahead, WALG_DAEMON_FOLLOW_WAL=false",
    ),
    PushVariant(
        "walg daemon (defaults)",
        "daemon",
        note="daemon defaults: look-ahead and the WAL follower",
    ),
    PushVariant(
        "walg daemon (defaults, native client)",
        "daemon",
        note="daemon defaults; walg-daemon-client-native (walg build-daemon-client)",
        client="native",
    ),
    PushVariant("pgbackrest sync", "pgbackrest", note="archive-push, archive-async=n"),
    PushVariant(
        "pgbackrest async",
        "pgbackrest",
        pgbr_async=True,
        note="archive-push, archive-async=y, process-max=2",
    ),
    PushVariant("floor: /bin/true", "floor", note="the harness: sh, a fork, /bin/true"),
    PushVariant("floor: python3 -S -E", "floor", note="venv python3 -S -E -c pass"),
    PushVariant("floor: walg --version", "floor", note="walg --version (CLI imports)"),
    PushVariant(
        "floor: minimal Python push",
        "floor",
        note="bench/floor_push.py %p DIR: map, LZ4 on 2 threads, XXH3, write, fsync, rename",
    ),
)

DRAIN_VARIANTS = (
    PushVariant("cp", "cp", note="cp %p DIR/%f"),
    PushVariant("walg cold (defaults)", "walg", note="walg wal-push %p, look-ahead 16/32"),
    PushVariant(
        "walg cold (buffered writes)",
        "walg",
        (("WALG_FILE_DIRECT_IO", "false"),),
        note="walg wal-push %p, look-ahead 16/32, WALG_FILE_DIRECT_IO=false",
    ),
    PushVariant("walg daemon", "daemon", note="walg-daemon-client; daemon defaults"),
    PushVariant(
        "walg daemon (native client)",
        "daemon",
        note="walg-daemon-client-native; daemon defaults",
        client="native",
    ),
    PushVariant(
        "walg daemon (native client, buffered writes)",
        "daemon",
        (("WALG_FILE_DIRECT_IO", "false"),),
        note="walg-daemon-client-native; WALG_FILE_DIRECT_IO=false",
        client="native",
    ),
    PushVariant("pgbackrest async pm=2", "pgbackrest", pgbr_async=True, process_max=2),
    PushVariant("pgbackrest async pm=4", "pgbackrest", pgbr_async=True, process_max=4),
    PushVariant("pgbackrest sync", "pgbackrest"),
    PushVariant(
        "wal-e parallel (8)",
        "wale",
        note="wal-e wal-push --pool-size 8 %p (lzop; marks the .ready files it took .done)",
    ),
)

REPLAY_VARIANTS = (
    PushVariant("cp", "cp", note="cp DIR/%f %p (walg's base backup)"),
    PushVariant("walg cold", "walg", note="walg wal-fetch %f %p, prefetch 10"),
    PushVariant("walg daemon", "daemon", note="walg-daemon-client SOCK wal-fetch %f %p"),
    PushVariant(
        "walg daemon (native client)",
        "daemon",
        note="walg-daemon-client-native SOCK wal-fetch %f %p",
        client="native",
    ),
    PushVariant("pgbackrest async", "pgbackrest", pgbr_async=True, process_max=2),
    PushVariant("pgbackrest sync", "pgbackrest"),
)


@dataclasses.dataclass
class CArchives:
    """Where part (c)'s archive_command sends the WAL: the same segments to all three."""

    walg_store: Path
    plain: Path
    repo: Path


class Bench:
    def __init__(self, args: argparse.Namespace, user: PgUser, rundir: Path) -> None:
        self.args = args
        self.user = user
        self.rundir = rundir
        self.reaper = Reaper()
        self.runner = Runner(user, self.reaper)
        self.walg = str(args.walg)
        self.clients = {
            "python": str(args.walg.parent / "walg-daemon-client"),
            "native": str(args.walg.parent / "walg-daemon-client-native"),
        }
        if not os.access(self.clients["native"], os.X_OK):
            # scripts/setup.sh builds it into the venv; otherwise build one for this run.
            self.clients["native"] = str(rundir / "walg-daemon-client-native")
            subprocess.run(
                [self.walg, "build-daemon-client", self.clients["native"]],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        self.python = str(args.walg.parent / "python3")
        # Copied: the checkout may be unreadable for the PostgreSQL user that runs the calls.
        self.floor_push = rundir / "floor_push.py"
        shutil.copyfile(BENCH_DIR / "floor_push.py", self.floor_push)
        self.pgbackrest = str(args.pgbackrest)
        self.wale = str(args.wale) if os.access(args.wale, os.X_OK) else None
        self.servers: list[Server] = []
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.series: list[Series] = []
        self.drains: list[Drain] = []
        self.replays: list[Replay] = []
        self.info: dict[str, Any] = {}
        self.template: Path | None = None
        self.backlog: list[str] = []
        self.expected = ""
        self.c_archives: CArchives | None = None
        self._n = 0

    # ---------------------------------------------------------------- small helpers
    def walg_digest(self) -> str:
        """Digest of the installed walg (package and scripts): other sessions reinstall it."""
        root = installed_walg(self.args.walg)
        if root is None:
            return "unknown"
        return package_digest(root, [self.args.walg, *map(Path, self.clients.values())])

    def client_command(self, kind: str) -> str:
        """The shell words that run a daemon client: the installed script runs the compiled
        client beside it when there is one, so the Python variant asks for Python."""
        if kind == "python":
            return f"WALG_DAEMON_CLIENT_PYTHON=1 {shlex.quote(self.clients['python'])}"
        return shlex.quote(self.clients[kind])

    def mkdir(self, name: str, mode: int = 0o755) -> Path:
        return self.user.mkdir(self.rundir / name, mode)

    def short(self, prefix: str) -> Path:
        """A fresh short directory (for UNIX sockets)."""
        self._n += 1
        return self.mkdir(f"{prefix}{self._n}", 0o700)

    def remove(self, path: Path) -> None:
        if not self.args.keep:
            shutil.rmtree(path, ignore_errors=True)

    def selected(self, variants: Sequence[PushVariant]) -> list[PushVariant]:
        wanted: list[str] = self.args.variants
        if self.wale is None:
            variants = [v for v in variants if v.kind != "wale"]
        if not wanted:
            return list(variants)
        return [v for v in variants if any(w.lower() in v.name.lower() for w in wanted)]

    def walg_env(self, store: Path, extra: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
        env = {"WALG_FILE_PREFIX": str(store), "WALG_COMPRESSION_METHOD": "lz4"}
        env.update(dict(extra))
        env.update(dict(kv.split("=", 1) for kv in self.args.walg_env))
        return env

    def walg_cmd(self, store: Path, extra: Sequence[tuple[str, str]], rest: str) -> str:
        assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.walg_env(store, extra).items())
        return f"{assigns} {shlex.quote(self.walg)} {rest}"

    def new_server(self, datadir: Path) -> Server:
        server = Server(self, datadir, self.short("s"))
        self.servers.append(server)
        return server

    def stop_server(self, server: Server, immediate: bool = False) -> None:
        server.stop(immediate)
        if server in self.servers:
            self.servers.remove(server)

    def write_pgbr_conf(
        self,
        path: Path,
        repo: Path,
        pgdata: Path,
        server: Server | None,
        async_: bool,
        process_max: int,
        extra: Sequence[str] = (),
    ) -> list[str]:
        base = path.parent / (path.stem + "-pgbr")
        for sub in ("", "/log", "/lock", "/spool"):
            self.user.mkdir(Path(str(base) + sub), 0o755)
        lines = [
            "[global]",
            "repo1-type=posix",
            f"repo1-path={repo}",
            "repo1-retention-full=2",
            "compress-type=lz4",
            f"process-max={process_max}",
            f"archive-async={'y' if async_ else 'n'}",
            f"spool-path={base}/spool",
            f"log-path={base}/log",
            f"lock-path={base}/lock",
            "log-level-console=warn",
            "log-level-file=info",
            "start-fast=y",
            *extra,
            "",
            "[bench]",
            f"pg1-path={pgdata}",
        ]
        if server is not None:
            lines += [
                f"pg1-port={server.port}",
                f"pg1-socket-path={server.sockdir}",
                f"pg1-user={self.user.name}",
            ]
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o644)
        return [self.pgbackrest, f"--config={path}", "--stanza=bench"]

    def stanza_create(self, pgbr: Sequence[str], server: Server) -> None:
        must(
            run_plain(
                self.user,
                [
                    *pgbr,
                    f"--pg1-path={server.datadir}",
                    f"--pg1-port={server.port}",
                    f"--pg1-socket-path={server.sockdir}",
                    f"--pg1-user={self.user.name}",
                    "stanza-create",
                ],
                timeout=300,
            ),
            "pgbackrest stanza-create",
        )

    def start_daemon(
        self, pgdata: Path, env: Mapping[str, str], logfile: Path
    ) -> tuple[subprocess.Popen[bytes], Path, float]:
        sock = self.short("d") / "walg.sock"
        with open(logfile, "ab") as out:
            t0 = time.perf_counter()
            proc = self.runner.spawn(
                [self.walg, "daemon", str(sock), str(pgdata)], env, pgdata.parent, out
            )
        self.daemons.append(proc)
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"walg daemon exited with {proc.returncode}:\n"
                    + tail(logfile.read_text(errors="replace"))
                )
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(str(sock))
                s.sendall(b"C\x00\x03")
                if s.recv(1) == b"O":
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("walg daemon did not answer within 60 s")
            time.sleep(0.005)
        return proc, sock, time.perf_counter() - t0

    def stop_daemon(self, proc: subprocess.Popen[bytes], stats: DaemonStats, log: Path) -> None:
        stats.hwm_mb = hwm_bytes(proc.pid) / MB
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        done = self.runner.wait(proc, timeout=60)
        stats.rc = done.rc
        stats.total_cpu_s = done.cpu_s
        stats.maxrss_mb = done.maxrss_mb
        if proc in self.daemons:
            self.daemons.remove(proc)
        with contextlib.suppress(OSError):
            stats.log_errors = [
                line
                for line in log.read_text(errors="replace").splitlines()
                if line.startswith(("ERROR", "WARNING")) or "Traceback" in line
            ][:20]

    # ---------------------------------------------------------------- the WAL template
    def ready_names(self, pgdata: Path) -> list[str]:
        status = pgdata / "pg_wal" / "archive_status"
        return sorted(n[: -len(".ready")] for n in os.listdir(status) if n.endswith(".ready"))

    def wait_no_pgbench(self, server: Server) -> None:
        for _ in range(600):
            n = server.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'"
            )
            if n == "0":
                return
            time.sleep(0.05)
        raise RuntimeError("pgbench backends did not go away")

    def tpcb_until(self, server: Server, done: Callable[[], bool], logname: str) -> None:
        """Run pgbench TPC-B in the background until ``done()`` is true, then stop it."""
        bg = server.pgbench_background(
            ["-n", "-c", "4", "-j", "2", "-T", "7200", "-M", "prepared"],
            self.rundir / logname,
        )
        try:
            while not done():
                if bg.poll() is not None:
                    raise RuntimeError(f"pgbench exited early with {bg.returncode}")
                time.sleep(0.05)
        finally:
            with contextlib.suppress(ProcessLookupError):
                bg.send_signal(signal.SIGINT)
            try:
                bg.wait(timeout=30)
            except subprocess.TimeoutExpired:
                bg.kill()
                bg.wait()
            self.reaper.owned.discard(bg.pid)
        self.wait_no_pgbench(server)

    def wait_archived(self, server: Server, pgdata: Path, last: str, timeout: float) -> None:
        """Wait until nothing is .ready and ``last`` (if given) has been archived."""
        deadline = time.monotonic() + timeout
        while self.ready_names(pgdata) or (last and server.archiver()["last_archived"] < last):
            if time.monotonic() > deadline:
                raise RuntimeError(f"WAL not archived in time: {server.archiver()}")
            time.sleep(0.1)

    def make_template(self) -> None:
        """The WAL for everything: a stopped cluster with exactly --segments TPC-B segments
        ``.ready`` in pg_wal (never started again; only copies of it are).

        With part (c), its archive_command first sends the WAL of ``pgbench -i`` and of the
        two base backups (walg backup-push, then pgbackrest backup, back to back) to walg's
        storage, the pgBackRest repository and a plain directory; then archive_command
        becomes ''.
        """
        count = self.args.segments
        datadir = self.rundir / "template"
        server = self.new_server(datadir)
        t0 = time.perf_counter()
        log(f"template: initdb, pgbench -i -s {self.args.scale}")
        server.initdb()
        server.set_conf({**server.base_settings(), "archive_mode": "on", "archive_command": "true"})
        server.start()
        server.pgbench(["-i", "-q", "-s", str(self.args.scale)])
        server.psql("CHECKPOINT")
        if "c" in self.args.parts:
            c = self.c_archives = CArchives(
                self.mkdir("c-walg-store"), self.mkdir("c-plain"), self.mkdir("c-repo")
            )
            pgbr = self.write_pgbr_conf(
                self.rundir / "c-source.conf", c.repo, datadir, server, False, 2
            )
            self.stanza_create(pgbr, server)
            server.set_conf({"archive_command": self.c_archive_command(pgbr)})
            server.reload()
            time.sleep(0.5)
            log("template: walg backup-push, then pgbackrest backup")
            walg_env = {**server.env(), **self.walg_env(c.walg_store)}
            must(
                run_plain(
                    self.user, [self.walg, "backup-push", str(datadir)], walg_env, timeout=3600
                ),
                "walg backup-push",
            )
            must(
                run_plain(self.user, [*pgbr, "--type=full", "backup"], timeout=3600),
                "pgbackrest backup",
            )
            self.wait_archived(server, datadir, "", 600)
        else:
            switched = server.psql("SELECT pg_walfile_name(pg_switch_wal())")
            self.wait_archived(server, datadir, switched, 600)
        server.set_conf({"archive_command": ""})
        server.reload()
        time.sleep(1.0)
        if self.ready_names(datadir):
            raise RuntimeError(f"unexpected .ready files: {self.ready_names(datadir)}")
        # Stop by the insert position, not by counting .ready files: with
        # synchronous_commit=off those appear only when the WAL writer has flushed the
        # segment, which can be a whole segment late.
        segsize = 16 * MB

        def segno() -> int:
            return int(server.psql("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")) // segsize

        first = segno()
        first_name = server.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())")
        log(f"template: pgbench TPC-B until {count} segments are .ready, from {first_name}")
        # Two segments short, then small bursts: after a checkpoint, full-page images make
        # TPC-B write WAL several times faster, fast enough to cross a whole segment while a
        # background run is being stopped.
        self.tpcb_until(server, lambda: segno() >= first + count - 3, "template-pgbench.log")
        while segno() < first + count - 1:
            server.pgbench(["-n", "-c", "1", "-t", "20", "-M", "prepared"])
        self.expected = server.psql("SELECT count(*), coalesce(sum(delta), 0) FROM pgbench_history")
        # No pg_switch_wal() here: with archive_mode=on, the shutdown itself switches to a new
        # segment when anything was written since the last switch (as the bgwriter's
        # running-xacts records are, every 15 s), so an explicit switch could be followed by
        # one more. The shutdown closes the last segment, which then holds every committed
        # transaction; the shutdown checkpoint goes into the next one, never archived.
        self.stop_server(server)
        self.backlog = self.ready_names(datadir)
        self.template = datadir
        sizes = [(datadir / "pg_wal" / n).stat().st_size for n in self.backlog]
        self.info["template"] = {
            "scale": self.args.scale,
            "segments": len(self.backlog),
            "first": self.backlog[0],
            "last": self.backlog[-1],
            "segment_bytes": sorted(set(sizes)),
            "pgbench_history": self.expected,
            "seconds": time.perf_counter() - t0,
        }
        log(
            f"template: {len(self.backlog)} segments {self.backlog[0]}..{self.backlog[-1]} "
            f"in {time.perf_counter() - t0:.0f} s"
        )
        if len(self.backlog) != count:
            log(f"WARNING: wanted {count} segments, got {len(self.backlog)}")

    def c_archive_command(self, pgbr: Sequence[str]) -> str:
        c = self.c_archives
        assert c is not None
        return (
            self.walg_cmd(c.walg_store, (), "wal-push %p")
            + f" && {shlex.join(pgbr)} archive-push %p && cp %p {c.plain}/%f"
        )

    def start_copy(self, tag: str) -> tuple[Server, Path]:
        """A running copy of the template (archive_command still '')."""
        pgdata = self.rundir / f"{tag}-pgdata"
        self.copy_template(pgdata)
        server = self.new_server(pgdata)
        server.set_conf({"port": str(server.port), "unix_socket_directories": str(server.sockdir)})
        server.start()
        return server, pgdata

    def copy_template(self, dest: Path) -> None:
        assert self.template is not None
        subprocess.run(["cp", "-a", str(self.template), str(dest)], check=True)

    # ---------------------------------------------------------------- (a) one call each
    def fake_pgdata(self, name: str, segments: Sequence[str]) -> Path:
        """PG_VERSION, global/pg_control and pg_wal/ with the segments (no .ready yet)."""
        assert self.template is not None
        root = self.mkdir(name, 0o700)
        self.user.mkdir(root / "global", 0o700)
        self.user.mkdir(root / "pg_wal", 0o700)
        self.user.mkdir(root / "pg_wal" / "archive_status", 0o700)
        for rel in ("PG_VERSION", "global/pg_control"):
            shutil.copy2(self.template / rel, root / rel)
            self.user.chown(root / rel)
        for seg in segments:
            shutil.copy2(self.template / "pg_wal" / seg, root / "pg_wal" / seg)
            self.user.chown(root / "pg_wal" / seg)
        return root

    def write_segment(self, pgdata: Path, seg: str) -> None:
        """Write one segment into pg_wal as PostgreSQL does: preallocated, then in order."""
        assert self.template is not None
        data = (self.template / "pg_wal" / seg).read_bytes()
        path = pgdata / "pg_wal" / seg
        chunk = 128 << 10
        pause = self.args.write_ms / 1000 / (len(data) // chunk)
        with open(path, "wb") as out:
            self.user.chown(path)
            out.write(bytes(len(data)))
            out.flush()
            out.seek(0)
            for pos in range(0, len(data), chunk):
                out.write(data[pos : pos + chunk])
                out.flush()
                time.sleep(pause)
            os.fsync(out.fileno())

    def part_a(self) -> None:
        assert self.template is not None
        segs = self.backlog[: self.args.call_segments]
        variants = self.selected(CALL_VARIANTS)
        # pgBackRest's stanza-create needs the server running: make all repositories first.
        repos: dict[tuple[str, int], tuple[Path, Path, list[str]]] = {}
        pgbr_variants = [v for v in variants if v.kind == "pgbackrest"]
        if pgbr_variants:
            server, copy = self.start_copy("a-stanza")
            try:
                for rep in range(1, self.args.repeat + 1):
                    for v in pgbr_variants:
                        tag = f"a{len(repos)}"
                        repo = self.mkdir(f"{tag}-repo")
                        pgdata = self.rundir / f"{tag}-pgdata"
                        pgbr = self.write_pgbr_conf(
                            self.rundir / f"{tag}.conf", repo, pgdata, None, v.pgbr_async, 2
                        )
                        self.stanza_create(pgbr, server)
                        repos[(v.name, rep)] = (pgdata, repo, pgbr)
            finally:
                self.stop_server(server, immediate=True)
                self.remove(copy)
        # An unrecorded cp series first: the first writes after the set-up are the dearest.
        log("(a) warm-up (not recorded)")
        self._n += 1
        self.call_series(
            CALL_VARIANTS[0],
            0,
            segs,
            self.fake_pgdata(f"a{self._n}-warmup-pgdata", []),
            self.user.mkdir(self.rundir / f"a{self._n}-warmup-store", 0o755),
            [],
        )
        self.series = [x for x in self.series if x.rep != 0]
        for rep in range(1, self.args.repeat + 1):
            for v in variants:
                if v.kind == "pgbackrest":
                    pgdata, repo, pgbr = repos[(v.name, rep)]
                    self.fake_pgdata(pgdata.name, [])
                    self.call_series(v, rep, segs, pgdata, repo / "archive", pgbr)
                else:
                    self._n += 1
                    pgdata = self.fake_pgdata(f"a{self._n}-{v.kind}-pgdata", [])
                    store = self.user.mkdir(self.rundir / f"a{self._n}-store", 0o755)
                    self.call_series(v, rep, segs, pgdata, store, [])

    def call_series(
        self,
        v: PushVariant,
        rep: int,
        segs: Sequence[str],
        pgdata: Path,
        store: Path,
        pgbr: Sequence[str],
    ) -> None:
        """Archive ``segs`` one call at a time; ``store`` is where the archived files land."""
        logfile = pgdata.parent / f"{pgdata.name}-calls.log"
        daemon_log = pgdata.parent / f"{pgdata.name}-daemon.log"
        series = Series(v.name, rep, "")
        series.walg_before = self.walg_digest()
        self.series.append(series)
        daemon: subprocess.Popen[bytes] | None = None
        sock: Path | None = None
        env: dict[str, str] = {}
        if v.kind == "cp":
            series.command = f"cp %p {shlex.quote(str(store))}/%f"
        elif v.kind == "walg":
            series.command = self.walg_cmd(store, v.walg_env, "wal-push %p")
        elif v.kind == "pgbackrest":
            series.command = shlex.join(pgbr) + " archive-push %p"
        elif v.name.endswith("/bin/true"):
            series.command = "/bin/true"
        elif v.name.endswith("-S -E"):
            series.command = f"{shlex.quote(self.python)} -S -E -c pass"
        elif v.name.endswith("minimal Python push"):
            series.command = (
                f"{shlex.quote(self.python)} {shlex.quote(str(self.floor_push))} %p "
                f"{shlex.quote(str(store))}"
            )
        elif v.kind == "floor":
            series.command = f"{shlex.quote(self.walg)} --version"
        try:
            os.sync()
            if v.kind == "daemon":
                env = self.walg_env(store, v.walg_env)
                daemon, sock, start_s = self.start_daemon(pgdata, env, daemon_log)
                series.daemon = DaemonStats(start_s=start_s)
                client = self.client_command(v.client)
                series.command = f"{client} {sock} wal-push %p"
            series.loadavg_before = loadavg()
            daemon_before = cpu_ticks(daemon.pid) if daemon is not None else None
            status = pgdata / "pg_wal" / "archive_status"
            with open(logfile, "ab") as out:
                for seg in segs:
                    self.write_segment(pgdata, seg)
                    ready = status / f"{seg}.ready"
                    ready.touch()
                    self.user.chown(ready)
                    cmd = series.command.replace("%p", f"pg_wal/{seg}").replace("%f", seg)
                    done = self.runner.timed(cmd, pgdata, out, self.args.timeout)
                    detached = self.reaper.settle()
                    if done.rc == 0:
                        ready.rename(status / f"{seg}.done")
                    else:
                        ready.unlink()
                    series.calls.append(
                        Call(
                            v.name,
                            rep,
                            seg,
                            done.rc == 0 and not done.timed_out,
                            done.rc,
                            done.wall_s * 1000,
                            done.cpu_s * 1000,
                            sum(r.cpu_s for r in detached) * 1000,
                            max([done.maxrss_mb] + [r.maxrss_mb for r in detached]),
                            "timed out" if done.timed_out else "",
                        )
                    )
                    time.sleep(self.args.gap)
            if daemon is not None and series.daemon is not None and daemon_before is not None:
                after = cpu_ticks(daemon.pid)
                if after is not None:
                    series.daemon.window_cpu_s = (after[0] - daemon_before[0]) / CLK_TCK
            check_floor = CHECK_FLOORS[v.client]
            if (
                daemon is not None
                and sock is not None
                and not any(x.variant == check_floor and x.rep == rep for x in self.series)
            ):
                # The client's no-op round trip, as a floor for a daemon-backed call.
                floor = Series(check_floor, rep, "")
                floor.command = f"{self.client_command(v.client)} {sock} check"
                floor.loadavg_before = loadavg()
                with open(logfile, "ab") as out:
                    for seg in segs:
                        done = self.runner.timed(floor.command, pgdata, out, self.args.timeout)
                        floor.calls.append(
                            Call(
                                floor.variant,
                                rep,
                                seg,
                                done.rc == 0,
                                done.rc,
                                done.wall_s * 1000,
                                done.cpu_s * 1000,
                                0.0,
                                done.maxrss_mb,
                            )
                        )
                        time.sleep(self.args.gap)
                self.series.append(floor)
        except Exception as exc:
            series.error = f"{type(exc).__name__}: {exc}"
            log(f"(a) {v.name} rep {rep}: ERROR {series.error}")
        finally:
            if daemon is not None:
                self.stop_daemon(daemon, series.daemon or DaemonStats(), daemon_log)
            self.reaper.settle()
        series.walg_after = self.walg_digest()
        if series.walg_after != series.walg_before:
            series.error = series.error or "walg was reinstalled during the series"
        failed = [c for c in series.calls if not c.ok]
        if failed:
            text = tail(logfile.read_text(errors="replace"), 10) if logfile.exists() else ""
            series.error = series.error or f"{len(failed)} calls failed: {text}"
            for c in failed:
                c.error = c.error or f"exit {c.rc}"
        if v.kind != "floor" or v.name.endswith("minimal Python push"):
            series.stored_objects = count_segments(store)
            series.stored_mb = dir_size(store) / MB
        walls = [c.wall_ms for c in series.calls if c.ok]
        log(
            f"(a) {v.name:<30} rep {rep}: {len(walls)}/{len(series.calls)} ok, median "
            f"{median(walls) or 0:.1f} ms, p95 {percentile(walls, 0.95) or 0:.1f} ms"
            + (f", stored {series.stored_objects} objects" if series.stored_objects else "")
        )
        self.remove(pgdata)
        self.remove(store)

    # ---------------------------------------------------------------- (b) backlog drain
    def part_b(self) -> None:
        log("(b) warm-up (not recorded)")
        self.drain(DRAIN_VARIANTS[0], 0)
        self.drains = [x for x in self.drains if x.rep != 0]
        for rep in range(1, self.args.repeat + 1):
            for v in self.selected(DRAIN_VARIANTS):
                self.drain(v, rep)

    def drain(self, v: PushVariant, rep: int) -> None:
        tag = f"b{self._n}"
        self._n += 1
        pgdata = self.rundir / f"{tag}-pgdata"
        names = list(self.backlog)
        d = Drain(v.name, rep, "", len(names))
        d.walg_before = self.walg_digest()
        self.drains.append(d)
        store = self.mkdir(f"{tag}-store")
        daemon_log = self.rundir / f"{tag}-daemon.log"
        daemon: subprocess.Popen[bytes] | None = None
        sampler: ToolSampler | None = None
        target = store
        server: Server | None = None
        try:
            server, pgdata = self.start_copy(tag)
            if self.ready_names(pgdata) != names:
                raise RuntimeError("the copy does not hold the template's .ready segments")
            env: dict[str, str] = {}
            if v.kind == "cp":
                d.command = f"cp %p {store}/%f"
            elif v.kind == "walg":
                d.command = self.walg_cmd(store, v.walg_env, "wal-push %p")
            elif v.kind == "daemon":
                env = self.walg_env(store, v.walg_env)
                d.command = f"{self.client_command(v.client)} SOCK wal-push %p"
            elif v.kind == "wale":
                assert self.wale is not None
                d.command = (
                    f"WALE_FILE_PREFIX=file://localhost{store} {shlex.quote(self.wale)} "
                    "wal-push --pool-size 8 %p"
                )
            else:
                pgbr = self.write_pgbr_conf(
                    self.rundir / f"{tag}.conf", store, pgdata, server, v.pgbr_async, v.process_max
                )
                self.stanza_create(pgbr, server)
                d.command = shlex.join(pgbr) + " archive-push %p"
                target = store / "archive"
            before = server.archiver()
            archiver = server.aux_pid("archiver")
            if archiver is None:
                raise RuntimeError("no archiver process")
            arch_before = cpu_ticks(archiver)
            os.sync()
            d.loadavg_before = loadavg()
            status = pgdata / "pg_wal" / "archive_status"
            sampler = ToolSampler(self.reaper.me)
            sampler.start()
            t0 = time.perf_counter()
            if v.kind == "daemon":
                daemon, sock, _ = self.start_daemon(pgdata, env, daemon_log)
                d.daemon = DaemonStats()
                d.daemon_ready_s = time.perf_counter() - t0
                d.command = d.command.replace("SOCK", str(sock))
            server.set_conf({"archive_command": d.command})
            server.reload()
            deadline = time.monotonic() + self.args.timeout
            pending = set(names)
            while pending:
                present = set(os.listdir(status))
                pending = {n for n in pending if f"{n}.done" not in present}
                if not pending:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(pending)} segments not archived in time")
                time.sleep(0.005)
            d.wall_s = time.perf_counter() - t0
            sampler.stop()
            arch_after = cpu_ticks(archiver)
            if arch_before is not None and arch_after is not None:
                d.archiver_children_cpu_s = (arch_after[1] - arch_before[1]) / CLK_TCK
            else:
                # The archiver exited (PostgreSQL restarts it): the CPU of the commands it
                # ran is not known.
                d.archiver_replaced = True
            if daemon is not None and d.daemon is not None:
                ticks = cpu_ticks(daemon.pid)
                d.daemon.window_cpu_s = ticks[0] / CLK_TCK if ticks else 0.0
                self.stop_daemon(daemon, d.daemon, daemon_log)
                daemon = None
            detached = self.reaper.settle()
            d.detached = [dataclasses.asdict(r) for r in detached]
            d.detached_cpu_s = sum(r.cpu_s for r in detached)
            after = server.archiver()
            d.archived_delta = int(after["archived"]) - int(before["archived"])
            d.failed_delta = int(after["failed"]) - int(before["failed"])
            d.last_archived_wal = after["last_archived"]
            d.segments_per_s = len(names) / d.wall_s
            d.tool_cpu_s = d.archiver_children_cpu_s + d.detached_cpu_s
            if d.daemon is not None:
                d.tool_cpu_s += d.daemon.total_cpu_s
            set_memory(d, sampler, detached)
            problems = []
            # WAL-E renames the .ready files of the segments it took ahead to .done itself:
            # PostgreSQL never runs archive_command for them, so it counts only its own calls.
            if v.kind != "wale" and d.archived_delta != len(names):
                problems.append(f"archived_count grew by {d.archived_delta}, not {len(names)}")
            if d.failed_delta:
                problems.append(f"failed_count grew by {d.failed_delta}")
            if v.kind != "wale" and d.last_archived_wal != names[-1]:
                problems.append(f"last_archived_wal {d.last_archived_wal} != {names[-1]}")
            d.stored_objects = count_segments(target)
            d.stored_mb = dir_size(target) / MB
            if d.stored_objects < len(names):
                problems.append(f"only {d.stored_objects} objects stored")
            if d.archiver_replaced:
                problems.append("the archiver process exited during the drain")
            d.walg_after = self.walg_digest()
            if d.walg_after != d.walg_before:
                problems.append("walg was reinstalled during the drain")
            d.server_log_notes = [
                line
                for line in server.logfile.read_text(errors="replace").splitlines()
                if re.search(r"FATAL|ERROR|PANIC|terminated|archive command|archiver", line)
                and "yet archiving is not configured" not in line
            ][:30]
            d.error = "; ".join(problems)
            d.ok = not problems
        except Exception as exc:
            d.error = f"{type(exc).__name__}: {exc}"
            if server is not None:
                d.error += "\n" + server.log_tail(10)
        finally:
            if sampler is not None and sampler.is_alive():
                sampler.stop()
            if daemon is not None:
                self.stop_daemon(daemon, d.daemon or DaemonStats(), daemon_log)
            if server is not None:
                self.stop_server(server, immediate=True)
            self.reaper.settle()
            self.remove(pgdata)
            self.remove(store)
        log(
            f"(b) {v.name:<24} rep {rep}: "
            + (
                f"{d.segments} segments in {d.wall_s:.2f} s = {d.segments_per_s:.1f}/s, "
                f"tool CPU {d.tool_cpu_s:.2f} s, peak RSS {d.peak_rss_mb:.0f} MB"
                if d.ok
                else f"FAILED: {d.error}"
            )
        )

    # ---------------------------------------------------------------- (c) restore replay
    def part_c(self) -> None:
        """Archive the template's backlog (from a copy) into the three archives, then replay."""
        c = self.c_archives
        assert c is not None and self.template is not None
        t0 = time.perf_counter()
        server, pgdata = self.start_copy("c-archiver")
        try:
            pgbr = self.write_pgbr_conf(
                self.rundir / "c-archiver.conf", c.repo, pgdata, server, False, 2
            )
            server.set_conf({"archive_command": self.c_archive_command(pgbr)})
            server.reload()
            self.wait_archived(server, pgdata, self.backlog[-1], 1800)
            arch = server.archiver()
            data = server.psql("SELECT count(*), coalesce(sum(delta), 0) FROM pgbench_history")
        finally:
            self.stop_server(server, immediate=True)
            self.remove(pgdata)
        self.info["c_archives"] = {"archiver": arch, "seconds": time.perf_counter() - t0}
        log(f"(c) archived {len(self.backlog)} segments in {time.perf_counter() - t0:.0f} s")
        if data != self.expected:
            raise RuntimeError(f"the template's copy has {data}, expected {self.expected}")
        if arch["failed"] != "0":
            log(f"WARNING: the archive_command of (c) failed {arch['failed']} times")
        for rep in range(1, self.args.repeat + 1):
            for v in self.selected(REPLAY_VARIANTS):
                self.replay(v, rep, c.walg_store, c.plain, c.repo, self.expected)

    def replay(
        self, v: PushVariant, rep: int, walg_store: Path, plain: Path, repo: Path, expected: str
    ) -> None:
        tag = f"c{self._n}"
        self._n += 1
        dest = self.rundir / f"{tag}-pgdata"
        r = Replay(v.name, rep, "")
        r.walg_before = self.walg_digest()
        self.replays.append(r)
        daemon: subprocess.Popen[bytes] | None = None
        daemon_log = self.rundir / f"{tag}-daemon.log"
        sampler: ToolSampler | None = None
        server = self.new_server(dest)
        try:
            t_restore = time.perf_counter()
            if v.kind == "pgbackrest":
                extra = (
                    [f"archive-get-queue-max={self.args.archive_get_queue_max}"]
                    if v.pgbr_async
                    else []
                )
                pgbr = self.write_pgbr_conf(
                    self.rundir / f"{tag}.conf", repo, dest, None, v.pgbr_async, 2, extra
                )
                must(
                    run_plain(self.user, [*pgbr, "--type=default", "restore"], timeout=3600),
                    "pgbackrest restore",
                )
            else:
                if v.kind == "cp":
                    cmd = f"cp {plain}/%f %p"
                elif v.kind == "walg":
                    cmd = self.walg_cmd(walg_store, (), "wal-fetch %f %p")
                else:
                    cmd = f"{self.client_command(v.client)} SOCK wal-fetch %f %p"
                self.user.mkdir(dest, 0o700)
                must(
                    run_plain(
                        self.user,
                        [self.walg, "backup-fetch", str(dest), "LATEST", "--restore-command", cmd],
                        self.walg_env(walg_store),
                        timeout=3600,
                    ),
                    "walg backup-fetch",
                )
            r.base_restore_s = time.perf_counter() - t_restore
            server.set_conf(
                {
                    "port": str(server.port),
                    "unix_socket_directories": str(server.sockdir),
                    "archive_mode": "off",
                    "log_timezone": "UTC",
                    "log_line_prefix": "%m [%p] ",
                }
            )
            if v.kind == "daemon":
                daemon, sock, start_s = self.start_daemon(
                    dest, self.walg_env(walg_store), daemon_log
                )
                r.daemon = DaemonStats(start_s=start_s)
                auto = dest / "postgresql.auto.conf"
                auto.write_text(auto.read_text().replace(" SOCK ", f" {sock} "))
            auto_text = (dest / "postgresql.auto.conf").read_text()
            m = re.findall(r"^restore_command\s*=\s*'(.*)'\s*$", auto_text, re.M)
            r.restore_command = m[-1].replace("''", "'") if m else "?"
            if not (dest / "recovery.signal").exists():
                raise RuntimeError("no recovery.signal in the restored directory")
            os.sync()
            r.loadavg_before = loadavg()
            daemon_before = cpu_ticks(daemon.pid) if daemon is not None else None
            sampler = ToolSampler(self.reaper.me)
            sampler.start()
            t0 = server.start(wait=False)
            startup: int | None = None
            startup_ticks = (0, 0)
            offset = 0
            found = False
            deadline = time.monotonic() + self.args.timeout
            while not found:
                if startup is None:
                    startup = server.aux_pid("startup")
                if startup is not None:
                    ticks = cpu_ticks(startup)
                    if ticks is not None:
                        startup_ticks = ticks
                with open(server.logfile, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                end = chunk.rfind(b"\n") + 1
                for line in chunk[:end].decode(errors="replace").splitlines():
                    if line.rstrip().endswith(READY_LINE):
                        found = True
                offset += end
                if found:
                    break
                if server.proc is None or server.proc.poll() is not None:
                    raise RuntimeError("postgres exited during recovery")
                if time.monotonic() > deadline:
                    raise RuntimeError("recovery did not end in time")
                time.sleep(0.005)
            r.wall_s = time.perf_counter() - t0
            sampler.stop()
            if daemon is not None and r.daemon is not None and daemon_before is not None:
                ticks = cpu_ticks(daemon.pid)
                if ticks is not None:
                    r.daemon.window_cpu_s = (ticks[0] - daemon_before[0]) / CLK_TCK
            in_recovery = server.psql("SELECT pg_is_in_recovery()")
            r.data = server.psql("SELECT count(*), coalesce(sum(delta), 0) FROM pgbench_history")
            r.data_ok = r.data == expected
            if daemon is not None and r.daemon is not None:
                self.stop_daemon(daemon, r.daemon, daemon_log)
                daemon = None
            self.stop_server(server, immediate=True)
            detached = self.reaper.settle()
            r.detached_cpu_s = sum(x.cpu_s for x in detached)
            r.detached_count = len(detached)
            r.restore_children_cpu_s = startup_ticks[1] / CLK_TCK
            r.startup_own_cpu_s = startup_ticks[0] / CLK_TCK
            r.tool_cpu_s = r.restore_children_cpu_s + r.detached_cpu_s
            if r.daemon is not None:
                r.tool_cpu_s += r.daemon.window_cpu_s
            set_memory(r, sampler, detached)
            text = server.logfile.read_text(errors="replace")
            restored = re.findall(r'restored log file "([0-9A-F]{24})" from archive', text)
            r.segments_restored = len(set(restored))
            r.restore_calls_ok = len(restored)
            r.first_segment = restored[0] if restored else ""
            r.last_segment = restored[-1] if restored else ""
            stamps = {}
            for line in text.splitlines():
                mt = LOG_TS_RE.match(line)
                if mt and "starting PostgreSQL" in line and "start" not in stamps:
                    stamps["start"] = mt.group(1)
                if mt and line.rstrip().endswith(READY_LINE):
                    stamps["ready"] = mt.group(1)
            if len(stamps) == 2:
                fmt = "%Y-%m-%d %H:%M:%S.%f"
                r.log_s = (
                    dt.datetime.strptime(stamps["ready"], fmt)
                    - dt.datetime.strptime(stamps["start"], fmt)
                ).total_seconds()
            problems = []
            if in_recovery != "f":
                problems.append("still in recovery")
            if not r.data_ok:
                problems.append(f"pgbench_history {r.data} != source {expected}")
            r.walg_after = self.walg_digest()
            if r.walg_after != r.walg_before:
                problems.append("walg was reinstalled during the replay")
            r.error = "; ".join(problems)
            r.ok = not problems
        except Exception as exc:
            r.error = f"{type(exc).__name__}: {exc}\n{server.log_tail(15)}"
        finally:
            if sampler is not None and sampler.is_alive():
                sampler.stop()
            if daemon is not None:
                self.stop_daemon(daemon, r.daemon or DaemonStats(), daemon_log)
            self.stop_server(server, immediate=True)
            self.reaper.settle()
            self.remove(dest)
        log(
            f"(c) {v.name:<18} rep {rep}: "
            + (
                f"{r.segments_restored} segments, replay {r.wall_s:.2f} s (log {r.log_s} s), "
                f"tool CPU {r.tool_cpu_s:.2f} s, peak RSS {r.peak_rss_mb:.0f} MB"
                if r.ok
                else f"FAILED: {r.error}"
            )
        )

    # ---------------------------------------------------------------- cleanup
    def cleanup(self) -> None:
        self.runner.kill_current()
        for proc in list(self.daemons):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(Exception):
                self.runner.wait(proc, timeout=30)
        self.daemons.clear()
        for server in list(self.servers):
            with contextlib.suppress(Exception):
                server.stop()
        self.servers.clear()
        with contextlib.suppress(Exception):
            self.reaper.settle(timeout=10)


# --------------------------------------------------------------------------------------------
# Summary and report
# --------------------------------------------------------------------------------------------


def summarize(bench: Bench) -> dict[str, Any]:
    out: dict[str, Any] = {"a": {}, "b": {}, "c": {}, "targets": {}}
    records: list[Series | Drain | Replay] = [*bench.series, *bench.drains, *bench.replays]
    out["walg_digests"] = sorted(
        ({x.walg_before for x in records} | {x.walg_after for x in records}) - {""}
    )
    names: list[str] = []
    for s in bench.series:
        if s.variant not in names:
            names.append(s.variant)
    for name in names:
        series = [s for s in bench.series if s.variant == name]
        calls = [c for s in series for c in s.calls]
        ok = [c for c in calls if c.ok]
        walls = [c.wall_ms for c in ok]
        daemons = [s.daemon for s in series if s.daemon is not None]
        per_call_daemon = [
            d.window_cpu_s * 1000 / max(1, len(s.calls))
            for s in series
            if (d := s.daemon) is not None
        ]
        out["a"][name] = {
            "command": series[0].command,
            "calls": len(calls),
            "ok": len(ok),
            "median_ms": median(walls),
            "p95_ms": percentile(walls, 0.95),
            "mean_ms": statistics.fmean(walls) if walls else None,
            "min_ms": min(walls) if walls else None,
            "max_ms": max(walls) if walls else None,
            "cpu_ms": median([c.cpu_ms + c.detached_cpu_ms for c in ok]),
            "detached_cpu_ms": median([c.detached_cpu_ms for c in ok]),
            "daemon_cpu_ms_per_call": median(per_call_daemon),
            "maxrss_mb": max([c.maxrss_mb for c in ok], default=None),
            "daemon_hwm_mb": max([d.hwm_mb for d in daemons], default=None),
            "daemon_start_s": median([d.start_s for d in daemons]),
            "stored_objects": [s.stored_objects for s in series],
            "stored_mb": median([s.stored_mb for s in series if s.stored_mb is not None]),
            "errors": [s.error for s in series if s.error],
        }
    for name in dict.fromkeys(x.variant for x in bench.drains):
        drains = [x for x in bench.drains if x.variant == name]
        dok = [x for x in drains if x.ok]
        out["b"][name] = {
            "command": drains[0].command,
            "runs": len(drains),
            "ok": len(dok),
            "segments": drains[0].segments,
            "wall_s": median([x.wall_s for x in dok]),
            "segments_per_s": median([x.segments_per_s for x in dok]),
            "daemon_ready_s": median([x.daemon_ready_s for x in dok if x.daemon_ready_s]),
            "tool_cpu_s": median([x.tool_cpu_s for x in dok]),
            "peak_rss_mb": median([x.peak_rss_mb for x in dok]),
            "max_proc_mb": median([x.max_proc_mb for x in dok]),
            "stored_mb": median([x.stored_mb for x in dok if x.stored_mb is not None]),
            "errors": [x.error for x in drains if x.error],
        }
    for name in dict.fromkeys(y.variant for y in bench.replays):
        replays = [y for y in bench.replays if y.variant == name]
        rok = [y for y in replays if y.ok]
        out["c"][name] = {
            "restore_command": replays[0].restore_command,
            "runs": len(replays),
            "ok": len(rok),
            "segments_restored": median([y.segments_restored for y in rok]),
            "wall_s": median([y.wall_s for y in rok]),
            "log_s": median([y.log_s for y in rok if y.log_s is not None]),
            "ms_per_segment": median(
                [y.wall_s * 1000 / y.segments_restored for y in rok if y.segments_restored]
            ),
            "base_restore_s": median([y.base_restore_s for y in rok]),
            "tool_cpu_s": median([y.tool_cpu_s for y in rok]),
            "startup_own_cpu_s": median([y.startup_own_cpu_s for y in rok]),
            "peak_rss_mb": median([y.peak_rss_mb for y in rok]),
            "max_proc_mb": median([y.max_proc_mb for y in rok]),
            "errors": [y.error for y in replays if y.error],
        }

    def get(part: str, name: str, key: str) -> float | None:
        value = out[part].get(name, {}).get(key)
        return float(value) if value is not None else None

    t = out["targets"]
    # The target is met by the daemon as it runs by default (look-ahead and WAL follower).
    for name in ("walg daemon (defaults)", "walg daemon (defaults, native client)"):
        dm = get("a", name, "median_ms")
        if dm is not None:
            t[f"{name} call median ms (target <= 10)"] = dm
            t[f"{name} call ok"] = dm <= TARGETS["daemon_call_ms"]
    c = get("a", "walg cold (no look-ahead)", "median_ms")
    if c is not None:
        t["cold call median ms (target <= 40)"] = c
        t["cold call ok"] = c <= TARGETS["cold_call_ms"]
        p = get("a", "pgbackrest sync", "median_ms")
        if p:
            t["cold call / pgbackrest sync"] = c / p
        f = get("a", "floor: minimal Python push", "median_ms")
        if f is not None:
            t["minimal Python push median ms (the floor of a Python cold call)"] = f
            t["cold call - minimal Python push, ms (walg's own cost)"] = c - f
    for walg_name in ("walg cold (defaults)", "walg daemon", "walg daemon (native client)"):
        rate = get("b", walg_name, "segments_per_s")
        if rate is None:
            continue
        t[f"drain {walg_name} seg/s (target >= 84)"] = rate
        t[f"drain {walg_name} ok (>= 84/s)"] = rate >= TARGETS["drain_segments_per_s"]
        for pg in ("pgbackrest async pm=2", "pgbackrest async pm=4"):
            other = get("b", pg, "segments_per_s")
            if other:
                t[f"drain {walg_name} / {pg} (target >= 2)"] = rate / other
        wale = get("b", "wal-e parallel (8)", "segments_per_s")
        if wale:
            t[f"drain {walg_name} / wal-e parallel (8) (target >= 1)"] = rate / wale
    for walg_name in ("walg cold", "walg daemon", "walg daemon (native client)"):
        mine = get("c", walg_name, "wall_s")
        other = get("c", "pgbackrest async", "wall_s")
        if mine is not None and other:
            t[f"replay {walg_name} / pgbackrest async (target <= 1)"] = mine / other
    return out


def fmt(value: Any, spec: str = ".1f") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float | int):
        return format(value, spec)
    return str(value)


def print_report(summary: Mapping[str, Any], args: argparse.Namespace) -> None:
    if summary["a"]:
        print(
            f"\n== (a) one archive_command call per segment, {args.repeat} x "
            f"{args.call_segments} segments per variant =="
        )
        h = (
            f"{'variant':<46} {'ok':>7} {'median ms':>9} {'p95 ms':>7} {'CPU ms':>7} "
            f"{'+daemon':>7} {'RSS MB':>6} {'dmnHWM':>6} {'stored':>7}"
        )
        print(h)
        print("-" * len(h))
        for name, e in summary["a"].items():
            print(
                f"{name:<46} {e['ok']:>3}/{e['calls']:<3} {fmt(e['median_ms']):>9} "
                f"{fmt(e['p95_ms']):>7} {fmt(e['cpu_ms']):>7} "
                f"{fmt(e['daemon_cpu_ms_per_call']):>7} {fmt(e['maxrss_mb'], '.0f'):>6} "
                f"{fmt(e['daemon_hwm_mb'], '.0f'):>6} {fmt(e['stored_mb'], '.0f'):>7}"
            )
    if summary["b"]:
        print(f"\n== (b) backlog drain, medians of {args.repeat} ==")
        h = (
            f"{'variant':<24} {'ok':>5} {'segs':>5} {'wall s':>7} {'seg/s':>7} {'CPU s':>6} "
            f"{'RSS MB':>6} {'maxproc':>7} {'dmn start s':>11}"
        )
        print(h)
        print("-" * len(h))
        for name, e in summary["b"].items():
            print(
                f"{name:<24} {e['ok']:>2}/{e['runs']:<2} {e['segments']:>5} "
                f"{fmt(e['wall_s'], '.2f'):>7} {fmt(e['segments_per_s']):>7} "
                f"{fmt(e['tool_cpu_s'], '.2f'):>6} {fmt(e['peak_rss_mb'], '.0f'):>6} "
                f"{fmt(e['max_proc_mb'], '.0f'):>7} {fmt(e['daemon_ready_s'], '.2f'):>11}"
            )
    if summary["c"]:
        print(f"\n== (c) restore replay, medians of {args.repeat} ==")
        h = (
            f"{'variant':<18} {'ok':>5} {'segs':>5} {'replay s':>8} {'log s':>6} {'ms/seg':>6} "
            f"{'CPU s':>6} "
            f"{'RSS MB':>6} {'maxproc':>7} {'startup CPU s':>13}"
        )
        print(h)
        print("-" * len(h))
        for name, e in summary["c"].items():
            print(
                f"{name:<18} {e['ok']:>2}/{e['runs']:<2} {fmt(e['segments_restored'], '.0f'):>5} "
                f"{fmt(e['wall_s'], '.2f'):>8} {fmt(e['log_s'], '.2f'):>6} "
                f"{fmt(e['ms_per_segment']):>6} {fmt(e['tool_cpu_s'], '.2f'):>6} "
                f"{fmt(e['peak_rss_mb'], '.0f'):>6} "
                f"{fmt(e['max_proc_mb'], '.0f'):>7} {fmt(e['startup_own_cpu_s'], '.2f'):>13}"
            )
    print(
        "\n(a) median/p95: wall time per call, spawn to reap; CPU: the call's processes (wait4)"
        " incl. detached ones;\n    +daemon: the daemon's CPU per call; RSS: ru_maxrss of the "
        "largest process of a call; dmnHWM: daemon VmHWM;\n    stored: MB in the storage after "
        "the series. (b) wall: SIGHUP (daemon: its spawn) to the last .done;\n    (c) replay: "
        "postgres spawn to 'ready to accept connections', log: the same from the log's stamps;\n"
        "    CPU: the tool's processes (see the docstring); RSS: peak summed VmRSS, sampled every "
        "20 ms; maxproc: largest process."
    )
    if summary["targets"]:
        print("\n== targets ==")
        for key, value in summary["targets"].items():
            print(f"   {key:<62} {fmt(value, '.2f')}")
    if len(summary["walg_digests"]) > 1:
        print(
            "\nWARNING: the installed walg changed during the run (digests "
            f"{', '.join(summary['walg_digests'])}): results mix walg versions"
        )
    for part in PARTS:
        for name, e in summary[part].items():
            for err in e["errors"]:
                print(f"ERROR ({part}) {name}: {tail(err, 6)}")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def others_running() -> list[str]:
    """Other benchmark or test processes (not this process or its ancestors)."""
    mine = set()
    pid = os.getpid()
    while pid > 1:
        mine.add(pid)
        st = proc_stat(pid)
        if st is None:
            break
        pid = int(st[1][1])
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in mine:
            continue
        text = cmdline(int(name))
        if re.search(
            r"backup_bench\.py|wal_bench\.py|pytest|py\.test|scripts/(setup|test)\.sh|pip install",
            text,
        ):
            found.append(f"{name}: {text[:120]}")
    return found


def wait_until_quiet(minutes: float, max_load: float | None) -> dict[str, Any]:
    """Wait for no other benchmark/test process and (unless None) a low 1-minute load."""
    t0 = time.monotonic()
    last_log = 0.0
    while True:
        others = others_running()
        load1 = float(loadavg().split()[0])
        waited = time.monotonic() - t0
        if not others and (max_load is None or load1 < max_load):
            return {"quiet": True, "waited_s": waited, "loadavg": loadavg()}
        if waited >= minutes * 60:
            log(f"WARNING: not quiet after {minutes} min (load {load1}, others {others}); going on")
            return {"quiet": False, "waited_s": waited, "loadavg": loadavg(), "others": others}
        if waited - last_log >= 60 or last_log == 0.0:
            log(f"waiting for a quiet machine: load {load1}, others {others}")
            last_log = waited or 1e-9
        time.sleep(5)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark WAL archiving (per call, backlog drain) and restore replay: "
        "walg cold / walg daemon vs pgBackRest sync / async and cp, PostgreSQL 15, local "
        "storage. See the module docstring for exactly what is measured."
    )
    p.add_argument(
        "--repeat", type=int, default=3, help="repetitions of every measurement (default 3)"
    )
    p.add_argument(
        "--segments", type=int, default=64, help="WAL segments for (b) and (c) (default 64)"
    )
    p.add_argument(
        "--call-segments", type=int, default=20, help="segments (calls) per series in (a)"
    )
    p.add_argument("--only", default="a,b,c", help="parts to run, e.g. a,b (default a,b,c)")
    p.add_argument(
        "--variants",
        type=lambda s: [x for x in s.split(",") if x],
        default=[],
        help="run only variants whose name contains one of these comma-separated words",
    )
    p.add_argument("--scale", type=int, default=10, help="pgbench scale (default 10)")
    p.add_argument("--gap", type=float, default=0.05, help="pause between calls in (a), s")
    p.add_argument(
        "--write-ms", type=float, default=250, help="time to write one segment in (a), ms"
    )
    p.add_argument("--keep", action="store_true", help="keep the run directory")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/walg-wal-bench"))
    p.add_argument("--walg", type=Path, default=Path("/opt/walg/venv/bin/walg"))
    p.add_argument("--walg-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--pgbackrest", type=Path, default=Path("/usr/bin/pgbackrest"))
    p.add_argument(
        "--wale",
        type=Path,
        default=Path("/opt/wale/venv/bin/wal-e"),
        help="WAL-E for (b), from bench/setup_wale.sh (its variant is skipped when missing)",
    )
    p.add_argument("--pg-bindir", type=Path, default=default_pg_bindir())
    p.add_argument("--archive-get-queue-max", default="256MB")
    p.add_argument("--timeout", type=float, default=600, help="per call / drain / replay (s)")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=20,
        help="minutes to wait for a quiet machine before measuring (0: do not wait)",
    )
    p.add_argument("--max-load", type=float, default=0.7)
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    args = p.parse_args(argv)
    args.parts = [x for x in args.only.split(",") if x]
    if not args.parts or any(x not in PARTS for x in args.parts):
        p.error("--only takes a comma-separated subset of a,b,c")
    if args.repeat < 1 or args.segments < 3 or args.call_segments < 1:
        p.error("--repeat >= 1, --segments >= 3, --call-segments >= 1")
    args.call_segments = min(args.call_segments, args.segments)
    for kv in args.walg_env:
        if "=" not in kv:
            p.error(f"--walg-env wants KEY=VALUE, got {kv!r}")
    return args


def package_digest(root: Path, extra: Sequence[Path] = ()) -> str:
    """sha256 over the .py files of a walg tree and ``extra`` files (which walg was measured)."""
    h = hashlib.sha256()
    files = [(str(p.relative_to(root)), p) for p in sorted(root.rglob("*.py"))]
    for name, path in [*files, *((str(p), p) for p in extra)]:
        try:
            data = path.read_bytes()
        except OSError:
            data = b"(missing)"
        h.update(name.encode() + b"\0" + data)
    return h.hexdigest()[:16]


def installed_walg(walg: Path) -> Path | None:
    """The walg package directory of the venv that ``walg`` belongs to."""
    found = sorted((walg.parent.parent / "lib").glob("python3*/site-packages/walg"))
    return found[0] if found else None


def dataclass_table_bytes(root: Path | None) -> int | None:
    """The size of the installed walg's cache of compiled dataclass methods; None if absent."""
    tables = sorted((root / "__pycache__").glob("dataclass-code.*.marshal")) if root else []
    return tables[0].stat().st_size if tables else None


def environment(args: argparse.Namespace, user: PgUser) -> dict[str, Any]:
    root = installed_walg(args.walg)
    installed = package_digest(root) if root is not None else "unknown"
    checkout = package_digest(REPO_DIR / "src" / "walg")
    return {
        "command": [sys.executable, *sys.argv],
        "git_head": git_head(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": loadavg(),
        "walg_version": tool_version(user, [str(args.walg), "--version"]),
        "walg_installed_digest": installed,
        "walg_checkout_digest": checkout,
        "walg_installed_is_checkout": installed == checkout,
        # The dataclass methods setup.sh caches (walg._dataclass_code): a cold call without
        # them compiles those methods again, about 3 ms.
        "walg_dataclass_table_bytes": dataclass_table_bytes(root),
        "pgbackrest_version": tool_version(user, [str(args.pgbackrest), "version"]),
        "postgres_version": tool_version(user, [str(args.pg_bindir / "postgres"), "--version"]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_signals()
    # The servers inherit this environment; walg must only see what each variant sets.
    for key in list(os.environ):
        if key.startswith(("WALG_", "WALE_", "PG")) or key == "TOTAL_BG_UPLOADED_LIMIT":
            del os.environ[key]
    user = bench_user(args.pgbackrest)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    env_info = environment(args, user)
    log(f"{env_info['walg_version']}; {env_info['pgbackrest_version']}")
    quiet: dict[str, Any] = {"quiet": None, "skipped": True}
    if args.quiet_wait > 0:
        quiet = wait_until_quiet(args.quiet_wait, args.max_load)
    env_info["quiet"] = quiet
    env_info["loadavg_measure_start"] = loadavg()
    log(f"load average at start: {loadavg()}")
    interrupted = False
    error = ""
    bench: Bench | None = None
    with run_directory(args, user, stamp, "wal") as rundir:
        bench = Bench(args, user, rundir)
        try:
            bench.make_template()
            for part, run in (("a", bench.part_a), ("b", bench.part_b), ("c", bench.part_c)):
                if part not in args.parts:
                    continue
                if args.quiet_wait > 0:
                    # Our own set-up raised the load average: only wait for other runs here.
                    env_info[f"quiet_{part}"] = wait_until_quiet(args.quiet_wait, None)
                env_info[f"loadavg_{part}"] = loadavg()
                run()
        except KeyboardInterrupt:
            interrupted = True
            log("interrupted; cleaning up")
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log(f"ERROR: {error}")
        finally:
            bench.cleanup()
    env_info["loadavg_end"] = loadavg()
    summary = summarize(bench)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"wal-{stamp}.json"
    doc = {
        "started": stamp,
        "interrupted": interrupted,
        "error": error,
        "environment": env_info,
        "info": bench.info,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "variants": {
            part: [dataclasses.asdict(v) for v in variants]
            for part, variants in (
                ("a", CALL_VARIANTS),
                ("b", DRAIN_VARIANTS),
                ("c", REPLAY_VARIANTS),
            )
        },
        "summary": summary,
        "a_series": [dataclasses.asdict(s) for s in bench.series],
        "b_drains": [dataclasses.asdict(d) for d in bench.drains],
        "c_replays": [dataclasses.asdict(r) for r in bench.replays],
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print_report(summary, args)
    print(f"\nload average: start {env_info['loadavg_at_start']}, end {env_info['loadavg_end']}")
    if error:
        print(f"\nERROR: {error}")
    if interrupted:
        print("\nINTERRUPTED: the results above are incomplete")
    print(f"JSON: {out}")
    failed = bool(error) or any(e["errors"] for part in PARTS for e in summary[part].values())
    return 130 if interrupted else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
