"""A streaming tar reader that trusts nothing it reads.

It parses ustar/PAX/GNU headers from a forward-only source (no seeking, so it sits directly on a
decompressor), hands out each member's payload as a bounded reader, and after the end-of-archive
marker insists that only zero bytes follow, as WAL-G's extractor does. Corrupt headers, truncated
payloads and trailing garbage raise :class:`~walg.errors.IntegrityError` naming the object.
Member names are returned as stored; :mod:`walg.tarball.extract` decides whether they are safe.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from walg.errors import IntegrityError
from walg.streams.base import Source, read_exactly

BLOCK = 512
_MAX_META = 1 << 20  # PAX / GNU long-name payloads larger than this are refused


@dataclass(frozen=True)
class Member:
    """One tar member's header as the reader parsed it."""

    name: str
    type: bytes
    size: int
    mode: int
    linkname: str

    @property
    def is_file(self) -> bool:
        return self.type in (tarfile.REGTYPE, tarfile.AREGTYPE)

    @property
    def is_dir(self) -> bool:
        return self.type == tarfile.DIRTYPE


class _Payload:
    """Reads exactly one member's payload, then its padding."""

    def __init__(self, reader: TarReader, size: int) -> None:
        self._reader = reader
        self._left = size

    def read(self, size: int = -1, /) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if size < 0 else min(size, self._left)
        data = self._reader._source.read(want)
        if not data:
            raise IntegrityError(f"{self._reader.what}: tar stream ends inside a member")
        self._left -= len(data)
        return data

    def skip(self) -> None:
        while self._left > 0:
            self.read(1 << 20)


class TarReader:
    def __init__(self, source: Source, what: str) -> None:
        self._source = source
        self.what = what

    def _block(self) -> bytes:
        return read_exactly(self._source, BLOCK)

    def _meta_payload(self, size: int) -> bytes:
        if size > _MAX_META:
            raise IntegrityError(f"{self.what}: tar extended header of {size} bytes refused")
        data = read_exactly(self._source, size)
        if len(data) != size:
            raise IntegrityError(f"{self.what}: tar stream ends inside an extended header")
        rest = size % BLOCK
        if rest:
            read_exactly(self._source, BLOCK - rest)
        return data

    def members(self) -> Iterator[tuple[Member, _Payload]]:
        pax: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        while True:
            block = self._block()
            if len(block) < BLOCK:
                raise IntegrityError(
                    f"{self.what}: tar stream is truncated (no end-of-archive marker)"
                )
            if block == bytes(BLOCK):
                self._check_trailer()
                return
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                raise IntegrityError(f"{self.what}: corrupt tar header ({exc})") from None
            if info.type == tarfile.XHDTYPE:
                pax.update(_parse_pax(self._meta_payload(info.size), self.what))
                continue
            if info.type == tarfile.XGLTYPE:
                self._meta_payload(info.size)
                continue
            if info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = _cstr(self._meta_payload(info.size))
                continue
            if info.type == tarfile.GNUTYPE_LONGLINK:
                long_link = _cstr(self._meta_payload(info.size))
                continue
            name = pax.get("path", long_name if long_name is not None else info.name)
            linkname = pax.get("linkpath", long_link if long_link is not None else info.linkname)
            size = info.size
            if "size" in pax:
                try:
                    size = int(pax["size"])
                except ValueError:
                    raise IntegrityError(f"{self.what}: bad PAX size for {name!r}") from None
            pax, long_name, long_link = {}, None, None
            if info.type == tarfile.DIRTYPE:
                # WAL-G names directories without a trailing slash; the root is "/".
                name = name.rstrip("/") or "/"
            if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                size = (
                    0 if info.type in (tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE) else size
                )
            member = Member(name, info.type, size, info.mode, linkname)
            payload = _Payload(self, size)
            yield member, payload
            payload.skip()
            rest = size % BLOCK
            if rest and len(read_exactly(self._source, BLOCK - rest)) != BLOCK - rest:
                raise IntegrityError(f"{self.what}: tar stream ends inside member padding")

    def _check_trailer(self) -> None:
        while True:
            data = self._source.read(1 << 16)
            if not data:
                return
            if data.count(0) != len(data):
                raise IntegrityError(f"{self.what}: non-zero data after the end of the tar archive")


def _cstr(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _parse_pax(data: bytes, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            raise IntegrityError(f"{what}: corrupt PAX header")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise IntegrityError(f"{what}: corrupt PAX header") from None
        if length <= 0 or pos + length > len(data):
            raise IntegrityError(f"{what}: corrupt PAX header")
        record = data[space + 1 : pos + length - 1]
        key, sep, value = record.partition(b"=")
        if not sep:
            raise IntegrityError(f"{what}: corrupt PAX record")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out
