"""The benchmark scripts start: each answers --help with its usage (exit 0).

BENCHMARKS.md tells operators to run them; one that fails before it starts gives a
traceback instead of the command line it takes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_a_bench_script_answers_help_with_its_usage(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout, done.stdout
    assert "Traceback" not in done.stderr


def test_floor_push_refuses_a_wrong_command_line_with_its_usage(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "floor_push.py"), str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "usage:" in done.stderr and "SEGMENT DIR" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []
