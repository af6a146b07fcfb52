"""wal-push of a file that is not the segment its name says: the real ``walg`` command.

An operator pushing by hand (``for f in pg_wal/0*; do walg wal-push $f; done``, or one
segment named wrongly) reaches the files PostgreSQL has recycled for later use: an old
segment's bytes under a name PostgreSQL has not written yet. Stored, that object is refused
by every wal-fetch (its first page names the old segment: exit 128 in archive recovery) and
PostgreSQL's own call for the name, once it writes the real segment, is refused for ever as
different content: archiving stops and pg_wal grows.
"""

from __future__ import annotations

from pathlib import Path

from fakewal import run_walg, segment_bytes, walg_env

SYSID = 7311234567890123456
OLD = "000000010000000000000003"
LATER = "000000010000000000000009"


def test_a_recycled_file_under_a_later_name_is_refused_and_stores_nothing(
    tmp_path: Path, walg_bin: str
) -> None:
    pgdata = tmp_path / "data"
    wal = pgdata / "pg_wal"
    (wal / "archive_status").mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("16\n")
    store = tmp_path / "store"
    store.mkdir()
    env = walg_env(store, tmp_path)
    (wal / LATER).write_bytes(segment_bytes(OLD, SYSID))

    refused = run_walg([walg_bin, "wal-push", str(wal / LATER)], env)
    assert refused.returncode == 1, refused.stderr
    assert f"its first page is that of segment {OLD}" in refused.stderr, refused.stderr
    assert "not archived" in refused.stderr, refused.stderr
    assert not [p for p in store.rglob("*") if p.is_file()], "nothing stored"

    # Once PostgreSQL has written the segment, its own call archives it.
    (wal / LATER).write_bytes(segment_bytes(LATER, SYSID))
    pushed = run_walg([walg_bin, "wal-push", str(wal / LATER)], env)
    assert pushed.returncode == 0, pushed.stderr
    assert (store / "wal_005" / f"{LATER}.lz4").is_file()
