"""Import ``dataclasses`` without ``inspect``, which ``archive_command`` would pay on every call.

On Python 3.11 ``dataclasses`` imports ``inspect`` (and with it ``ast``, ``dis``, ``tokenize``
and more: about as long again as the rest of a ``wal-push``'s imports) for one use, the
generated ``__doc__`` of a class that has none. So the package root imports ``dataclasses``
once with a placeholder in place of ``inspect`` and then gives it a stand-in that imports the
real module on first use. Nothing else ever sees the placeholder (it exists only while the
package is first imported, before walg starts any thread); where ``dataclasses`` or ``inspect``
is already loaded, or a Python version needs ``inspect`` while importing ``dataclasses``, the
ordinary import happens.
"""

from __future__ import annotations

import sys
from types import ModuleType


class _InspectOnDemand:
    """Stands in for ``inspect`` inside ``dataclasses``; replaced by it on first use."""

    def __init__(self, owner: ModuleType) -> None:
        self._owner = owner

    def __getattr__(self, name: str) -> object:
        import inspect

        setattr(self._owner, "inspect", inspect)  # noqa: B010 - mypy: not a declared attribute
        return getattr(inspect, name)


def import_dataclasses_without_inspect() -> None:
    if "dataclasses" in sys.modules or "inspect" in sys.modules:
        return
    placeholder = ModuleType("inspect")
    sys.modules["inspect"] = placeholder
    try:
        import dataclasses
    except ImportError:
        sys.modules.pop("dataclasses", None)
        return
    finally:
        if sys.modules.get("inspect") is placeholder:
            del sys.modules["inspect"]
    if getattr(dataclasses, "inspect", None) is placeholder:
        setattr(dataclasses, "inspect", _InspectOnDemand(dataclasses))  # noqa: B010
