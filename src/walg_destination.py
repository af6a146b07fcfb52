"""The destination key of a walg process: which archive its WAL uploads go to, as a digest.

A look-ahead upload leaves a marker under pg_wal saying "this file is archived"; that is true
only for the archive it was written to. A server may archive every file to two places
(``archive_command = 'walg wal-push %p && walg --config b.json wal-push %p'``) or be pointed at
another one while a backlog waits, so each marker's name carries the key of the destination it
was written for, and a call consumes only markers with its own key.

The key digests what decides the destination of a process: the environment variables walg
and the storage libraries read (PostgreSQL runs ``archive_command`` with the same environment
every time), its working folder (a relative ``WALG_FILE_PREFIX`` or ``--config`` is resolved
against it) and the config file walg would read, as the path and the identity (device, inode,
size, mtime, ctime) of the file, or its absence. That is more than decides the destination: a
change of something irrelevant only makes a marker unusable, which costs an upload (a false
"same destination" would lose WAL). The config file is chosen by :mod:`walg.settings`'s rule:
``--config FILE``, else ``$WALG_CONFIG_PATH``, else ``~/.walg.{json,toml,yaml,yml,dotenv,env}``
(all are recorded).

No secret goes into it (a variable whose name says password, secret, token, key...): the key
names marker files, and a digest of a password is a way to test guesses at it. A secret never
decides where WAL goes, so leaving it out cannot make two destinations look the same.

This module lives beside the ``walg`` package, not in it: the ``walg`` launcher computes the key
before walg itself is imported (importing the package costs milliseconds), and walg computes it
with the same function from the environment :mod:`walg.settings` hands it. It imports only
``os`` and the interpreter's built-in BLAKE2.
"""

import os

try:
    from _blake2 import blake2b  # built into CPython; hashlib would load OpenSSL (~9 ms)
except ImportError:  # pragma: no cover - other interpreters
    from hashlib import blake2b

# No typing, and no ``from __future__ import annotations`` (an import of its own): annotations
# naming typing-only names are strings. This runs on every archive_command call.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

KEY_LENGTH = 32  # hex digits: 128 bits, so two destinations never share a key by chance
# walg's variables and those of the storage SDKs it uses or will use; HOME is covered by the
# config file candidates.
DESTINATION_PREFIXES = (
    "WALG_", "WALE_", "AWS_", "S3_", "GOOGLE_", "GCS_", "GS_", "AZURE_", "AZ_", "SSH_", "YC_",
    "OSS_", "SWIFT_", "OS_",
)  # fmt: skip
SECRET_WORDS = ("PASS", "SECRET", "TOKEN", "CRED", "PRIVATE", "KEY", "AUTH", "SAS", "SIGN")


def counts(name: str) -> bool:
    """Does the variable ``name`` go into the key: one walg may read, and no secret?"""
    upper = name.upper()
    return upper.startswith(DESTINATION_PREFIXES) and not any(w in upper for w in SECRET_WORDS)


# walg.settings reads these, in the order WAL-G's config library (viper) looks for them.
CONFIG_NAMES = (
    ".walg.json", ".walg.toml", ".walg.yaml", ".walg.yml", ".walg.dotenv", ".walg.env",
)  # fmt: skip


def config_candidates(environ: "Mapping[str, str]", config_path: str | None) -> list[str]:
    """The config files walg.settings may read, in its order of preference.

    WAL-G looks for ``~/.walg.*`` in the home folder of the user running it (its passwd
    entry), whatever ``$HOME`` says: a server started by ``su postgres -c 'pg_ctl start'``
    keeps root's HOME, one started with a cleared environment has none. walg takes ``$HOME``'s
    files first, and the passwd home folder's when ``$HOME`` has none and is not this user's
    own folder (or is unset).
    """
    if config_path:
        return [config_path]
    named = environ.get("WALG_CONFIG_PATH")
    if named:
        return [named]
    home = environ.get("HOME")
    found = [os.path.join(home, name) for name in CONFIG_NAMES] if home else []
    if any(os.path.isfile(path) for path in found) or _own_folder(home):
        return found
    passwd_home = _passwd_home()
    if passwd_home and passwd_home != home:
        found += [os.path.join(passwd_home, name) for name in CONFIG_NAMES]
    return found


def _own_folder(path: str | None) -> bool:
    """Is ``path`` a folder of this process's user? Then it is taken for the user's home
    without a lookup in the user database (which costs an archive_command call a fraction of
    a millisecond); root's HOME kept by ``su postgres`` is not."""
    try:
        return path is not None and os.stat(path).st_uid == os.getuid()
    except OSError:
        return False


def _passwd_home() -> str | None:
    """The home folder of this process's user in the user database, as Go's os/user has it."""
    try:
        import pwd  # built in, and loaded only when $HOME holds no config file

        return pwd.getpwuid(os.getuid()).pw_dir or None
    except (ImportError, KeyError, OSError):
        return None


def destination_key(
    environ: "Mapping[str, str]", config_path: str | None, folder: str | None = None
) -> str:
    """The key of the destination of a process with ``environ`` and ``--config config_path``,
    run in ``folder`` (None: this process's working directory; a folder as ``os.getcwd()``
    gives it, without symbolic links)."""
    parts = ["walg-destination-1"]
    try:
        parts.append(os.getcwd() if folder is None else folder)
    except OSError as exc:
        parts.append(f"cwd?{exc.errno}")
    for path in config_candidates(environ, config_path):
        try:
            st = os.stat(path)
        except OSError as exc:
            parts.append(f"{path}\0?{exc.errno}")
        else:
            parts.append(
                f"{path}\0{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
            )
    parts.append("")
    parts.extend(f"{k}={v}" for k, v in sorted(environ.items()) if counts(k))
    # Undecodable bytes in the environment reach Python as surrogates; keep them distinct.
    data = "\0".join(parts).encode("utf-8", "surrogateescape")
    return blake2b(data, digest_size=KEY_LENGTH // 2).hexdigest()


def is_key(text: str) -> bool:
    """Does ``text`` look like a destination key (a marker name's suffix)?"""
    return len(text) == KEY_LENGTH and all(c in "0123456789abcdef" for c in text)


# Go's strconv.ParseBool, as WAL-G's flag library (pflag) reads ``--turbo=VALUE``.
_GO_BOOLS = ("1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False")


def go_bool(text: str) -> "bool | None":
    """``text`` as Go's strconv.ParseBool reads it (how pflag reads ``--flag=VALUE`` of a
    boolean flag); None for what it refuses."""
    return _GO_BOOLS.index(text) < 6 if text in _GO_BOOLS else None


def global_flags_first(argv: "list[str]") -> "list[str]":
    """``argv`` with WAL-G's root-command flags taken out of wherever they stand.

    WAL-G's ``--config FILE`` (or ``--config=FILE``) and ``--turbo`` are flags of its root
    command, which its command-line library takes anywhere on the line, so WAL-G users write
    ``archive_command = 'wal-g wal-push %p --config /etc/wal-g.json'``. walg reads
    ``--config`` before the command name only: the flag found elsewhere is moved there (the
    last one given wins, as in WAL-G). ``--turbo`` lifts WAL-G's rate limits, which walg
    does not have, so it is dropped. Nothing after ``--`` is looked at, and a ``--config``
    without a value is left where it is, for the parser to refuse.

    Here, not in walg.cli, because the ``walg`` launcher reads the same line before walg
    itself is imported.
    """
    config = None
    rest: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            rest.extend(argv[index:])
            break
        if arg == "--config" and index + 1 < len(argv):
            config = argv[index + 1]
            index += 2
            continue
        if arg.startswith("--config="):
            config = arg[len("--config=") :]
        elif not (arg == "--turbo" or (arg.startswith("--turbo=") and arg[8:] in _GO_BOOLS)):
            rest.append(arg)
        index += 1
    return rest if config is None else ["--config", config, *rest]
