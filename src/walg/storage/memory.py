"""In-memory storage: real code for unit tests of everything above storage.

Keeps the same contract as every backend (atomic visibility on clean exit, NotFound at open).
Thread-safe. Modification times come from a counter-backed clock so LATEST is deterministic.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from walg.core.gotime import GoTime
from walg.errors import ObjectNotFound, StorageError
from walg.storage.base import ObjectInfo, Storage, check_key
from walg.streams.base import Sink, Source


class MemoryStorage(Storage):
    def __init__(self) -> None:
        self._objects: dict[str, tuple[bytes, GoTime]] = {}
        self._lock = threading.Lock()
        self._last_ns = 0
        self.location = "memory"

    def _now(self) -> GoTime:
        with self._lock:
            self._last_ns = max(time.time_ns(), self._last_ns + 1)
            return GoTime(self._last_ns)

    @contextmanager
    def open_write(self, key: str, overwrite: bool = True) -> Iterator[Sink]:
        check_key(key)
        buffer = io.BytesIO()
        yield buffer
        stamp = self._now()
        with self._lock:
            if not overwrite and key in self._objects:
                raise StorageError(f"{key} exists already; not replaced")
            self._objects[key] = (buffer.getvalue(), stamp)

    @contextmanager
    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[Source]:
        with self._lock:
            item = self._objects.get(key)
        if item is None:
            raise ObjectNotFound(key)
        data = item[0][offset:] if length is None else item[0][offset : offset + length]
        yield io.BytesIO(data)

    def check_available(self) -> None:
        pass  # a dictionary in this process is always there

    def stat(self, key: str) -> ObjectInfo:
        with self._lock:
            item = self._objects.get(key)
        if item is None:
            raise ObjectNotFound(key)
        return ObjectInfo(key, len(item[0]), item[1])

    def list(
        self,
        prefix: str,
        recursive: bool = True,
        unlisted: list[str] | None = None,
        *,
        limit: int | None = None,
    ) -> list[ObjectInfo]:
        with self._lock:
            items = list(self._objects.items())
        out: list[ObjectInfo] = []
        if limit is not None and limit < 1:
            return out
        for key, (data, stamp) in items:
            if key.startswith(prefix) and (recursive or "/" not in key[len(prefix) :]):
                out.append(ObjectInfo(key, len(data), stamp))
                if len(out) == limit:
                    break
        return out

    def delete(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._objects.pop(key, None)

    # Test helpers: direct access to stored bytes, for corrupting objects on purpose.

    def raw(self, key: str) -> bytes:
        return self._objects[key][0]

    def replace_raw(self, key: str, data: bytes) -> None:
        with self._lock:
            self._objects[key] = (data, self._objects[key][1])
