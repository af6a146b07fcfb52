"""wal-fetch: restore one archived WAL file (the ``restore_command``).

A file already prefetched (and still valid) is moved into place; otherwise it is downloaded to
a temporary name beside the destination and renamed into place only when complete, so
PostgreSQL never sees a partial file. A file that is not archived raises
:class:`~walg.errors.WalNotFound` (exit 74), which PostgreSQL takes as "end of archive".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from walg.core.lsn import check_wal_file_name
from walg.errors import WalNotFound
from walg.ops.pipeline import download
from walg.ops.wal import find_wal_object
from walg.ops.wal_prefetch import prefetch_root, take_prefetched
from walg.settings import Settings
from walg.storage.base import Storage
from walg.streams.compression import codec_for_extension

CHUNK = 1 << 20


@dataclass(frozen=True)
class WalFetchResult:
    name: str
    key: str
    size: int
    from_prefetch: bool


def wal_fetch(
    settings: Settings, storage: Storage, name: str, destination: str, use_prefetch: bool = True
) -> WalFetchResult:
    check_wal_file_name(name)
    dest = Path(destination)
    if use_prefetch:
        root = prefetch_root(settings, destination)
        if take_prefetched(root, name, dest, settings.wal_segment_size):
            return WalFetchResult(name, "", dest.stat().st_size, True)
    found = find_wal_object(storage, name)
    if found is None:
        raise WalNotFound(f"WAL file {name} is not in the archive")
    key, ext = found
    codec = codec_for_extension(ext)
    tmp = dest.with_name(f".{dest.name}.walg-{os.urandom(4).hex()}")
    size = 0
    try:
        with download(storage, key, codec, key) as dl, open(tmp, "xb") as out:
            while chunk := dl.reader.read(CHUNK):
                out.write(chunk)
                size += len(chunk)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return WalFetchResult(name, key, size, False)
