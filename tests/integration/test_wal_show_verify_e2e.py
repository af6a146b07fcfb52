"""wal-show and wal-verify against a real archive written by ``walg wal-push`` from PostgreSQL 15.

A healthy archive is reported OK by both commands; after one archived segment is deleted from
the store, wal-show names it as missing and wal-verify's integrity check fails (exit 1 only
with ``--fail-on-problem``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pgcluster import Cluster, PgInstall, make_shared_dir
from walg.core.lsn import Segment, parse_lsn
from walgcli import WalgSetup, archive_now, archiving_primary


def _switch(cluster: Cluster, n: int) -> str:
    """Write something, then finish and archive the segment; returns its name."""
    cluster.psql(f"INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, {n}) g")
    return archive_now(cluster)


def test_wal_show_and_verify_on_a_real_archive(pg_workdir: Path, walg_bin: str) -> None:
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    cluster = archiving_primary(walg, install, pg_workdir / "data")
    cluster.psql("CREATE TABLE t (id int, pad text)")
    _switch(cluster, 1000)
    pushed = walg.run(["backup-push", str(cluster.datadir)], cluster=cluster)
    assert "Wrote backup with name base_" in pushed.stderr
    archived = [_switch(cluster, 100 * (i + 1)) for i in range(4)]
    assert len(set(archived)) == 4

    # --- healthy ---------------------------------------------------------------------------
    verify = walg.run(["wal-verify", "integrity", "timeline", "--json"], cluster=cluster)
    doc = json.loads(verify.stdout)
    assert doc["integrity"]["status"] == "OK", verify.stdout
    assert doc["timeline"] == {
        "status": "OK",
        "details": {"current_timeline_id": 1, "highest_storage_timeline_id": 1},
    }
    assert {row["status"] for row in doc["integrity"]["details"]} == {"FOUND"}
    assert doc["integrity"]["details"][-1]["end_segment"] >= archived[-2]

    show = walg.run(["wal-show", "--detailed-json"])
    (timeline,) = json.loads(show.stdout)
    assert timeline["id"] == 1
    assert timeline["parent_id"] == 0
    assert timeline["status"] == "OK"
    assert timeline["missing_segments"] == []
    assert timeline["end_segment"] >= archived[-1]
    assert timeline["segments_count"] == timeline["segment_range_size"]
    (backup,) = timeline["backups"]
    assert backup["backup_name"].startswith("base_")
    assert backup["start_lsn"] <= backup["finish_lsn"]

    table = walg.run(["wal-show"]).stdout
    assert "| TLI | PARENT TLI | SWITCHPOINT LSN |" in table
    assert "| OK " in table

    plain = walg.run(["wal-verify"], cluster=cluster).stdout
    assert plain.startswith("[wal-verify] integrity check status: OK\n")
    assert "[wal-verify] timeline check status: OK\n" in plain
    assert "Current cluster timeline: 1\n" in plain

    # --- a segment under a name wal-fetch never tries ---------------------------------------
    env = {"WALG_UPLOAD_CONCURRENCY": "1"}
    hidden = archived[1]
    stored = walg.store / "wal_005" / f"{hidden}.lz4"
    for suffix in (".bak", ".LZ4", ".lz4~"):
        renamed = stored.with_name(hidden + suffix)
        stored.rename(renamed)
        fetch = walg.run(["wal-fetch", hidden, str(pg_workdir / "fetched")], check=False)
        assert fetch.returncode == 74, fetch.stderr
        verify = walg.run(
            ["wal-verify", "integrity", "--json", "--fail-on-problem"],
            cluster=cluster,
            env=env,
            check=False,
        )
        assert verify.returncode == 1, (suffix, verify.stdout)
        rows = json.loads(verify.stdout)["integrity"]["details"]
        assert {"start_segment": hidden, "status": "MISSING_LOST"}.items() <= next(
            r for r in rows if r["status"] != "FOUND"
        ).items()
        show = walg.run(["wal-show", "--detailed-json", "--without-backups"])
        assert json.loads(show.stdout)[0]["missing_segments"] == [hidden]
        renamed.rename(stored)

    # --- nothing archived at all: an empty store -------------------------------------------
    empty = walg.run(
        ["wal-verify", "integrity", "--json", "--fail-on-problem"],
        cluster=cluster,
        env={"WALG_FILE_PREFIX": str(make_shared_dir(pg_workdir / "empty", 0o755))},
        check=False,
    )
    assert empty.returncode == 1, empty.stdout
    assert json.loads(empty.stdout)["integrity"]["status"] == "FAILURE"
    assert "is archived" in empty.stderr

    # --- one archived segment lost ---------------------------------------------------------
    lost = archived[0]
    obj = walg.store / "wal_005" / f"{lost}.lz4"
    assert obj.is_file()
    obj.unlink()

    show = walg.run(["wal-show", "--detailed-json", "--without-backups"])
    (timeline,) = json.loads(show.stdout)
    assert timeline["status"] == "LOST_SEGMENTS"
    assert timeline["missing_segments"] == [lost]
    assert "backups" not in timeline
    assert "LOST_SEGMENTS" in walg.run(["wal-show"]).stdout

    # Only the newest segment may still be "uploading": the deleted one is older.
    verify = walg.run(["wal-verify", "integrity", "--json"], cluster=cluster, env=env)
    assert verify.returncode == 0  # as WAL-G: the verdict is in the output
    doc = json.loads(verify.stdout)
    assert list(doc) == ["integrity"]
    assert doc["integrity"]["status"] == "FAILURE"
    lost_rows = [r for r in doc["integrity"]["details"] if r["status"] == "MISSING_LOST"]
    assert lost_rows == [
        {
            "timeline_id": 1,
            "start_segment": lost,
            "end_segment": lost,
            "segments_count": 1,
            "status": "MISSING_LOST",
        }
    ]

    failing = walg.run(
        ["wal-verify", "integrity", "--fail-on-problem"], cluster=cluster, env=env, check=False
    )
    assert failing.returncode == 1, failing.stderr
    assert failing.stdout.startswith("[wal-verify] integrity check status: FAILURE\n")
    assert "MISSING_LOST" in failing.stdout

    # Within the default 16-segment uploading window the gap would be an upload that may be
    # under way, as WAL-G calls it; but PostgreSQL's archiver reports later segments
    # archived, and it archives in order: no upload of this one is under way anywhere.
    assert cluster.psql("SELECT last_archived_wal FROM pg_stat_archiver") > lost
    recent = walg.run(
        ["wal-verify", "integrity", "--json", "--fail-on-problem"], cluster=cluster, check=False
    )
    assert recent.returncode == 1, recent.stdout
    doc = json.loads(recent.stdout)
    assert doc["integrity"]["status"] == "FAILURE"
    assert [r["start_segment"] for r in doc["integrity"]["details"] if r["status"] != "FOUND"] == [
        lost
    ]
    # A position given by hand has no archiver to ask: WAL-G's window applies.
    lsn = cluster.psql("SELECT pg_current_wal_lsn()")
    by_hand = walg.run(["wal-verify", "integrity", "--json", "--timeline", "1", "--lsn", lsn])
    assert json.loads(by_hand.stdout)["integrity"]["status"] == "WARNING"
    cluster.stop()


def _put(path: Path, data: bytes) -> None:
    import lz4.frame

    path.write_bytes(lz4.frame.compress(data))
    path.chmod(0o644)


def test_wal_show_fails_when_a_history_file_cannot_be_read(walg_bin: str, pg_workdir: Path) -> None:
    """A .history object that storage refuses to hand over (here: no read permission for the
    user walg runs as) is a storage error, not a damaged file: wal-show exits 1 naming it, as
    WAL-G does ("Error while loading .history file"). It printed timeline 2 without parent and
    switch point and exited 0."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    wal = make_shared_dir(walg.store / "wal_005", 0o755)
    for name in ("000000010000000000000001", "000000020000000000000002"):
        _put(wal / f"{name}.lz4", b"segment")
    history = wal / "00000002.history.lz4"
    _put(history, b"1\t0/2000000\tno recovery target specified\n")
    readable = walg.run(["wal-show", "--detailed-json", "--without-backups"])
    assert [(t["id"], t["parent_id"]) for t in json.loads(readable.stdout)] == [(1, 0), (2, 1)]

    history.chmod(0o000)
    for args in (["wal-show"], ["wal-show", "--detailed-json", "--without-backups"]):
        result = walg.run(args, check=False)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert result.stdout == ""
        assert "00000002.history.lz4" in result.stderr


def test_wal_verify_refuses_a_timeline_beyond_32_bits(walg_bin: str, pg_workdir: Path) -> None:
    """A timeline id is 32 bits (WAL-G's --timeline is a uint32). 4294967296 was taken and the
    check printed 25-hex-digit "segment names" such as 1000000000000000000000001."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    wal = make_shared_dir(walg.store / "wal_005", 0o755)
    _put(wal / "000000010000000000000001.lz4", b"segment")
    for timeline in ("4294967296", "18446744073709551617"):
        args = ["wal-verify", "integrity", "--json", "--timeline", timeline, "--lsn", "0/3000001"]
        result = walg.run(args, check=False)
        assert result.returncode == 2, (timeline, result.stdout, result.stderr)
        assert result.stdout == ""
        assert "--timeline" in result.stderr
    highest = walg.run(
        ["wal-verify", "timeline", "--json", "--timeline", "4294967295", "--lsn", "0/1"]
    )
    assert json.loads(highest.stdout)["timeline"]["details"]["current_timeline_id"] == 4294967295


def test_wal_verify_on_a_standby_checks_up_to_the_received_wal(
    pg_workdir: Path, walg_bin: str
) -> None:
    """On a standby WAL-G takes the current position from pg_last_wal_receive_lsn(), not the
    replay position: a delayed standby (recovery_min_apply_delay) has received WAL far ahead of
    what it replayed, and the archive must hold that WAL too. walg used the replay position, so
    a segment lost after it was never examined and the check said OK."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    primary = archiving_primary(walg, install, pg_workdir / "primary")
    primary.psql("CREATE TABLE t (id int, pad text)")
    archive_now(primary)
    standby = primary.make_standby(
        pg_workdir / "standby", conf={"recovery_min_apply_delay": "1h", "archive_mode": "off"}
    )
    # Each INSERT commits: the standby receives it at once and replays it an hour later.
    archived = [_switch(primary, 10) for _ in range(4)]
    primary.psql("INSERT INTO t VALUES (0, 'after the last switch')")
    target = primary.psql("SELECT pg_current_wal_lsn()")
    deadline = time.monotonic() + 60
    while standby.psql(f"SELECT pg_last_wal_receive_lsn() >= '{target}'::pg_lsn") != "t":
        assert time.monotonic() < deadline, standby.log_tail()
        time.sleep(0.1)
    replayed = parse_lsn(standby.psql("SELECT pg_last_wal_replay_lsn()"))
    assert Segment.containing(1, replayed) <= Segment.parse(archived[0]), archived

    lost = archived[1]
    (walg.store / "wal_005" / f"{lost}.lz4").unlink()
    env = {"WALG_UPLOAD_CONCURRENCY": "1"}
    verify = walg.run(["wal-verify", "integrity", "--json"], cluster=standby, env=env)
    doc = json.loads(verify.stdout)["integrity"]
    assert doc["status"] == "FAILURE", (verify.stdout, verify.stderr)
    assert [r["start_segment"] for r in doc["details"] if r["status"] == "MISSING_LOST"] == [lost]
    assert doc["details"][-1]["end_segment"] >= archived[-1]
    standby.stop()
    primary.stop()


def test_wal_verify_right_after_a_promotion_uses_the_new_timeline(
    pg_workdir: Path, walg_bin: str
) -> None:
    """A promoted standby writes on its new timeline at once, but pg_control's checkpoint
    timeline (WAL-G's source) stays the old one until the spread checkpoint after promotion
    ends, minutes later with many dirty buffers. wal-verify then walked the old timeline
    (segments lost) and said the cluster was behind storage's newest timeline, both FAILURE,
    just when a failover is being checked. On a primary the timeline is the one it writes."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    primary = archiving_primary(walg, install, pg_workdir / "primary")
    primary.psql("CREATE TABLE t (id int, pad text)")
    walg.run(["backup-push", str(primary.datadir)], cluster=primary)
    standby = primary.make_standby(
        pg_workdir / "standby",
        conf={"checkpoint_timeout": "1h", "checkpoint_completion_target": "0.9"},
    )
    # Enough dirty buffers on the standby that its first checkpoint as primary takes long.
    primary.pgbench(["-i", "-s", "5", "-q"])
    archive_now(primary)
    primary.wait_for_replay(standby)
    primary.stop()
    standby.promote()
    standby.psql("INSERT INTO t VALUES (1, 'on the new timeline')")
    first_on_2 = archive_now(standby)
    standby.psql("INSERT INTO t VALUES (2, 'in the segment after it')")
    assert standby.psql("SELECT timeline_id FROM pg_control_checkpoint()") == "1"

    verify = walg.run(["wal-verify", "integrity", "timeline", "--json"], cluster=standby)
    doc = json.loads(verify.stdout)
    assert doc["timeline"] == {
        "status": "OK",
        "details": {"current_timeline_id": 2, "highest_storage_timeline_id": 2},
    }, verify.stdout
    assert doc["integrity"]["status"] == "OK", (verify.stdout, verify.stderr)
    assert doc["integrity"]["details"][-1]["end_segment"] == first_on_2, verify.stdout
    standby.stop()


def test_empty_tables_end_after_the_header_as_wal_g_prints_them(
    walg_bin: str, pg_workdir: Path
) -> None:
    """WAL-G v3.0.9's go-pretty (v6.8) draws a table without data rows as border, header,
    border. walg drew the separator under the header and then the bottom border, two equal
    lines, as go-pretty did before v6.7.6."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    make_shared_dir(walg.store / "wal_005", 0o755)
    show = walg.run(["wal-show", "--without-backups"]).stdout
    border = "+-----+------------+-----------------+---------------+-------------+"
    assert show.splitlines()[0].startswith(border)
    assert len(show.splitlines()) == 3, show
    assert show.splitlines()[0] == show.splitlines()[2]
    assert show.splitlines()[1].startswith("| TLI | PARENT TLI | SWITCHPOINT LSN |")

    args = ["wal-verify", "integrity", "--timeline", "1", "--lsn", "0/1"]
    verify = walg.run(args).stdout
    border = "+-----+-------+-----+----------------+--------+"
    assert verify == (
        "[wal-verify] integrity check status: OK\n"
        "[wal-verify] integrity check details:\n"
        f"{border}\n| TLI | START | END | SEGMENTS COUNT | STATUS |\n{border}\n"
    )


def test_wal_show_lists_a_timelines_backups_as_wal_g_does(pg_workdir: Path, walg_bin: str) -> None:
    """WAL-G's wal-show reads the backups in the reverse of the storage listing (sentinel keys
    in byte order, as S3 and a folder list them), so a timeline's newest backup comes first.
    walg listed them oldest first (backup-list's order): a script taking backups[0] got the
    other end."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    cluster = archiving_primary(walg, install, pg_workdir / "data")
    cluster.psql("CREATE TABLE t (id int, pad text)")
    for n in (1, 2, 3):
        _switch(cluster, 100 * n)
        walg.run(["backup-push", str(cluster.datadir)], cluster=cluster)
    archive_now(cluster)
    names = [b["backup_name"] for b in json.loads(walg.run(["backup-list", "--json"]).stdout)]
    assert len(names) == 3 and names == sorted(names)

    (timeline,) = json.loads(walg.run(["wal-show", "--detailed-json"]).stdout)
    assert [b["backup_name"] for b in timeline["backups"]] == names[::-1]
    cluster.stop()


def test_wal_verify_on_a_standby_that_followed_a_promotion(pg_workdir: Path, walg_bin: str) -> None:
    """A cascading standby follows its upstream onto the new timeline at once, but its
    restartpoint timeline (pg_control's checkpoint, WAL-G's source) stays the old one until
    its next restartpoint. wal-verify then paired the old timeline with WAL received on the
    new one: timeline FAILURE and a walk on the old timeline. The timeline the standby
    receives (pg_stat_wal_receiver) is the newer one."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    primary = archiving_primary(walg, install, pg_workdir / "primary")
    primary.psql("CREATE TABLE t (id int, pad text)")
    walg.run(["backup-push", str(primary.datadir)], cluster=primary)
    upstream = primary.make_standby(pg_workdir / "upstream")
    cascade = upstream.make_standby(pg_workdir / "cascade", conf={"checkpoint_timeout": "1h"})
    _switch(primary, 100)
    primary.wait_for_replay(upstream)
    primary.stop()
    upstream.promote()
    upstream.psql("INSERT INTO t VALUES (1, 'on the new timeline')")
    first_on_2 = archive_now(upstream)
    upstream.psql("INSERT INTO t VALUES (2, 'in the segment after it')")
    upstream.wait_for_replay(cascade)
    assert cascade.psql("SELECT timeline_id FROM pg_control_checkpoint()") == "1"

    verify = walg.run(["wal-verify", "integrity", "timeline", "--json"], cluster=cascade)
    doc = json.loads(verify.stdout)
    assert doc["timeline"]["details"] == {
        "current_timeline_id": 2,
        "highest_storage_timeline_id": 2,
    }, verify.stdout
    assert doc["timeline"]["status"] == "OK"
    assert doc["integrity"]["status"] == "OK", (verify.stdout, verify.stderr)
    assert doc["integrity"]["details"][-1]["end_segment"] == first_on_2, verify.stdout
    cascade.stop()
    upstream.stop()


def test_a_history_file_whose_stored_content_was_damaged_is_not_read_as_sound(
    walg_bin: str, pg_workdir: Path
) -> None:
    """A byte flipped in a ``.history`` object that ``walg wal-push`` stored, where the LZ4
    frame still decodes (a literal of the reason text): wal-fetch refuses it (the checksum
    trailer), and so must everything else that reads the history. wal-verify reported OK and
    wal-show the damaged timeline as sound: they read the history without reaching the
    trailer, while a restore following that timeline stops at it."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    pg_wal = make_shared_dir(pg_workdir / "data" / "pg_wal", 0o700)
    make_shared_dir(pg_wal / "archive_status", 0o700)
    (pg_wal / "00000002.history").write_text("1\t0/2000000\tno recovery target specified\n")
    walg.run(["wal-push", str(pg_wal / "00000002.history")])
    wal = walg.store / "wal_005"
    for name in ("000000010000000000000001", "000000020000000000000002"):
        _put(wal / f"{name}.lz4", b"segment")
    stored = wal / "00000002.history.lz4"
    data = bytearray(stored.read_bytes())
    at = data.index(b"recovery target")
    data[at] ^= 0x01
    stored.write_bytes(bytes(data))

    fetched = walg.run(["wal-fetch", "00000002.history", str(pg_workdir / "h")], check=False)
    assert fetched.returncode == 1, fetched.stderr
    assert "checksum" in fetched.stderr

    lsn = "0/2000100"
    verified = walg.run(["wal-verify", "integrity", "--timeline", "2", "--lsn", lsn], check=False)
    assert verified.returncode == 1, (verified.stdout, verified.stderr)
    assert "00000002.history.lz4" in verified.stderr
    assert "checksum" in verified.stderr
    shown = walg.run(["wal-show", "--detailed-json", "--without-backups"], check=False)
    assert "00000002.history.lz4" in shown.stderr, (shown.stdout, shown.stderr)
    assert "checksum" in shown.stderr
    if shown.returncode == 0:
        # Shown as timeline 2 of unknown parent, as for a history that does not parse.
        assert [(t["id"], t["parent_id"]) for t in json.loads(shown.stdout)] == [(1, 0), (2, 0)]
