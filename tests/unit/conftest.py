"""Fixtures shared by the unit tests: real storage backends (no mocks), an environment
without the caller's walg settings, and logging hygiene."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemonenv import Env
from walg.core import log as walg_log
from walg.storage.base import Storage
from walg.storage.file import FileStorage
from walg.storage.memory import MemoryStorage


def make_storage(kind: str, tmp_path: Path) -> Storage:
    if kind == "memory":
        return MemoryStorage()
    (tmp_path / "store").mkdir(exist_ok=True)  # an archive; a missing one is not available
    return FileStorage(tmp_path / "store")


@pytest.fixture(params=["memory", "file"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """Every backend that needs no server: the contract and the ops run against both."""
    backend = make_storage(request.param, tmp_path)
    yield backend
    backend.close()


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """The CLI replaces the root logger's handlers; put them back after each test.

    A wal-push or wal-fetch run in-process also leaves walg.core.log's lazy set-up pending
    (and its threshold) for the whole process: the next walg record of a later test on the
    same worker ran it, which swapped caplog's handler out of the root logger mid-test, so
    that test saw no records. It is put back too."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    pending = walg_log._PENDING
    lazy = pending.level, pending.configure
    yield
    pending.level, pending.configure = lazy
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No WAL-G/PG settings from the outer environment; HOME without a ~/.walg.* file.
    Returns ``tmp_path``."""
    for name in list(os.environ):
        if name.startswith(("WALG_", "WALE_", "PG", "AWS_", "GOOGLE_", "AZURE_", "SSH_")):
            monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return tmp_path


@pytest.fixture
def env(tmp_path: Path, walg_bin: str) -> Iterator[Env]:
    """For the daemon tests: a stand-in data directory and file storage; a daemon started on
    them is killed at the end. (A module's own ``env`` fixture takes precedence.)"""
    e = Env(tmp_path, walg_bin)
    try:
        yield e
    finally:
        if e.daemon is not None:
            e.daemon.kill()
            e.daemon.wait()
