"""``walg-daemon-client``: a tiny, stdlib-only client of ``walg daemon`` for PostgreSQL.

    archive_command = 'walg-daemon-client /run/walg.sock wal-push %p'
    restore_command = 'walg-daemon-client /run/walg.sock wal-fetch %f %p'

The installed script (``bin/walg-daemon-client``) runs this module with ``python -S -E``: the
``site`` machinery alone would cost PostgreSQL several milliseconds per call.

It speaks WAL-G's daemon protocol (one type byte, a big-endian uint16 total length, the body;
a one-byte reply ``O`` ok, ``E`` error, ``N`` not in the archive) and imports nothing beyond
the standard library so that a call costs little more than the interpreter's start.

The daemon is told the absolute path of ``%p`` (PostgreSQL runs the command in its data
directory), so a daemon serving another cluster refuses the request instead of archiving or
overwriting that cluster's files. Before anything is sent, the process listening on the socket
must belong to this user or to root: on a directory others can write, anyone else's listener
could answer "done" to every push.

Exit codes: 0 done, 74 not in the archive, 2 usage, 1 any other failure, except a failed
(or wrongly given) ``wal-fetch`` in archive recovery (``recovery.signal`` and no
``standby.signal`` in the data directory that holds DEST's directory, as ``%p`` is
``pg_wal/RECOVERYXLOG``, or the working directory PostgreSQL runs the command in; before
PostgreSQL 12 a ``recovery.conf`` there that does not turn ``standby_mode`` on): 128 there.
PostgreSQL takes a restore_command status of 1 to 125 for "not in the archive" and would end
recovery and promote, losing the WAL it could not read; above 125 it stops recovery, loudly. A
standby retries (and streams), so it gets 1. A push whose daemon is not running fails
(PostgreSQL keeps the WAL and retries). A fetch whose daemon is not running runs ``walg
wal-fetch`` directly instead, which follows the same exit code rule. A request the daemon
accepted but closed without answering (reset, broken pipe, end of stream: it was stopped or
died) is run by ``walg`` directly, a push too: the daemon discards a fetch whose client has
gone, and ``walg wal-push`` never replaces an archived object (equal content is success).
"""

# _socket, not socket: the socket module pulls in enum and selectors, which would more than
# double this client's start-up time.
import _socket
import os
import stat
import sys
import time

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 74
EXIT_ABORT_RECOVERY = 128
DEFAULT_TIMEOUT = 300.0
CONNECT_RETRY = 0.002


class UntrustedPeer(OSError):
    """The socket is served by another user's process."""


class NotAllowed(OSError):
    """This user may not connect to the socket (EACCES, EPERM): nothing was sent."""


class DaemonGone(OSError):
    """The daemon closed the connection before replying: it stopped (or died) meanwhile."""


def _message(kind: bytes, body: bytes) -> bytes:
    # OverflowError over 64 KiB: the caller reports arguments too long.
    return kind + (len(body) + 3).to_bytes(2, "big") + body


def _args(*values: bytes) -> bytes:
    out = bytes([len(values)])
    for data in values:
        out += len(data).to_bytes(2, "big") + data
    return out


def _connect(sock: "_socket.socket", path: str, deadline: float) -> None:
    # With a timeout set the socket is non-blocking, and a UNIX socket whose listen queue is
    # full refuses such a connect at once with EAGAIN: a busy daemon is waited for instead.
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError("timed out") from None
            time.sleep(CONNECT_RETRY)


def _check_peer(sock: "_socket.socket") -> None:
    # struct ucred is three native ints (pid, uid, gid); struct itself would cost an import.
    cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    uid = int.from_bytes(cred[4:8], sys.byteorder)
    if uid not in (os.geteuid(), 0):
        raise UntrustedPeer(f"the socket is served by uid {uid}, neither this user nor root")


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


def _ask(path: str, message: bytes, timeout: float) -> bytes:
    # One deadline for the whole call: the connect (a full listen queue), the send and the
    # wait for the answer share the timeout, rather than each having all of it.
    deadline = time.monotonic() + timeout
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            _connect(sock, path, deadline)
        except PermissionError as exc:
            raise NotAllowed(exc.errno, exc.strerror) from None
        _check_peer(sock)
        try:
            sock.settimeout(_remaining(deadline))
            sock.sendall(message)
            sock.settimeout(_remaining(deadline))
            reply = sock.recv(1)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise DaemonGone(exc.errno, exc.strerror) from None
        if not reply:
            raise DaemonGone(0, "closed without a reply")
        return reply
    finally:
        sock.close()


def _failed(command: str, dest: str) -> int:
    """The exit code of a failure other than "not in the archive" (see the module's text)."""
    if command != "wal-fetch":
        return EXIT_FAILURE
    if any(in_archive_recovery(pgdata) for pgdata in fetch_data_directories(dest)):
        return EXIT_ABORT_RECOVERY
    return EXIT_FAILURE


def fetch_data_directories(dest: str) -> "tuple[str, str]":
    """The data directories a ``wal-fetch`` to ``dest`` may be run for: the folder holding
    DEST's folder (``%p`` is ``pg_wal/RECOVERYXLOG``) and the working directory, ``.``, as
    PostgreSQL runs restore_command in the data directory (with swapped arguments, 'wal-fetch
    %p %f', DEST's folder's folder is the data directory's parent). With no working directory
    (removed under a running server) a relative DEST stays relative, as the C client takes it."""
    try:
        path = os.path.abspath(dest)
    except OSError:
        path = dest
    return os.path.dirname(os.path.dirname(path)) or ".", "."


def in_archive_recovery(pgdata: str) -> bool:
    """Is ``pgdata`` a data directory in archive recovery, not a standby? From PostgreSQL 12
    ``recovery.signal`` without ``standby.signal``; before it a ``recovery.conf`` that does not
    turn ``standby_mode`` on (backup-fetch --restore-command writes one for those servers)."""
    if os.path.exists(os.path.join(pgdata, "recovery.signal")):
        return not os.path.exists(os.path.join(pgdata, "standby.signal"))
    conf = os.path.join(pgdata, "recovery.conf")
    return os.path.exists(conf) and not _standby_mode_on(conf)


def is_standby(pgdata: str) -> bool:
    """Is ``pgdata`` a data directory in standby mode? From PostgreSQL 12 ``standby.signal``
    (with or without ``recovery.signal``); before it a ``recovery.conf`` that turns
    ``standby_mode`` on."""
    if os.path.exists(os.path.join(pgdata, "standby.signal")):
        return True
    conf = os.path.join(pgdata, "recovery.conf")
    return os.path.exists(conf) and _standby_mode_on(conf)


def _standby_mode_on(conf: str) -> bool:
    """Whether recovery.conf ``conf`` turns standby_mode on: its last setting counts, and
    "on", "1" and the prefixes of "true" and "yes" are true, as PostgreSQL's parse_bool takes
    them. A file that cannot be read, or is not a regular file, turns nothing on."""
    try:
        # Not blocking: a FIFO there would hang the call PostgreSQL waits on.
        fd = os.open(conf, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        with os.fdopen(fd, "rb", closefd=False) as f:
            text = f.read()
    except OSError:
        return False
    finally:
        os.close(fd)
    on = False
    for line in text.split(b"\n"):
        rest = line.lstrip(b" \t\r")
        if not rest.startswith(b"standby_mode") or rest[12:13] not in (b" ", b"\t", b"\r", b"="):
            continue
        rest = rest[12:].lstrip(b" \t\r")
        if rest.startswith(b"="):
            rest = rest[1:].lstrip(b" \t\r")
        if rest.startswith(b"'"):
            value = rest[1:].split(b"'", 1)[0]
        else:
            for stop in (b"#", b" ", b"\t", b"\r"):
                rest = rest.split(stop, 1)[0]
            value = rest
        word = value.lower()
        on = word in (b"on", b"1") or (
            word != b"" and (b"true".startswith(word) or b"yes".startswith(word))
        )
    return on


def _usage_error(command: str) -> int:
    """The exit code of a command line that is wrong: 2, but for a wal-fetch run in a data
    directory in archive recovery (PostgreSQL runs restore_command there), where 2 would
    read as "not in the archive" (``restore_command = '... wal-fetch %f'``, no %p)."""
    if command == "wal-fetch" and in_archive_recovery("."):
        return EXIT_ABORT_RECOVERY
    return EXIT_USAGE


def _timeout(text: "str | None") -> "float | None":
    if text is None:
        return DEFAULT_TIMEOUT
    # As the compiled client reads it: a decimal number (float alone would also take
    # underscores, inf and nan), white space around it allowed.
    number = text.strip(" \t\n\v\f\r")
    try:
        seconds = float(number) if number and not number.strip("0123456789.eE+-") else 0.0
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 1e9:
        _say(
            f"walg-daemon-client: WALG_DAEMON_CLIENT_TIMEOUT={text} is not a positive number "
            "of seconds; nothing was done\n"
        )
        return None
    return seconds


def _say(text: str) -> None:
    """A line on stderr. A log that cannot take it (a full disk, a closed descriptor) must
    not change the exit code: a failed wal-fetch exiting 1 instead of 128 ends recovery."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


# Go's time.ParseDuration units, as WAL-G's client reads -timeout (micro as the micro sign or mu).
_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DIGITS = "0123456789"


def _go_duration(text: str) -> "float | None":
    """Seconds of a Go duration (``30s``, ``1m30s``, ``.5h``, ``0``); None if it is not one.
    As the compiled client's go_duration."""
    sign = -1.0 if text[:1] == "-" else 1.0
    rest = text[1:] if text[:1] in ("+", "-") else text
    if rest == "0":
        return 0.0
    if not rest:
        return None
    total = 0.0
    while rest:
        value, scale, digits, index = 0.0, 1.0, 0, 0
        while index < len(rest) and rest[index] in _DIGITS:
            value = value * 10 + _DIGITS.index(rest[index])
            index, digits = index + 1, digits + 1
        if index < len(rest) and rest[index] == ".":
            index += 1
            while index < len(rest) and rest[index] in _DIGITS:
                scale /= 10
                value += _DIGITS.index(rest[index]) * scale
                index, digits = index + 1, digits + 1
        if digits == 0:
            return None
        start = index
        while index < len(rest) and rest[index] != "." and rest[index] not in _DIGITS:
            index += 1
        unit = _UNITS.get(rest[start:index])
        if unit is None:
            return None
        total += value * unit
        rest = rest[index:]
    return sign * total


def _client_flags(args: "list[str]") -> "tuple[float | None, str | None]":
    """WAL-G's client flags after the command's arguments (its cmd/daemonclient: Go's flag
    package, one or two dashes, ``=VALUE`` or the next argument): the seconds ``-timeout``
    gives (None: not given), or what is wrong with them. ``-connection-timeout`` is checked
    and changes nothing: the one deadline of the call covers the connect too. As the compiled
    client's client_flags."""
    timeout = None
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--" and index == len(args) - 1:
            break
        if arg[:1] != "-" or arg in ("-", "--"):
            return None, f"unexpected argument {arg[:100]} after the flags"
        name, equals, value = arg[2 if arg[1:2] == "-" else 1 :].partition("=")
        if name not in ("timeout", "connection-timeout"):
            return None, f"flag provided but not defined: -{name[:100]}"
        if not equals:
            if index + 1 >= len(args):
                return None, f"flag needs an argument: -{name}"
            index += 1
            value = args[index]
        seconds = _go_duration(value)
        if seconds is None or not 0 < seconds <= 1e9:
            return None, (
                f'invalid value "{value[:100]}" for flag -{name}: not a positive duration '
                "(30s, 1m30s, 500ms)"
            )
        if name == "timeout":
            timeout = seconds
        index += 1
    return timeout, None


def _in_pg_wal(name: str) -> str:
    """WAL-G documents ``archive_command = 'walg-daemon-client SOCKET wal-push %f'``: a bare
    file name. PostgreSQL runs the command in its data directory, where that file is
    ``pg_wal/NAME``; sent as the data directory's own NAME, the daemon refused it (not in its
    pg_wal), every call. A name that is there as it stands (a call by hand from inside pg_wal)
    is left as it is, as is any name that cannot be looked at. As the compiled client."""
    if not name or "/" in name:
        return name
    try:
        os.lstat(name)
    except FileNotFoundError:
        return "pg_wal/" + name
    except (OSError, ValueError):
        pass
    return name


def _direct(command: str, rest: "list[str]") -> int:
    """Run ``walg COMMAND ARGS...`` (beside this client) in this process's place."""
    walg = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), "walg")
    try:
        os.execv(walg, [walg, command, *rest])
    except OSError as exc:
        _say(f"walg-daemon-client: cannot run {walg}: {exc.strerror}\n")
    return _failed(command, rest[-1])


def main(argv: "list[str] | None" = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    usage = (
        "usage: walg-daemon-client SOCKET (wal-push PATH | wal-fetch NAME DEST | check) "
        "[-timeout DURATION]"
    )
    if len(args) < 2:
        _say(usage + "\n")
        return EXIT_USAGE
    path, command, rest = args[0], args[1], args[2:]
    wanted = {"wal-push": 1, "wal-fetch": 2, "check": 0}.get(command)
    flag_timeout = None
    if wanted is not None and len(rest) > wanted and rest[wanted][:1] == "-":
        flag_timeout, problem = _client_flags(rest[wanted:])
        if problem is not None:
            _say(f"walg-daemon-client: {problem}; nothing was done\n")
            return _usage_error(command)
        rest = rest[:wanted]
    if command == "wal-push" and len(rest) == 1:
        rest = [_in_pg_wal(rest[0])]
    if not path:
        # An empty SOCKET ("$WALG_SOCKET" unset in the server's environment) names no socket:
        # the compiled client reads it as an address of its own, this one got EINVAL.
        _say(usage + "\n")
        return _usage_error(command)
    # The absolute paths: the daemon refuses files outside the data directory it serves
    # (PostgreSQL runs the command in its own, so %p is relative to it). The bytes of the
    # command line as they are (fsencode), as the compiled client sends them: str.encode
    # raised on a path that is not UTF-8 (a data directory named in Latin-1), and the
    # traceback's exit 1 ended an archive recovery early.
    message: bytes | None = None
    try:
        if command == "wal-push" and len(rest) == 1:
            message = _message(b"F", os.fsencode(os.path.abspath(rest[0])))
        elif command == "wal-fetch" and len(rest) == 2:
            body = _args(os.fsencode(rest[0]), os.fsencode(os.path.abspath(rest[1])))
            message = _message(b"f", body)
        elif command == "check" and not rest:
            message = _message(b"C", b"")
        else:
            _say(usage + "\n")
            return _usage_error(command)
    except OverflowError:  # an argument, or all of them, over 64 KiB: sent below as too long
        pass
    except OSError as exc:  # no working directory (removed) to make a relative path absolute
        _say(f"walg-daemon-client: {command}: {exc.strerror}; nothing was done\n")
        return _failed(command, rest[1] if command == "wal-fetch" else "")
    dest = rest[1] if command == "wal-fetch" else ""
    timeout = flag_timeout or _timeout(os.environ.get("WALG_DAEMON_CLIENT_TIMEOUT"))
    if timeout is None:
        return _failed(command, dest)
    if message is None or len(message) > 65535:
        _say(f"walg-daemon-client: {command}: arguments too long; nothing was done\n")
        return _failed(command, dest)
    try:
        reply = _ask(path, message, timeout)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        if command == "wal-fetch":
            _say(f"walg-daemon-client: no daemon at {path} ({exc.strerror}); fetching directly\n")
            return _direct(command, rest)
        _say(
            f"walg-daemon-client: walg daemon is not running at {path} "
            f"({exc.strerror}); nothing was done\n"
        )
        return EXIT_FAILURE
    except DaemonGone as exc:
        # The daemon stopped between accepting and answering (a restart): as if it had not
        # been there. A fetch it had begun is discarded once its client is gone, and a push
        # never replaces an archived object (equal content is success), so walg itself may
        # do either now; failing a fetch would stop recovery.
        if command == "check":
            _say(f"walg-daemon-client: {path}: the daemon stopped before answering\n")
            return EXIT_FAILURE
        _say(
            f"walg-daemon-client: the daemon at {path} stopped before answering "
            f"({exc.strerror}); running walg {command} directly\n"
        )
        return _direct(command, rest)
    except NotAllowed as exc:
        _say(
            f"walg-daemon-client: cannot connect to {path}: {exc.strerror} (the socket, or a "
            "folder above it, is another user's: run the daemon as the user PostgreSQL runs "
            "as); nothing was sent\n"
        )
        return _failed(command, dest)
    except UntrustedPeer as exc:
        _say(f"walg-daemon-client: {path}: {exc}; nothing was sent\n")
        return _failed(command, dest)
    except OSError as exc:
        _say(f"walg-daemon-client: talking to {path} failed: {exc}; nothing is known to be done\n")
        return _failed(command, dest)
    if reply == b"O":
        return EXIT_OK
    if reply == b"N":
        return EXIT_NOT_FOUND
    detail = "an error (see the daemon's log)" if reply == b"E" else f"no valid reply {reply!r}"
    _say(f"walg-daemon-client: {command} failed: the daemon answered {detail}\n")
    return _failed(command, dest)


def entry() -> None:
    """Run :func:`main` and exit with its code, whatever the standard streams can take (the
    interpreter's own flush at exit would turn a failure to write into exit code 120)."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - contextlib would be one more import on every call
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
