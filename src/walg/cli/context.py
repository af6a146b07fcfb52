"""What every command receives: settings loaded once, and output streams."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    from typing import TextIO

    from walg.settings import Settings
    from walg.storage.base import Storage


class Output:
    """A command's standard output. Closed (``walg backup-list >&-``) or failing (a full disk
    behind a redirection), it raises :class:`~walg.errors.OutputError` naming the cause; a
    reader that has gone (``| head -1``) raises BrokenPipeError, which the CLI ends on quietly.
    Each write is flushed, so a failure surfaces here and not at the interpreter's exit."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        from walg.errors import OutputError

        if self._stream is None:
            raise OutputError("standard output is closed; nothing was written")
        try:
            try:
                written = self._stream.write(text)
            except UnicodeEncodeError:
                written = self._write_bytes(text)
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            silence(1)
            raise OutputError(f"cannot write to standard output: {exc.strerror or exc}") from None
        return written

    def _write_bytes(self, text: str) -> int:
        """Write ``text`` where the stream's strict encoder refused it (a UTF-8 locale other
        than C's): a name read from the file system or a document as surrogate escapes goes
        out as its bytes, as WAL-G and ls print it, and a lone surrogate that stands for no
        byte (a forged escape) as U+FFFD, as in JSON output."""
        stream = self._stream
        assert stream is not None
        encoding = getattr(stream, "encoding", None) or "utf-8"
        text = "".join(
            "\ufffd" if "\ud800" <= c < "\udc80" or "\udd00" <= c <= "\udfff" else c for c in text
        )
        try:
            data = text.encode(encoding, "surrogateescape")
        except UnicodeEncodeError:
            data = text.encode(encoding, "replace")
        stream.flush()
        stream.buffer.write(data)
        return len(text)


def silence(fd: int) -> None:
    """Point file descriptor ``fd`` (1 or 2) at /dev/null, so that what is left in the buffer
    of a stream that failed is dropped there, not reported again by the interpreter's flush at
    exit."""
    import os

    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)


@dataclass
class Context:
    """Settings, the storage opened on first use, and where output goes."""

    settings: Settings
    stdout: Output | TextIO = field(default_factory=lambda: Output(sys.stdout))
    _storage: Storage | None = None

    def storage(self) -> Storage:
        if self._storage is None:
            from walg.storage.registry import open_storage

            self._storage = open_storage(self.settings)
        return self._storage

    def spawn_detached(
        self, *arguments: str, keep_stderr: bool = False, stdin: bytes | None = None
    ) -> None:
        """Start ``walg ARGUMENTS`` (with this config file) in its own session, not waited
        for. ``keep_stderr``: it writes to this process's stderr (PostgreSQL's log, under
        archive_command) instead of nowhere. ``stdin``: what it reads on its standard input
        (a pipe: anyone can read a command line, only its owner a pipe)."""
        import subprocess

        # In UTF-8 mode, as bin/walg runs: file names as bytes whatever the locale.
        argv = [sys.executable, "-X", "utf8", "-m", "walg.cli"]
        if self.settings.config_file:
            argv += ["--config", self.settings.config_file]
        child = subprocess.Popen(
            [*argv, *arguments],
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=None if keep_stderr else subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            # Settings given as flags reach the helper as variables (it gets no flags).
            env=self.settings.child_environment(),
        )
        if child.stdin is not None:
            # Far less than a pipe's buffer: written at once, whatever the child is doing (a
            # child already gone has nothing left to tell).
            with contextlib.suppress(BrokenPipeError), child.stdin:
                child.stdin.write(stdin or b"")

    def close(self) -> None:
        if self._storage is not None:
            self._storage.close()
