"""``walg-daemon-client``: a tiny, stdlib-only client of ``walg daemon`` for PostgreSQL.

    archive_command = 'walg-daemon-client /run/walg.sock wal-push %p'
    restore_command = 'walg-daemon-client /run/walg.sock wal-fetch %f %p'

The installed script (``bin/walg-daemon-client``) runs this module with ``python -S -E``: the
``site`` machinery alone would cost PostgreSQL several milliseconds per call.

It speaks WAL-G's daemon protocol (one type byte, a big-endian uint16 total length, the body;
a one-byte reply ``O`` ok, ``E`` error, ``N`` not in the archive) and imports nothing beyond
the standard library so that a call costs little more than the interpreter's start.

Exit codes: 0 done, 74 not in the archive, 1 anything else. A push whose daemon is not
running fails (PostgreSQL keeps the WAL and retries). A fetch whose daemon is not running runs
``walg wal-fetch`` directly instead: failing it would make PostgreSQL end recovery early.
"""

# _socket, not socket: the socket module pulls in enum and selectors, which would more than
# double this client's start-up time.
import _socket
import os
import sys

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_NOT_FOUND = 74
DEFAULT_TIMEOUT = 300.0


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + (len(body) + 3).to_bytes(2, "big") + body


def _args(*values: str) -> bytes:
    out = bytes([len(values)])
    for value in values:
        data = value.encode()
        out += len(data).to_bytes(2, "big") + data
    return out


def _ask(path: str, message: bytes, timeout: float) -> bytes:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(message)
        return sock.recv(1)
    finally:
        sock.close()


def _timeout(text: "str | None") -> "float | None":
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 1e9:
        sys.stderr.write(
            f"walg-daemon-client: WALG_DAEMON_CLIENT_TIMEOUT={text} is not a positive number "
            "of seconds; nothing was done\n"
        )
        return None
    return seconds


def _direct_fetch(name: str, dest: str) -> int:
    walg = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), "walg")
    os.execv(walg, [walg, "wal-fetch", name, dest])
    return EXIT_FAILURE  # pragma: no cover - execv does not return


def main(argv: "list[str] | None" = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    usage = "usage: walg-daemon-client SOCKET (wal-push PATH | wal-fetch NAME DEST | check)"
    if len(args) < 2:
        sys.stderr.write(usage + "\n")
        return 2
    path, command, rest = args[0], args[1], args[2:]
    timeout = _timeout(os.environ.get("WALG_DAEMON_CLIENT_TIMEOUT"))
    if timeout is None:
        return EXIT_FAILURE
    if command == "wal-push" and len(rest) == 1:
        message = _message(b"F", os.path.basename(rest[0]).encode())
    elif command == "wal-fetch" and len(rest) == 2:
        message = _message(b"f", _args(rest[0], rest[1]))
    elif command == "check" and not rest:
        message = _message(b"C", b"")
    else:
        sys.stderr.write(usage + "\n")
        return 2
    try:
        reply = _ask(path, message, timeout)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        if command == "wal-fetch":
            sys.stderr.write(
                f"walg-daemon-client: no daemon at {path} ({exc.strerror}); fetching directly\n"
            )
            return _direct_fetch(rest[0], rest[1])
        sys.stderr.write(
            f"walg-daemon-client: walg daemon is not running at {path} "
            f"({exc.strerror}); nothing was done\n"
        )
        return EXIT_FAILURE
    except OSError as exc:
        sys.stderr.write(
            f"walg-daemon-client: talking to {path} failed: {exc}; nothing is known to be done\n"
        )
        return EXIT_FAILURE
    if reply == b"O":
        return EXIT_OK
    if reply == b"N":
        return EXIT_NOT_FOUND
    detail = "an error (see the daemon's log)" if reply == b"E" else f"no valid reply {reply!r}"
    sys.stderr.write(f"walg-daemon-client: {command} failed: the daemon answered {detail}\n")
    return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
