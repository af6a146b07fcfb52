"""What a walg process killed outright (SIGKILL at a chosen system call, as the OOM killer or
an immediate shutdown would end it) leaves behind, and that later calls clean it up rather
than let it pile up: temporary objects in ``wal_005/``, temporary files beside a
``wal-fetch``'s DEST in pg_wal, and the look-ahead's files in ``walg_archive_status/``.

The kill is strace's fault injection (``--inject=SYSCALL:signal=KILL:when=N``) on the real
``walg``; the time that must pass before a leftover counts as abandoned is staged by ageing
the leftover (its modification time, and the time stamp in its name where it has one).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import lz4.frame
import pytest

from fakewal import SEGMENT_SIZE, detached_walg, run_walg, segment_bytes
from walg.core.lsn import Segment

SEG = SEGMENT_SIZE
STATUS = Path("walg_data") / "walg_archive_status"


def _segment(name: str) -> bytes:
    """A whole segment ``name`` as PostgreSQL writes it, half of it incompressible."""
    return segment_bytes(name, 7, fill=os.urandom(256 << 10) + bytes(256 << 10))


def _strace() -> str:
    found = shutil.which("strace")
    if found is None:
        pytest.skip("strace is not installed (scripts/setup.sh installs it)")
    return found


def _killed_at(
    syscall: str, n: int, command: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` and kill it (SIGKILL) at its ``n``-th ``syscall``."""
    inject = f"--inject={syscall}:signal=KILL:when={n}"
    done = run_walg([_strace(), "-f", "-qq", "-o", "/dev/null", inject, *command], env, cwd, 120)
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr)
    return done


def _age(path: Path, seconds: float) -> Path:
    """``path`` as it is ``seconds`` later: its modification time, and the time stamp of a
    storage temporary's name (``.tmp.<YYYYMMDDThhmmssZ>-<hex>``), that far in the past."""
    when = time.time() - seconds
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
    aged = path.with_name(re.sub(r"\.tmp\.\d{8}T\d{6}Z-", f".tmp.{stamp}-", path.name))
    if aged != path:
        path.rename(aged)
    os.utime(aged, (when, when))
    return aged


class Cluster:
    """A stand-in data directory (pg_wal with segments and their ``.ready`` files) and a
    storage folder, driven as PostgreSQL drives walg."""

    def __init__(self, root: Path, walg_bin: str) -> None:
        self.root = root
        self.pgdata = root / "pgdata"
        self.wal = self.pgdata / "pg_wal"
        (self.wal / "archive_status").mkdir(parents=True)
        (self.pgdata / "PG_VERSION").write_text("15\n")
        self.store = root / "store"
        self.store.mkdir()
        self.walg_bin = walg_bin
        self.log = root / "walg.log"
        keep = ("PATH", "HOME", "LANG", "TMPDIR")
        self.env = {k: v for k, v in os.environ.items() if k in keep}
        self.env["WALG_FILE_PREFIX"] = str(self.store)
        self.data: dict[str, bytes] = {}

    def add(self, *segnos: int) -> list[str]:
        names = []
        for segno in segnos:
            name = Segment(1, segno).name()
            self.data[name] = _segment(name)
            (self.wal / name).write_bytes(self.data[name])
            (self.wal / "archive_status" / f"{name}.ready").touch()
            names.append(name)
        return names

    def walg(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        with self.log.open("a") as err:
            return subprocess.run(
                [self.walg_bin, *args],
                env={**self.env, **extra},
                cwd=self.pgdata,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                timeout=120,
                check=False,
            )

    def archive(self, name: str, **extra: str) -> None:
        """PostgreSQL's archiver: the call must succeed, then the file is done."""
        done = self.walg("wal-push", f"pg_wal/{name}", **extra)
        assert done.returncode == 0, self.log.read_text()
        ready = self.wal / "archive_status" / f"{name}.ready"
        ready.rename(ready.with_suffix(".done"))

    def stored(self, name: str) -> bytes:
        return lz4.frame.decompress((self.store / "wal_005" / f"{name}.lz4").read_bytes())

    def temporaries(self) -> list[Path]:
        return sorted((self.store / "wal_005").glob("*.tmp.*"))

    def status_leftovers(self) -> list[str]:
        """What is in walg's status folder besides the uploader's lock and sweep stamp."""
        status = self.wal / STATUS
        keep = {".uploader.lock", ".swept"}
        return sorted(p.name for p in status.iterdir() if p.name not in keep)

    def detached(self) -> list[str]:
        """The pids of walg processes detached for this data directory (an uploader, a
        prefetcher) still running."""
        return detached_walg(self.wal)

    def wait_for_detached(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.detached():
            assert time.monotonic() < deadline, "a detached walg process did not finish"
            time.sleep(0.05)


@pytest.mark.parametrize("case", ["no backlog", "look-ahead off"])
def test_a_wal_push_killed_mid_upload_leaves_no_temporary_object_for_good(
    tmp_path: Path, walg_bin: str, case: str
) -> None:
    """A ``wal-push`` killed after writing its object's temporary file, before committing it
    (here at its ``link``), leaves up to a segment in ``wal_005/`` that no listing shows. Only
    the detached look-ahead uploader swept those (once they are an hour old), and it starts
    only for a backlog with look-ahead on: on a server whose archiving keeps up (one ``.ready``
    file at a time), or with ``WALG_UPLOAD_CONCURRENCY=1``, every such kill (an immediate
    shutdown, the OOM killer) added one for good. The retried call archives the segment, and
    a call an hour later removes the leftover."""
    cluster = Cluster(tmp_path, walg_bin)
    extra = {"WALG_UPLOAD_CONCURRENCY": "1"} if case == "look-ahead off" else {}
    (name,) = cluster.add(0x10)
    if case == "look-ahead off":
        cluster.add(0x11, 0x12)  # a backlog, which look-ahead would take
    command = [walg_bin, "wal-push", f"pg_wal/{name}"]
    _killed_at("link", 1, command, {**cluster.env, **extra}, cluster.pgdata)
    (left,) = cluster.temporaries()
    assert os.path.getsize(left) > 0
    cluster.archive(name, **extra)  # PostgreSQL's retry
    cluster.wait_for_detached()
    assert cluster.stored(name) == cluster.data[name]

    # An hour and more later, the next call: what the killed call left is gone.
    (left,) = cluster.temporaries()
    _age(left, 2 * 3600)
    swept = cluster.wal / STATUS / ".swept"
    if swept.exists():
        _age(swept, 2 * 3600)
    (following,) = cluster.add(0x20)
    cluster.archive(following, **extra)
    cluster.wait_for_detached()
    assert cluster.temporaries() == [], cluster.log.read_text()
    assert cluster.stored(following) == cluster.data[following]


def _fetch_leftovers(cluster: Cluster) -> list[Path]:
    return sorted(cluster.wal.glob(".RECOVERYXLOG.walg-*"))


def _archived(cluster: Cluster, *segnos: int) -> list[str]:
    """Segments archived, then gone from pg_wal: a restore's archive."""
    names = cluster.add(*segnos)
    for name in names:
        cluster.archive(name)
        (cluster.wal / name).unlink()
    cluster.wait_for_detached()
    return names


def _wait_gone(paths: list[Path], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while any(p.exists() for p in paths) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize("concurrency", ["1", "4"])
def test_a_wal_fetch_killed_before_its_rename_leaves_no_segment_in_pg_wal_for_good(
    tmp_path: Path, walg_bin: str, concurrency: str
) -> None:
    """A ``wal-fetch`` killed with the whole segment downloaded beside DEST (here at the
    rename that puts it in place) leaves a 16 MB hidden file in pg_wal. Only the prefetcher
    removed those, once untouched for ten minutes: with ``WALG_DOWNLOAD_CONCURRENCY=1`` (no
    prefetch) every such kill left one for good, filling the WAL volume over repeated
    immediate shutdowns of a restore."""
    cluster = Cluster(tmp_path, walg_bin)
    first, second = _archived(cluster, 0x30, 0x31)
    env = {**cluster.env, "WALG_DOWNLOAD_CONCURRENCY": concurrency}
    dest = "pg_wal/RECOVERYXLOG"
    _killed_at("rename", 1, [walg_bin, "wal-fetch", first, dest], env, cluster.pgdata)
    (left,) = _fetch_leftovers(cluster)
    assert left.stat().st_size == SEG
    _age(left, 11 * 60)
    for name in (first, second):
        done = cluster.walg("wal-fetch", name, dest, WALG_DOWNLOAD_CONCURRENCY=concurrency)
        assert done.returncode == 0, cluster.log.read_text()
        assert (cluster.pgdata / dest).read_bytes() == cluster.data[name]
        (cluster.pgdata / dest).unlink()
    cluster.wait_for_detached()
    _wait_gone([left])
    assert _fetch_leftovers(cluster) == []


@pytest.mark.parametrize("concurrency", ["1", "4"])
def test_a_daemon_killed_mid_fetch_leaves_no_segment_in_pg_wal_for_good(
    tmp_path: Path, walg_bin: str, concurrency: str
) -> None:
    """``walg daemon`` killed with a fetch's segment downloaded beside DEST (at its rename):
    the client runs ``walg wal-fetch`` itself and recovery goes on, and the daemon is started
    again (a service manager's ``Restart=``). The 16 MB hidden file the killed daemon left in
    pg_wal was never removed: the daemon's fetches and prefetches never swept, and a direct
    call's prefetcher only sweeps files untouched for ten minutes (this one was new then)."""
    cluster = Cluster(tmp_path, walg_bin)
    first, second, third = _archived(cluster, 0x40, 0x41, 0x42)
    shutil.rmtree(cluster.wal / "archive_status")  # a restore's pg_wal
    (cluster.wal / "archive_status").mkdir()
    env = {
        **cluster.env,
        "WALG_DOWNLOAD_CONCURRENCY": concurrency,
        "WALG_DAEMON_FOLLOW_WAL": "false",
    }
    sock = tmp_path / "d.sock"
    client = str(Path(walg_bin).with_name("walg-daemon-client"))
    dest = cluster.wal / "RECOVERYXLOG"

    def start(*prefix: str) -> subprocess.Popen[str]:
        with cluster.log.open("a") as err:
            daemon = subprocess.Popen(
                [*prefix, walg_bin, "daemon", str(sock), str(cluster.pgdata)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                text=True,
            )
        # A killed daemon's socket is still there: wait until this one answers on it.
        deadline = time.monotonic() + 30
        while True:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(sock))
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    pass
            assert daemon.poll() is None, cluster.log.read_text()
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.02)
        return daemon

    def fetch(name: str) -> None:
        argv = [client, str(sock), "wal-fetch", name, "pg_wal/RECOVERYXLOG"]
        done = run_walg(argv, env, cluster.pgdata, 120)
        assert done.returncode == 0, (done.stderr, cluster.log.read_text())
        assert dest.read_bytes() == cluster.data[name]
        dest.unlink()

    inject = "--inject=rename:signal=KILL:when=1"
    daemon = start(_strace(), "-f", "-qq", "-o", "/dev/null", inject)
    fetch(first)  # the daemon dies at its rename; the client fetches it itself
    assert daemon.wait(timeout=30) == -signal.SIGKILL
    cluster.wait_for_detached()
    (left,) = _fetch_leftovers(cluster)
    assert left.stat().st_size == SEG
    _age(left, 11 * 60)
    daemon = start()
    try:
        fetch(second)
        fetch(third)
        _wait_gone([left])
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
    assert _fetch_leftovers(cluster) == [], cluster.log.read_text()


@pytest.mark.parametrize(
    ("syscall", "n", "leftover"),
    [("rename", 1, "the marker's temporary file"), ("unlink", 2, "the per-file lock")],
)
def test_a_look_ahead_uploader_killed_leaves_nothing_for_good_in_the_status_folder(
    tmp_path: Path, walg_bin: str, syscall: str, n: int, leftover: str
) -> None:
    """The detached uploader killed just after archiving a segment: before its marker was
    renamed into place (its temporary file left), or before it let go of the segment's lock
    (the lock file left, and the marker written, which PostgreSQL's call takes in the
    launcher without looking at locks). Nothing removed either, once PostgreSQL had finished
    with the segment: one file per kill in pg_wal's ``walg_archive_status/`` for good. The
    next uploader removes them."""
    cluster = Cluster(tmp_path, walg_bin)
    cluster.env["WALG_UPLOAD_CONCURRENCY"] = "2"  # one upload at a time
    own, ahead = cluster.add(0x50, 0x51)
    command = [walg_bin, "wal-push-ahead", str(cluster.wal), "--exclude", own]
    _killed_at(syscall, n, command, cluster.env, cluster.pgdata)
    assert cluster.stored(ahead) == cluster.data[ahead]
    assert cluster.status_leftovers() != [], leftover
    for path in (cluster.wal / STATUS).glob(".*.new"):
        _age(path, 120)  # a marker is written in an instant: this one was abandoned
    for name in (own, ahead):
        cluster.archive(name)
    cluster.wait_for_detached()

    # A later backlog: its uploader clears what PostgreSQL has finished with.
    later = cluster.add(0x52, 0x53)
    for name in later:
        cluster.archive(name)
    cluster.wait_for_detached()
    for name in (own, ahead, *later):
        assert cluster.stored(name) == cluster.data[name]
    assert cluster.status_leftovers() == [], leftover


def test_a_fifo_as_the_sweep_stamp_hangs_no_wal_push(tmp_path: Path, walg_bin: str) -> None:
    """A wal-push with no backlog stamps ``.swept`` before sweeping storage's abandoned
    temporaries, at most once an hour. A FIFO under that name (anything PostgreSQL's user
    made) held the call in open() for good: archive_command hung, with nothing in any log.
    It is replaced by the stamp now, and the call archives its file."""
    cluster = Cluster(tmp_path, walg_bin)
    status = cluster.wal / STATUS
    status.mkdir(parents=True, exist_ok=True)
    stamp = status / ".swept"
    os.mkfifo(stamp)
    _age(stamp, 2 * 3600)  # due: the sweep opens it
    (name,) = cluster.add(0x10)
    try:
        cluster.archive(name)
        assert cluster.stored(name) == cluster.data[name]
        assert stamp.is_file()
    finally:
        # A call stuck opening the FIFO (killed at its timeout) is let go first.
        with contextlib.suppress(OSError):
            os.close(os.open(stamp, os.O_RDONLY | os.O_NONBLOCK))
