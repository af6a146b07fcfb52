"""Walking a data directory the way WAL-G does.

Yields one :class:`Entry` per tar member: the root directory ``/``, every directory and regular
file, with member names relative to PGDATA and a leading ``/``. A directory named in
:data:`EXCLUDED_NAMES` is kept as an empty directory member at any depth (``pgsql_tmp`` in a
database's folder), as in WAL-G; a file so named is dropped at the top of PGDATA only, where
the server keeps it (``postmaster.pid``, ``recovery.conf``). WAL-G drops it at any depth: an
operator's ``conf.d/recovery.conf``, included from ``postgresql.conf``, was missing from the
restore, its settings gone or the server unable to start. A top-level ``pg_wal`` (or
``pg_xlog``) that is a symbolic link to a directory is kept as an empty directory member too.
``pg_tblspc/<oid>`` links are followed and their targets walked under ``/pg_tblspc/<oid>/…``;
the links themselves are not members but are returned as the tablespace spec.

Order: the root, then ``/pg_tblspc`` and its tablespaces, then the rest of PGDATA by name, as
pg_basebackup reads them. ``ALTER DATABASE … SET TABLESPACE`` is not WAL-logged file by file:
recovery re-copies the database's old directory, so the old directory must be read after the
new one could have appeared (tablespaces before ``base`` when moving into ``pg_default``);
the backup also checks that no database moved (see ``ops.backup_push``).
``global/pg_control`` is held back: the caller archives it last, in its own tar. Files that
vanish during the walk (dropped relations) are skipped. Other symbolic links, FIFOs, sockets
and devices are not archived (WAL-G's walk drops them too) but listed in :attr:`Walk.skipped`
for the caller to report: a symlinked ``postgresql.conf`` is missing from the restore. PGDATA
itself may be given as a symbolic link; the root member then has the directory's mode.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from walg.core.metadata import Tablespace, TablespaceSpec
from walg.core.naming import PG_CONTROL_MEMBER
from walg.errors import UsageError, WalgError

EXCLUDED_NAMES = frozenset(
    {
        "log",
        "pg_log",
        "pg_xlog",
        "pg_wal",
        "pgsql_tmp",
        "pg_dynshmem",
        "pg_notify",
        "pg_replslot",
        "pg_serial",
        "pg_stat_tmp",
        "pg_snapshots",
        "pg_subtrans",
        "postgresql.auto.conf.tmp",
        "postmaster.pid",
        "postmaster.opts",
        "recovery.conf",
        "standby.signal",
    }
)

# The WAL directory (pg_xlog before PostgreSQL 10): when it is a symbolic link it is still
# archived, as an empty directory (see _wal_dir_link).
WAL_DIR_MEMBERS = frozenset({"/pg_wal", "/pg_xlog"})

KIND_FILE = "file"
KIND_DIR = "dir"


@dataclass(frozen=True, slots=True)
class Entry:
    """One file, directory or link of the data directory as a backup sees it."""

    member: str
    path: str
    kind: str
    size: int
    mode: int
    mtime_ns: int
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class Skipped:
    """Something in PGDATA that is not archived: its member name and what it is."""

    member: str
    what: str


@dataclass
class Walk:
    """The result of walking PGDATA: members in walk order, plus what is held back."""

    entries: list[Entry] = field(default_factory=list)
    pg_control: Entry | None = None
    tablespaces: list[Tablespace] = field(default_factory=list)
    total_size: int = 0
    skipped: list[Skipped] = field(default_factory=list)

    def spec(self, base: str) -> TablespaceSpec | None:
        if not self.tablespaces:
            return None
        return TablespaceSpec(base.rstrip("/"), tuple(self.tablespaces))


def check_data_directory(path: str) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise UsageError(f"data directory {path} does not exist or is not a directory")
    for required in ("PG_VERSION", "global/pg_control"):
        if not (root / required).is_file():
            raise UsageError(f"{path} is not a PostgreSQL data directory (no {required})")
    return root


def _entry(member: str, path: str, st: os.stat_result, kind: str) -> Entry:
    return Entry(
        member=member,
        path=path,
        kind=kind,
        size=st.st_size if kind == KIND_FILE else 0,
        mode=stat.S_IMODE(st.st_mode),
        mtime_ns=st.st_mtime_ns,
        uid=st.st_uid,
        gid=st.st_gid,
    )


def walk(pgdata: str) -> Walk:
    root = check_data_directory(pgdata)
    result = Walk()
    st = os.stat(root)  # a link's own mode would be 0777
    result.entries.append(_entry("/", str(root), st, KIND_DIR))
    result.total_size += st.st_size
    _walk_dir(str(root), "", result)
    return result


def _walk_dir(path: str, member_dir: str, result: Walk) -> None:
    try:
        # Names only: a scandir entry keeps its stat result, and a database folder of 100,000
        # relation files held that way cost 60 MB.
        names = sorted(os.listdir(path))
        if not member_dir:
            names.sort(key=lambda name: name != "pg_tblspc")  # stable: the rest stays sorted
    except FileNotFoundError:
        return
    except OSError as exc:
        raise WalgError(
            f"cannot read directory {path} of the data directory: {exc.strerror or exc}"
        ) from None
    for name in names:
        member = f"{member_dir}/{name}"
        child_path = os.path.join(path, name)
        try:
            st = os.lstat(child_path)
        except FileNotFoundError:
            continue
        result.total_size += st.st_size
        if name in EXCLUDED_NAMES and (member_dir == "" or stat.S_ISDIR(st.st_mode)):
            if stat.S_ISDIR(st.st_mode):
                result.entries.append(_entry(member, child_path, st, KIND_DIR))
            elif member in WAL_DIR_MEMBERS and stat.S_ISLNK(st.st_mode):
                _wal_dir_link(child_path, member, result)
            continue
        if member_dir == "/pg_tblspc" and stat.S_ISLNK(st.st_mode):
            _walk_tablespace(child_path, name, member, result)
            continue
        if stat.S_ISDIR(st.st_mode):
            result.entries.append(_entry(member, child_path, st, KIND_DIR))
            _walk_dir(child_path, member, result)
        elif stat.S_ISREG(st.st_mode):
            entry = _entry(member, child_path, st, KIND_FILE)
            if member == PG_CONTROL_MEMBER:
                result.pg_control = entry
            else:
                result.entries.append(entry)
        else:
            result.skipped.append(Skipped(member, special_kind(child_path, st.st_mode)))


def special_kind(path: str, mode: int) -> str:
    """What the entry at ``path`` (of ``mode``) is, being neither a file nor a folder."""
    if stat.S_ISLNK(mode):
        try:
            return f"symbolic link to {os.readlink(path)}"
        except OSError:
            return "symbolic link"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device"


def _wal_dir_link(path: str, member: str, result: Walk) -> None:
    """Archive a symlinked pg_wal (``initdb --waldir``) as an empty 0700 directory.

    PostgreSQL refuses to start without pg_wal, and a restore cannot recreate the link (its
    target is a path of the backed-up host), so the member stands for the directory as
    pg_basebackup's does. WAL-G drops the link entirely (see the format notes, §6.1); its
    backups are repaired at restore instead.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"{path} is a symbolic link to a missing directory") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path} is a symbolic link to something that is not a directory")
    entry = _entry(member, path, st, KIND_DIR)
    result.entries.append(dataclasses.replace(entry, mode=0o700))


def _walk_tablespace(link_path: str, oid: str, member: str, result: Walk) -> None:
    target = os.path.realpath(link_path)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        raise UsageError(f"tablespace link {link_path} points to missing {target}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"tablespace link {link_path} does not point to a directory")
    result.tablespaces.append(Tablespace(oid, target.rstrip("/"), f"pg_tblspc/{oid}"))
    result.entries.append(_entry(member, target, st, KIND_DIR))
    _walk_dir(target, member, result)
