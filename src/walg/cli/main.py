"""Entry point of the ``walg`` command: parse, load settings, run, map errors to exit codes.

Only this package prints or chooses exit codes. ``archive_command`` and ``restore_command``
calls (``wal-push PATH``, ``wal-fetch NAME DEST``) take a fast path that skips argparse and the
other commands' modules, because PostgreSQL pays the start-up of every call; so does a plain
``daemon SOCKET [PGDATA]``, whose start-up delays the archiving of a backlog waiting for it
(building every command's parser costs 40-60 ms here).
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

from walg import __version__
from walg.errors import (
    EXIT_ABORT_RECOVERY,
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    WalGap,
    WalgError,
    WalNotFound,
)
from walg_destination import global_flags_first, go_bool

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

    from walg.cli.context import Context

# Command modules in the order --help lists them; each has register(sub) and run(args, ctx).
COMMAND_MODULES = (
    "backup_push",
    "backup_fetch",
    "backup_list",
    "wal_push",
    "wal_fetch",
    "wal_show",
    "wal_verify",
    "daemon",
    "build_daemon_client",
    "warm_cache",
)


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="walg",
        description="Continuous archiving and point-in-time recovery for PostgreSQL, "
        "in WAL-G's storage format. Configured with WAL-G's environment variables "
        "(WALG_FILE_PREFIX, WALG_COMPRESSION_METHOD, PGHOST, ...), a config file, or as in "
        "WAL-G a flag for each setting, anywhere on the line (--walg-file-prefix=/x), which "
        "wins over both.",
    )
    parser.add_argument("--version", action="version", version=f"walg {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="config file (YAML if named .yaml or .yml, TOML if .toml, dotenv if .env or "
        ".dotenv, else JSON; default $WALG_CONFIG_PATH, else ~/.walg.json, .toml, .yaml, .yml, "
        ".dotenv or .env)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from importlib import import_module

    for name in COMMAND_MODULES:
        import_module(f"walg.cli.{name}").register(sub)
    # A flag by its whole name only, as WAL-G's pflag takes it: argparse's prefixes (--rest for
    # --restore-command) would let a flag added later silently take over an abbreviation
    # already written into an archive or restore command.
    for each in (parser, *sub.choices.values()):
        each.allow_abbrev = False
    return parser


# WAL-G's boolean flags of the commands walg has (its cmd/pg/*.go): pflag's, which also take
# a value, ``--detail=true``, ``-f=false``.
WAL_G_BOOLEAN_FLAGS = {
    "backup-list": ("--pretty", "--json", "--detail"),
    "backup-push": ("--full", "-f", "--permanent", "-p"),
    "backup-fetch": ("--reverse-unpack", "--skip-redundant-tars"),
    "wal-show": ("--detailed-json", "--without-backups"),
    "wal-verify": ("--json",),
}


def _boolean_flag_values(arguments: list[str]) -> list[str]:
    """``arguments`` with each of WAL-G's boolean flags given a value as pflag reads it:
    ``--detail=true`` becomes ``--detail`` and ``--json=false`` is left out. A value Go does
    not read (``--detail=yes``) is left for argparse to refuse; nothing after ``--`` is
    looked at."""
    rest = arguments[2:] if arguments[:1] == ["--config"] else arguments
    flags = WAL_G_BOOLEAN_FLAGS.get(rest[0]) if rest else None
    if flags is None:
        return arguments
    out = arguments[: len(arguments) - len(rest) + 1]
    for index, arg in enumerate(rest[1:], 1):
        if arg == "--":
            out.extend(rest[index:])
            break
        flag, equals, value = arg.partition("=")
        truth = go_bool(value) if equals and flag in flags else None
        if truth is None:
            out.append(arg)
        elif truth:
            out.append(flag)
    return out


def _fast_args(argv: Sequence[str]) -> Any | None:
    """The parsed arguments of a plain wal-push / wal-fetch call, or None for argparse."""
    config = None
    rest = list(argv)
    if len(rest) >= 2 and rest[0] == "--config":
        config, rest = rest[1], rest[2:]
    if any(a.startswith("-") for a in rest):
        return None
    if len(rest) == 2 and rest[0] == "wal-push":
        from walg.cli import wal_push

        return SimpleNamespace(
            command="wal-push",
            config=config,
            run=wal_push.run,
            path=rest[1],
            target_storage=None,
        )
    if len(rest) in (2, 3) and rest[0] == "daemon":
        from walg.cli import daemon

        pgdata = rest[2] if len(rest) == 3 else None
        return SimpleNamespace(
            command="daemon", config=config, run=daemon.run, socket=rest[1], pgdata=pgdata
        )
    if len(rest) == 3 and rest[0] == "wal-fetch":
        from walg.cli import wal_fetch

        return SimpleNamespace(
            command="wal-fetch",
            config=config,
            run=wal_fetch.run,
            name=rest[1],
            destination=rest[2],
            no_prefetch=False,
            target_storage=None,
        )
    return None


# Commands that SIGTERM interrupts as SIGINT does: they stop their workers, clean up (a
# backup's objects are removed; a restore stops before pg_control, so the directory is never
# startable) and exit 1, instead of dying with uploads half done and the backup's objects and
# claim left behind. wal-push and wal-fetch clean up and still end by SIGTERM, as PostgreSQL
# expects of them (_end_cleanly_on_sigterm).
SIGTERM_INTERRUPTS = ("backup-push", "backup-fetch")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as KeyboardInterrupt is for SIGINT."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    return _run(sys.argv[1:] if argv is None else list(argv))[0]


def _run(arguments: list[str]) -> tuple[int, bool, bool]:
    """The exit code, whether this was a plain wal-push / wal-fetch call, and whether a
    signal (SIGINT, SIGTERM) stopped the command."""
    # WAL-G's --config and --turbo stand anywhere on its command lines, and so do its flags
    # for settings (--walg-file-prefix=/x).
    arguments = global_flags_first(arguments)
    from walg import settings as settings_module
    from walg.errors import EXIT_USAGE, UsageError

    try:
        arguments, flags = settings_module.split_setting_flags(arguments)
    except UsageError as exc:
        _say_error(str(exc))
        failed = EXIT_ABORT_RECOVERY if _fetch_in_archive_recovery(arguments) else EXIT_USAGE
        return failed, False, False
    arguments = _boolean_flag_values(arguments)
    args = _fast_args(arguments)
    fast = args is not None and args.command != "daemon"
    if args is None:
        try:
            try:
                parser = build_parser()
                args, extras = parser.parse_known_args(arguments)
                if extras:
                    parser.error(_unrecognized(extras))
            finally:
                # --help ends in SystemExit with the text still buffered: a full or gone
                # stdout must fail here, not in the interpreter's flush at exit.
                if sys.stdout is not None:
                    sys.stdout.flush()
        except SystemExit as exc:
            if exc.code and _fetch_in_archive_recovery(arguments):
                return EXIT_ABORT_RECOVERY, fast, False
            raise
        except BrokenPipeError:
            return _reader_gone(), fast, False
        except OSError as exc:  # --help or a usage message to a full or closed stream
            from walg.cli.context import silence

            silence(1)
            _say_error(f"cannot write the help text: {exc.strerror or exc}")
            return EXIT_FAILURE, fast, False
    unresolvable = _relative_without_working_directory(args)
    if unresolvable is not None:
        _say_error(
            f"{args.command}: {unresolvable} is relative and the working directory no"
            " longer exists (was the data directory removed?); nothing was done"
        )
        if args.command == "wal-fetch":
            from walg.cli.wal_fetch import failure_exit_code

            return failure_exit_code(args.destination, EXIT_FAILURE), fast, False
        return EXIT_FAILURE, fast, False
    ctx: Context | None = None
    interrupted = False
    if args.command in ("wal-push", "wal-fetch"):
        _end_cleanly_on_sigterm()
    elif args.command in SIGTERM_INTERRUPTS:
        import signal

        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        settings = settings_module.load(config_path=args.config, flags=flags)
        from walg.cli import logs

        if settings.log_destination is not None:
            logs.log_to(settings.log_destination)
        from walg.cli.context import Context

        # The configuration's warnings at NORMAL whatever WALG_LOG_LEVEL says, as WAL-G
        # gives its own (unknown keys) before its level is set up; then the level.
        # Not again in the detached helpers: the call that started one has said it.
        internal = args.command in ("wal-push-ahead", "wal-prefetch")
        messages = () if internal else settings.not_honoured(args.command)
        if messages:
            from walg.core.log import get_logger

            logs.setup("NORMAL")
            for message in messages:
                get_logger("walg.settings").warning("%s", message)
        if fast:
            logs.setup_lazily(settings.log_level)
        else:
            logs.setup(settings.log_level)
        target_storage = getattr(args, "target_storage", None)
        if target_storage is not None:  # only given: no import on PostgreSQL's calls
            from walg.cli.target_storage import refused_target_storage

            refusal = refused_target_storage(target_storage)
            if refusal is not None:
                raise UsageError(refusal)
        ctx = Context(settings)
        code: int = args.run(args, ctx)
    except WalNotFound as exc:
        # PostgreSQL asks for files past the end of the archive all the time: one quiet line,
        # and none to a standby, where that is the normal state: one waiting for its primary's
        # WAL asks for the next segment and the next timeline's history every 5 s, and those
        # lines filled the server's log (the daemon's clients say nothing there either).
        if not (args.command == "wal-fetch" and _fetched_for_standby(args.destination)):
            _say_dated("WARNING" if isinstance(exc, WalGap) else "INFO", str(exc))
        code = EXIT_NOT_FOUND
    except WalgError as exc:
        _say_error(str(exc))
        code = exc.exit_code
    except BrokenPipeError:
        code = _reader_gone()
    except _Terminated:
        _say_error("terminated")
        code = EXIT_TERMINATED
    except KeyboardInterrupt as exc:
        signame = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
        _say_error(f"interrupted ({signame})")
        code = EXIT_FAILURE
        interrupted = True
    except Exception as exc:
        from walg.core.log import get_logger

        get_logger("walg").debug("unexpected error", exc_info=True)
        _say_error(f"unexpected {type(exc).__name__}: {exc}")
        code = EXIT_FAILURE
    finally:
        if ctx is not None:
            ctx.close()
    if code and code != EXIT_TERMINATED and args.command == "wal-fetch":
        from walg.cli.wal_fetch import failure_exit_code

        code = failure_exit_code(args.destination, code)
    return code, fast, interrupted


def _relative_without_working_directory(args: argparse.Namespace) -> str | None:
    """The relative path of a ``wal-push PATH`` or ``wal-fetch NAME DEST`` run in a working
    directory that was removed (the data directory removed under a running server): it cannot
    be resolved, and without this the command would fail on a bare FileNotFoundError."""
    import os

    if args.command == "wal-push":
        path: str = args.path
    elif args.command == "wal-fetch":
        path = args.destination
    else:
        return None
    if os.path.isabs(path):
        return None
    try:
        os.getcwd()
    except OSError:
        return path
    return None


def _fetched_for_standby(destination: str) -> bool:
    """Is this wal-fetch run for a standby: DEST's data directory (``%p`` is
    ``pg_wal/RECOVERYXLOG``), or the working directory PostgreSQL runs it in, in standby
    mode? (walg.daemon_client is loaded on this path anyway, for the exit code.)"""
    from walg.daemon_client import fetch_data_directories, is_standby

    return any(is_standby(pgdata) for pgdata in fetch_data_directories(destination))


def _fetch_in_archive_recovery(arguments: list[str]) -> bool:
    """Is this a ``wal-fetch`` run in a data directory in archive recovery?

    PostgreSQL runs restore_command there. A wal-fetch with wrong arguments
    (``restore_command = 'walg wal-fetch %f'``) then exits ``EXIT_ABORT_RECOVERY``: its usage
    error's 2 would read as "not in the archive", and recovery would end at once and promote
    without the archived WAL.
    """
    import os

    if _command_word(arguments) != "wal-fetch":
        return False
    from walg.daemon_client import in_archive_recovery

    try:
        return in_archive_recovery(os.getcwd())
    except OSError:  # no working directory: nothing to tell by
        return False


# WAL-G's own flags (of its backup-push) for what walg does not do: named as such, since the
# setting flag one looks like (--walg-delta-from-name) is taken but changes nothing.
_WAL_G_FLAGS_NOT_HAD = {
    "--delta-from-name": "delta backups",
    "--delta-from-user-data": "delta backups",
    "--verify": "page checksum verification",
    "--store-all-corrupt": "page checksum verification",
    "--rating-composer": "tar composers",
    "--copy-composer": "tar composers",
    "--database-composer": "tar composers",
    "--without-files-metadata": "backups without files metadata",
}


def _unrecognized(extras: list[str]) -> str:
    """The usage error for ``extras``, arguments the parser does not know: each with the
    setting flag it looks like a misspelling of, and with the value of each flag that may hold
    a key or a password hidden (``--walg-libsodium-keyy=...``, ``--ssh-pasword ...``): the
    error goes to PostgreSQL's log under archive_command."""
    from walg.settings import flag_look_alike, flag_name, is_secret_setting
    from walg_destination import SECRET_WORDS

    shown: list[str] = []
    hints: list[str] = []
    hide_next = False
    for arg in extras:
        if hide_next:
            shown.append("<hidden>")
            hide_next = False
            continue
        flag, equals, _ = arg.partition("=")
        name = flag[2:].upper().replace("-", "_") if flag.startswith("--") else ""
        close = None
        if flag in _WAL_G_FLAGS_NOT_HAD:
            hints.append(f"{flag}: WAL-G's, for {_WAL_G_FLAGS_NOT_HAD[flag]}, not in walg yet")
        elif name:
            close = flag_look_alike(name)
            if close:
                hints.append(f"{flag}: a misspelling of {flag_name(close)}?")
        # Wider than a setting's secrecy: a misspelt name (KEYY, TOKN) may hold one too, so
        # any name with a word that keeps a setting out of the destination key, or that looks
        # like a secret setting's (PASWORD).
        secret = bool(name) and (
            is_secret_setting(name)
            or any(w in name for w in SECRET_WORDS)
            or (close is not None and is_secret_setting(close))
        )
        if secret and equals:
            shown.append(f"{flag}=<hidden>")
        else:
            shown.append(arg)
            hide_next = secret
    hint = f" ({'; '.join(hints)})" if hints else ""
    return f"unrecognized arguments: {' '.join(shown)}{hint}"


def _command_word(arguments: list[str]) -> str | None:
    """The command of ``arguments`` (``--config`` already first): the first word that is
    neither ``--config FILE`` nor a setting flag with its value. A setting flag may stand
    before the command (``walg --walg-file-prefix=$P wal-fetch``), and one refused there must
    still be known as a wal-fetch's."""
    from walg.settings import flag_setting

    index = 2 if arguments[:1] == ["--config"] else 0
    while index < len(arguments):
        arg = arguments[index]
        flag, equals, _ = arg.partition("=")
        if flag_setting(flag) is None:
            return arg
        index += 1 if equals else 2
    return None


def _reader_gone() -> int:
    """Exit code of a command whose output's reader went away (``walg backup-list | head -1``):
    a failure, as not all was delivered, but no message. Standard output is pointed at
    /dev/null first, or the interpreter's own flush at exit would report the broken pipe."""
    from walg.cli.context import silence

    silence(1)
    return EXIT_FAILURE


def _say(text: str) -> None:
    """A line on stderr, if stderr is there to take it."""
    import contextlib

    with contextlib.suppress(OSError, AttributeError, ValueError):
        sys.stderr.write(text)


def _say_error(message: str) -> None:
    """A command's failure line, dated as the log's lines are (walg.core.log.line): apart
    from the log, so shown at every WALG_LOG_LEVEL, as WAL-G's fatal errors are."""
    _say_dated("ERROR", message)


def _say_dated(level: str, message: str) -> None:
    """A line on stderr in the log's shape (walg.core.log.line), at every WALG_LOG_LEVEL:
    PostgreSQL writes a command's stderr into its own log without a time of its own."""
    import time

    from walg.core.log import line

    _say(line(level, message, time.time()) + "\n")


class _Terminated(BaseException):
    """SIGTERM arrived during an archive_command / restore_command call."""


# Not an exit code: the call ends by SIGTERM itself once its clean-up has run.
EXIT_TERMINATED = -1


def _end_cleanly_on_sigterm() -> None:
    """Make SIGTERM raise in an archive_command / restore_command call, so that its clean-up
    runs (a wal-fetch's temporary file beside DEST, up to a segment, an upload's temporary
    object) before it ends, by the same signal (:func:`entry`): PostgreSQL reads a command
    killed by SIGTERM as part of its shutdown, and any exit code as something else."""
    # The builtin: the signal module would import enum on every call.
    import _signal  # type: ignore[import-not-found]

    def terminated(_signum: int, _frame: object) -> None:
        _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)  # once is enough
        raise _Terminated()

    _signal.signal(_signal.SIGTERM, terminated)


def entry() -> None:
    code, fast, interrupted = _run(sys.argv[1:])
    if code == EXIT_TERMINATED:
        import os
        import signal

        _flush_quietly()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        os._exit(128 + signal.SIGTERM)  # only if the signal could not end it
    if fast:
        _exit_without_teardown(code)
    if interrupted:
        _exit_leaving_workers(code)
    _flush_quietly()  # the interpreter's own flush would turn a failure to write into 120
    sys.exit(code)


def _exit_leaving_workers(code: int) -> None:
    """End a command stopped by a signal without joining the worker threads still running:
    one held by storage that does not answer (a hung mount) would hold the process for ever
    after its clean-up (see walg.ops.pipeline.leave_workers). The exit handlers still run."""
    import threading

    if threading.active_count() == 1:
        return
    import atexit
    import os

    atexit._run_exitfuncs()
    _flush_quietly()
    os._exit(code)


def _exit_without_teardown(code: int) -> None:
    """End an archive_command / restore_command call without the interpreter's teardown.

    Freeing every module and object costs such a call about 3 ms, a tenth of its start-up. The
    exit handlers still run (they flush the log) and the standard streams are flushed; only
    when another thread is still alive is the ordinary exit left to do its work.
    """
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        return  # entry flushes the streams (quietly) before the ordinary exit
    import atexit
    import os

    atexit._run_exitfuncs()
    _flush_quietly()
    os._exit(code)


def _flush_quietly() -> None:
    """Flush stdout and stderr; one that cannot take its last lines is pointed at /dev/null.

    A log that cannot take them (a full disk; a closed descriptor, where the stream is None)
    does not undo the work: a push that stored its file, or a fetch that put it in place,
    still exits 0, and a failed fetch keeps its code (the interpreter's own flush at exit
    would make it 120, and 1 to 125 tells a server in archive recovery "not in the archive").
    """
    from walg.cli.context import silence

    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        try:
            stream.flush()
        except AttributeError:
            pass
        except (OSError, ValueError):
            silence(fd)
