"""Demo of walg's main job: back up a throwaway cluster to a local folder, restore, verify.

Run through ``scripts/demo.sh`` (which installs walg and PostgreSQL first). Every step prints
what it did; the demo fails loudly if the restored cluster differs from the original.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pgcluster import Cluster, PgInstall, pg_tmpdir, stop_clusters_under
from walgcli import (
    WalgSetup,
    archive_now,
    normalized_dump,
    restore_and_recover,
)


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--walg", default=str(Path(sys.executable).parent / "walg"))
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale (10 ≈ 160 MB)")
    parser.add_argument("--keep", action="store_true", help="keep the demo directory")
    args = parser.parse_args()

    workdir = pg_tmpdir("walg-demo-")
    install = PgInstall.load(15)
    try:
        walg = WalgSetup.create(args.walg, workdir)
        step(f"storage folder {walg.store}; config {walg.config}: {walg.config.read_text()}")

        step("initdb a PostgreSQL 15 cluster archiving WAL with walg")
        src = Cluster.create(
            install,
            workdir / "source",
            conf={"archive_mode": "on", "archive_command": walg.command("wal-push", "%p")},
        )
        src.start()
        print(f"    archive_command = '{walg.command('wal-push', '%p')}'")
        src.pgbench(["-i", "-s", str(args.scale), "-q"])
        size = src.psql("SELECT pg_size_pretty(pg_database_size(current_database()))")
        print(f"    pgbench -i -s {args.scale}: {size}")

        step("walg backup-push")
        started = time.monotonic()
        out = walg.run(["backup-push", "--json", str(src.datadir)], cluster=src)
        result = json.loads(out.stdout)
        print(
            f"    {result['name']}: {result['uncompressed_size'] / 1e6:.1f} MB read, "
            f"{result['compressed_size'] / 1e6:.1f} MB stored in {result['parts']} parts, "
            f"{time.monotonic() - started:.2f} s"
        )
        print(walg.run(["backup-list", "--detail"]).stdout.rstrip())

        step("more writes after the backup, archived through archive_command")
        src.pgbench(["-n", "-t", "500", "-c", "2"])
        src.psql(
            "CREATE TABLE demo_after AS SELECT g, md5(g::text) FROM generate_series(1, 10000) g"
        )
        print(f"    last archived segment: {archive_now(src)}")
        expected = normalized_dump(src.pg_dumpall())
        src.stop()

        step("walg backup-fetch LATEST, then recovery with restore_command = walg wal-fetch")
        started = time.monotonic()
        restored = restore_and_recover(install, workdir, walg)
        print(
            f"    restored and recovered in {time.monotonic() - started:.2f} s: {restored.datadir}"
        )

        step("verify: pg_dumpall of the restored cluster equals the original's; amcheck")
        actual = normalized_dump(restored.pg_dumpall())
        if actual != expected:
            print("    FAILED: the dumps differ", file=sys.stderr)
            return 1
        print(f"    pg_dumpall identical ({len(actual)} bytes)")
        print(f"    rows in demo_after: {restored.psql('SELECT count(*) FROM demo_after')}")
        if install.has_amcheck:
            print(f"    amcheck clean on {restored.amcheck()} relations")
        restored.stop()
        print("\nOK: backup, restore and point-in-time replay verified")
        return 0
    finally:
        stop_clusters_under(workdir)
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
