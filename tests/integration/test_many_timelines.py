"""Years of failovers: archives with three timelines.

A timeline-1 backup is restored and promoted (timeline 2), which writes and archives; then the
same backup is restored to an earlier point of timeline 2 and promoted again (timeline 3,
branching off timeline 2 before timeline 2's later WAL), which writes more. Segments with the
same numbers then exist on timelines 2 and 3. Restores of the first backup following each
timeline must land on that branch, with its rows and no other's; wal-show, wal-verify and the
prefetcher must follow the history files; a lost or damaged history must stop a restore that
would follow it. A restore promoted at the end of archive recovery archives no ``.partial``
(the segment came from the archive): the second test promotes streaming standbys twice, so
that each promotion stores one, and backs up the old primary of timeline 2 as a standby of
timeline 3's (a switchover).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pgcluster import Cluster, PgInstall, make_shared_dir
from walg.core.lsn import Segment, parse_lsn
from walgcli import (
    WalgSetup,
    archive_now,
    archiving_primary,
    fetch_for_recovery,
    normalized_dump,
    prefetched_after_fetch,
    push_on_standby,
    restore_and_recover,
    restore_to_target,
    start_recovery,
)

SEG = 16 << 20


def _mark(cluster: Cluster, phase: str) -> None:
    cluster.psql(f"INSERT INTO marks VALUES ('{phase}')")


def _phases(cluster: Cluster) -> list[str]:
    return cluster.psql("SELECT phase FROM marks ORDER BY phase").splitlines()


def _timeline(cluster: Cluster) -> int:
    cluster.checkpoint()
    return int(cluster.psql("SELECT timeline_id FROM pg_control_checkpoint()"))


def _restore_by_hand(install: PgInstall, walg: WalgSetup, dest: Path) -> Cluster:
    """The operator's own way: backup-fetch of the files only, restore_command in the
    configuration, recovery.signal made by hand, and PostgreSQL's default
    recovery_target_timeline (latest)."""
    walg.run(["backup-fetch", str(dest), "LATEST"])
    settings = {"archive_mode": "off", "restore_command": walg.command("wal-fetch", "%f", "%p")}
    restored = Cluster.from_existing(install, dest, conf=settings)
    restored.touch("recovery.signal")
    start_recovery(restored)
    return restored


def _switches(cluster: Cluster, n: int) -> str:
    last = ""
    for _ in range(n):
        last = archive_now(cluster)
    return last


def _check_listing(walg: WalgSetup, fork: str) -> None:
    """wal-show and wal-verify against the history files: three timelines, 3 branching off 2
    just after ``fork`` (before 2's later segments), the backup on 1; each walk follows its
    own branch."""
    from walg.ops.wal import read_history
    from walg.storage.file import FileStorage

    storage = FileStorage(str(walg.store))
    two, three = read_history(storage, 2), read_history(storage, 3)
    assert two is not None and three is not None
    assert [(s.parent, s.lsn) for s in three.switches[:1]] == [
        (s.parent, s.lsn) for s in two.switches
    ]
    assert three.switches[1].parent == 2 and three.switches[1].lsn > parse_lsn(fork)
    shown = json.loads(walg.run(["wal-show", "--detailed-json"]).stdout)
    assert [(t["id"], t["parent_id"], t["switch_point_lsn"]) for t in shown] == [
        (1, 0, 0),
        (2, 1, two.switches[0].lsn),
        (3, 2, three.switches[1].lsn),
    ]
    assert [len(t.get("backups", [])) for t in shown] == [1, 0, 0]
    assert all(t["status"] == "OK" and t["missing_segments"] == [] for t in shown)
    one, tl2, tl3 = shown
    # Each timeline's segments begin in the segment holding its switch point.
    assert tl2["start_segment"] == Segment(2, two.switches[0].lsn // SEG).name()
    assert tl3["start_segment"] == Segment(3, three.switches[1].lsn // SEG).name()
    assert tl2["end_segment"][8:] == tl3["end_segment"][8:]
    end = tl3["end_segment"]
    for timeline, branch in ((3, tl3), (2, tl2)):
        lsn = f"0/{Segment.parse(end).segno * SEG + 0x100:X}"
        args = ["wal-verify", "integrity", "--json", "--timeline", str(timeline), "--lsn", lsn]
        integrity = json.loads(walg.run(args).stdout)["integrity"]
        assert integrity["status"] == "OK", integrity
        assert [(d["timeline_id"], d["start_segment"]) for d in integrity["details"]] == [
            (1, one["backups"][0]["wal_file_name"]),
            (timeline, branch["start_segment"]),
        ]


def _prefetch_stays_on_timeline_2(walg: WalgSetup, workdir: Path, tl2_last: str) -> None:
    """Recovery asking for timeline 2's first segment follows timeline 2 (it would have asked
    for 3's first, which has the same number, had it followed 3): what is prefetched after it
    is timeline 2's, never the segments of the same numbers on timeline 3."""
    first = Segment(2, Segment.parse(tl2_last).segno - 2)
    after = [Segment(2, first.segno + i).name() for i in (1, 2)]
    prefetched = prefetched_after_fetch(walg, workdir, first.name(), after, settle=0.5)
    assert prefetched == after, prefetched


@pytest.mark.majors(13, 16)
def test_restores_of_a_forked_archive_land_on_the_branch_asked_for(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir)
    archiving = {"archive_mode": "on", "archive_command": walg.command("wal-push", "%p")}
    src = Cluster.create(pg_install, pg_workdir / "src", conf=archiving)
    src.start()
    src.psql("CREATE TABLE marks (phase text PRIMARY KEY)")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    _mark(src, "a")
    _switches(src, 2)
    src.stop()

    # Timeline 2: the whole of timeline 1, then "b", a point to come back to, then "c" and
    # three more segments.
    first = restore_to_target(pg_install, walg, pg_workdir / "first", conf=archiving)
    assert _timeline(first) == 2
    _mark(first, "b")
    fork = first.psql("SELECT pg_current_wal_insert_lsn()")
    _mark(first, "c")
    tl2_last = _switches(first, 3)
    first.stop()

    # Timeline 3: back to the point between "b" and "c" on timeline 2, then "d" and as many
    # segments, whose names timeline 2 holds too.
    second = restore_to_target(
        pg_install,
        walg,
        pg_workdir / "second",
        "--target-lsn",
        fork,
        "--target-timeline",
        "2",
        conf=archiving,
    )
    assert _phases(second) == ["a", "b"]
    assert _timeline(second) == 3
    _mark(second, "d")
    tl3_last = _switches(second, 3)
    second.stop()
    assert tl2_last[8:] == tl3_last[8:], (tl2_last, tl3_last)

    _check_listing(walg, fork)
    _prefetch_stays_on_timeline_2(walg, pg_workdir, tl2_last)

    cases = [
        ("latest", ["--target-timeline", "latest"], ["a", "b", "d"], 4),
        ("tl2", ["--target-timeline", "2"], ["a", "b", "c"], 4),
        ("tl3", ["--target-timeline", "3"], ["a", "b", "d"], 4),
        ("current", ["--target-timeline", "current"], ["a"], 4),
    ]
    for name, options, rows, timeline in cases:
        restored = restore_to_target(pg_install, walg, pg_workdir / name, *options)
        assert _phases(restored) == rows, name
        # Promoted onto the timeline after the newest one in storage, whichever it followed.
        assert _timeline(restored) == timeline, name
        restored.stop()
        shutil.rmtree(restored.datadir)

    plain = _restore_by_hand(pg_install, walg, pg_workdir / "plain")
    assert _phases(plain) == ["a", "b", "d"]
    plain.stop()
    shutil.rmtree(plain.datadir)

    _a_lost_or_damaged_history_is_never_followed_silently(pg_install, walg, pg_workdir)


def _a_lost_or_damaged_history_is_never_followed_silently(
    install: PgInstall, walg: WalgSetup, workdir: Path
) -> None:
    """Without 00000003.history PostgreSQL, following the newest timeline, finds timeline 2
    the newest (it probes history files, not segments), restores timeline 2's rows and
    promotes onto timeline 3, whose segment names storage holds: walg refuses before
    anything is restored, unless timeline 2 is asked for. A damaged history is refused too."""
    stored = walg.store / "wal_005" / "00000003.history.lz4"
    kept = stored.read_bytes()
    stored.unlink()
    refused = fetch_for_recovery(walg, workdir / "missing", check=False)
    assert refused.returncode == 2, refused.stderr
    assert "00000003.history" in refused.stderr and "--target-timeline 2" in refused.stderr
    assert not (workdir / "missing" / "PG_VERSION").exists()
    on_purpose = restore_to_target(install, walg, workdir / "on-purpose", "--target-timeline", "2")
    assert _phases(on_purpose) == ["a", "b", "c"]
    on_purpose.stop()

    data = bytearray(kept)
    data[data.index(b"after LSN")] ^= 0x01
    stored.write_bytes(bytes(data))
    stored.chmod(0o644)
    damaged = fetch_for_recovery(walg, workdir / "damaged", check=False)
    assert damaged.returncode == 74, damaged.stderr
    assert "00000003.history" in damaged.stderr and "checksum" in damaged.stderr


def _partials_are_kept_apart(walg: WalgSetup) -> None:
    """The promotion after the lost primary stored timeline 1's last segment as
    ``<segment>.partial.lz4`` (WAL-G's name for it), and the switchover's may have stored
    timeline 2's: wal-fetch never serves one for the segment, wal-show counts it in no range,
    and it is fetched only under its own name (pg_rewind's way).

    After a clean shutdown (the switchover's) the old primary has switched to a new segment
    and archived the last one whole; the standby makes a .partial only when it also received
    the shutdown checkpoint written into the next segment, which PostgreSQL leaves to timing.
    """
    wal = walg.store / "wal_005"
    folder = make_shared_dir(walg.store.parent / "fetched", 0o755)
    partials = sorted(p.name for p in wal.glob("*.partial*"))
    assert [p[:8] for p in partials] in (["00000001"], ["00000001", "00000002"]), partials
    assert all(p.endswith(".partial.lz4") for p in partials), partials
    shown = json.loads(walg.run(["wal-show", "--detailed-json", "--without-backups"]).stdout)
    assert [(t["id"], t["parent_id"], t["status"]) for t in shown] == [
        (1, 0, "OK"),
        (2, 1, "OK"),
        (3, 2, "OK"),
    ]
    for partial, timeline in zip(partials, shown, strict=False):
        segment = partial[:24]
        assert timeline["end_segment"] < segment, (partial, timeline)
        # The next timeline's copy of that segment holds its switch, and is the one stored.
        assert (wal / f"{timeline['id'] + 1:08X}{segment[8:]}.lz4").exists(), partial
        fetched = walg.run(["wal-fetch", segment, str(folder / "whole")], check=False)
        assert fetched.returncode == 74, (segment, fetched.stderr)
        assert not (folder / "whole").exists()
        dest = folder / "partial"
        walg.run(["wal-fetch", f"{segment}.partial", str(dest)])
        assert dest.stat().st_size == SEG
        dest.unlink()


@pytest.mark.majors(13, 16)
def test_a_switchover_s_old_primary_backs_up_as_a_standby_on_timeline_3(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    """Two promotions of a streaming standby: a failover after the primary of timeline 1 is
    lost, which archives that timeline's last segment as ``.partial``, then a switchover, after
    which the primary of timeline 2, back as a standby of timeline 3's, is backed up while its
    restartpoint is still on timeline 2."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    p = archiving_primary(walg, pg_install, pg_workdir / "p")
    p.psql("CREATE TABLE marks (phase text PRIMARY KEY)")
    _mark(p, "a")
    s1 = p.make_standby(pg_workdir / "s1")
    # Lost at once, not shut down: a clean shutdown archives the last segment whole, and
    # leaves to timing whether the standby makes a .partial (see _partials_are_kept_apart).
    # Every finished segment is archived first, and a record written into the next one, so
    # that timeline 1 ends inside it.
    archive_now(p)
    p.psql("SELECT txid_current()")
    p.wait_for_replay(s1)
    p.stop(mode="immediate")
    s1.promote()
    # The end-of-recovery checkpoint marks ready the old timeline's segments pg_basebackup
    # copied; archived after the switch below, they would end archive_now's wait (by name).
    s1.checkpoint()
    _mark(s1, "b")
    archive_now(s1)
    s2 = s1.make_standby(pg_workdir / "s2", conf={"checkpoint_timeout": "1h"})
    _mark(s1, "c")
    s1.wait_for_replay(s2)
    s1.stop()
    s2.promote()
    s2.checkpoint()
    _mark(s2, "d")
    archive_now(s2)

    s1.touch("standby.signal")
    s1.set_conf(
        {
            "primary_conninfo": s2.conninfo(),
            "restore_command": walg.command("wal-fetch", "%f", "%p"),
            "checkpoint_timeout": "1h",
        }
    )
    s1.start()
    s2.wait_for_replay(s1)
    s1.wait_for_streaming(3)
    assert s1.psql("SELECT timeline_id FROM pg_control_checkpoint()") == "2"
    push_on_standby(walg, s2, s1, env={"WALG_STOP_BACKUP_TIMEOUT": "60s"})
    _mark(s2, "e")
    archive_now(s2)
    expected = normalized_dump(s2.pg_dumpall())
    verify = walg.run(["wal-verify", "integrity", "timeline", "--json"], cluster=s2)
    integrity = json.loads(verify.stdout)["integrity"]
    assert integrity["status"] == "OK", (verify.stdout, verify.stderr)
    s1.stop()
    s2.stop()

    (sentinel,) = walg.store.rglob("*_backup_stop_sentinel.json")
    name = sentinel.name.removesuffix("_backup_stop_sentinel.json")
    assert int(name[5:13], 16) in (2, 3), name
    _partials_are_kept_apart(walg)

    restored = restore_and_recover(
        pg_install,
        pg_workdir,
        walg,
        ["--restore-command", walg.command("wal-fetch", "%f", "%p")],
    )
    assert _phases(restored) == ["a", "b", "c", "d", "e"]
    assert normalized_dump(restored.pg_dumpall()) == expected
    restored.stop()
