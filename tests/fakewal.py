"""What tests without a server give the real ``walg``: WAL segment files as PostgreSQL writes
them, and the calls that run walg on them as the test's own user.

Calls made as the server's user, with a config file, are :mod:`walgcli`'s.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from walg.core.lsn import Segment

SEGMENT_SIZE = 16 << 20


def segment_bytes(name: str, sysid: int, size: int = SEGMENT_SIZE, fill: bytes = b"\0") -> bytes:
    """Segment ``name`` of the cluster ``sysid``: a valid long page header (what walg checks
    before handing a file to PostgreSQL), then ``fill`` repeated to ``size`` bytes."""
    segno = Segment.parse(name, size).segno
    header = (0xD110).to_bytes(2, "little") + (2).to_bytes(2, "little") + (1).to_bytes(4, "little")
    header += (segno * size).to_bytes(8, "little") + bytes(8)
    header += (
        sysid.to_bytes(8, "little") + size.to_bytes(4, "little") + (8192).to_bytes(4, "little")
    )
    rest = size - len(header)
    return header + (fill * (rest // len(fill) + 1))[:rest]


def walg_env(store: Path, home: Path, **extra: str) -> dict[str, str]:
    """The environment of a walg call the test makes itself: its PATH, a home of its own (no
    ``~/.walg.json`` of the machine's), the storage folder, and ``extra``."""
    return {"PATH": os.environ["PATH"], "HOME": str(home), "WALG_FILE_PREFIX": str(store), **extra}


def run_walg(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (walg, a client, or a wrapper that execs one), its output captured; a
    failure is returned, not raised."""
    return subprocess.run(
        list(argv),
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def in_mount_namespace(script: str, *args: str) -> list[str]:
    """The command prefix that runs ``sh -c script args...`` in a private mount namespace
    (root only): the script mounts what the test needs, then execs the command after it."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, *args]


@contextlib.contextmanager
def small_tmpfs(path: Path, options: str) -> Iterator[None]:
    """A tmpfs mounted on ``path`` with ``options`` (``size=4m,mode=0700``...) for the block: a
    full volume. The test is skipped where it cannot be mounted (not root, no permission)."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small file system")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "walg-test-full", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def detached_walg(
    wal_dir: Path, commands: Iterable[str] = ("wal-push-ahead", "wal-prefetch")
) -> list[str]:
    """The pids of walg processes detached for ``wal_dir`` and still running: an uploader
    (``walg wal-push-ahead``), a prefetcher (``walg wal-prefetch``)."""
    wanted = {command.encode() for command in commands}
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted & set(argv) and any(arg.startswith(bytes(wal_dir)) for arg in argv):
            found.append(proc.name)
    return found
