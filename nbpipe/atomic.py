"""Files written whole or not at all: a temporary file in the same directory, then a rename.

A reader of the merged notebook or the report sees the old file or the new
one, never half of one; an error while writing leaves the old file as it was.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["AtomicWriter", "write_text"]


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, creating its directory; return ``path``.

    A symbolic link is written through: its target is replaced, the link stays.
    """
    writer = AtomicWriter(path)
    try:
        writer.write(text)
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


class AtomicWriter:
    """A text file written piece by piece (a file too large to hold as one string), then put
    in place whole by :meth:`commit` or dropped by :meth:`abort`, as :func:`write_text` does."""

    def __init__(self, path: str | Path) -> None:
        self.given = Path(path)
        self.path = Path(os.path.realpath(self.given))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self._file = os.fdopen(fd, "w", encoding="utf-8")

    def write(self, text: str) -> None:
        self._file.write(text)

    def commit(self) -> Path:
        """Put the file in place (the mode a plain write would give, or the old file's); return its path."""
        try:
            mode = self.path.stat().st_mode & 0o7777 if self.path.is_file() else 0o666 & ~_umask()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.chmod(self.temporary, mode)  # mkstemp's 0600, or the mode a plain write would give
            os.replace(self.temporary, self.path)
        except BaseException:
            self.abort()
            raise
        return self.given

    def abort(self) -> None:
        """Drop what was written; the file at ``path`` stays as it was."""
        self._file.close()
        Path(self.temporary).unlink(missing_ok=True)


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:  # read without changing it (Linux)
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
