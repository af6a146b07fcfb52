"""Letting go of what a failed operation's frames still hold.

An exception keeps its traceback, and the traceback keeps every frame it passed through with
their local variables: slices of a mapped WAL segment among them. A mapping cannot be closed
while such a view exists, so after a failed upload the segment stayed open and mapped (16 MB,
and a descriptor) until the cyclic collector happened to free the exception, minutes later.
"""

from __future__ import annotations


def clear_frames(exc: BaseException) -> None:
    """Drop the local variables of the finished frames in ``exc``'s traceback and chain
    (frames still running are left as they are)."""
    import traceback

    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        traceback.clear_frames(item.__traceback__)
        todo += (item.__cause__, item.__context__)
