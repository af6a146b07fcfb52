"""A cache of the methods ``dataclasses`` compiles for walg's classes, kept beside their ``.pyc``.

Python caches the bytecode of every module, but not the code ``dataclasses`` writes for each
class as it is created: ``__init__``, ``__repr__``, ``__eq__``, ``__hash__``, ``__setattr__`` and
``__delattr__`` are generated as source text and compiled again in every process. On the
classes an ``archive_command`` call creates that compiling is most of the class creation, about
3 ms a call.

:func:`install` hands ``dataclasses`` an ``exec`` that looks the text up in a table of code
objects compiled earlier from that same text by this same interpreter, and compiles only what
is missing. The table is one marshal file in the ``__pycache__`` folder that holds walg's own
``.pyc`` files (under ``sys.pycache_prefix`` when that is set), trusted as they are. It is keyed
by the interpreter's version, and anything unreadable in it is ignored. A process that compiled
something new merges it into the table when it exits, where Python would write bytecode. Only
classes defined in walg's own modules are cached, so the table stays as small as walg's source.

Where walg's folder is not writable (a package installed by root, run by ``postgres``), the
table is what ``walg warm-cache`` (:func:`warm`) wrote at installation; without one every
class is compiled as before, only slower.
"""

from __future__ import annotations

import marshal
import os
import sys
from types import CodeType, ModuleType

FILE_STEM = "dataclass-code"
MODULE_PREFIX = "walg."
MAX_ENTRIES = 1024  # per module, far above walg's classes: a bound, not a budget
TABLE_VERSION = 1  # raised whenever what is compiled for a text changes


def _stamp() -> tuple[str, int, int, int]:
    # sys.version names the build too, so a rebuilt interpreter never reads an older table.
    return (sys.version, sys.hexversion, marshal.version, TABLE_VERSION)


def table_path() -> str | None:
    """Where this interpreter keeps the table for walg, or None when it caches no bytecode."""
    tag = sys.implementation.cache_tag
    if tag is None:
        return None
    package_dir = os.path.dirname(os.path.abspath(__file__))
    prefix = sys.pycache_prefix
    if prefix:
        # As importlib does: the source folder's absolute path, re-rooted under the prefix.
        folder = os.path.join(prefix, package_dir.lstrip(os.sep))
    else:
        folder = os.path.join(package_dir, "__pycache__")
    return os.path.join(folder, f"{FILE_STEM}.{tag}.marshal")


def read_blobs(path: str) -> dict[str, bytes]:
    """Module name -> its entries, still marshalled; empty when missing, unreadable or foreign.

    Each module's entries are decoded only when that module creates a class, so a process
    pays for the classes it makes, not for all of walg's.
    """
    try:
        with open(path, "rb") as handle:
            stamp, blobs = marshal.loads(handle.read())
    except (OSError, EOFError, ValueError, TypeError):
        return {}
    if stamp != _stamp() or not isinstance(blobs, dict):
        return {}
    return {name: blob for name, blob in blobs.items() if isinstance(blob, bytes)}


def decode(blob: bytes) -> dict[str, CodeType]:
    """One module's entries: source text -> the code compiled from it; bad entries dropped."""
    try:
        entries = marshal.loads(blob)
    except (EOFError, ValueError, TypeError):
        return {}
    if not isinstance(entries, dict):
        return {}
    return {
        text: code
        for text, code in entries.items()
        if isinstance(text, str) and isinstance(code, CodeType)
    }


def write_table(path: str, modules: dict[str, dict[str, CodeType]], *, merge: bool = True) -> bool:
    """Write MODULES' entries (merged into what PATH holds) atomically; False if not allowed."""
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Opened first: where walg's folder is read-only this is the whole cost of trying.
        with open(temporary, "wb") as handle:
            blobs = read_blobs(path) if merge else {}
            for name, entries in modules.items():
                merged = decode(blobs.get(name, b"")) if merge else {}
                merged.update(entries)
                if len(merged) > MAX_ENTRIES:
                    merged = dict(entries)
                blobs[name] = marshal.dumps(merged)
            handle.write(marshal.dumps((_stamp(), blobs)))
        os.replace(temporary, path)
    except OSError:
        try:  # noqa: SIM105 - contextlib is not loaded this early on a WAL call's path
            os.unlink(temporary)
        except OSError:
            pass
        return False
    return True


def compile_as_dataclasses(source: str) -> CodeType:
    """What ``exec(source)`` inside ``dataclasses`` compiles.

    ``dont_inherit``: a plain ``exec`` or ``compile`` here would pass on this module's own
    ``__future__`` flags, and ``from __future__ import annotations`` would turn the annotations
    of every generated ``__init__`` into strings. The file name is the one ``exec`` gives a
    string, so tracebacks read the same.
    """
    return compile(source, "<string>", "exec", dont_inherit=True)


class CachedExec:
    """``exec`` for ``dataclasses``: walg's generated methods come from the table when they can."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs
        self.tables: dict[str, dict[str, CodeType]] = {}
        self.compiled: dict[str, dict[str, CodeType]] = {}  # not in the table yet
        self.seen: dict[str, dict[str, CodeType]] = {}  # every walg text this process met

    def __call__(
        self,
        source: str | bytes | CodeType,
        globals_: dict[str, object] | None = None,
        locals_: dict[str, object] | None = None,
    ) -> None:
        if isinstance(source, str):
            module = "" if globals_ is None else str(globals_.get("__name__", ""))
            if module.startswith(MODULE_PREFIX):
                source = self._code(module, source)
            else:
                source = compile_as_dataclasses(source)
        exec(source, globals_, locals_)  # the very call dataclasses makes

    def _code(self, module: str, source: str) -> CodeType:
        table = self.tables.get(module)
        if table is None:
            table = self.tables[module] = decode(self.blobs.pop(module, b""))
        code = table.get(source)
        if code is None:
            code = compile_as_dataclasses(source)
            self.compiled.setdefault(module, {})[source] = code
        self.seen.setdefault(module, {})[source] = code
        return code


def install(dataclasses: ModuleType) -> None:
    """Give DATACLASSES the cached ``exec``, once, when bytecode caching is on."""
    path = table_path()
    if path is None or isinstance(getattr(dataclasses, "exec", None), CachedExec):
        return
    hook = CachedExec(read_blobs(path))
    setattr(dataclasses, "exec", hook)  # noqa: B010 - a module global that shadows the builtin
    if not sys.dont_write_bytecode:
        import atexit

        atexit.register(_save, path, hook)


def _save(path: str, hook: CachedExec) -> None:
    if hook.compiled:
        write_table(path, hook.compiled)
        hook.compiled = {}


def warm() -> tuple[str, int]:
    """Import every walg module and write a table of exactly their classes: (path, entries).

    Run at installation (``walg warm-cache``; scripts/setup.sh does), by the user who can
    write into walg's folder where the user PostgreSQL runs as cannot. Like ``compileall`` it
    writes even where Python would not write bytecode by itself. A fresh table also drops what
    an older walg left. Modules whose optional libraries are missing are skipped.
    """
    import importlib
    import pkgutil

    import walg
    from walg.errors import WalgError

    path = table_path()
    if path is None:
        raise WalgError("this Python caches no bytecode (sys.implementation.cache_tag is None)")
    hook = getattr(sys.modules.get("dataclasses"), "exec", None)
    if not isinstance(hook, CachedExec):
        raise WalgError("dataclasses in this process does not use walg's cache: nothing cached")
    for info in pkgutil.walk_packages(walg.__path__, MODULE_PREFIX):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except ImportError:
            continue
    if not write_table(path, hook.seen, merge=False):
        raise WalgError(f"cannot write {path}: run this as the user who installed walg")
    hook.compiled = {}
    # Written fresh, so the table holds exactly what this process met.
    return path, sum(map(len, hook.seen.values()))
