"""The least work a Python archive_command does for one WAL segment: a floor for (a).

``python3 floor_push.py SEGMENT DIR`` stores SEGMENT as ``DIR/<name>.lz4`` in walg's layout
(one LZ4 frame of independent 4 MiB blocks without content checksum, then walg's XXH3-128
trailer: see docs/FORMAT.md) with walg's I/O but none of its framework: the file is mapped, its
blocks are compressed on two threads while the main thread hashes it and writes each finished
block, in order, straight to the disk (``O_DIRECT``, 1 MiB at a time from a page-aligned buffer;
the last piece through the page cache); the file is fsynced, renamed into place and the
directory fsynced; then the process ends without the interpreter's teardown. No configuration,
no overwrite check, no locks or status files, no error handling beyond a non-zero exit. It
measures what the interpreter, the two C extensions walg uses (python-lz4, xxhash) and the
durable write cost on this machine, so that walg's cold ``wal-push`` can be read against it.
It imports nothing from walg.
"""

import fcntl
import mmap
import os
import sys
import threading

import lz4.block
import xxhash

BLOCK = 4 << 20
STAGE = 1 << 20
HEADER = bytes.fromhex("04224d18607073")  # magic, FLG 0x60, BD 4 MiB, header checksum
TRAILER_MAGIC = (0x184D2A5A).to_bytes(4, "little")
TRAILER_TAG = b"WALG\x01"


class DirectFile:
    """Bytes gathered in a page-aligned buffer and written to the disk 1 MiB at a time."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
        self.stage = mmap.mmap(-1, STAGE)
        self.fill = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            take = min(STAGE - self.fill, len(view))
            self.stage[self.fill : self.fill + take] = view[:take]
            self.fill += take
            view = view[take:]
            if self.fill == STAGE:
                os.write(self.fd, self.stage)
                self.fill = 0

    def close(self) -> None:
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        os.write(self.fd, self.stage[: self.fill])
        os.fsync(self.fd)
        os.close(self.fd)


def main(source: str, directory: str) -> None:
    fd = os.open(source, os.O_RDONLY)
    size = os.fstat(fd).st_size
    data = memoryview(mmap.mmap(fd, size, mmap.MAP_SHARED | mmap.MAP_POPULATE, mmap.PROT_READ))
    starts = range(0, size, BLOCK)
    records: list[tuple[bytes, bytes | memoryview]] = [(b"", b"")] * len(starts)
    finished = [threading.Event() for _ in starts]

    def compress(first: int) -> None:
        for i in range(first, len(starts), 2):
            block = data[starts[i] : starts[i] + BLOCK]
            out = lz4.block.compress(block, store_size=False)
            if len(out) < len(block):
                records[i] = (len(out).to_bytes(4, "little"), out)
            else:
                records[i] = ((len(block) | 0x80000000).to_bytes(4, "little"), block)
            finished[i].set()

    workers = [threading.Thread(target=compress, args=(k,)) for k in range(2)]
    for worker in workers:
        worker.start()
    final = os.path.join(directory, os.path.basename(source) + ".lz4")
    tmp = final + ".tmp"
    out = DirectFile(tmp)
    out.write(HEADER)
    digest = xxhash.xxh3_128(data).digest()
    for i in range(len(starts)):
        finished[i].wait()
        out.write(records[i][0])
        out.write(records[i][1])
    payload = TRAILER_TAG + size.to_bytes(8, "little") + digest
    out.write(b"\0\0\0\0" + TRAILER_MAGIC + len(payload).to_bytes(4, "little") + payload)
    out.close()
    os.rename(tmp, final)
    dir_fd = os.open(directory, os.O_RDONLY)
    os.fsync(dir_fd)
    os.close(dir_fd)


USAGE = "usage: floor_push.py SEGMENT DIR (stores SEGMENT as DIR/<name>.lz4, as walg does)\n"

if __name__ == "__main__":
    # Checked by hand, not with argparse: its import would be measured as part of the floor.
    if sys.argv[1:] in (["-h"], ["--help"]):
        sys.stdout.write(USAGE)
        sys.exit(0)
    if len(sys.argv) != 3:
        sys.stderr.write(USAGE)
        sys.exit(2)
    main(sys.argv[1], sys.argv[2])
    os._exit(0)
