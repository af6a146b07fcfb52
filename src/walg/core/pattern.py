"""Regular expressions compiled on first use.

A module-level ``re.compile`` makes every importer pay for ``re`` (with ``enum``) and for the
compilation, and ``archive_command`` imports the name and storage modules on every call without
matching most of their patterns. :class:`LazyPattern` defers both to the first match.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    import re
    from collections.abc import Iterator


class LazyPattern:
    """A ``re.Pattern[str]`` stand-in for the methods walg uses; compiles on first use."""

    __slots__ = ("_compiled", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._compiled: re.Pattern[str] | None = None

    def compiled(self) -> re.Pattern[str]:
        if self._compiled is None:
            import re

            self._compiled = re.compile(self.pattern)
        return self._compiled

    def fullmatch(self, text: str) -> re.Match[str] | None:
        return self.compiled().fullmatch(text)

    def match(self, text: str) -> re.Match[str] | None:
        return self.compiled().match(text)

    def search(self, text: str) -> re.Match[str] | None:
        return self.compiled().search(text)

    def finditer(self, text: str) -> Iterator[re.Match[str]]:
        return self.compiled().finditer(text)

    def __repr__(self) -> str:
        return f"LazyPattern({self.pattern!r})"
