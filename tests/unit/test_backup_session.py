"""walg.postgres.backup_session: what bounds pg_backup_stop (statement_timeout_ms) and which
databases moved between tablespaces during a backup (moved_databases)."""

from __future__ import annotations

import math

import pytest

from walg.postgres.backup_session import (
    MAX_STATEMENT_TIMEOUT_MS,
    DatabaseLocation,
    moved_databases,
    statement_timeout_ms,
)
from walg.settings import DEFAULT_STOP_BACKUP_TIMEOUT, load


def test_postgresql_limit() -> None:
    # statement_timeout is an int GUC in milliseconds: SET refuses anything above INT_MAX.
    assert MAX_STATEMENT_TIMEOUT_MS == 2147483647


@pytest.mark.parametrize(
    ("seconds", "ms"),
    [
        (DEFAULT_STOP_BACKUP_TIMEOUT, 1_800_000),
        (30.0, 30_000),
        (0.25, 250),
        (1.0005, 1001),  # rounded up, never below what was asked
        (0.0001, 1),  # never 0, which would mean no limit at all
        (2147483.647, MAX_STATEMENT_TIMEOUT_MS),
        (720 * 3600.0, MAX_STATEMENT_TIMEOUT_MS),  # 720h: what PostgreSQL refused
        (2562047 * 3600.0, MAX_STATEMENT_TIMEOUT_MS),  # the longest duration walg accepts
        (math.inf, MAX_STATEMENT_TIMEOUT_MS),
        (math.nan, MAX_STATEMENT_TIMEOUT_MS),  # compares false with everything: still capped
        (0.0, 1),  # a zero limit is still a limit
    ],
)
def test_statement_timeout_ms(seconds: float, ms: int) -> None:
    assert statement_timeout_ms(seconds) == ms
    assert 0 < statement_timeout_ms(seconds) <= MAX_STATEMENT_TIMEOUT_MS


def test_720h_from_the_environment_gives_a_valid_statement_timeout() -> None:
    settings = load(environ={"WALG_STOP_BACKUP_TIMEOUT": "720h"})
    assert statement_timeout_ms(settings.stop_backup_timeout) == MAX_STATEMENT_TIMEOUT_MS


def test_moved_databases_are_those_whose_tablespace_changed() -> None:
    before = {
        5: DatabaseLocation("postgres", 1663),
        16390: DatabaseLocation("moved", 16389),
        16391: DatabaseLocation("dropped", 1663),
        16392: DatabaseLocation("also moved", 1663),
    }
    after = {
        5: DatabaseLocation("postgres", 1663),
        16390: DatabaseLocation("moved", 1663),
        16392: DatabaseLocation("also moved", 16389),
        16393: DatabaseLocation("created", 16389),  # WAL-logged in full: no matter
    }
    assert moved_databases(before, after) == ["also moved", "moved"]
    assert moved_databases(before, before) == []


def test_a_database_whose_directory_was_made_anew_moved_away_and_back() -> None:
    before = {
        5: DatabaseLocation("postgres", 1663, (1, 100, 101)),
        6: DatabaseLocation("and back", 1663, (1, 200, 201)),
        7: DatabaseLocation("version file only", 1663, (1, 300, 301)),
        8: DatabaseLocation("unreadable before", 1663, None),
        9: DatabaseLocation("unreadable after", 1663, (1, 500, 501)),
    }
    after = {
        5: DatabaseLocation("postgres", 1663, (1, 100, 101)),
        6: DatabaseLocation("and back", 1663, (1, 210, 211)),
        7: DatabaseLocation("version file only", 1663, (1, 300, 311)),
        8: DatabaseLocation("unreadable before", 1663, (1, 400, 401)),
        9: DatabaseLocation("unreadable after", 1663, None),
    }
    assert moved_databases(before, after) == ["and back", "version file only"]
