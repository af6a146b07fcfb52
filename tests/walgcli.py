"""Running the real ``walg`` command in tests, as the user that runs PostgreSQL.

A :class:`WalgSetup` is one storage folder plus a config file naming it, so the same
configuration serves commands run by the test and ``archive_command``/``restore_command``
run by the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pgcluster import Cluster, CommandError, PgInstall, make_shared_dir, pg_user_env, run_as_pg

#: What a restored server's start waits for: see :func:`start_recovery`.
Outcome = Literal["promoted", "ready", "paused", "stopped"]


@dataclass
class WalgSetup:
    walg_bin: str
    store: Path
    config: Path
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, walg_bin: str, workdir: Path, **settings: str) -> WalgSetup:
        store = make_shared_dir(workdir / "store", 0o755)
        config = workdir / "walg.json"
        config.write_text(json.dumps({"WALG_FILE_PREFIX": str(store), **settings}))
        config.chmod(0o644)
        return cls(walg_bin, store, config)

    def command(self, *args: str) -> str:
        """A shell command line for archive_command / restore_command."""
        quoted = " ".join(args)
        return f"{self.walg_bin} --config {self.config} {quoted}"

    def env(
        self, cluster: Cluster | None = None, extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "WALG_", "WALE_"))}
        env.update(pg_user_env())
        if cluster is not None:
            env.update(cluster.conninfo_env())
        env.update(self.extra)
        if extra:
            env.update(extra)
        return env

    def run(
        self,
        args: Sequence[str],
        cluster: Cluster | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.walg_bin, "--config", str(self.config), *args]
        return run_as_pg(argv, env=self.env(cluster, env), check=check, timeout=timeout)

    def popen(
        self,
        args: Sequence[str],
        cluster: Cluster | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[str]:
        argv = [self.walg_bin, "--config", str(self.config), *args]
        return popen_as_pg(argv, self.env(cluster, env))


def archiving_primary(
    walg: WalgSetup,
    install: PgInstall,
    datadir: Path,
    *,
    daemon_socket: Path | None = None,
    archive_command: str | None = None,
    archive_timeout: str | None = None,
    wal_level: str | None = None,
    conf: Mapping[str, str] | None = None,
    initdb_args: Sequence[str] = (),
    use_template: bool = True,
    start: bool = True,
) -> Cluster:
    """A cluster of ``install`` in ``datadir`` with ``archive_mode = on``, archiving into
    ``walg``'s storage; started unless ``start`` is false (to stage files or a daemon first).

    Its archive_command is ``walg wal-push %p`` with ``walg``'s config file; with
    ``daemon_socket``, the compiled walg-daemon-client beside ``walg`` on that socket (the
    daemon is the caller's to start); or ``archive_command`` as given ("false" to hold a
    backlog of .ready files, a gated command). ``archive_timeout`` and ``wal_level`` are set
    when given, then ``conf``, in that order.
    """
    if archive_command is not None and daemon_socket is not None:
        raise ValueError("archive_command and daemon_socket exclude each other")
    if archive_command is None:
        if daemon_socket is not None:
            native = Path(walg.walg_bin).with_name("walg-daemon-client-native")
            archive_command = f"{native} {daemon_socket} wal-push %p"
        else:
            archive_command = walg.command("wal-push", "%p")
    settings = {"archive_mode": "on", "archive_command": archive_command}
    if archive_timeout is not None:
        settings["archive_timeout"] = archive_timeout
    if wal_level is not None:
        settings["wal_level"] = wal_level
    settings.update(conf or {})
    cluster = Cluster.create(
        install, datadir, initdb_args=initdb_args, conf=settings, use_template=use_template
    )
    if start:
        cluster.start()
    return cluster


def start_daemon(
    walg: WalgSetup, socket: Path, pgdata: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """``walg daemon SOCKET PGDATA`` as the server's user, once it listens."""
    proc = walg.popen(["daemon", str(socket), str(pgdata)], env=env)
    deadline = time.monotonic() + 30
    while not socket.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return proc


def stop_daemon(proc: subprocess.Popen[str]) -> str:
    """Stop a daemon of :func:`start_daemon` by SIGTERM (it must exit 0); its log."""
    run_as_pg(["kill", "-TERM", str(proc.pid)])
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return err


def popen_as_pg(argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[str]:
    kwargs: dict[str, object] = {}
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("pgtest")
        kwargs = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        list(argv),
        env=dict(env),
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def archive_now(cluster: Cluster, timeout: float = 60) -> str:
    """Switch WAL and wait until the finished segment is archived; returns its name."""
    # A record first: at a segment's first record pg_switch_wal switches nothing, and from
    # PostgreSQL 17 on returns a position inside that segment, which is never finished.
    cluster.psql("SELECT txid_current()")
    segment = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())")
    done = cluster.datadir / "pg_wal" / "archive_status" / f"{segment}.done"
    deadline = time.monotonic() + timeout
    while True:
        last = cluster.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
        # Its .done too: after a promotion an older timeline's segment (a copy the restore
        # made) may be archived after it, and that name sorts below this one.
        if (last and last >= segment) or done.exists():
            return segment
        if time.monotonic() > deadline:
            failed = cluster.psql("SELECT last_failed_wal, failed_count FROM pg_stat_archiver")
            raise TimeoutError(
                f"{segment} not archived after {timeout}s (archiver: {failed})\n"
                + cluster.log_tail()
            )
        time.sleep(0.1)


def push_on_standby(
    walg: WalgSetup,
    primary: Cluster,
    standby: Cluster,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> str:
    """backup-push on the standby, switching WAL on the primary until it is done; its stderr.

    A standby's backup waits until the primary has archived the last segment it needs; an
    idle primary only finishes that segment when told to (or by archive_timeout).
    """
    proc = walg.popen(["backup-push", str(standby.datadir)], cluster=standby, env=env)
    return finish_with_switches(proc, primary, timeout)


def finish_with_switches(
    proc: subprocess.Popen[str], primary: Cluster, timeout: float = 120
) -> str:
    """Switch WAL on ``primary`` until the standby's ``backup-push`` ``proc`` exits; it must
    exit 0. Its stderr."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        primary.psql("SELECT pg_switch_wal()")
        time.sleep(0.3)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    return stderr


def start_load(cluster: Cluster, seconds: int, clients: int = 2) -> subprocess.Popen[str]:
    """pgbench TPC-B load in the background for ``seconds``."""
    argv = [
        cluster.install.tool("pgbench"),
        "-n",
        "-T",
        str(seconds),
        "-c",
        str(clients),
        "postgres",
    ]
    return popen_as_pg(argv, cluster.env())


def restore_and_recover(
    install: PgInstall,
    workdir: Path,
    walg: WalgSetup,
    args: list[str] | None = None,
    name: str = "LATEST",
) -> Cluster:
    """backup-fetch into ``workdir/restored`` (files only, unless ``args`` say more), then
    archive recovery to the end of the WAL set up as by hand: restore_command in the
    configuration, recovery.signal made. The server is promoted when it returns."""
    dest = workdir / "restored"
    result = walg.run(["backup-fetch", str(dest), name, *(args or [])])
    assert "restored" in result.stderr
    restored = Cluster.from_existing(
        install,
        dest,
        conf={
            "restore_command": walg.command("wal-fetch", "%f", "%p"),
            "archive_mode": "off",
        },
    )
    restored.touch("recovery.signal")
    start_recovery(restored)
    return restored


def fetch_for_recovery(
    walg: WalgSetup,
    dest: Path,
    *recovery: str,
    name: str = "LATEST",
    restore_command: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``backup-fetch DEST NAME --restore-command COMMAND RECOVERY...``: a restore that
    writes recovery.signal and the recovery settings. COMMAND is ``walg wal-fetch %f %p``
    with ``walg``'s config file unless ``restore_command`` is given; ``recovery`` holds the
    other flags as given (``--target-time T``, ``--target-action pause``...)."""
    if restore_command is None:
        restore_command = walg.command("wal-fetch", "%f", "%p")
    argv = ["backup-fetch", str(dest), name, "--restore-command", restore_command, *recovery]
    return walg.run(argv, check=check)


def start_recovery(cluster: Cluster, until: Outcome = "promoted", timeout: float = 300) -> None:
    """Start a restored server and wait, ``timeout`` seconds at most for each step, until
    its recovery comes to ``until``: "promoted" (recovery ended, the server takes writes),
    "ready" (it takes connections: a hot standby, or a recovery the caller waits for),
    "paused" (replay paused at the target, ``--target-action pause``) or "stopped" (the
    server shut itself down: a FATAL in recovery, ``--target-action shutdown``)."""
    if until == "stopped":
        # pg_ctl may report a failed start: recovery can stop before the server is ready.
        with contextlib.suppress(CommandError):
            cluster.start(wait_ready=False)
        deadline = time.monotonic() + timeout
        while cluster.is_running() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not cluster.is_running(), cluster.log_tail(100)
        return
    cluster.start(wait_ready=False)
    cluster.wait_ready(timeout=timeout)
    if until == "promoted":
        cluster.wait_for_recovery_end(timeout=timeout)
    elif until == "paused":
        deadline = time.monotonic() + timeout
        while cluster.psql("SELECT pg_is_wal_replay_paused()") != "t":
            assert time.monotonic() < deadline, cluster.log_tail(60)
            time.sleep(0.2)


def restore_to_target(
    install: PgInstall,
    walg: WalgSetup,
    dest: Path,
    *recovery: str,
    name: str = "LATEST",
    restore_command: str | None = None,
    conf: Mapping[str, str] | None = None,
    until: Outcome | None = "promoted",
    timeout: float = 300,
) -> Cluster:
    """:func:`fetch_for_recovery` into ``dest`` (no target flags: recovery to the end of
    the archive), the restored folder adopted as a :class:`Cluster` with ``archive_mode =
    off`` then ``conf`` (which may set it again) in postgresql.auto.conf, and started as
    :func:`start_recovery` starts it until ``until``; not started when that is None."""
    fetch_for_recovery(walg, dest, *recovery, name=name, restore_command=restore_command)
    restored = Cluster.from_existing(install, dest, conf={"archive_mode": "off", **(conf or {})})
    if until is not None:
        start_recovery(restored, until, timeout)
    return restored


def normalized_dump(text: str) -> str:
    """pg_dumpall output without the per-run random ``\\restrict`` keys of recent releases."""
    return "\n".join(
        line for line in text.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))
    )


def prefetched_after_fetch(
    walg: WalgSetup, workdir: Path, name: str, wanted: Sequence[str], settle: float = 0.0
) -> list[str]:
    """``walg wal-fetch NAME`` into a fresh pg_wal under ``workdir``, three downloads at once;
    waits (30 s at most) until each of ``wanted`` is prefetched, then ``settle`` seconds for
    anything else to arrive, and returns the names prefetched."""
    pg_wal = make_shared_dir(workdir / "prefetching" / "pg_wal", 0o700)
    walg.run(
        ["wal-fetch", name, str(pg_wal / "RECOVERYXLOG")], env={"WALG_DOWNLOAD_CONCURRENCY": "3"}
    )
    folders = pg_wal / ".wal-g" / "prefetch"
    deadline = time.monotonic() + 30
    while not all(any(folders.glob(f"*/{segment}")) for segment in wanted):
        assert time.monotonic() < deadline, sorted(p.name for p in folders.rglob("*"))
        time.sleep(0.05)
    time.sleep(settle)
    return sorted(p.name for p in folders.glob("*/0*"))
