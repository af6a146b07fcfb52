"""The least work a Python archive_command does for one WAL segment: a floor for (a).

``python3 floor_push.py SEGMENT DIR`` stores SEGMENT as ``DIR/<name>.lz4`` in walg's layout
(one LZ4 frame of independent 4 MiB blocks without content checksum, then walg's XXH3-128
trailer: see docs/FORMAT.md) the cheapest way a Python program can: the file is mapped, its
blocks are compressed on two threads while the main thread hashes it, the object is written
to a temporary name, fsynced, renamed into place and the directory fsynced; then the process
ends without the interpreter's teardown. No configuration, no overwrite check, no locks, no
status files, no error handling beyond a non-zero exit: it measures what the interpreter, the
two C extensions walg uses (python-lz4, xxhash) and a durable write cost on this machine, so
that walg's cold ``wal-push`` can be read against it. It imports nothing from walg.
"""

import mmap
import os
import sys
import threading

import lz4.block
import xxhash

BLOCK = 4 << 20
HEADER = bytes.fromhex("04224d18607073")  # magic, FLG 0x60, BD 4 MiB, header checksum
TRAILER_MAGIC = (0x184D2A5A).to_bytes(4, "little")
TRAILER_TAG = b"WALG\x01"


def main(source: str, directory: str) -> None:
    fd = os.open(source, os.O_RDONLY)
    size = os.fstat(fd).st_size
    data = memoryview(mmap.mmap(fd, size, mmap.MAP_SHARED | mmap.MAP_POPULATE, mmap.PROT_READ))
    starts = range(0, size, BLOCK)
    records: list[bytes] = [b""] * len(starts)

    def compress(first: int) -> None:
        for i in range(first, len(starts), 2):
            block = data[starts[i] : starts[i] + BLOCK]
            out = lz4.block.compress(block, store_size=False)
            if len(out) < len(block):
                records[i] = len(out).to_bytes(4, "little") + out
            else:
                records[i] = (len(block) | 0x80000000).to_bytes(4, "little") + bytes(block)

    workers = [threading.Thread(target=compress, args=(k,)) for k in range(2)]
    for worker in workers:
        worker.start()
    digest = xxhash.xxh3_128(data).digest()
    for worker in workers:
        worker.join()
    payload = TRAILER_TAG + size.to_bytes(8, "little") + digest
    trailer = TRAILER_MAGIC + len(payload).to_bytes(4, "little") + payload
    final = os.path.join(directory, os.path.basename(source) + ".lz4")
    tmp = final + ".tmp"
    out_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.writev(out_fd, [HEADER, *records, b"\0\0\0\0", trailer])
    os.fsync(out_fd)
    os.close(out_fd)
    os.rename(tmp, final)
    dir_fd = os.open(directory, os.O_RDONLY)
    os.fsync(dir_fd)
    os.close(dir_fd)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    os._exit(0)
