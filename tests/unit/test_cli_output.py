"""What a command that prints does when its standard output cannot take it: closed, full, or
its reader gone. One clear line or none, an honest exit code, never a traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from loglines import undated


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    store = tmp_path / "store"
    store.mkdir()
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "WALG_FILE_PREFIX": str(store),
    }


def _run(walg_bin: str, env: dict[str, str], args: list[str], **kwargs: object) -> tuple[int, str]:
    done = subprocess.run(
        [walg_bin, *args],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )
    return done.returncode, done.stderr


@pytest.mark.parametrize("args", [["backup-list", "--json"], ["wal-show"]])
def test_closed_standard_output(walg_bin: str, env: dict[str, str], args: list[str]) -> None:
    # File descriptor 1 closed in the child, as ``walg backup-list >&-`` does.
    code, err = _run(walg_bin, env, args, preexec_fn=lambda: os.close(1))
    assert code == 1, err
    assert undated(err).splitlines()[-1] == (
        "ERROR: standard output is closed; nothing was written"
    ), err
    assert "unexpected" not in err


def test_full_standard_output(walg_bin: str, env: dict[str, str]) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with open("/dev/full", "w") as full:
        code, err = _run(walg_bin, env, ["backup-list", "--json"], stdout=full)
        assert code == 1, err
        assert "cannot write to standard output: No space left on device" in err
        assert "unexpected" not in err and "Exception" not in err
        code, err = _run(walg_bin, env, ["backup-list", "--help"], stdout=full)
        assert code == 1, err
        assert "Traceback" not in err and "cannot write the help text" in err


def test_a_reader_that_went_away(walg_bin: str, env: dict[str, str]) -> None:
    """``walg backup-list | head -0``: a failure (not all was delivered), and quiet."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        code, err = _run(walg_bin, env, ["backup-list", "--json"], stdout=write_end)
    finally:
        os.close(write_end)
    assert code == 1
    assert "ERROR" not in err and "Exception" not in err, err
