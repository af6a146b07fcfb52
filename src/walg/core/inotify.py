"""Learning at once of files created in a directory: Linux inotify, through ctypes.

The daemon's WAL follower polls the segment being written; a poll interval's worth of waiting
after PostgreSQL marks a segment ``.ready`` would be added to the archive_command that waits
for it. A :class:`DirWatch` calls back as soon as a name appears. Where inotify is not
available (not Linux, no libc symbol, a watch limit reached) :meth:`DirWatch.start` returns
None and callers keep polling.
"""

from __future__ import annotations

import os
import select
import struct
import threading

from walg.core.log import get_logger

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    from collections.abc import Callable

log = get_logger(__name__)

IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


def parse_events(data: bytes) -> list[str]:
    """The names in a buffer of inotify events; ``""`` for an event without a name (overflow:
    something may have been missed)."""
    names: list[str] = []
    offset = 0
    while offset + EVENT.size <= len(data):
        _wd, mask, _cookie, length = EVENT.unpack_from(data, offset)
        offset += EVENT.size
        raw = data[offset : offset + length].split(b"\0", 1)[0]
        offset += length
        names.append("" if mask & IN_Q_OVERFLOW else os.fsdecode(raw))
    return names


class DirWatch:
    """Calls ``on_name(name)`` from its own thread for each file created in, or moved into,
    ``path`` (``""`` when the kernel's queue overflowed)."""

    def __init__(self, fd: int, path: str, on_name: Callable[[str], None]) -> None:
        self._fd = fd
        self._path = path
        self._on_name = on_name
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="dir-watch", daemon=True)

    @classmethod
    def start(cls, path: str, on_name: Callable[[str], None]) -> DirWatch | None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            init, add = libc.inotify_init1, libc.inotify_add_watch
        except (ImportError, OSError, AttributeError) as exc:
            log.debug("no inotify (%s): polling %s", exc, path)
            return None
        fd = init(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            log.debug("inotify_init1: %s: polling %s", os.strerror(ctypes.get_errno()), path)
            return None
        if add(fd, os.fsencode(path), IN_CREATE | IN_MOVED_TO) < 0:
            log.debug("inotify_add_watch %s: %s: polling", path, os.strerror(ctypes.get_errno()))
            os.close(fd)
            return None
        watch = cls(fd, path, on_name)
        watch._thread.start()
        return watch

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join()
        for fd in (self._fd, self._stop_r, self._stop_w):
            os.close(fd)

    def _run(self) -> None:
        while True:
            readable, _, _ = select.select([self._fd, self._stop_r], [], [])
            if self._stop_r in readable:
                return
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                continue
            for name in parse_events(data):
                try:
                    self._on_name(name)
                except Exception:
                    log.warning("watching %s: callback failed", self._path, exc_info=True)
