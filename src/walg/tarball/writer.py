"""Writes tar members with WAL-G's names (leading ``/``) into a byte sink.

Headers are built by hand because :mod:`tarfile`'s ``add``/``gettarinfo`` strip the leading
slash. A regular file's payload is exactly the size seen when it was walked: a file that shrank
is padded with zeros and one that grew is cut, as WAL-G does (PostgreSQL's WAL replay repairs
torn pages). The payload's checksum is returned for the backup's metadata. A file that cannot
be read fails with an error naming it (not the storage object it was going to).
"""

from __future__ import annotations

import os
import stat
import tarfile

from walg.core.checksum import Checksum
from walg.core.log import get_logger
from walg.errors import WalgError
from walg.postgres.datadir import KIND_DIR, Entry, special_kind
from walg.streams.base import Sink
from walg.streams.hashing import new_hasher

log = get_logger(__name__)

BLOCK = 512
READ_SIZE = 1 << 20
_ZEROS = bytes(BLOCK)


def header(
    name: str,
    *,
    kind: bytes = tarfile.REGTYPE,
    size: int = 0,
    mode: int = 0o600,
    mtime: int = 0,
    uid: int = 0,
    gid: int = 0,
) -> bytes:
    info = tarfile.TarInfo(name)
    # tarfile appends "/" to directory names; WAL-G's names (and Files keys) have none, so the
    # header is built as a regular file and its type flag patched afterwards.
    info.type = tarfile.REGTYPE if kind == tarfile.DIRTYPE else kind
    info.size = size
    info.mode = mode
    info.mtime = mtime
    info.uid = uid
    info.gid = gid
    buf = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    if kind != tarfile.DIRTYPE:
        return buf
    block = bytearray(buf[-BLOCK:])
    block[156:157] = tarfile.DIRTYPE
    block[148:156] = b"        "
    block[148:155] = b"%06o\0" % sum(block)
    return buf[:-BLOCK] + bytes(block)


def _unreadable(entry: Entry, exc: OSError) -> WalgError:
    # Raised inside the upload's block, a bare OSError would be reported by the storage as
    # failing to write the object, sending the DBA to the wrong place.
    return WalgError(
        f"cannot read {entry.path} (member {entry.member} of the data directory): "
        f"{exc.strerror or exc}"
    )


class TarWriter:
    """Appends members to ``sink``; ``finish()`` writes the end-of-archive blocks."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self.payload_size = 0
        self.members: list[str] = []
        self._buffer = bytearray(READ_SIZE)

    def add_directory(self, entry: Entry) -> None:
        self._sink.write(
            header(
                entry.member,
                kind=tarfile.DIRTYPE,
                mode=entry.mode,
                mtime=entry.mtime_ns // 1_000_000_000,
                uid=entry.uid,
                gid=entry.gid,
            )
        )
        self.members.append(entry.member)

    def add_entry(self, entry: Entry) -> Checksum | None:
        """Archive a walked entry; a file that vanished since the walk is skipped (None)."""
        if entry.kind == KIND_DIR:
            self.add_directory(entry)
            return None
        try:
            # Non-blocking: a FIFO made under the name since the walk would wait for a
            # writer for ever (the flag changes nothing for a regular file's reads).
            fd = os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _unreadable(entry, exc) from None
        try:
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                # As the walk skips it (walg.ops.backup_push names those), and as if it had
                # vanished: the backup holds only files and folders.
                log.warning(
                    "not backed up: %s is a %s (only files and directories are archived; a "
                    "restore will not have it)",
                    entry.member,
                    special_kind(entry.path, mode),
                )
                os.close(fd)
                return None
            handle = open(fd, "rb", buffering=0)  # noqa: SIM115 - closed below
        except OSError as exc:  # a folder now where the walk saw a file, say
            os.close(fd)
            raise _unreadable(entry, exc) from None
        with handle:
            return self._add_file(entry, handle)

    def add_bytes(self, name: str, data: bytes, mode: int = 0o600, mtime: int = 0) -> Checksum:
        self._sink.write(header(name, size=len(data), mode=mode, mtime=mtime))
        self._sink.write(data)
        self._pad(len(data))
        self.payload_size += len(data)
        self.members.append(name)
        digest = new_hasher()
        digest.update(data)
        return Checksum(len(data), digest.hexdigest())

    def _add_file(self, entry: Entry, handle: object) -> Checksum:
        fd = handle.fileno()  # type: ignore[attr-defined]
        size = entry.size
        self._sink.write(
            header(
                entry.member,
                size=size,
                mode=entry.mode,
                mtime=entry.mtime_ns // 1_000_000_000,
                uid=entry.uid,
                gid=entry.gid,
            )
        )
        digest = new_hasher()
        view = memoryview(self._buffer)
        left = size
        while left > 0:
            try:
                got = os.readv(fd, [view[: min(READ_SIZE, left)]])
            except OSError as exc:
                raise _unreadable(entry, exc) from None
            if got == 0:
                break
            chunk = view[:got]
            digest.update(chunk)
            self._sink.write(chunk)
            left -= got
        if left > 0:
            # The file shrank while we read it: keep the announced size.
            zeros = bytes(min(left, READ_SIZE))
            while left > 0:
                piece = zeros[: min(left, len(zeros))]
                digest.update(piece)
                self._sink.write(piece)
                left -= len(piece)
        self._pad(size)
        self.payload_size += size
        self.members.append(entry.member)
        return Checksum(size, digest.hexdigest())

    def _pad(self, size: int) -> None:
        rest = size % BLOCK
        if rest:
            self._sink.write(_ZEROS[: BLOCK - rest])

    def finish(self) -> None:
        self._sink.write(_ZEROS + _ZEROS)
