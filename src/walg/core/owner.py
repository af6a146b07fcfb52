"""Who owns what walg makes when it runs as root: the owner of the folder it is made in.

A DBA who runs walg by hand as root (a ``wal-push``, ``wal-fetch`` or ``backup-push``) on the
server's own storage folder or data directory would otherwise leave files and folders of
root's there: ``wal_005/`` or ``basebackups_005/`` where every later ``archive_command`` of the
server then fails, a segment in pg_wal PostgreSQL cannot open for writing once it recycles it,
prefetch folders and look-ahead records the server's own calls cannot use. Only root can give
files away, so for anyone else these do nothing.
"""

from __future__ import annotations

import os


def own_like_folder(made: int | str, folder: str) -> None:
    """Give ``made`` (an open file's descriptor, or a path, not followed if a link), which
    root has just made in ``folder``, that folder's owner and group."""
    if os.geteuid() != 0:
        return
    st = os.stat(folder)
    if (st.st_uid, st.st_gid) == (0, 0):
        return
    if isinstance(made, int):
        os.fchown(made, st.st_uid, st.st_gid)
    else:
        os.chown(made, st.st_uid, st.st_gid, follow_symlinks=False)


def make_folders(path: str) -> None:
    """``os.makedirs(path, 0o700, exist_ok=True)``, where root gives each folder it makes
    the owner of the folder the first of them is made in."""
    if os.geteuid() != 0:
        os.makedirs(path, mode=0o700, exist_ok=True)
        return
    missing = []
    folder = os.path.abspath(path)
    while not os.path.isdir(folder) and folder != os.path.dirname(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    os.makedirs(path, mode=0o700, exist_ok=True)
    for made in reversed(missing):
        own_like_folder(made, folder)
