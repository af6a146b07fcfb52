"""A storage that forwards every call to a real backend and records the listings and point
lookups made, so that tests can pin how many storage calls a command costs on a large archive
(on object storage each listing of ``wal_005/`` is one request per 1,000 objects)."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager

from walg.storage.base import ObjectInfo, Storage
from walg.streams.base import Sink, Source


class CountingStorage(Storage):
    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.location = inner.location
        self.listed: list[str] = []  # each list() call's prefix, in order
        self.stats = 0  # stat() calls (exists() included)
        self.reads = 0

    def open_write(self, key: str, overwrite: bool = True) -> AbstractContextManager[Sink]:
        return self.inner.open_write(key, overwrite)

    def open_read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AbstractContextManager[Source]:
        self.reads += 1
        return self.inner.open_read(key, offset, length)

    def stat(self, key: str) -> ObjectInfo:
        self.stats += 1
        return self.inner.stat(key)

    def list(
        self,
        prefix: str,
        recursive: bool = True,
        unlisted: list[str] | None = None,
        *,
        limit: int | None = None,
    ) -> list[ObjectInfo]:
        self.listed.append(prefix)
        return self.inner.list(prefix, recursive, unlisted, limit=limit)

    def delete(self, keys: Iterable[str]) -> None:
        self.inner.delete(keys)

    def check_available(self) -> None:
        self.inner.check_available()

    def local_path(self, key: str) -> str | None:
        return self.inner.local_path(key)
