"""Fault injection around any backend, for tests of failure paths (never on by default).

Configured by ``WALG_FAULT_INJECTION``: a JSON list of rules, each
``{"op": "write"|"read"|"stat"|"list"|"delete", "key": "<regex>", "delay": seconds,
"fail": "message", "transient": bool, "unexpected": bool}``. A matching operation first
sleeps ``delay`` seconds, then raises :class:`StorageError` with ``fail`` if given, or with
``unexpected`` a ``RuntimeError``: what a backend's library may raise that walg does not
translate, whose handling (a failure, never success) the tests pin. Rules apply to every
matching call.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from walg.errors import ConfigError, StorageError
from walg.storage.base import ObjectInfo, Storage
from walg.streams.base import Sink, Source

_OPS = ("write", "read", "stat", "list", "delete")


@dataclass(frozen=True)
class FaultRule:
    """Which operations on which keys a fault-injecting storage delays or fails."""

    op: str
    key: re.Pattern[str]
    delay: float = 0.0
    fail: str | None = None
    transient: bool = False
    unexpected: bool = False


def parse_rules(text: str) -> list[FaultRule]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"WALG_FAULT_INJECTION is not JSON: {exc}") from None
    if not isinstance(doc, list):
        raise ConfigError("WALG_FAULT_INJECTION must be a JSON list of rules")
    rules = []
    for item in doc:
        if not isinstance(item, dict) or item.get("op") not in _OPS:
            raise ConfigError(f"WALG_FAULT_INJECTION: bad rule {item!r}")
        try:
            key = re.compile(str(item.get("key", "")))
            delay = float(item.get("delay", 0))
        except (re.error, TypeError, ValueError) as exc:
            raise ConfigError(f"WALG_FAULT_INJECTION: bad rule {item!r}: {exc}") from None
        if not 0 <= delay < float("inf"):
            raise ConfigError(f"WALG_FAULT_INJECTION: bad rule {item!r}: delay {delay}")
        rules.append(
            FaultRule(
                op=item["op"],
                key=key,
                delay=delay,
                fail=item.get("fail"),
                transient=bool(item.get("transient", False)),
                unexpected=bool(item.get("unexpected", False)),
            )
        )
    return rules


class FaultyStorage(Storage):
    def __init__(self, inner: Storage, rules: list[FaultRule]) -> None:
        self._inner = inner
        self._rules = rules
        self.location = inner.location

    def _apply(self, op: str, key: str) -> None:
        for rule in self._rules:
            if rule.op == op and rule.key.search(key):
                if rule.delay:
                    time.sleep(rule.delay)
                if rule.fail and rule.unexpected:
                    raise RuntimeError(f"{rule.fail} ({op} {key})")
                if rule.fail:
                    raise StorageError(f"{rule.fail} ({op} {key})", transient=rule.transient)

    def open_write(self, key: str, overwrite: bool = True) -> AbstractContextManager[Sink]:
        self._apply("write", key)
        return self._inner.open_write(key, overwrite)

    def open_read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AbstractContextManager[Source]:
        self._apply("read", key)
        return self._inner.open_read(key, offset, length)

    def stat(self, key: str) -> ObjectInfo:
        self._apply("stat", key)
        return self._inner.stat(key)

    def list(
        self,
        prefix: str,
        recursive: bool = True,
        unlisted: list[str] | None = None,
        *,
        limit: int | None = None,
    ) -> list[ObjectInfo]:
        self._apply("list", prefix)
        return self._inner.list(prefix, recursive, unlisted, limit=limit)

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for key in keys:
            self._apply("delete", key)
        self._inner.delete(keys)

    def remove_temporaries(self, prefix: str, older_than: float) -> int:
        self._apply("delete", prefix)
        return self._inner.remove_temporaries(prefix, older_than)

    def make_durable(self, key: str) -> None:
        self._apply("write", key)  # an fsync is the end of a write
        self._inner.make_durable(key)

    def check_available(self) -> None:
        self._apply("stat", "")
        self._inner.check_available()

    def local_path(self, key: str) -> str | None:
        return self._inner.local_path(key)

    def close(self) -> None:
        self._inner.close()
