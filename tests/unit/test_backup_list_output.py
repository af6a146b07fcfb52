"""backup-list's output against what WAL-G prints: time formats, zero times, Go's JSON encoder.

WAL-G facts these tests pin (internal/backup_list_time_format.go, printlist/entities.go,
postgres/backup_util.go, encoding/json): plain times are ``time.RFC3339`` (no fraction, the
offset the time was parsed with), a zero time prints ``-``, one zero start time makes every
backup sort by its sentinel time, ``--json`` is ``json.Encoder`` output (compact, HTML
characters escaped, UTF-8 kept; ``--pretty`` indents by four spaces) and a time field that a
document lacks is written as Go's zero time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from walg.cli.main import main
from walg.cli.render import go_json, rfc850, rfc3339
from walg.core import naming
from walg.core.gotime import GO_ZERO_TEXT, GoTime
from walg.core.metadata import BackupMetadata, Sentinel

GOLDEN = Path(__file__).parent / "golden"
OLDER = "base_000000010000000000000003"
NEWER = "base_000000010000000000000009"


@pytest.fixture
def store(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = clean_env / "store"
    root.mkdir()
    monkeypatch.setenv("WALG_FILE_PREFIX", str(root))
    return root


def metadata_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "start_time": "2024-05-01T10:00:00.123457Z",
        "finish_time": "2024-05-01T13:00:07.9+03:00",
        "date_fmt": "%Y-%m-%dT%H:%M:%S.%fZ",
        "hostname": "db1",
        "data_dir": "/var/lib/postgresql/16/main",
        "pg_version": 160002,
        "start_lsn": 50331688,
        "finish_lsn": 50331944,
        "is_permanent": False,
        "system_identifier": 7352215480210000000,
        "uncompressed_size": 100,
        "compressed_size": 50,
    }
    for key, value in changes.items():
        if value is None:
            del doc[key]
        else:
            doc[key] = value
    return doc


def put_backup(root: Path, name: str, sentinel_mtime: int, meta: dict[str, Any]) -> None:
    sentinel = root / naming.sentinel_key(name)
    sentinel.parent.mkdir(parents=True, exist_ok=True)
    sentinel.write_bytes((GOLDEN / "sentinel_v2_full.json").read_bytes())
    os.utime(sentinel, (sentinel_mtime, sentinel_mtime))
    metadata = root / naming.metadata_key(name)
    metadata.parent.mkdir(parents=True, exist_ok=True)
    metadata.write_text(json.dumps(meta))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    assert main(["backup-list", *argv]) == 0
    return capsys.readouterr().out.splitlines()


def test_detail_times_are_whole_seconds_in_their_own_offset(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put_backup(store, OLDER, 1_766_196_019, metadata_doc())
    header, row = run(capsys, "--detail")
    assert header.split()[4:6] == ["start_time", "finish_time"]
    # RFC 3339 as Go formats it: fraction dropped (not rounded), the offset kept.
    assert row.split()[4:6] == ["2024-05-01T10:00:00Z", "2024-05-01T13:00:07+03:00"]
    assert row.split()[1] == "2025-12-20T02:00:19Z"

    pretty = run(capsys, "--detail", "--pretty")
    assert "Wednesday, 01-May-24 10:00:00 UTC" in pretty[3]
    assert "Wednesday, 01-May-24 13:00:07 +0300" in pretty[3]


@pytest.mark.parametrize("zero", [GO_ZERO_TEXT, "0001-01-01T03:00:00+03:00", None])
def test_one_zero_start_time_sorts_every_backup_by_sentinel_time(
    store: Path, capsys: pytest.CaptureFixture[str], zero: str | None
) -> None:
    # By start time NEWER comes first; by sentinel time OLDER does.
    put_backup(store, OLDER, 1_000_000, metadata_doc(start_time="2024-06-01T00:00:00Z"))
    put_backup(store, NEWER, 2_000_000, metadata_doc(start_time="2024-01-01T00:00:00Z"))
    assert [line.split()[0] for line in run(capsys, "--detail")[1:]] == [NEWER, OLDER]

    # A zero start time (written, or missing: Go leaves the field zero) switches the order of
    # all backups to sentinel time, and prints as "-".
    meta = metadata_doc(start_time=zero) if zero else metadata_doc(start_time=None)
    put_backup(store, NEWER, 2_000_000, meta)
    rows = [line.split() for line in run(capsys, "--detail")[1:]]
    assert [r[0] for r in rows] == [OLDER, NEWER]
    assert rows[0][4] == "2024-06-01T00:00:00Z"
    assert rows[1][4] == "-"

    pretty = run(capsys, "--detail", "--pretty")
    assert NEWER in pretty[4]
    cells = [c.strip() for c in pretty[4].split("|")]
    assert cells[6] == "-"  # #, name, modified, wal, storage, start time

    (_, doc) = json.loads(run(capsys, "--detail", "--json")[0])
    assert doc["backup_name"] == NEWER
    assert doc["start_time"] == GO_ZERO_TEXT  # never null: time.Time is not a pointer


def test_json_is_go_encoder_output(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host = "db<1>&é\u2028"
    put_backup(
        store,
        OLDER,
        1_766_196_019,
        metadata_doc(hostname=host, finish_time="2024-05-01T10:00:07Z", user_data={"k": [1]}),
    )
    (line,) = run(capsys, "--json", "--detail")
    assert line == (
        '[{"backup_name":"base_000000010000000000000003","time":"2025-12-20T02:00:19Z",'
        '"wal_file_name":"000000010000000000000003","storage_name":"default",'
        '"start_time":"2024-05-01T10:00:00.123457Z","finish_time":"2024-05-01T10:00:07Z",'
        '"date_fmt":"%Y-%m-%dT%H:%M:%S.%fZ","hostname":"db\\u003c1\\u003e\\u0026é\\u2028",'
        '"data_dir":"/var/lib/postgresql/16/main","pg_version":160002,"start_lsn":50331688,'
        '"finish_lsn":50331944,"is_permanent":false,"system_identifier":7352215480210000000,'
        '"uncompressed_size":100,"compressed_size":50,"user_data":{"k":[1]}}]'
    )
    assert json.loads(line)[0]["hostname"] == host

    (line,) = run(capsys, "--json")
    assert line == (
        '[{"backup_name":"base_000000010000000000000003","time":"2025-12-20T02:00:19Z",'
        '"wal_file_name":"000000010000000000000003","storage_name":"default"}]'
    )

    pretty = "\n".join(run(capsys, "--json", "--pretty", "--detail"))
    assert pretty.startswith(
        '[\n    {\n        "backup_name": "base_000000010000000000000003",\n'
        '        "time": "2025-12-20T02:00:19Z",\n'
    )
    assert '        "hostname": "db\\u003c1\\u003e\\u0026é\\u2028",\n' in pretty
    assert '        "user_data": {\n            "k": [\n                1\n' in pretty
    assert pretty.endswith("\n    }\n]")


def test_go_json_escapes_as_go() -> None:
    doc = {"a<": ["<>&", "\u2028\u2029", "é€", "\ud800", "\n\t\x01\x7f", '"\\'], "b": None}
    assert go_json(doc) == (
        '{"a\\u003c":["\\u003c\\u003e\\u0026","\\u2028\\u2029","é€","\ufffd",'
        '"\\n\\t\\u0001\x7f","\\"\\\\"],"b":null}'
    )
    assert go_json([], indent=4) == "[]"
    assert go_json({"x": {}}, indent=4) == '{\n    "x": {}\n}'


def test_go_json_never_writes_non_finite_numbers() -> None:
    # Sentinels written by walg before 2026-11 may hold NaN / Infinity user data.
    doc = {"user_data": {"a": float("nan"), "b": [float("inf"), -float("inf")], "c": 1.5}}
    text = go_json(doc)
    assert json.loads(text, parse_constant=pytest.fail) == {
        "user_data": {"a": "NaN", "b": ["Infinity", "-Infinity"], "c": 1.5}
    }


def test_time_renderings() -> None:
    # The Unix epoch is a real time; only Go's zero time is "-".
    assert rfc850(GoTime(0)) == "Thursday, 01-Jan-70 00:00:00 UTC"
    assert rfc3339(GoTime(0)) == "1970-01-01T00:00:00Z"
    zero = GoTime.parse(GO_ZERO_TEXT)
    assert zero.is_zero and GoTime.parse("0001-01-01T01:00:00+01:00").is_zero
    assert not GoTime(0).is_zero
    assert rfc850(zero) == rfc3339(zero) == rfc850(None) == rfc3339(None) == "-"
    assert rfc3339(GoTime.parse("2024-05-01T10:00:00.999999999-05:30")) == (
        "2024-05-01T10:00:00-05:30"
    )
    assert rfc850(GoTime.parse("2024-05-01T10:00:00-05:30")) == (
        "Wednesday, 01-May-24 10:00:00 -0530"
    )


def test_missing_or_zero_times_read_as_none_and_are_written_as_go_zero() -> None:
    for start in (None, GO_ZERO_TEXT, ""):
        meta = BackupMetadata.loads(json.dumps(metadata_doc(start_time=start)))
        assert meta.start_time is None
        assert meta.to_json()["start_time"] == GO_ZERO_TEXT
    sentinel = Sentinel.loads(b'{"LSN":1,"FinishLSN":2,"PgVersion":160002}')
    assert sentinel.start_time is None and sentinel.finish_time is None
    doc = sentinel.to_json()
    assert doc["StartTime"] == doc["FinishTime"] == GO_ZERO_TEXT


def test_text_formats_byte_for_byte(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole text of each table format, as WAL-G prints it: printlist's tabwriter (one
    space between columns, the last cell unpadded), go-pretty's box with upper-cased pretty
    names (``Datadir``, ``Permanent``) and a 0-based ``#``, and ``is_permanent`` as Go's
    ``%v`` of a bool. Scripts cut these by column, so every space counts. A sentinel's
    modification time has a fraction, which both formats drop."""
    put_backup(store, OLDER, 1_766_196_019, metadata_doc())
    sentinel = store / naming.sentinel_key(OLDER)
    os.utime(sentinel, ns=(1_766_196_019_750_000_000, 1_766_196_019_750_000_000))
    put_backup(
        store,
        NEWER,
        1_766_200_000,
        metadata_doc(
            start_time="2024-05-02T10:00:00Z",
            finish_time="2024-05-02T11:00:00Z",
            hostname="db-replica-2",
            is_permanent=True,
            pg_version=170000,
        ),
    )
    assert run(capsys) == [
        "backup_name                   modified             wal_file_name            storage_name",
        f"{OLDER} 2025-12-20T02:00:19Z 000000010000000000000003 default",
        f"{NEWER} 2025-12-20T03:06:40Z 000000010000000000000009 default",
    ]
    assert run(capsys, "--detail") == [
        "backup_name                   modified             wal_file_name            storage_name "
        "start_time           finish_time               hostname     data_dir                    "
        "pg_version start_lsn finish_lsn is_permanent",
        f"{OLDER} 2025-12-20T02:00:19Z 000000010000000000000003 default      "
        "2024-05-01T10:00:00Z 2024-05-01T13:00:07+03:00 db1          /var/lib/postgresql/16/main "
        "160002     0/3000028 0/3000128  false",
        f"{NEWER} 2025-12-20T03:06:40Z 000000010000000000000009 default      "
        "2024-05-02T10:00:00Z 2024-05-02T11:00:00Z      db-replica-2 /var/lib/postgresql/16/main "
        "170000     0/3000028 0/3000128  true",
    ]
    border = (
        "+---+-------------------------------+----------------------------------"
        "+--------------------------+--------------+"
    )
    assert run(capsys, "--pretty") == [
        border,
        "| # | BACKUP NAME                   | MODIFIED                         "
        "| WAL FILE NAME            | STORAGE NAME |",
        border,
        f"| 0 | {OLDER} | Saturday, 20-Dec-25 02:00:19 UTC | 000000010000000000000003 "
        "| default      |",
        f"| 1 | {NEWER} | Saturday, 20-Dec-25 03:06:40 UTC | 000000010000000000000009 "
        "| default      |",
        border,
    ]
    border += (
        "-----------------------------------+-------------------------------------+------------"
        "--+-----------------------------+------------+-----------+------------+-----------+"
    )
    assert run(capsys, "--pretty", "--detail") == [
        border,
        "| # | BACKUP NAME                   | MODIFIED                         "
        "| WAL FILE NAME            | STORAGE NAME | START TIME                        "
        "| FINISH TIME                         | HOSTNAME     | DATADIR                     "
        "| PG VERSION | START LSN | FINISH LSN | PERMANENT |",
        border,
        f"| 0 | {OLDER} | Saturday, 20-Dec-25 02:00:19 UTC | 000000010000000000000003 "
        "| default      | Wednesday, 01-May-24 10:00:00 UTC | Wednesday, 01-May-24 13:00:07 +0300 "
        "| db1          | /var/lib/postgresql/16/main | 160002     | 0/3000028 | 0/3000128  "
        "| false     |",
        f"| 1 | {NEWER} | Saturday, 20-Dec-25 03:06:40 UTC | 000000010000000000000009 "
        "| default      | Thursday, 02-May-24 10:00:00 UTC  | Thursday, 02-May-24 11:00:00 UTC    "
        "| db-replica-2 | /var/lib/postgresql/16/main | 170000     | 0/3000028 | 0/3000128  "
        "| true      |",
        border,
    ]


def _utf8_locale(folder: Path) -> dict[str, str]:
    """LANG and LOCPATH for en_US.UTF-8, compiled into ``folder`` (an operator's usual
    locale; the test machines have only C and C.UTF-8, under which Python's standard output
    takes surrogate escapes already)."""
    import shutil
    import subprocess

    if shutil.which("localedef") is None or not Path("/usr/share/i18n/locales/en_US").exists():
        pytest.skip("no localedef or no en_US locale source to build the locale from")
    made = subprocess.run(
        ["localedef", "-i", "en_US", "-f", "UTF-8", str(folder / "en_US.UTF-8")],
        capture_output=True,
        text=True,
        check=False,
    )
    if not (folder / "en_US.UTF-8").is_dir():
        pytest.skip(f"localedef could not build en_US.UTF-8: {made.stderr.strip()}")
    return {"LANG": "en_US.UTF-8", "LOCPATH": str(folder)}


def test_text_tables_print_names_that_are_not_utf8_under_a_utf8_locale(
    store: Path, walg_bin: str
) -> None:
    """backup-push records a data directory named with bytes that are not UTF-8 as surrogate
    escapes. Under en_US.UTF-8, where Python's standard output is strict, backup-list --detail
    and --pretty --detail failed on such a backup with "unexpected UnicodeEncodeError" and
    listed nothing; they print the name's bytes, as WAL-G and ls do. A lone surrogate that
    stands for no byte (a forged "\\ud800" escape) is printed as U+FFFD, as in --json."""
    import subprocess

    put_backup(store, OLDER, 1_766_196_019, metadata_doc(data_dir=os.fsdecode(b"/srv/caf\xe9")))
    put_backup(store, NEWER, 1_766_200_000, metadata_doc(hostname="db\ud800"))
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": os.environ["HOME"],
        "WALG_FILE_PREFIX": str(store),
        **_utf8_locale(store.parent),
    }
    for pretty in ([], ["--pretty"]):
        got = subprocess.run(
            [walg_bin, "backup-list", "--detail", *pretty],
            env=env,
            capture_output=True,
            check=False,
        )
        assert got.returncode == 0, got.stderr
        assert b" /srv/caf\xe9 " in got.stdout
        assert b" db\xef\xbf\xbd " in got.stdout
