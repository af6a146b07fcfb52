"""Recovery settings written into a restored data directory.

PostgreSQL 12+ reads them from ``postgresql.auto.conf`` plus a ``recovery.signal`` file; older
servers from ``recovery.conf``. At most one target (time, LSN, name, xid) may be set, as
PostgreSQL requires; with a target the default action is ``promote`` (PostgreSQL's own default,
``pause``, leaves a restored server waiting for an operator who may not be there).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from walg.core.durable import fsync_path
from walg.core.lsn import parse_lsn
from walg.errors import FormatError, IntegrityError, UsageError

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

RECOVERY_ACTIONS = ("pause", "promote", "shutdown")
MAX_NAME_BYTES = 63
FIRST_NORMAL_XID = 3  # PostgreSQL's FirstNormalTransactionId


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
        named = {
            "--restore-command": self.restore_command,
            "--target-time": self.time,
            "--target-lsn": self.lsn,
            "--target-name": self.name,
            "--target-xid": self.xid,
            "--target-timeline": self.timeline,
        }
        refuse_empty(named)
        check_placeholders(self.restore_command)
        targets = [t for t in (self.time, self.lsn, self.name, self.xid) if t]
        if len(targets) > 1:
            raise UsageError(
                "give at most one of --target-time, --target-lsn, --target-name, --target-xid"
            )
        if not targets and (self.action or self.inclusive is not None):
            raise UsageError(
                "--target-action and --target-exclusive need a target (--target-time, "
                "--target-lsn, --target-name or --target-xid)"
            )
        if self.lsn:
            try:
                if self.lsn != self.lsn.strip():
                    raise FormatError(self.lsn)
                parse_lsn(self.lsn)
            except FormatError:
                raise UsageError(
                    f"--target-lsn {self.lsn!r} is not an LSN (like 0/3000028)"
                ) from None
        if self.time:
            check_target_time(self.time)
        # The server's limit (MAXFNAMELEN less its NUL), in bytes; no restore point has a
        # longer name, and with one the restored server would refuse to start.
        if self.name and len(self.name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise UsageError(
                f"--target-name {self.name!r} is longer than {MAX_NAME_BYTES} bytes, the "
                "longest name a restore point can have"
            )
        # PostgreSQL reads both numbers with base prefixes (a leading 0 is octal): only plain
        # decimal means what it says.
        if self.xid and not _plain_number(self.xid, 1 << 64):
            raise UsageError(f"--target-xid {self.xid!r} is not a transaction id")
        # The server keeps the low 32 bits (the epoch txid_current() adds goes); 0, 1 and 2
        # there are the invalid, bootstrap and frozen ids, which end no transaction: recovery
        # would replay the whole archive and fail short of the target.
        if self.xid and int(self.xid) & 0xFFFFFFFF < FIRST_NORMAL_XID:
            raise UsageError(
                f"--target-xid {self.xid} is transaction id {int(self.xid) & 0xFFFFFFFF} to "
                "PostgreSQL (it keeps the low 32 bits), which no transaction has"
            )
        if self.timeline and not (
            _plain_number(self.timeline, 1 << 32) or self.timeline in ("latest", "current")
        ):
            raise UsageError(
                f"--target-timeline {self.timeline!r}: use a number (decimal, no leading "
                "zeros), latest or current"
            )
        if self.action and self.action not in RECOVERY_ACTIONS:
            raise UsageError(f"--target-action must be one of {', '.join(RECOVERY_ACTIONS)}")
        for value in self.settings().values():
            _quote(value)

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

    def complete_settings(self) -> dict[str, str]:
        """:meth:`settings` with every other recovery target setting back at its default.

        ``postgresql.auto.conf`` is read last and PostgreSQL applies the last line of each
        parameter, so these win over a target left in ``postgresql.conf`` or a file it
        includes (WAL-G's own recovery instructions put them there, and they are harmless
        outside recovery): a restore asked for no target would otherwise stop at that old
        one, and one asked for another kind of target would fail with "multiple recovery
        targets". Only for servers that read recovery settings as parameters (12+). Outside
        standby mode, ``recovery_min_apply_delay`` goes back to 0 as well.

        The emptied targets come before the one asked for: PostgreSQL assigns them in file
        order, and emptying a target after another is set counts as a second target.
        """
        asked = self.settings()
        out = {"restore_command": asked.pop("restore_command")}
        for key in TARGET_KEYS:
            if key not in asked:
                out[key] = ""
        out["recovery_target_timeline"] = "latest"
        out["recovery_target_inclusive"] = "on"
        out["recovery_target_action"] = "pause"
        if not self.standby:
            # A delayed standby's backup carries its delay, and PostgreSQL applies it in
            # archive recovery too: a restore would wait for each commit to be that old
            # before reaching its target or promoting. A standby keeps what it inherits.
            out["recovery_min_apply_delay"] = "0"
        for key in [k for k in out if k in asked]:
            del out[key]
        out.update(asked)  # the asked-for target last
        return out


TARGET_KEYS = (
    "recovery_target",
    "recovery_target_time",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_xid",
)


# Every setting a restore's recovery block may set. A data directory restored earlier (and
# backed up since) still has its old block: PostgreSQL does not remove it at promotion.
RECOVERY_KEYS = frozenset(
    (
        "restore_command",
        "recovery_target",
        "recovery_target_time",
        "recovery_target_lsn",
        "recovery_target_name",
        "recovery_target_xid",
        "recovery_target_timeline",
        "recovery_target_action",
        "recovery_target_inclusive",
    )
)
DISABLED_PREFIX = "# disabled by walg backup-fetch: "


# The placeholders PostgreSQL replaces in restore_command (%r: the last restart point's file).
RESTORE_PLACEHOLDERS = "fpr%"


def check_placeholders(command: str) -> None:
    """Refuse a ``%`` that is no placeholder of restore_command.

    PostgreSQL 16 and later refuse to start recovery on one ("String contains unexpected
    placeholder"), found only when the restored server starts; 13 to 15 pass it on as it is.
    A ``%%`` is one ``%`` to every major, so that is what a path or a word needs.
    """
    at = 0
    while (at := command.find("%", at)) >= 0:
        following = command[at + 1 : at + 2]
        if not following or following not in RESTORE_PLACEHOLDERS:
            shown = f"'%{following}'" if following else "a '%' at its end"
            raise UsageError(
                f"--restore-command {command!r} has {shown}, which is no placeholder "
                "(%f, %p, %r): PostgreSQL 16 and later refuse to start recovery with it; "
                "write a '%' that is part of a path or a word as '%%'"
            )
        at += 2


def refuse_empty(options: Mapping[str, str | None]) -> None:
    """Refuse an option given with an empty value: an unset shell variable (``--target-name
    "$POINT"``) means no target at all, which would replay the whole archive and promote, the
    opposite of what was asked."""
    for option, value in options.items():
        if value is not None and not value.strip():
            raise UsageError(f"{option} is empty")


def _plain_number(text: str, limit: int) -> bool:
    """A decimal number from 1 to ``limit - 1`` without sign, spaces or leading zeros."""
    return text.isascii() and text.isdigit() and text[0] != "0" and int(text) < limit


# The ISO 8601 forms of a timestamp PostgreSQL reads: a date, a time, an offset or zone name.
# ASCII only ((?a)): Python's \d and \s also match other scripts' digits and spaces (full-width
# digits, a no-break space), which the server does not read.
TIME_RE = (
    r"(?a)(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:[ T](?P<h>\d{1,2}):(?P<m>\d{2})(?::(?P<s>\d{2})(?:\.(?P<frac>\d+))?)?)?"
    r"\s*(?:[+-](?P<oh>\d{1,2})(?::?(?P<om>\d{2})(?::(?P<os>\d{2}))?)?"
    r"|(?P<zone>[A-Za-z][A-Za-z0-9_/+-]*))?"
)


# The spaces the server's parser skips around a timestamp (C's isspace); str.strip() also
# takes Unicode spaces and some control characters, which it does not.
TIME_SPACE = " \t\n\r\f\v"


def check_target_time(text: str) -> None:
    """Refuse a ``--target-time`` that is not a timestamp in ISO 8601 form.

    PostgreSQL reads a bad ``recovery_target_time`` only when the restored server starts, and
    then refuses to start: found after the whole restore. It also reads other forms (``Nov 25
    2026``, ``25/11/2026`` by DateStyle); walg takes the unambiguous ones only. A zone is an
    offset or a name of the time zone database: PostgreSQL refuses abbreviations there
    (``Z``, ``CEST``), whose table is not loaded when it reads its configuration.
    """
    import re
    from datetime import date

    match = re.fullmatch(TIME_RE, text.strip(TIME_SPACE))
    valid = match is not None
    if match is not None:
        year, month, day = (int(part) for part in match["date"].split("-"))
        try:
            date(year, month, day)
        except ValueError:
            valid = False
        if match["zone"] is not None:
            valid = valid and _known_zone(match["zone"])
        if match["h"] is not None:
            hour, minute, second = int(match["h"]), int(match["m"]), int(match["s"] or 0)
            # PostgreSQL reads 24:00:00 (the next midnight) and a leap second, but nothing
            # past either (24:00:00.5, 23:59:60.5).
            clock = hour < 24 or (hour, minute, second) == (24, 0, 0)
            edge = hour == 24 or second == 60
            past = edge and (match["frac"] or "0").strip("0") != ""
            valid = valid and clock and minute < 60 and second <= 60 and not past
        if match["h"] is None and match["oh"] is not None:
            # 2026-11-26-05 is no date with an offset to PostgreSQL (2026-11-26 -05 is).
            valid = valid and text.strip(TIME_SPACE)[len(match["date"])] != "-"
        if match["oh"] is not None:
            # Its limit for an offset: 15:59:59 either way.
            offset = (int(match["oh"]), int(match["om"] or 0), int(match["os"] or 0))
            valid = valid and offset[0] <= 15 and offset[1] < 60 and offset[2] < 60
    if not valid:
        raise UsageError(
            f"--target-time {text!r} is not a timestamp walg can check; use ISO 8601, like "
            "'2026-11-25 12:00:00+00' (a time zone name instead of the offset works too)"
        )


def _known_zone(name: str) -> bool:
    """Is ``name`` in the system's time zone database (as PostgreSQL matches: in any case)?
    True where there is no database to look in."""
    import zoneinfo

    names = {zone.lower() for zone in zoneinfo.available_timezones()}
    return not names or name.lower() in names


def _quote(value: str) -> str:
    """A configuration-file string literal: the parser reads ``''`` and backslash escapes."""
    if any(c in value for c in "\r\n\0"):
        raise UsageError(f"recovery setting {value!r} contains a line break or NUL byte")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"recovery setting {value!r} is not valid UTF-8") from None
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _setting_name(line: str) -> str:
    """The parameter a configuration line sets (lower case), or "" for none."""
    text = line.strip()
    end = 0
    while end < len(text) and (text[end].isalnum() or text[end] in "_."):
        end += 1
    return text[:end].lower()


def _disable_recovery_settings(text: str, keys: frozenset[str] = RECOVERY_KEYS) -> str:
    """``text`` with every line that sets one of ``keys`` commented out.

    Earlier targets would otherwise still apply where the new block sets none (PostgreSQL
    takes the last line of each parameter), or clash with a target of another kind.
    """
    return "".join(
        DISABLED_PREFIX + line if _setting_name(line) in keys else line
        for line in text.splitlines(keepends=True)
    )


# What an earlier point-in-time restore leaves that would stop a later recovery early.
TARGET_SETTING_KEYS = RECOVERY_KEYS - {"restore_command"}


def _setting_value(line: str) -> str:
    """The value a ``name = value`` line sets, unquoted (enough to tell empty from not)."""
    _, _, rest = line.partition("=")
    value = rest.strip()
    if value.startswith("'"):
        end = 1
        while end < len(value):
            if value[end] == "'" and value[end + 1 : end + 2] != "'":
                break
            end += 2 if value[end] in "'\\" else 1
        return value[1:end]
    return value.split("#", 1)[0].strip()


def active_targets(text: str) -> list[str]:
    """The recovery targets a configuration text sets to something (the last line of each
    parameter wins, as in PostgreSQL), as ``name = value`` for messages."""
    last: dict[str, str] = {}
    for line in text.splitlines():
        name = _setting_name(line)
        if name in TARGET_KEYS:
            last[name] = _setting_value(line)
    return [f"{name} = {value!r}" for name, value in last.items() if value]


# A data directory's own configuration files, in the order the server reads them (the last
# setting of a name wins).
CONF_FILES = ("postgresql.conf", "postgresql.auto.conf")

# PostgreSQL's CONF_FILE_MAX_DEPTH: deeper nesting is an error to the server.
_MAX_INCLUDE_DEPTH = 10


def datadir_conf_files(dest: Path | str) -> list[str]:
    """The configuration files of a data directory, relative to it, in the order the server
    reads them: ``postgresql.conf`` with the files it includes (``include``,
    ``include_if_exists``, ``include_dir``, as deep as the server goes) in their places,
    then ``postgresql.auto.conf``.

    Only files inside ``dest`` are named: they go with its backups (and its clones made with
    pg_basebackup), like ``postgresql.conf``. A file included from elsewhere belongs to the
    machine the server runs on: restored, it may well hold the operator's own settings for
    this very restore.
    """
    root = os.path.realpath(dest)
    out: list[str] = []

    def inside(path: str) -> str | None:
        real = os.path.realpath(path)
        if real != root and real.startswith(root + os.sep):
            return os.path.relpath(path, dest)
        return None

    def read(path: str, depth: int) -> None:
        relative = inside(path)
        if relative is None or relative in out or depth > _MAX_INCLUDE_DEPTH:
            return
        if not os.path.isfile(path):
            return  # nothing, or a FIFO a blocking read would wait on for ever
        try:
            text = _read_conf(Path(path))
        except OSError:
            return  # the server fails on an unreadable include; its start says so
        except IntegrityError:
            text = ""  # named, for the reader that refuses it to say so
        out.append(relative)
        here = os.path.dirname(path)
        for line in text.splitlines():
            directive = _setting_name(line)
            if directive not in ("include", "include_if_exists", "include_dir"):
                continue
            target = _directive_value(line[line.lower().index(directive) + len(directive) :])
            if not target:
                continue
            target = os.path.join(here, target)  # an absolute one stays as it is
            if directive != "include_dir":
                read(target, depth + 1)
                continue
            try:
                names = sorted(
                    n for n in os.listdir(target) if n.endswith(".conf") and not n.startswith(".")
                )
            except OSError:
                continue
            for name in names:
                read(os.path.join(target, name), depth + 1)

    read(os.path.join(dest, CONF_FILES[0]), 0)
    if os.path.isfile(os.path.join(dest, CONF_FILES[1])):
        out.append(CONF_FILES[1])
    return out


def _directive_value(rest: str) -> str:
    """The file name after an include directive's name: ``'file'``, ``= 'file'`` or bare."""
    rest = rest.strip()
    if rest.startswith("="):
        rest = rest[1:].strip()
    if rest.startswith("'"):
        return _setting_value("=" + rest)
    return rest.split("#", 1)[0].strip()


def disable_inherited_targets(
    dest: Path, pg_version: int, file_name: str = "postgresql.auto.conf"
) -> list[str]:
    """Comment out the recovery targets in a restored ``postgresql.auto.conf`` (or another
    configuration file of the data directory, ``file_name``); returns the targets that were
    active.

    A server restored to a point in time keeps its target there after promotion (in
    ``postgresql.conf`` where WAL-G's instructions had it written), and so do its later
    backups: restored "files only" (restore_command in postgresql.conf, as WAL-G documents),
    such a backup would stop at the old target and promote, leaving out everything archived
    after it. restore_command is left as it is.
    """
    if pg_version < 120000:
        return []  # recovery.conf: renamed recovery.done by the server once used
    auto = dest / file_name
    try:
        text = _read_conf(auto)
    except FileNotFoundError:
        return []
    if not any(_setting_name(line) in TARGET_SETTING_KEYS for line in text.splitlines()):
        return []
    active = active_targets(text)
    _rewrite(auto, lambda old: _disable_recovery_settings(old, TARGET_SETTING_KEYS))
    return active


def inherited_apply_delay(dest: Path, pg_version: int) -> str | None:
    """The ``recovery_min_apply_delay`` a restored data directory's own configuration sets
    (``postgresql.conf``, then ``postgresql.auto.conf``; the last line wins), unless 0.

    A delayed standby's backup carries its delay, and PostgreSQL applies it in archive
    recovery too. Restored files only, walg cannot tell whether the directory is to recover
    or to be a delayed standby again, so the delay is named rather than removed.
    """
    if pg_version < 120000:
        return None  # recovery.conf, not in a backup
    value = _configured(dest, "recovery_min_apply_delay")
    if value is None:
        return None
    number = value.strip().rstrip("abcdefghijklmnopqrstuvwxyz").strip()
    try:
        if float(number) == 0:
            return None
    except ValueError:
        pass  # a value the server will judge: named as it is
    return f"recovery_min_apply_delay = {value!r}"


def _configured(dest: Path, parameter: str) -> str | None:
    """The value a restored data directory's own configuration gives ``parameter``
    (:func:`datadir_conf_files`; the last line wins), unquoted; None where none sets it."""
    value = None
    for name in datadir_conf_files(dest):
        try:
            text = _read_conf(dest / name)
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            if _setting_name(line) == parameter:
                value = _setting_value(line)
    return value


# archive_mode's values that archive (the server also reads unique prefixes; those are rare).
_ARCHIVING = ("on", "always", "true", "yes", "1")


def inherited_archiving(dest: Path) -> str | None:
    """The ``archive_mode`` a restored data directory's own configuration turns archiving on
    with (:func:`datadir_conf_files`; the last line wins), as ``name = value`` for a
    message; None when it is off or unset.

    Promoted, a restored server archives its new timeline wherever that configuration's
    archive_command says: for a test copy, the original's storage, whose later restores with
    ``recovery_target_timeline = latest`` then follow the copy's timeline.
    """
    value = _configured(dest, "archive_mode")
    if value is None or value.strip().lower() not in _ARCHIVING:
        return None
    return f"archive_mode = {value!r}"


def disable_archiving(dest: Path) -> str:
    """Write ``archive_mode = 'off'`` into a restored ``postgresql.auto.conf`` (read last: it
    wins over ``postgresql.conf``), commenting out any earlier line of it there; returns the
    file written. pgBackRest's ``restore --archive-mode=off``."""
    auto = dest / "postgresql.auto.conf"
    keys = frozenset(("archive_mode",))
    _rewrite(
        auto,
        lambda old: (
            _disable_recovery_settings(old, keys)
            + "\n# written by walg backup-fetch --archive-mode off\narchive_mode = 'off'\n"
        ),
    )
    return str(auto)


_BLOCK_HEADER = "\n# recovery settings written by walg backup-fetch\n"


# Larger than any configuration file a server writes or a DBA keeps (PostgreSQL's own
# postgresql.conf is about 30 kB): a restored one this large came from damaged or forged
# storage, and read whole, with its decoded copy, it would take twice its size of memory.
MAX_CONF_BYTES = 16 << 20


def _read_conf(path: Path) -> str:
    # ALTER SYSTEM on a server whose encoding is not UTF-8 (SQL_ASCII, LATIN1) writes its
    # bytes as they are: kept as they were, byte for byte.
    with open(path, "rb") as handle:
        data = handle.read(MAX_CONF_BYTES + 1)
    if len(data) > MAX_CONF_BYTES:
        raise IntegrityError(
            f"restored {path} is more than {MAX_CONF_BYTES >> 20} MiB, more than any "
            "configuration file: not read (is the backup damaged?)"
        )
    return data.decode("utf-8", "surrogateescape")


def _rewrite(path: Path, change: Callable[[str], str]) -> None:
    """Replace ``path`` with ``change(its text)``, keeping its owner and mode.

    Run as root, a new file would otherwise belong to root, and the server could not read it.
    """
    try:
        old = _read_conf(path)
        st: os.stat_result | None = path.stat()
    except FileNotFoundError:
        old, st = "", None
    if old and not old.endswith("\n"):
        old += "\n"
    tmp = path.with_name(path.name + ".walg-tmp")
    try:
        tmp.write_bytes(change(old).encode("utf-8", "surrogateescape"))
        tmp.chmod(0o600 if st is None else st.st_mode & 0o7777)
        if st is not None and (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
            os.chown(tmp, st.st_uid, st.st_gid)
        # Durable before the rename: after a power loss the name could otherwise hold an
        # empty file, or the old one with the recovery targets this rewrite turned off.
        fsync_path(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent, folder=True)


def restored_version(dest: Path, recorded: int) -> int:
    """The ``server_version_num`` of the major a restored ``dest`` is for, from its
    ``PG_VERSION`` (``13``, ``9.6``); ``recorded`` (the sentinel's) where it cannot be read.

    The file is what the server itself checks. WAL-E's sentinels record no version, and
    taken as 0 a 12+ directory would get ``recovery.conf``, with which it refuses to start.
    """
    try:
        # A few bytes are a version; a forged file of any size must not be read whole.
        with open(dest / "PG_VERSION", "rb") as handle:
            text = handle.read(64).decode("ascii").strip()
        major, _, minor = text.partition(".")
        return int(major) * 10000 + (int(minor) * 100 if minor else 0)
    except (OSError, ValueError):
        return recorded


def write_recovery_config(dest: Path, pg_version: int, target: RecoveryTarget) -> list[str]:
    """Write the settings and signal file; returns the files written."""
    target.check()
    if pg_version >= 120000:
        lines = "".join(f"{k} = {_quote(v)}\n" for k, v in target.complete_settings().items())
        auto = dest / "postgresql.auto.conf"
        _rewrite(auto, lambda old: _disable_recovery_settings(old) + _BLOCK_HEADER + lines)
        signal = dest / ("standby.signal" if target.standby else "recovery.signal")
        signal.touch(mode=0o600)
        fsync_path(signal)
        fsync_path(dest, folder=True)
        return [str(auto), str(signal)]
    lines = "".join(f"{k} = {_quote(v)}\n" for k, v in target.settings().items())
    conf = dest / "recovery.conf"
    extra = "standby_mode = 'on'\n" if target.standby else ""
    conf.write_text("# written by walg backup-fetch\n" + lines + extra, encoding="utf-8")
    conf.chmod(0o600)
    fsync_path(conf)
    fsync_path(dest, folder=True)
    return [str(conf)]
