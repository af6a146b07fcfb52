"""backup-fetch: download, decompress, check and extract a backup into an empty directory.

Regular partitions are extracted in parallel (``WALG_DOWNLOAD_CONCURRENCY``);
``backup_label.tar`` and then ``pg_control.tar`` only after all of them, each once what came
before is durable, so a half-restored directory is never startable. Every file with a recorded
checksum is verified while written, every stored object against its recorded size (before it is
downloaded) and hash. Every object the metadata names
must be in storage before anything is written, and a file listed in the metadata but found in
no partition fails the restore, naming it. A WAL directory the backup lacks (WAL-G drops a
symlinked pg_wal) is created empty. DEST and the tablespace locations are checked before
anything is created; one that cannot be used is named in one line. When the tablespace links
are made from a spec, ``tablespace_map`` is not restored (see :func:`backup_fetch`).
"""

from __future__ import annotations

import contextlib
import os
import stat
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from walg.core.log import get_logger
from walg.core.metadata import FilesMetadata, TablespaceSpec
from walg.core.naming import (
    BACKUP_LABEL_MEMBER,
    BACKUP_LABEL_TAR_RE,
    PG_CONTROL_MEMBER,
    PG_CONTROL_TAR_RE,
    TABLESPACE_MAP_MEMBER,
    partitions_prefix,
    tar_object_extension,
)
from walg.errors import (
    DestinationError,
    IntegrityError,
    ObjectNotFound,
    UsageError,
    WalgError,
)
from walg.ops import catalog
from walg.ops.pipeline import SIGNAL_POLL, download, leave_workers
from walg.settings import Settings
from walg.storage.base import ObjectInfo, Storage
from walg.streams.compression import codec_for_extension
from walg.tarball.extract import Extractor, fsync_tree, safe_relative

log = get_logger(__name__)


@dataclass(frozen=True)
class BackupFetchResult:
    """What a backup-fetch restored and how much of it was checked."""

    name: str
    destination: str
    objects: int
    files: int
    bytes: int
    verified_files: int


def prepare_destination(dest: Path) -> tuple[bool, int]:
    """Make ``dest`` an empty directory of mode 0700 and lock it for this run: whether it had
    to be created, and the descriptor holding the lock (close it when the restore is over).

    The lock (an exclusive ``flock`` on the folder itself, so nothing is added to DEST) keeps
    out a second backup-fetch into the same DEST: started before the first one's first file
    landed, it found DEST empty too, and both wrote into it, leaving the files of two backups
    (and the last one's ``pg_control`` and ``backup_label``) in a directory PostgreSQL starts.
    """
    created = False
    try:
        if dest.exists():
            if not dest.is_dir():
                raise UsageError(f"destination {dest} exists and is not a directory")
        else:
            try:
                dest.mkdir(parents=True, mode=0o700)
                created = True
            except FileExistsError:
                if not dest.is_dir():
                    raise UsageError(f"destination {dest} exists and is not a directory") from None
            except OSError as exc:
                raise DestinationError(
                    f"cannot create the destination {dest}: {exc.strerror or exc}"
                ) from None
        lock = _lock_destination(dest)
        try:
            if any(dest.iterdir()):
                raise UsageError(f"destination {dest} is not empty; refusing to restore into it")
            os.chmod(dest, 0o700)
        except BaseException:
            os.close(lock)
            raise
    except OSError as exc:
        raise DestinationError(
            f"cannot use the destination {dest}: {exc.strerror or exc}"
        ) from None
    return created, lock


def _lock_destination(dest: Path) -> int:
    """An open descriptor of ``dest`` holding an exclusive ``flock``; refuse one held."""
    import fcntl

    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _flock_holder(os.fstat(fd))
        os.close(fd)
        who = f"process {holder}" if holder is not None else "another process"
        raise DestinationError(
            f"destination {dest} is being restored into by another backup-fetch ({who}); "
            "wait for it to end, or restore elsewhere"
        ) from None
    except OSError as exc:
        # A file system without locks (ENOLCK: NFS without its lock service) must not stop
        # a restore: only a lock another process holds refuses one.
        log.warning("cannot lock the destination %s (%s); restoring without", dest, exc)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _flock_holder(st: os.stat_result) -> int | None:
    """The process holding a ``flock`` on the file ``st`` is of, from /proc/locks; None if
    that cannot be told."""
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            for line in locks:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; "->" marks a waiter.
                if "->" in fields:
                    continue
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
                    return int(fields[4])
    except (OSError, ValueError):
        pass
    return None


def refuse_root_in_another_users_folder(path: Path) -> None:
    """Run as root, refuse to restore into ``path`` if another user can change a folder on
    the way to it (the path as the kernel resolves it, links followed).

    Such a user could put a symbolic link where root is about to make a folder, or rename a
    folder root made and put one there, and root would write the backup's files wherever it
    led. And a DEST that is another user's (the server's data directory) would get files of
    root's, mode 0600, which that server cannot read. A folder is safe when root owns it and
    no one else may write in it, or only with the sticky bit (as ``/tmp``). Others restore as
    themselves: the kernel keeps them out of what they may not change.
    """
    if os.geteuid() != 0:
        return
    unsafe = _folder_another_user_can_change(str(path))
    if unsafe is None:
        return
    folder, st = unsafe
    if st.st_uid != 0:
        import pwd

        try:
            user = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            user = str(st.st_uid)
        raise UsageError(
            f"backup-fetch runs as root, but {folder} is owned by {user}: the files restored "
            f"would be root's, which the server cannot read, and {user} could redirect root's "
            f"writes elsewhere with a symbolic link; run backup-fetch as {user} "
            f"(sudo -u {user} walg backup-fetch ...)"
        )
    raise UsageError(
        f"backup-fetch runs as root, but {folder} is writable by other users (mode "
        f"{stat.S_IMODE(st.st_mode):04o}, no sticky bit): any of them could redirect root's "
        "writes elsewhere with a symbolic link; restore into a folder only root may change, "
        "or run backup-fetch as the server's user"
    )


# Links followed at most, as the kernel's own limit (MAXSYMLINKS).
_MAX_LINKS = 40


def _folder_another_user_can_change(path: str) -> tuple[str, os.stat_result] | None:
    """The first folder on the way to ``path`` that someone but root may change, with its
    stat; None if there is none. Components that do not exist yet are root's to make."""
    # Not normalised: ".." is taken from the folder reached, as the kernel takes it.
    pending = [c for c in os.path.join(os.getcwd(), path).split("/") if c not in ("", ".")]
    current = "/"
    links = 0
    while True:
        st = os.lstat(current)
        if stat.S_ISDIR(st.st_mode):
            writable_by_others = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            if st.st_uid != 0 or (writable_by_others and not st.st_mode & stat.S_ISVTX):
                return current, st
        if not pending:
            return None
        step = pending.pop(0)
        if step == "..":
            current = os.path.dirname(current)  # checked already, on the way down
            continue
        following = os.path.join(current, step)
        try:
            st = os.lstat(following)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(st.st_mode):
            # The link itself is safe: its folder was checked above. Where it leads is not.
            links += 1
            if links > _MAX_LINKS:
                raise UsageError(f"too many symbolic links on the way to {path}")
            target = os.readlink(following)
            base = target if target.startswith("/") else os.path.join(current, target)
            pending = [c for c in base.split("/") if c not in ("", ".")] + pending
            current = "/"
            continue
        current = following


def _check_tablespaces(dest: Path, spec: TablespaceSpec) -> None:
    """Refuse a spec whose locations cannot be filled, before anything is created.

    A refusal must leave DEST as it was (empty or missing), so that the same command can be
    run again once the DBA has made room or written a --restore-spec.
    """
    seen: dict[Path, str] = {}
    for ts in spec.tablespaces:
        if not ts.name.isdigit():
            raise IntegrityError(f"tablespace spec names {ts.name!r}, which is not an OID")
        location = Path(ts.location)
        if not location.is_absolute():
            raise UsageError(f"tablespace location {ts.location} is not an absolute path")
        if location in seen:
            raise UsageError(
                f"tablespaces {seen[location]} and {ts.name} would both be restored into "
                f"{location}; relocate one with --restore-spec"
            )
        seen[location] = ts.name
        if location == dest or dest in location.parents:
            raise UsageError(
                f"tablespace location {location} is inside the destination {dest}; "
                "relocate it with --restore-spec"
            )
        try:
            _check_location_usable(location)
        except OSError as exc:
            raise DestinationError(
                f"cannot use tablespace location {location}: {exc.strerror or exc}"
            ) from None


def _check_location_usable(location: Path) -> None:
    """Refuse a location that is not an empty directory, or that this user cannot create
    (its nearest existing ancestor must be a folder it may write in) or fill."""
    if location.exists():
        if not location.is_dir() or any(location.iterdir()):
            raise UsageError(
                f"tablespace location {location} exists and is not an empty directory; "
                "relocate it with --restore-spec"
            )
        if not os.access(location, os.W_OK | os.X_OK):
            raise DestinationError(
                f"cannot write in tablespace location {location}: permission denied; "
                "relocate it with --restore-spec or change its owner"
            )
        return
    ancestor = location.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(
            f"tablespace location {location} cannot be created: {ancestor} is not a directory; "
            "relocate it with --restore-spec"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise DestinationError(
            f"cannot create tablespace location {location}: permission denied in {ancestor}; "
            "relocate it with --restore-spec or change that folder's owner"
        )


def _prepare_tablespaces(dest: Path, spec: TablespaceSpec) -> list[Path]:
    """Create each tablespace location (checked by _check_tablespaces) and its link.

    On failure (the folders may have changed since they were checked) what was made here is
    removed again, so that DEST is as empty as it was and the same command can be rerun.
    """
    made: list[Path] = []
    try:
        tblspc = dest / "pg_tblspc"
        tblspc.mkdir(mode=0o700)
        made.append(tblspc)
        locations = []
        for ts in spec.tablespaces:
            location = Path(ts.location)
            try:
                for folder in _missing_folders(location):
                    folder.mkdir(mode=0o700)
                    made.append(folder)
                os.chmod(location, 0o700)
            except OSError as exc:
                raise DestinationError(
                    f"cannot create tablespace location {location}: {exc.strerror or exc}"
                ) from None
            link = tblspc / ts.name
            link.symlink_to(location)
            made.append(link)
            locations.append(location)
    except BaseException:
        for path in reversed(made):
            with contextlib.suppress(OSError):
                if path.is_symlink():
                    path.unlink()
                else:
                    path.rmdir()
        raise
    return locations


def _missing_folders(location: Path) -> list[Path]:
    """The folders of ``location`` (itself included) that do not exist yet, outermost first."""
    missing = []
    current = location
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    return list(reversed(missing))


def backup_fetch(
    settings: Settings,
    storage: Storage,
    destination: str,
    name_or_latest: str,
    restore_spec: TablespaceSpec | None = None,
) -> BackupFetchResult:
    dest = Path(destination).absolute()
    fsync = not settings.tar_disable_fsync  # checked when first read: before anything is done
    name = catalog.resolve(storage, name_or_latest)
    sentinel = catalog.read_sentinel(storage, name)
    if sentinel.is_delta:
        raise UsageError(
            f"backup {name} is a delta backup; restoring delta backups is not supported yet"
        )
    files_meta = catalog.read_files_metadata(storage, name, sentinel)
    objects = _listed_objects(files_meta, storage.list(partitions_prefix(name)), name)
    lists = _classify(objects, name)
    _check_objects_present(storage, files_meta, objects, name)

    spec = restore_spec or sentinel.spec
    if spec:
        _check_tablespaces(dest, spec)
    places = [dest, *(Path(ts.location) for ts in spec.tablespaces)] if spec else [dest]
    for place in places:
        refuse_root_in_another_users_folder(place)
    created, lock = prepare_destination(dest)
    try:
        # Again once DEST exists: one made meanwhile by another user is refused, not used.
        refuse_root_in_another_users_folder(dest)
        return _restore_locked(
            settings, storage, dest, name, files_meta, objects, spec, created, fsync, lists
        )
    finally:
        os.close(lock)


def _restore_locked(
    settings: Settings,
    storage: Storage,
    dest: Path,
    name: str,
    files_meta: FilesMetadata,
    objects: list[ObjectInfo],
    spec: TablespaceSpec | None,
    created: bool,
    fsync: bool,
    lists: tuple[list[ObjectInfo], ObjectInfo | None, ObjectInfo | None],
) -> BackupFetchResult:
    """The restore itself, into ``dest`` prepared and locked by :func:`prepare_destination`;
    ``lists`` are the backup's objects as :func:`_classify` sorts them."""
    regular, control, label = lists
    try:
        locations = _prepare_tablespaces(dest, spec) if spec else []
    except OSError as exc:
        _undo_destination(dest, created)
        raise DestinationError(f"cannot prepare {dest}: {exc.strerror or exc}") from None
    except BaseException:
        _undo_destination(dest, created)
        raise
    # The links made here are the tablespaces' truth. PostgreSQL, finding a tablespace_map at
    # start-up, would replace each link by the path the map names: the unresolved path the
    # source server saw, which may not exist here or may lead elsewhere than where the files
    # were put. So, as pg_basebackup does in plain format (it makes the links itself and
    # asks for no map), the map is not restored whenever the links are made from a spec.
    dropping_map = spec is not None
    wanted = _wanted_members(files_meta, dropping_map=dropping_map)
    extractor = Extractor(dest, files_meta.checksum_of, wanted, fsync=fsync)
    log.info("restoring backup %s into %s (%d objects)", name, dest, len(objects))

    try:
        _extract_all(
            storage, extractor, files_meta, regular, control, label, settings, dropping_map
        )
    except BaseException:
        extractor.abandon()
        raise
    extractor.finish()

    _check_all_restored(files_meta, extractor, dropping_map)
    if fsync:
        fsync_tree(dest)
        for location in locations:
            fsync_tree(location)
    log.info(
        "restored %s: %d files, %d bytes, %d checked against their checksums",
        name,
        extractor.files,
        extractor.bytes,
        len(extractor.verified),
    )
    return BackupFetchResult(
        name=name,
        destination=str(dest),
        objects=len(objects),
        files=extractor.files,
        bytes=extractor.bytes,
        verified_files=len(extractor.verified),
    )


def _undo_destination(dest: Path, created: bool) -> None:
    """Remove ``dest`` again if this run created it (it is empty by now)."""
    if created:
        with contextlib.suppress(OSError):
            dest.rmdir()


def _extract_all(
    storage: Storage,
    extractor: Extractor,
    files_meta: FilesMetadata,
    regular: list[ObjectInfo],
    control: ObjectInfo | None,
    label: ObjectInfo | None,
    settings: Settings,
    dropping_map: bool,
) -> None:
    workers = max(1, min(settings.download_concurrency, len(regular) or 1))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch")
    futures: list[Future[None]] = []
    try:
        # Submitted inside: a signal between two submissions must cancel those already in.
        for info in regular:
            futures.append(pool.submit(_extract_object, storage, extractor, files_meta, info))
        while True:
            # In slices: see walg.ops.pipeline.SIGNAL_POLL.
            done, pending = wait(futures, timeout=SIGNAL_POLL, return_when=FIRST_EXCEPTION)
            if not pending or any(f.exception() is not None for f in done):
                break
    except BaseException:
        # SIGINT / SIGTERM: stop the workers, and leave one that storage holds.
        extractor.cancelled.set()
        leave_workers(pool, futures)
        raise
    failure = next((f.exception() for f in done if f.exception() is not None), None)
    if failure is not None:
        extractor.cancelled.set()
        for f in futures:
            f.cancel()
    pool.shutdown(wait=True)
    if failure is not None:
        raise failure
    # Checked before pg_control lands, so that a restore missing files is never startable.
    _check_files_restored(files_meta, extractor)
    _ensure_wal_directory(extractor.dest)
    # Everything else is durable before pg_control lands: a restore interrupted by a crash
    # never leaves a startable directory with missing data. That includes backup_label: with
    # pg_control and without it, PostgreSQL would start recovery from pg_control's checkpoint,
    # later than the backup's start, and replay too little (a directory of torn pages).
    extractor.barrier()
    if label is not None:
        _extract_object(storage, extractor, files_meta, label)
        _check_all_restored(files_meta, extractor, dropping_map, but=PG_CONTROL_MEMBER)
        extractor.barrier()
    if control is not None:
        _extract_object(storage, extractor, files_meta, control)


def _ensure_wal_directory(dest: Path) -> None:
    """Create an empty pg_wal (pg_xlog before PostgreSQL 10) if the backup had none.

    WAL-G archives nothing for a pg_wal that is a symbolic link (``initdb --waldir``), and
    walg did the same before it archived such a link as a directory: without this, the
    restored cluster would refuse to start ("required WAL directory does not exist").
    """
    try:
        with open(dest / "PG_VERSION", "rb") as handle:  # a forged one may be of any size
            version = handle.read(64).decode("utf-8", "replace").strip()
    except FileNotFoundError:
        return
    try:
        major = int(version.split(".", 1)[0])
    except ValueError:
        raise IntegrityError(f"restored PG_VERSION holds {version[:20]!r}, not a version") from None
    wal_dir = dest / ("pg_wal" if major >= 10 else "pg_xlog")
    if wal_dir.is_symlink() or wal_dir.exists():
        return
    log.info("the backup has no %s directory; creating an empty one", wal_dir.name)
    wal_dir.mkdir(mode=0o700)
    os.chmod(wal_dir, 0o700)


def _listed_objects(
    files_meta: FilesMetadata, objects: list[ObjectInfo], name: str
) -> list[ObjectInfo]:
    """The objects the backup's metadata names, when it names them; a warning for others.

    Objects left under tar_partitions/ by an interrupted run of the same name (a standby
    names backups by restart point) must not be extracted over the backup's own files.
    WAL-G's TarFileSets leaves pg_control's tar out: one is kept unless the list names one.
    Metadata that names no object (WAL-G before files_metadata.json) leaves all of them.
    """
    named = set(files_meta.objects) | set(files_meta.tar_file_sets)
    if not named:
        return objects
    names_control = any(PG_CONTROL_TAR_RE.fullmatch(n) for n in named)
    kept: list[ObjectInfo] = []
    extra: list[str] = []
    for info in objects:
        base = info.key.rsplit("/", 1)[-1]
        if base in named or (not names_control and PG_CONTROL_TAR_RE.fullmatch(base)):
            kept.append(info)
        else:
            extra.append(base)
    if extra:
        log.warning(
            "backup %s: ignoring %d objects its metadata does not list (left by an "
            "interrupted backup of the same name?): %s",
            name,
            len(extra),
            _listing(sorted(extra)),
        )
    return kept


def _classify(
    objects: list[ObjectInfo], name: str
) -> tuple[list[ObjectInfo], ObjectInfo | None, ObjectInfo | None]:
    regular: list[ObjectInfo] = []
    control = label = None
    for info in objects:
        base = info.key.rsplit("/", 1)[-1]
        if PG_CONTROL_TAR_RE.fullmatch(base):
            control = info
        elif BACKUP_LABEL_TAR_RE.fullmatch(base):
            label = info
        else:
            regular.append(info)
    # Biggest first keeps the parallel workers evenly loaded until the end.
    regular.sort(key=lambda o: o.size, reverse=True)
    if control is None and _pg_control_required(name):
        raise IntegrityError(f"backup {name}: expected a pg_control archive, but it is missing")
    return regular, control, label


def _pg_control_required(name: str) -> bool:
    # WAL-G's heuristic: WAL-E style names (base_<seg>_<offset>) carry pg_control in a part.
    return "_D_" in name or name.count("_") < 2


def _check_objects_present(
    storage: Storage, files_meta: FilesMetadata, objects: list[ObjectInfo], name: str
) -> None:
    """Every object the metadata names must be in storage before anything is extracted.

    walg's own backups list their objects with checksums (WalgObjects); WAL-G's list only
    their members' tars (TarFileSets, which leave out pg_control's: its presence is decided
    by the backup name, see _classify).
    """
    present = {o.key.rsplit("/", 1)[-1] for o in objects}
    # Sizes too, before DEST is touched: the listing tells them without a download, and an
    # object of another size is not the one recorded; neither its download nor what it
    # expands to is worth a disk.
    for info in objects:
        recorded = files_meta.objects.get(info.key.rsplit("/", 1)[-1])
        if recorded is not None and recorded.stored.size != info.size:
            raise IntegrityError(
                f"object {info.key.rsplit('/', 1)[-1]} is {info.size} bytes in storage, but "
                f"the backup metadata records {recorded.stored.size}; refusing it before "
                "downloading"
            )
    named = set(files_meta.objects)
    named.update(o for o in files_meta.tar_file_sets if not PG_CONTROL_TAR_RE.fullmatch(o))
    missing = sorted(named - present)
    for base in missing[:5]:
        # A listing descends into a folder at an object's path, so the object looks missing;
        # the lookup names what is in its place (a folder is not "not there").
        with contextlib.suppress(ObjectNotFound):
            storage.stat(partitions_prefix(name) + base)
    if missing:
        raise IntegrityError(
            f"backup {name} is incomplete: {_listing(missing)} missing from storage "
            f"(under {partitions_prefix(name)})"
        )


def _listing(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _wanted_members(files_meta: FilesMetadata, dropping_map: bool) -> set[str] | None:
    if not files_meta.files:
        return None
    wanted = set(files_meta.files)
    wanted.update({PG_CONTROL_MEMBER, BACKUP_LABEL_MEMBER})
    if not dropping_map:
        wanted.add(TABLESPACE_MAP_MEMBER)
    return wanted


def _extract_object(
    storage: Storage, extractor: Extractor, files_meta: FilesMetadata, info: ObjectInfo
) -> None:
    object_name = info.key.rsplit("/", 1)[-1]
    codec = codec_for_extension(tar_object_extension(object_name))
    what = f"object {object_name}"
    recorded = files_meta.objects.get(object_name)
    try:
        with download(storage, info.key, codec, what) as dl:
            extractor.extract(dl.reader, what)
            stored = dl.stored_checksum()
    except WalgError:
        raise
    except OSError as exc:
        raise IntegrityError(f"{what}: extraction failed: {exc}") from None
    if recorded is not None and recorded.stored != stored:
        raise IntegrityError(
            f"{what} does not match its checksum in the backup metadata "
            f"({stored.size} bytes stored, {recorded.stored.size} recorded)"
        )
    log.debug("extracted %s", object_name)


def _check_files_restored(files_meta: FilesMetadata, extractor: Extractor) -> None:
    """Fail, naming them, if files ``Files`` lists are not in the regular partitions.

    Files with walg's checksums must have been written and verified. Every other entry of
    WAL-G's ``Files`` (it lists files, directories and symbolic links, with no type) must at
    least have been met in some tar, unless it is skipped (a delta's unchanged file) or stands
    for a directory that exists now: a lost partition that no other key names shows up here.
    """
    missing = set()
    for member, description in files_meta.files.items():
        if description.checksum is not None:
            if member not in extractor.verified:
                missing.add(member)
        elif not (
            description.is_skipped
            or member in extractor.seen
            or (extractor.dest / safe_relative(member)).is_dir()
        ):
            missing.add(member)
    _fail_if_missing(missing)


def _check_all_restored(
    files_meta: FilesMetadata, extractor: Extractor, dropping_map: bool, but: str = ""
) -> None:
    """After the special tars too: the members walg recorded checksums for outside Files
    (all ``but`` one)."""
    expected = set(files_meta.utility_files)
    expected.discard(but)
    if dropping_map:
        expected.discard(TABLESPACE_MAP_MEMBER)
    _fail_if_missing(expected - extractor.verified)


def _fail_if_missing(missing: set[str]) -> None:
    if missing:
        raise IntegrityError(
            f"files listed in the backup metadata were not restored: {_listing(sorted(missing))}"
        )
