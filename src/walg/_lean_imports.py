"""Import ``dataclasses`` without ``inspect``, ``re`` or ``copy``, which ``archive_command``
would pay for on every call.

On Python 3.11 to 3.13 ``dataclasses`` imports ``inspect`` (and with it ``ast``, ``dis``,
``tokenize`` and more: about as long again as the rest of a ``wal-push``'s imports) for one use,
the generated ``__doc__`` of a class that has none. It imports ``re`` (with ``enum``) for one
pattern, which tells ``ClassVar``, ``InitVar`` and ``KW_ONLY`` among string annotations. It
imports ``copy`` (with ``weakref``: about 0.8 ms) for ``asdict`` and ``astuple``, which no
``wal-push`` calls.

So the package root imports ``dataclasses`` once with placeholders in place of these modules.
Afterwards ``dataclasses`` sees stand-ins that import the real module on first use, and that
one pattern is matched by :class:`_IdentifierPattern`, which does what the regular expression
does with string operations (a property test holds it to ``re``). Any other pattern the module
compiles is compiled for real on its first use. Nothing else ever sees a placeholder (they
exist only while the package is first imported, before walg starts any thread); where
``dataclasses``, ``inspect`` or ``re`` is already loaded the ordinary import happens (a
``copy`` already loaded is simply used).
"""

from __future__ import annotations

import sys
from types import ModuleType

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    from collections.abc import Callable

# dataclasses._MODULE_IDENTIFIER_RE on Python 3.11 to 3.13, matched with .match().
IDENTIFIER_PATTERN = r"^(?:\s*(\w+)\s*\.)?\s*(\w+)"


class _ModuleOnDemand:
    """Stands in for a module inside ``dataclasses``; replaced by it on first use."""

    def __init__(self, owner: ModuleType, name: str) -> None:
        self._owner = owner
        self._name = name

    def __getattr__(self, attribute: str) -> object:
        from importlib import import_module

        module = import_module(self._name)
        setattr(self._owner, self._name, module)
        return getattr(module, attribute)


class _IdentifierMatch:
    """The part of ``re.Match`` that ``dataclasses._is_type`` uses."""

    __slots__ = ("_groups",)

    def __init__(self, module: str | None, name: str) -> None:
        self._groups = (None, module, name)

    def group(self, index: int) -> str | None:
        return self._groups[index]


def _is_word(char: str) -> bool:
    # re's \w for str patterns: Py_UNICODE_ISALNUM or "_", which is str.isalnum() per character.
    return char == "_" or char.isalnum()


def _skip(text: str, start: int, accept: Callable[[str], bool]) -> int:
    end = start
    while end < len(text) and accept(text[end]):
        end += 1
    return end


class _IdentifierPattern:
    r"""``re.compile(r"^(?:\s*(\w+)\s*\.)?\s*(\w+)").match`` without ``re``.

    The optional group either matches in one way only or not at all (after ``\w+`` the next
    character is no word character, so a shorter word could not reach the ``.`` either), so no
    backtracking beyond "with the group, else without it" is needed.
    """

    pattern = IDENTIFIER_PATTERN

    def match(self, text: str) -> _IdentifierMatch | None:
        start = _skip(text, 0, str.isspace)
        end = _skip(text, start, _is_word)
        if end > start:
            dot = _skip(text, end, str.isspace)
            if dot < len(text) and text[dot] == ".":
                name_start = _skip(text, dot + 1, str.isspace)
                name_end = _skip(text, name_start, _is_word)
                if name_end > name_start:
                    return _IdentifierMatch(text[start:end], text[name_start:name_end])
            return _IdentifierMatch(None, text[start:end])
        return None


class _PatternOnDemand:
    """Any other pattern ``dataclasses`` might compile while it is imported: compiled on use."""

    def __init__(self, pattern: str, flags: int) -> None:
        self._args = (pattern, flags)
        self._compiled: object = None

    def __getattr__(self, attribute: str) -> object:
        if self._compiled is None:
            import re

            self._compiled = re.compile(*self._args)
        return getattr(self._compiled, attribute)


def _compile_placeholder(pattern: str, flags: int = 0) -> object:
    if pattern == IDENTIFIER_PATTERN and not flags:
        return _IdentifierPattern()
    return _PatternOnDemand(pattern, flags)


def import_dataclasses_lean() -> None:
    if any(name in sys.modules for name in ("dataclasses", "inspect", "re")):
        return
    placeholders = {"inspect": ModuleType("inspect"), "re": ModuleType("re")}
    placeholders["re"].compile = _compile_placeholder  # type: ignore[attr-defined]
    if "copy" not in sys.modules:
        placeholders["copy"] = ModuleType("copy")
    before = set(sys.modules)
    sys.modules.update(placeholders)
    try:
        import dataclasses  # noqa: F401 - imported for its place in sys.modules
    except (ImportError, AttributeError):
        pass  # a Python whose dataclasses needs more of them: the ordinary import comes later
    finally:
        for name, placeholder in placeholders.items():
            if sys.modules.get(name) is placeholder:
                del sys.modules[name]
        # dataclasses, or whatever it imported meanwhile, keeps a stand-in, never a placeholder.
        for module_name in set(sys.modules) - before:
            module = sys.modules.get(module_name)
            for name, placeholder in placeholders.items():
                if module is not None and getattr(module, name, None) is placeholder:
                    setattr(module, name, _ModuleOnDemand(module, name))
