"""``WALG_FAULT_INJECTION`` (tests' fault injection around storage): a rule walg cannot use is
a configuration error naming the setting, as every other setting's is, not an unexpected one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

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
    assert listed.stderr.startswith("ERROR: WALG_FAULT_INJECTION: bad rule"), listed.stderr
    assert len(listed.stderr.splitlines()) == 1


def test_a_usable_rule_is_read_as_written() -> None:
    (rule,) = parse_rules('[{"op": "read", "key": "^wal_005/", "delay": 0.5, "fail": "x"}]')
    assert (rule.op, rule.key.pattern, rule.delay, rule.fail) == ("read", "^wal_005/", 0.5, "x")
