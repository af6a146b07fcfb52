"""``wal-push`` reports success only once its object is durable: the object's bytes are
fsynced before it is given its name, and its folder after, so that a power loss after
PostgreSQL recycled the segment cannot take the archived copy with it (DESIGN.md promise 4).
A crash cannot be staged here: the real ``walg`` is watched with strace.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

NAME = "000000010000000000000007"


@pytest.mark.parametrize("prevent", ["true", "false"], ids=["checked", "overwrite-allowed"])
def test_a_pushed_object_is_synced_before_it_is_named_and_its_folder_after(
    tmp_path: Path, walg_bin: str, prevent: str
) -> None:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (scripts/setup.sh installs it)")
    wal = tmp_path / "pg_wal"
    (wal / "archive_status").mkdir(parents=True)
    (wal / NAME).write_bytes(os.urandom(1 << 20))
    store = tmp_path / "store"
    (store / "wal_005").mkdir(parents=True)  # made beforehand: its own fsync is another test's
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env.update(
        {
            "WALG_FILE_PREFIX": str(store),
            "WALG_UPLOAD_CONCURRENCY": "1",
            "WALG_PREVENT_WAL_OVERWRITE": prevent,
        }
    )
    trace = tmp_path / "trace"
    calls = "fsync,fdatasync,link,linkat,rename,renameat,renameat2"
    watch = [strace, "-f", "-qq", "-y", "-e", f"trace={calls}", "-o", str(trace)]
    done = subprocess.run(
        [*watch, walg_bin, "wal-push", str(wal / NAME)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    obj = store / "wal_005" / f"{NAME}.lz4"
    assert obj.is_file()
    lines = trace.read_text().splitlines()
    naming = re.compile(
        r'(?:link|rename)(?:at2?)?\(.*"[^"]*\.tmp\.[^"]*".*"' + re.escape(f'{obj}"')
    )
    named = [i for i, line in enumerate(lines) if naming.search(line) and line.endswith("= 0")]
    assert len(named) == 1, lines
    synced = [
        (i, m.group(1))
        for i, line in enumerate(lines)
        if (m := re.search(r"f(?:data)?sync\(\d+<([^>]+)>\) = 0", line))
    ]
    temporary = re.compile(re.escape(str(obj)) + r"\.tmp\.")
    assert any(i < named[0] and temporary.match(path) for i, path in synced), (
        "the object was named before its bytes were synced",
        lines,
    )
    assert any(i > named[0] and path == str(obj.parent) for i, path in synced), (
        "its folder was not synced after it was named",
        lines,
    )
