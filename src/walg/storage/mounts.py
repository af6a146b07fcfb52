"""Mount points the system table (``/etc/fstab``) lists, and whether a storage folder lies on one
that is not mounted.

An unmounted volume leaves its mount point behind as an empty folder of the file system
beneath. A ``WALG_FILE_PREFIX`` that names the mount point itself (or a folder made under it
while it was not mounted) then exists, so the check that the folder is there passes: archived
WAL would go to the wrong disk, hidden once the volume is mounted again, and a restore would
read an empty archive, where "not in the archive" makes PostgreSQL end recovery early.
pgBackRest guards against this with an info file in its repository; WAL-G's layout has none,
so walg asks the system table which of the folder's ancestors should be mount points.
"""

from __future__ import annotations

import os

FSTAB = "/etc/fstab"

# Second fields that are no place in the tree.
_NOT_PATHS = {"none", "swap"}


def fstab_mount_points(text: str) -> frozenset[str]:
    """The mount points (second fields) of an fstab text, normalized; ``/`` left out."""
    points = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0].startswith("#"):
            continue
        point = _unescape(fields[1])
        if point in _NOT_PATHS or not point.startswith("/"):
            continue
        point = os.path.normpath(point)
        if point != "/":
            points.add(point)
    return frozenset(points)


class MountCheck:
    """Which listed mount point at or above a folder is not mounted, with the table re-read
    only when it changes (the check runs before every object written)."""

    def __init__(self, fstab: str = FSTAB) -> None:
        self.fstab = fstab
        self._seen: tuple[int, int, int] | None = None
        self._points: frozenset[str] = frozenset()

    def _mount_points(self) -> frozenset[str]:
        try:
            st = os.stat(self.fstab)
            identity = (st.st_ino, st.st_size, st.st_mtime_ns)
            if identity != self._seen:
                with open(self.fstab, encoding="utf-8", errors="surrogateescape") as handle:
                    self._points = fstab_mount_points(handle.read(1 << 20))
                self._seen = identity
        except OSError:
            # No table (a container): nothing is known to be missing.
            self._points, self._seen = frozenset(), None
        return self._points

    def unmounted(self, folder: str) -> str | None:
        """The listed mount point at or above ``folder`` (symbolic links resolved) that is
        not mounted now; None when there is none."""
        points = self._mount_points()
        if not points:
            return None
        path = os.path.realpath(folder)
        while path != os.path.dirname(path):
            # ismount misses a bind mount within one file system; the kernel's table does not.
            if path in points and not os.path.ismount(path) and not _in_mount_table(path):
                return path
            path = os.path.dirname(path)
        return None


def _in_mount_table(path: str, table: str = "/proc/self/mountinfo") -> bool:
    """Is ``path`` a mount point in this process's mount table? True when the table cannot
    be read: a folder is refused only on positive knowledge."""
    try:
        with open(table, encoding="utf-8", errors="surrogateescape") as handle:
            for line in handle:
                fields = line.split(" ", 5)
                if len(fields) > 4 and _unescape(fields[4]) == path:
                    return True
    except OSError:
        return True
    return False


def _unescape(field: str) -> str:
    """A path as fstab and mountinfo write it: a space, tab, newline or backslash is written
    \\040, \\011, \\012, \\134 (re only then: wal-push loads this module on every call)."""
    if "\\" not in field:
        return field
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
