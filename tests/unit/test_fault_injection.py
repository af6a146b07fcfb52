"""``WALG_FAULT_INJECTION`` (tests' fault injection around storage): a rule walg cannot use is
a configuration error naming the setting, as every other setting's is, not an unexpected one."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import lz4.frame
import pytest

from fakewal import run_walg, segment_bytes, walg_env
from loglines import undated
from walg.core.lsn import Segment
from walg.errors import ConfigError
from walg.storage.faults import parse_rules


@pytest.mark.parametrize(
    "rule",
    [
        '{"op": "list", "delay": "x"}',
        '{"op": "list", "delay": -1}',
        '{"op": "list", "delay": 1e999}',
        '{"op": "list", "delay": [1]}',
        '{"op": "list", "key": "(", "fail": "boom"}',
    ],
)
def test_a_rule_walg_cannot_use_is_a_configuration_error(
    rule: str, walg_bin: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="WALG_FAULT_INJECTION: bad rule"):
        parse_rules(f"[{rule}]")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "WALG_FILE_PREFIX": str(tmp_path),
        "WALG_FAULT_INJECTION": f"[{rule}]",
    }
    listed = subprocess.run(
        [walg_bin, "backup-list"], env=env, capture_output=True, text=True, check=False, timeout=60
    )
    assert listed.returncode == 78, listed.stderr
    assert undated(listed.stderr).startswith("ERROR: WALG_FAULT_INJECTION: bad rule"), listed.stderr
    assert len(listed.stderr.splitlines()) == 1


def test_a_usable_rule_is_read_as_written() -> None:
    (rule,) = parse_rules('[{"op": "read", "key": "^wal_005/", "delay": 0.5, "fail": "x"}]')
    assert (rule.op, rule.key.pattern, rule.delay, rule.fail) == ("read", "^wal_005/", 0.5, "x")


def _unexpected(op: str) -> str:
    return json.dumps([{"op": op, "key": "wal_005/", "fail": "SDK bug", "unexpected": True}])


@pytest.mark.parametrize(
    ("signals", "fetch_code"),
    [
        (("recovery.signal",), 128),  # archive recovery: stop, do not promote
        (("recovery.signal", "standby.signal"), 1),  # a standby streams and asks again
        ((), 1),
    ],
)
def test_an_error_walg_does_not_expect_is_a_failure_of_the_wal_commands(
    walg_bin: str, tmp_path: Path, signals: tuple[str, ...], fetch_code: int
) -> None:
    """What a storage library raises that walg does not translate must fail the call: a push
    that exits 0 tells PostgreSQL it may recycle a segment that was not stored, and a fetch
    that exits 1..125 in archive recovery tells it the archive ends here (it promotes)."""
    name = Segment(1, 3).name()
    store = tmp_path / "store"
    (store / "wal_005").mkdir(parents=True)
    pgdata = tmp_path / "pgdata"
    (pgdata / "pg_wal").mkdir(parents=True)
    for signal_file in signals:
        (pgdata / signal_file).touch()
    (pgdata / "pg_wal" / name).write_bytes(segment_bytes(name, 5))
    env = walg_env(store, tmp_path, WALG_FAULT_INJECTION=_unexpected("write"))
    pushed = run_walg([walg_bin, "wal-push", f"pg_wal/{name}"], env, cwd=pgdata)
    assert pushed.returncode == 1, pushed.stderr
    assert "ERROR: unexpected RuntimeError: SDK bug" in undated(pushed.stderr), pushed.stderr
    assert not list((store / "wal_005").iterdir())

    (store / "wal_005" / f"{name}.lz4").write_bytes(lz4.frame.compress(segment_bytes(name, 5)))
    env = walg_env(store, tmp_path, WALG_FAULT_INJECTION=_unexpected("read"))
    fetched = run_walg([walg_bin, "wal-fetch", name, "pg_wal/RECOVERYXLOG"], env, cwd=pgdata)
    assert fetched.returncode == fetch_code, fetched.stderr
    assert "ERROR: unexpected RuntimeError: SDK bug" in undated(fetched.stderr), fetched.stderr
    assert not (pgdata / "pg_wal" / "RECOVERYXLOG").exists()
