#!/usr/bin/env python3
"""Benchmark how walg's file storage writes an object: through the page cache or direct.

Usage::

    /opt/walg/venv/bin/python bench/direct_write_bench.py [--dir /tmp] [--files 64] [--mb 6.4]

Each mode writes ``--files`` new files of ``--mb`` MB (random bytes, an archived WAL
segment's size after LZ4) into a new directory under ``--dir`` through ``FileStorage`` and
reports CPU and wall time per file; the rounds alternate the modes. ``buffered`` is the
storage with direct I/O switched off (``WALG_FILE_DIRECT_IO=false``), ``direct`` its default.
Both fsync the file and its directory, as every upload does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from walg.storage.file import FileStorage


def one_round(root: str, mode: str, files: int, size: int, payload: bytes) -> tuple[float, float]:
    target = tempfile.mkdtemp(prefix=f"walg-write-{mode}-", dir=root)
    try:
        storage = FileStorage(target, direct_io=mode == "direct")
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(files):
            with storage.open_write(f"wal_005/{i:024X}.lz4") as sink:
                left = size
                while left:
                    piece = payload[: min(left, len(payload))]
                    sink.write(piece)
                    left -= len(piece)
        return (
            (time.process_time() - cpu) * 1000 / files,
            (time.perf_counter() - wall) * 1000 / files,
        )
    finally:
        shutil.rmtree(target, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default=tempfile.gettempdir())
    p.add_argument("--files", type=int, default=64)
    p.add_argument("--mb", type=float, default=6.4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pause", type=float, default=5.0, help="seconds idle before each round")
    args = p.parse_args()
    size = int(args.mb * 1_000_000)
    payload = os.urandom(1 << 20)
    print(f"{args.files} files of {size} bytes per round, in {args.dir}")
    for rnd in range(args.rounds):
        for mode in ("buffered", "direct") if rnd % 2 == 0 else ("direct", "buffered"):
            time.sleep(args.pause)
            cpu, wall = one_round(args.dir, mode, args.files, size, payload)
            print(f"round {rnd + 1} {mode:<8}  CPU {cpu:5.1f} ms/file  wall {wall:5.1f} ms/file")


if __name__ == "__main__":
    main()
