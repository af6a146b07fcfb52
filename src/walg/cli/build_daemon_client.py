"""``walg build-daemon-client``: compile the C client of ``walg daemon`` (walg/daemon_client.c).

The Python client costs PostgreSQL an interpreter start-up per call; the compiled one a few
hundred microseconds. Both speak the same protocol with the same exit codes, so either can be
named in archive_command / restore_command.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from importlib import resources

from walg.cli.context import Context
from walg.core.durable import fsync_path
from walg.errors import WalgError

DEFAULT_NAME = "walg-daemon-client-native"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "build-daemon-client",
        help="compile the native walg-daemon-client (needs a C compiler)",
        description="Compile the C client of walg daemon for archive_command / restore_command. "
        f"OUTPUT defaults to {DEFAULT_NAME} beside the walg executable.",
    )
    p.add_argument("output", nargs="?", metavar="OUTPUT")
    p.add_argument("--cc", default="cc", help="C compiler (default cc)")
    p.add_argument(
        "--dynamic",
        action="store_true",
        help="link against the shared C library (default: statically where the compiler can)",
    )
    p.add_argument(
        "--walg",
        metavar="PATH",
        help="walg executable the client runs for wal-fetch when no daemon is listening "
        "(default: this walg)",
    )
    p.set_defaults(run=run)


def _c_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _this_walg() -> str:
    return os.path.abspath(os.path.join(os.path.dirname(sys.argv[0]), "walg"))


def _compile(cc: str, command: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WalgError(f"cannot run the C compiler {cc!r}: {exc}") from exc


def run(args: argparse.Namespace, ctx: Context) -> int:
    walg = os.path.abspath(args.walg) if args.walg else _this_walg()
    if not os.access(walg, os.X_OK):
        raise WalgError(f"{walg} is not an executable walg; name it with --walg")
    output = os.path.abspath(args.output or os.path.join(os.path.dirname(walg), DEFAULT_NAME))
    source = resources.files("walg").joinpath("daemon_client.c").read_bytes()
    directory = os.path.dirname(output)
    if not os.path.isdir(directory):
        raise WalgError(f"cannot build {output}: {directory} is not a directory")
    if os.path.isdir(output):
        raise WalgError(f"cannot build {output}: it is a directory; name the file to write")
    # A folder the user cannot write (an install folder of root's), a full disk: said so,
    # naming OUTPUT rather than the temporary name the error is about.
    try:
        with tempfile.TemporaryDirectory(prefix=".walg-client-", dir=directory) as tmp:
            c_file = os.path.join(tmp, "daemon_client.c")
            with open(c_file, "wb") as f:
                f.write(source)
            built = os.path.join(tmp, "client")
            command = [args.cc, "-O2", "-Wall", "-Wextra", f"-DWALG_PATH={_c_string(walg)}"]
            command += ["-o", built, c_file]
            # Static: no dynamic loader to run on every call, about 0.3 ms of PostgreSQL's
            # time per archive_command here. A system without a static C library (libc.a)
            # gets the shared one.
            done = None if args.dynamic else _compile(args.cc, [*command, "-static"])
            if done is None or done.returncode != 0:
                done = _compile(args.cc, command)
            if done.returncode != 0:
                raise WalgError(f"{args.cc} failed ({done.returncode}):\n{done.stderr.strip()}")
            os.chmod(built, 0o755)
            # On disk before it is in place, and its name after: an executable a power loss left
            # empty is run by PostgreSQL's /bin/sh as an empty script, which exits 0, so every
            # archive_command would "succeed" with nothing archived.
            fsync_path(built)
            os.replace(built, output)
            fsync_path(directory, folder=True)
    except OSError as exc:
        raise WalgError(f"cannot build {output}: {exc.strerror or exc}") from None
    ctx.stdout.write(f"{output}\n")
    return 0
