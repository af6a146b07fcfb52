"""Timeline history files and which timeline holds a given WAL segment.

A ``<TLI>.history`` file lists, one line per ancestor, ``<parent tli> <switch LSN> <reason>``:
timeline ``parent`` ended at ``switch LSN`` and its child began there. PostgreSQL reads a
segment from the newest timeline of its history whose start segment is at or before it, and so
does the prefetcher here.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from walg.core.lsn import DEFAULT_SEGMENT_SIZE, Segment, parse_lsn
from walg.errors import FormatError


@dataclass(frozen=True)
class Switch:
    """Timeline ``parent`` ended at ``lsn``; the next timeline in the history began there."""

    parent: int
    lsn: int


@dataclass(frozen=True)
class History:
    """The ancestry of ``timeline``: switches oldest first."""

    timeline: int
    switches: tuple[Switch, ...]

    @classmethod
    def parse(cls, timeline: int, text: str) -> History:
        """Parse as PostgreSQL's ``readTimeLineHistory`` does: any line that is not blank, a
        ``#`` comment or ``<tli> <lsn> ...`` is an error.

        WAL-G skips such lines instead. Not here: the prefetcher and wal-verify follow a history
        the way PostgreSQL will during recovery, and PostgreSQL refuses such a file, so a
        lenient reading would let wal-verify vouch for an archive recovery cannot follow.
        """
        switches = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split(None, 2)
            if len(fields) < 2:
                raise FormatError(f"{timeline:08X}.history line {number}: {raw!r}")
            try:
                parent = int(fields[0])
            except ValueError:
                raise FormatError(f"{timeline:08X}.history line {number}: {raw!r}") from None
            switches.append(Switch(parent, parse_lsn(fields[1])))
        # Timelines only, as PostgreSQL checks: switch points may go back. A restore to a point
        # before timeline 2 branched off, following timeline 2, stops on timeline 1; the
        # new timeline's history is timeline 2's with that earlier stop point appended.
        for earlier, later in pairwise(switches):
            if later.parent <= earlier.parent:
                raise FormatError(f"{timeline:08X}.history is not in increasing order")
        if switches and switches[-1].parent >= timeline:
            raise FormatError(f"{timeline:08X}.history names a parent newer than itself")
        return cls(timeline, tuple(switches))

    def begin_lsn(self, timeline: int) -> int:
        """Where ``timeline`` (this one or an ancestor) begins; 0 for the first."""
        chain = [s.parent for s in self.switches] + [self.timeline]
        index = chain.index(timeline)
        return 0 if index == 0 else self.switches[index - 1].lsn

    def end_lsn(self, timeline: int) -> int | None:
        """Where this history leaves ``timeline`` (an ancestor), None for this one: its own
        switch point, or a later entry's where that is earlier (see :meth:`parse`)."""
        parents = [s.parent for s in self.switches]
        if timeline not in parents:
            return None
        return min(s.lsn for s in self.switches[parents.index(timeline) :])

    def timelines(self) -> list[int]:
        return [s.parent for s in self.switches] + [self.timeline]

    def timeline_of(self, segno: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
        """The timeline PostgreSQL reads segment ``segno`` from when following this history."""
        chosen = self.timelines()[0]
        for tli in self.timelines():
            if self.begin_lsn(tli) // segment_size <= segno:
                chosen = tli
        return chosen

    def segment(self, segno: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
        return Segment(self.timeline_of(segno, segment_size), segno)


def history_file_name(timeline: int) -> str:
    return f"{timeline:08X}.history"
