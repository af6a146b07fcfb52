"""A stand-in for a data directory and file storage, with a walg daemon on them, for the
daemon tests: the environment walg and its clients are run in, and the client under test."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SEG = "000000010000000000000003"


@dataclass(frozen=True)
class Client:
    path: str
    env: dict[str, str]


class Env:
    def __init__(self, root: Path, walg_bin: str) -> None:
        self.root = root
        self.store = root / "store"
        self.store.mkdir()  # walg makes no storage folder
        self.pgdata = root / "pgdata"
        (self.pgdata / "pg_wal").mkdir(parents=True)
        self.socket = root / "d.sock"
        self.walg_bin = walg_bin
        keep = ("PATH", "HOME", "LANG", "TMPDIR")
        self.env = {k: v for k, v in os.environ.items() if k in keep}
        self.env.update(
            {
                "WALG_FILE_PREFIX": str(self.store),
                "WALG_DOWNLOAD_CONCURRENCY": "1",
                "WALG_DAEMON_FOLLOW_WAL": "false",
            }
        )
        self.daemon: subprocess.Popen[str] | None = None

    def start(self, poll: float = 0.02) -> None:
        """Start the daemon and return once its socket exists, looking every ``poll`` s."""
        self.daemon = subprocess.Popen(
            [self.walg_bin, "daemon", str(self.socket), str(self.pgdata)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            assert self.daemon.poll() is None, self.daemon.communicate()
            assert time.monotonic() < deadline, "daemon did not start"
            time.sleep(poll)

    def run_daemon(self) -> subprocess.CompletedProcess[str]:
        """Run the daemon in the foreground: for one that must refuse to start."""
        return subprocess.run(
            [self.walg_bin, "daemon", str(self.socket), str(self.pgdata)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def stop(self) -> str:
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGTERM)
        _, err = self.daemon.communicate(timeout=30)
        assert self.daemon.returncode == 0, err
        self.daemon = None
        return err

    def run(
        self,
        client: Client,
        *args: str,
        extra: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the client; ``cwd`` as PostgreSQL sets it (its data directory) for ``%p``."""
        env = dict(self.env, **client.env, **(extra or {}))
        return subprocess.run(
            [client.path, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=cwd,
        )


def client_in_venv(venv: Path, walg_bin: str) -> Path:
    """The installed Python ``walg-daemon-client`` script copied into ``venv``/bin, beside a
    link to the installed interpreter: it loads walg from ``venv``'s own site-packages, which
    the caller fills (or leaves without walg, as a broken upgrade does)."""
    bindir = venv / "bin"
    bindir.mkdir(parents=True)
    script = bindir / "walg-daemon-client"
    script.write_bytes(Path(walg_bin).with_name("walg-daemon-client").read_bytes())
    script.chmod(0o755)
    (bindir / "python3").symlink_to(Path(walg_bin).with_name("python3"))
    return script


def run_in(pgdata: Path, env: dict[str, str], argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``argv`` run as PostgreSQL runs its commands: through /bin/sh, in the data directory."""
    return subprocess.run(
        ["/bin/sh", "-c", f'"{argv[0]}" "$@"', "sh", *argv[1:]],
        env=env,
        cwd=pgdata,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
