#!/usr/bin/env python3
"""Peak memory of walg's WAL commands against the WAL segment size, beside pgBackRest and cp.

For each segment size (``initdb --wal-segsize``, default 16 and 1024 MB) it makes a fresh
PostgreSQL 15 cluster (as ``pgtest``, a free port, never 5432) archiving through
``walg-daemon-client SOCK wal-push %p`` to a resident ``walg daemon SOCK PGDATA`` (defaults: the
WAL follower reads each segment while PostgreSQL writes it), writes a little more than three
segments of WAL (``pg_logical_emit_message`` of 1 MB md5 text, so whole segments are real
WAL), switches and waits until the archiver is done. Then, on a copy of the second (full)
segment, it measures:

* ``walg daemon``: the daemon's peak over the whole archiving (its follower and its pushes);
* ``walg wal-push`` cold, of the copy, to a fresh local folder (lz4, the defaults);
* ``walg wal-fetch`` of the first segment from the daemon's archive, with
  ``WALG_DOWNLOAD_CONCURRENCY=1`` (no prefetch) and with the default prefetch (its detached
  ``walg wal-prefetch`` downloads the next segments: its own peak is reported separately);
* ``pgbackrest archive-push`` (sync, lz4, posix repository) of the copy and ``archive-get`` of it;
* ``cp`` of the copy.

Memory, not time: each process is sampled every few milliseconds from ``/proc/PID/status``
(peak ``RssAnon`` and ``RssFile``: anonymous memory, and file pages mapped such as a mapped
segment), and its exact peak RSS is ``VmHWM`` (the daemon) or ``ru_maxrss`` from ``wait4``.
A short-lived process may peak between two samples: the anon/file split is then a lower
bound, the total is exact. Run as root from the checkout:
``/opt/walg/venv/bin/python bench/wal_memory.py 16 1024``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pgcluster import Cluster, PgInstall, free_port, make_shared_dir, pg_user_env, run_as_pg

MB = 1 << 20
PG_USER = "pgtest"


@dataclass
class Peak:
    """What the sampler saw of one process (bytes)."""

    total: int = 0  # VmHWM / ru_maxrss: exact
    anon: int = 0  # sampled
    file: int = 0  # sampled
    pids: set[int] = field(default_factory=set)

    def row(self, what: str) -> str:
        return f"{what:<44} {self.total / MB:>9.1f} {self.anon / MB:>9.1f} {self.file / MB:>9.1f}"


def _status(pid: int) -> dict[str, int] | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            text = handle.read().decode()
    except OSError:
        return None
    got = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile", "RssShmem"):
            got[key] = int(value.split()[0]) * 1024
    return got


class Sampler:
    """Samples given processes, and any new process whose command line holds ``marker``
    (detached children such as ``walg wal-prefetch``), every ``interval`` seconds."""

    def __init__(self, marker: str, interval: float = 0.003) -> None:
        self.marker = marker
        self.interval = interval
        self.peaks: dict[int, Peak] = {}
        self.names: dict[int, str] = {}
        self._seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._last_scan = 0.0

    def watch(self, pid: int, name: str) -> None:
        self.peaks.setdefault(pid, Peak(pids={pid}))
        self.names[pid] = name

    def start(self) -> Sampler:
        self._seen = {int(p) for p in os.listdir("/proc") if p.isdigit()}
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _scan(self) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in self._seen:
                continue
            pid = int(entry)
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    words = handle.read().split(b"\0")
            except OSError:
                continue
            if words == [b""]:  # between fork and exec: looked at again at the next scan
                continue
            self._seen.add(pid)
            line = b" ".join(words).decode(errors="replace")
            if self.marker in line and pid not in self.peaks:
                self.watch(pid, " ".join(w.decode(errors="replace") for w in words[1:3]))

    def sample_once(self) -> None:
        for pid, peak in list(self.peaks.items()):
            got = _status(pid)
            if not got:
                continue
            peak.total = max(peak.total, got.get("VmHWM", 0))
            peak.anon = max(peak.anon, got.get("RssAnon", 0))
            peak.file = max(peak.file, got.get("RssFile", 0) + got.get("RssShmem", 0))

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            if now - self._last_scan > 0.02:
                self._scan()
                self._last_scan = now
            self.sample_once()
            time.sleep(self.interval)

    def alive(self) -> list[int]:
        return [pid for pid in self.peaks if os.path.exists(f"/proc/{pid}")]


def _pg_ids() -> tuple[int, int]:
    import pwd

    pw = pwd.getpwnam(PG_USER)
    return pw.pw_uid, pw.pw_gid


def spawn_as_pg(argv: list[str], env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
    uid, gid = _pg_ids()
    with open(out, "ab") as handle:
        return subprocess.Popen(
            argv,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd="/",
            user=uid,
            group=gid,
            extra_groups=[],
        )


def measured(argv: list[str], env: dict[str, str], log: Path, marker: str) -> list[Peak]:
    """Run ``argv`` as pgtest; its peak, then those of detached children it left (waited for).

    Under ``/usr/bin/time``: its ``%M`` is the command's own peak RSS, where ``wait4``'s
    ``ru_maxrss`` of a child forked from this Python process would count the fork's copy.
    """
    sampler = Sampler(marker).start()
    peak_file = log.with_name(f"peak-{time.monotonic_ns()}")
    proc = spawn_as_pg(["/usr/bin/time", "-f", "%M", "-o", str(peak_file), *argv], env, log)
    child = None
    while proc.poll() is None:
        if child is None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as handle:
                    child = int(handle.read().split()[0])
                sampler.watch(child, argv[0])
        time.sleep(0.001)
    if proc.returncode != 0:
        sampler.stop()
        raise SystemExit(f"{argv} failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    main = sampler.peaks.get(child, Peak()) if child is not None else Peak()
    main.total = int(peak_file.read_text().split()[-1]) * 1024
    time.sleep(0.2)  # a detached child started just before the exit: let a scan find it
    deadline = time.monotonic() + 900
    mine = (child, proc.pid)  # /usr/bin/time's own command line holds the marker too
    while [p for p in sampler.alive() if p not in mine] and time.monotonic() < deadline:
        time.sleep(0.05)
    sampler.stop()
    return [main] + [peak for pid, peak in sampler.peaks.items() if pid not in mine]


def _merge(peaks: list[Peak]) -> Peak:
    merged = Peak()
    for peak in peaks:
        merged.total = max(merged.total, peak.total)
        merged.anon = max(merged.anon, peak.anon)
        merged.file = max(merged.file, peak.file)
        merged.pids |= peak.pids
    return merged


def _segment_name(segno: int, size: int) -> str:
    per_id = 0x100000000 // size
    return f"00000001{segno // per_id:08X}{segno % per_id:08X}"


def _pgbackrest_conf(work: Path, cluster: Cluster) -> list[str]:
    base = make_shared_dir(work / "pgbr", 0o755)
    for sub in ("repo", "log", "lock", "spool"):
        make_shared_dir(base / sub, 0o755)
    conf = base / "pgbackrest.conf"
    conf.write_text(
        "\n".join(
            [
                "[global]",
                f"repo1-path={base / 'repo'}",
                "compress-type=lz4",
                "archive-async=n",
                f"spool-path={base / 'spool'}",
                f"log-path={base / 'log'}",
                f"lock-path={base / 'lock'}",
                "log-level-console=warn",
                "",
                "[bench]",
                f"pg1-path={cluster.datadir}",
                f"pg1-port={cluster.port}",
                f"pg1-socket-path={cluster.socket_dir}",
                f"pg1-user={PG_USER}",
                "",
            ]
        )
    )
    conf.chmod(0o644)
    pgbackrest = shutil.which("pgbackrest") or "/usr/bin/pgbackrest"
    return [pgbackrest, f"--config={conf}", "--stanza=bench"]


def _write_wal(cluster: Cluster, megabytes: int) -> None:
    # 1 MB of md5 text per message: real WAL records, compressible about as table data.
    sql = (
        f"DO $$ BEGIN FOR i IN 1..{megabytes} LOOP PERFORM pg_logical_emit_message(false, "
        "'bench', (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 32768))); "
        "END LOOP; END $$;"
    )
    cluster.psql(sql, timeout=3600)


def _wait_archived(cluster: Cluster, count: int, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cluster.query("SELECT archived_count, failed_count FROM pg_stat_archiver")[0]
        if int(got[0]) >= count:
            return
        time.sleep(0.2)
    raise SystemExit(f"archiving did not reach {count} segments: {got}\n{cluster.log_tail()}")


def _wait_socket(sock: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"walg daemon exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(sock))
            s.sendall(b"C\x00\x03")
            if s.recv(1) == b"O":
                return
        time.sleep(0.01)
    raise SystemExit("walg daemon did not answer")


def measure(size_mb: int, walg: str, work: Path) -> dict[str, Peak]:
    size = size_mb * MB
    bindir = str(Path(walg).parent)
    install = PgInstall.load(15)
    cluster = Cluster.create(
        install,
        work / "data",
        port=free_port(),
        initdb_args=(f"--wal-segsize={size_mb}",),
        conf={
            "archive_mode": "on",
            "max_wal_size": f"{max(1024, 8 * size_mb)}MB",
            "wal_keep_size": f"{6 * size_mb}MB",
            "checkpoint_timeout": "1h",
        },
    )
    daemon_store = make_shared_dir(work / "daemon-store", 0o755)
    sock = make_shared_dir(Path(tempfile.mkdtemp(prefix="wm-")), 0o755) / "walg.sock"
    base_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PG", "WALG", "WALE"))},
        **pg_user_env(),
        **cluster.conninfo_env(),
    }
    client = f"{bindir}/walg-daemon-client"
    cluster.set_conf(
        {"archive_command": f"WALG_FILE_PREFIX={daemon_store} {client} {sock} wal-push %p"}
    )
    results: dict[str, Peak] = {}
    segment = work / "copy" / "pg_wal"
    cluster.start()
    daemon = None
    try:
        daemon_env = {**base_env, "WALG_FILE_PREFIX": str(daemon_store)}
        daemon = spawn_as_pg(
            [walg, "daemon", str(sock), str(cluster.datadir)], daemon_env, work / "daemon.log"
        )
        sampler = Sampler(marker="\0never\0").start()
        sampler.watch(daemon.pid, "daemon")
        _wait_socket(sock, daemon)
        now = cluster.query("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
        first = int(now[8:16], 16) * (0x100000000 // size) + int(now[16:24], 16)
        _write_wal(cluster, 3 * size_mb + size_mb // 4)
        cluster.psql("SELECT pg_switch_wal()")
        _wait_archived(cluster, 4)
        sampler.stop()
        sampler.sample_once()
        results["walg daemon (follower on, archive_command)"] = sampler.peaks[daemon.pid]
        full = _segment_name(first + 1, size)
        make_shared_dir(segment.parent, 0o755)
        make_shared_dir(segment, 0o755)
        run_as_pg(["cp", str(cluster.datadir / "pg_wal" / full), str(segment / full)])
        assert (segment / full).stat().st_size == size
        pgbr = _pgbackrest_conf(work, cluster)
        run_as_pg([*pgbr, "stanza-create"], env=base_env, timeout=300)
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
        cluster.stop()
        shutil.rmtree(sock.parent, ignore_errors=True)
    env = {**base_env, "WALG_FILE_PREFIX": str(make_shared_dir(work / "cold-store", 0o755))}
    log = work / "runs.log"
    results["walg wal-push (cold)"] = _merge(
        measured([walg, "wal-push", str(segment / full)], env, log, str(segment))
    )
    fetch_env = {**base_env, "WALG_FILE_PREFIX": str(daemon_store)}
    first_name = _segment_name(first, size)
    for label, extra in (("no prefetch", {"WALG_DOWNLOAD_CONCURRENCY": "1"}), ("prefetch", {})):
        restore = make_shared_dir(work / f"restore-{len(extra)}" / "pg_wal", 0o755)
        got = measured(
            [walg, "wal-fetch", first_name, str(restore / "RECOVERYXLOG")],
            {**fetch_env, **extra},
            log,
            str(restore.parent),
        )
        results[f"walg wal-fetch ({label})"] = got[0]
        if len(got) > 1:
            results["  its detached walg wal-prefetch"] = _merge(got[1:])
    results["pgbackrest archive-push"] = _merge(
        measured([*pgbr, "archive-push", str(segment / full)], base_env, log, "\0never\0")
    )
    got_dir = make_shared_dir(work / "pgbr-get", 0o755)
    results["pgbackrest archive-get"] = _merge(
        measured(
            [*pgbr, "archive-get", full, str(got_dir / "RECOVERYXLOG")], base_env, log, "\0never\0"
        )
    )
    cp_dir = make_shared_dir(work / "cp", 0o755)
    results["cp"] = _merge(
        measured(["cp", str(segment / full), str(cp_dir)], base_env, log, "\0never\0")
    )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[16, 1024], help="segment MB")
    parser.add_argument("--walg", default=str(Path(sys.executable).with_name("walg")))
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    everything: dict[str, dict[str, list[float]]] = {}
    for size_mb in args.sizes:
        work = Path(tempfile.mkdtemp(prefix="walg-walmem-"))
        os.chmod(work, 0o777)  # the cluster and walg run as pgtest
        try:
            got = measure(size_mb, args.walg, work)
        finally:
            with contextlib.suppress(Exception):
                run_as_pg(["rm", "-rf", str(work)], timeout=600)
            shutil.rmtree(work, ignore_errors=True)
        print(f"\n{size_mb} MB segments: peak RSS MB (total exact; anon, file sampled)")
        print(f"{'':<44} {'total':>9} {'anon':>9} {'file':>9}")
        for what, peak in got.items():
            print(peak.row(what), flush=True)
        everything[str(size_mb)] = {
            what: [p.total / MB, p.anon / MB, p.file / MB] for what, p in got.items()
        }
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
