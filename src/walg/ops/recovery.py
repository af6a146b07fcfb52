"""Recovery settings written into a restored data directory.

PostgreSQL 12+ reads them from ``postgresql.auto.conf`` plus a ``recovery.signal`` file; older
servers from ``recovery.conf``. At most one target (time, LSN, name, xid) may be set, as
PostgreSQL requires; with a target the default action is ``promote`` (PostgreSQL's own default,
``pause``, leaves a restored server waiting for an operator who may not be there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from walg.core.lsn import parse_lsn
from walg.errors import UsageError

RECOVERY_ACTIONS = ("pause", "promote", "shutdown")


@dataclass(frozen=True)
class RecoveryTarget:
    """The recovery settings backup-fetch writes: restore_command and a target."""

    restore_command: str
    time: str | None = None
    lsn: str | None = None
    name: str | None = None
    xid: str | None = None
    timeline: str | None = None
    action: str | None = None
    inclusive: bool | None = None
    standby: bool = False

    def check(self) -> None:
        targets = [t for t in (self.time, self.lsn, self.name, self.xid) if t]
        if len(targets) > 1:
            raise UsageError(
                "give at most one of --target-time, --target-lsn, --target-name, --target-xid"
            )
        if self.lsn:
            parse_lsn(self.lsn)
        if self.xid and not self.xid.isdigit():
            raise UsageError(f"--target-xid {self.xid!r} is not a transaction id")
        if self.timeline and not (
            self.timeline.isdigit() or self.timeline in ("latest", "current")
        ):
            raise UsageError(
                f"--target-timeline {self.timeline!r}: use a number, latest or current"
            )
        if self.action and self.action not in RECOVERY_ACTIONS:
            raise UsageError(f"--target-action must be one of {', '.join(RECOVERY_ACTIONS)}")

    def settings(self) -> dict[str, str]:
        out = {"restore_command": self.restore_command}
        has_target = False
        for key, value in (
            ("recovery_target_time", self.time),
            ("recovery_target_lsn", self.lsn),
            ("recovery_target_name", self.name),
            ("recovery_target_xid", self.xid),
        ):
            if value:
                out[key] = value
                has_target = True
        if self.timeline:
            out["recovery_target_timeline"] = self.timeline
        if has_target:
            out["recovery_target_action"] = self.action or "promote"
            if self.inclusive is not None:
                out["recovery_target_inclusive"] = "on" if self.inclusive else "off"
        return out


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def write_recovery_config(dest: Path, pg_version: int, target: RecoveryTarget) -> list[str]:
    """Write the settings and signal file; returns the files written."""
    target.check()
    lines = "".join(f"{k} = {_quote(v)}\n" for k, v in target.settings().items())
    if pg_version >= 120000:
        auto = dest / "postgresql.auto.conf"
        with open(auto, "a", encoding="utf-8") as handle:
            handle.write("\n# recovery settings written by walg backup-fetch\n" + lines)
        signal = dest / ("standby.signal" if target.standby else "recovery.signal")
        signal.touch(mode=0o600)
        return [str(auto), str(signal)]
    conf = dest / "recovery.conf"
    extra = "standby_mode = 'on'\n" if target.standby else ""
    conf.write_text("# written by walg backup-fetch\n" + lines + extra, encoding="utf-8")
    conf.chmod(0o600)
    return [str(conf)]
