"""What the nodes keep loaded from files: one entry per file, reloaded when the file changes.

An entry is keyed by the file's resolved path and remembers each file's (mtime, size) it was read
from (the file itself and companions such as a config beside it), so an edited, replaced or removed
file is read again on the next use. At most `size` files stay loaded; the least recently used goes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


def file_stamp(path: str | Path, companions: Sequence[str | Path] = ()) -> tuple:
    """The resolved path, then (mtime_ns, size) of it and each companion ((None, None) when absent)."""
    parts: list = [str(Path(path).resolve())]
    for p in (path, *companions):
        try:
            s = Path(p).stat()
            parts.append((s.st_mtime_ns, s.st_size))
        except OSError:
            parts.append((None, None))
    return tuple(parts)


class FileCache(Generic[T]):
    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"a file cache holds at least one file, got size {size}")
        self.size = size
        self._entries: OrderedDict[str, tuple[tuple, T]] = OrderedDict()

    def get(self, path: str | Path, load: Callable[[Path], T], companions: Sequence[str | Path] = ()) -> T:
        """load(path) once per version of the file (and its companions); the cached value while unchanged."""
        stamp = file_stamp(path, companions)
        key = stamp[0]
        cached = self._entries.pop(key, None)
        value = cached[1] if cached is not None and cached[0] == stamp else load(Path(path))
        self._entries[key] = (stamp, value)  # most recently used last
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()
