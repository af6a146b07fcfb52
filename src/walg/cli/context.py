"""What every command receives: settings loaded once, and output streams."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    from typing import TextIO

    from walg.settings import Settings
    from walg.storage.base import Storage


@dataclass
class Context:
    """Settings, the storage opened on first use, and where output goes."""

    settings: Settings
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    _storage: Storage | None = None

    def storage(self) -> Storage:
        if self._storage is None:
            from walg.storage.registry import open_storage

            self._storage = open_storage(self.settings)
        return self._storage

    def close(self) -> None:
        if self._storage is not None:
            self._storage.close()
