"""wal-push: archive one WAL file (the ``archive_command``), never overwriting different content.

Archived WAL is immutable (DESIGN.md promise 2): if the name is already archived with identical
content the push succeeds without rewriting; with different content it fails and leaves the
archive as it was. ``.history`` files are always checked; other files unless
``WALG_PREVENT_WAL_OVERWRITE=false``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from walg.core.lsn import check_wal_file_name
from walg.core.naming import wal_key
from walg.errors import UsageError, WalOverwriteError
from walg.ops.pipeline import download, upload
from walg.ops.wal import find_wal_object
from walg.settings import Settings
from walg.storage.base import Storage
from walg.streams.compression import codec_for_method

log = logging.getLogger(__name__)

CHUNK = 1 << 20


@dataclass(frozen=True)
class WalPushResult:
    name: str
    key: str
    uploaded: bool
    raw_size: int
    stored_size: int


def wal_push(settings: Settings, storage: Storage, path: str) -> WalPushResult:
    source = Path(path)
    name = check_wal_file_name(source.name)
    if not source.is_file():
        raise UsageError(f"WAL file {path} does not exist")
    codec = codec_for_method(settings.compression)
    key = wal_key(name, codec.extension)
    if settings.prevent_wal_overwrite or name.endswith(".history"):
        existing = find_wal_object(storage, name)
        if existing is not None:
            if _same_content(storage, existing[0], existing[1], source):
                log.info("WAL file %s is already archived with equal content", name)
                return WalPushResult(name, existing[0], False, source.stat().st_size, 0)
            raise WalOverwriteError(
                f"WAL file {name} is already archived as {existing[0]} with different "
                "content; refusing to overwrite it"
            )
    with open(source, "rb") as handle, upload(storage, key, codec) as up:
        while chunk := handle.read(CHUNK):
            up.writer.write(chunk)
    assert up.result is not None
    return WalPushResult(name, key, True, up.result.raw_size, up.result.stored.size)


def _same_content(storage: Storage, key: str, codec: object, source: Path) -> bool:
    from walg.streams.compression import Codec

    assert isinstance(codec, Codec)
    with open(source, "rb") as local, download(storage, key, codec, key) as dl:
        while True:
            theirs = dl.reader.read(CHUNK)
            ours = local.read(len(theirs) if theirs else CHUNK)
            if theirs != ours:
                return False
            if not theirs:
                return True
