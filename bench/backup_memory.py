#!/usr/bin/env python3
"""Peak memory of ``walg backup-push`` and ``backup-fetch`` against the number of files.

walg holds a backup's list of files (``files_metadata.json``: every member's name, time and
checksum) while it runs; this measures what that costs. For each count N it makes a fresh
PostgreSQL 15 cluster (as ``pgtest``, a free port, never 5432), adds N empty files to the
``postgres`` database's folder (they are archived like relation files; the server never opens
them), and measures with ``/usr/bin/time -f %M``:

* ``walg backup-push PGDATA`` to a local folder (lz4, the defaults),
* ``walg backup-fetch DEST LATEST`` of that backup,
* ``pg_basebackup -Ft -X none -c fast -D DIR`` as the peer (its client holds no file list).

Prints one line per count: peak RSS in MB of each, the size of ``files_metadata.json``, and
walg's cost per file above the run with no added files. Run as root from the checkout:
``/opt/walg/venv/bin/python bench/backup_memory.py 0 100000``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pgcluster import Cluster, PgInstall, free_port, make_shared_dir, run_as_pg


def _peak_mb(argv: list[str], env: dict[str, str]) -> float:
    done = run_as_pg(["/usr/bin/time", "-f", "PEAK %M", *argv], env=env, check=False, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed:\n{done.stderr[-2000:]}")
    peak = [line for line in done.stderr.splitlines() if line.startswith("PEAK ")][-1]
    return int(peak.split()[1]) / 1024


def measure(count: int, walg: str, workdir: Path) -> dict[str, float]:
    install = PgInstall.load(15)
    cluster = Cluster.create(install, workdir / "data", port=free_port())
    folder = cluster.datadir / "base" / "1"
    for n in range(count):
        (folder / str(90_000_000 + n)).touch()
    subprocess.run(["chown", "-R", "pgtest:", str(folder)], check=True)
    store = make_shared_dir(workdir / "store", 0o755)
    cluster.start()
    try:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PG", "WALG", "WALE"))},
            **cluster.conninfo_env(),
            "WALG_FILE_PREFIX": str(store),
        }
        push = _peak_mb([walg, "backup-push", str(cluster.datadir)], env)
        [document] = store.rglob("files_metadata.json")
        fetch = _peak_mb([walg, "backup-fetch", str(workdir / "restored"), "LATEST"], env)
        peer_dir = make_shared_dir(workdir / "basebackup", 0o755)
        peer = _peak_mb(
            [
                str(install.bindir / "pg_basebackup"),
                "-Ft", "-X", "none", "-c", "fast", "-D", str(peer_dir / "out"),
            ],
            {**env, **install.env_additions},
        )  # fmt: skip
    finally:
        cluster.stop()
    return {"push": push, "fetch": fetch, "peer": peer, "document": document.stat().st_size}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("counts", nargs="+", type=int, help="numbers of files to add")
    parser.add_argument("--walg", default=str(Path(sys.executable).with_name("walg")))
    args = parser.parse_args()
    base: dict[str, float] | None = None
    print(
        "files    push MB  fetch MB  pg_basebackup MB  files_metadata.json  push/file  fetch/file"
    )
    for count in sorted(args.counts):
        workdir = Path(tempfile.mkdtemp(prefix="walg-mem-"))
        os.chmod(workdir, 0o777)  # the cluster and walg run as pgtest
        try:
            got = measure(count, args.walg, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if base is None:
            base = got
        extra = max(count, 1)
        print(
            f"{count:>7} {got['push']:>9.1f} {got['fetch']:>9.1f} {got['peer']:>17.1f} "
            f"{got['document'] / 1e6:>17.1f} MB "
            f"{(got['push'] - base['push']) * 1024 * 1024 / extra:>7.0f} B "
            f"{(got['fetch'] - base['fetch']) * 1024 * 1024 / extra:>7.0f} B",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
