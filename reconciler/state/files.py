"""Small file operations, each safe against a kill at any instant: the local state backend's,
and the schema cache's."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

from reconciler.state.base import StateError

T = TypeVar("T")


class Background(Generic[T]):
    """`call()` run in a thread of its own, for work that lets go of the GIL (fsync, zlib)
    while the caller does something else; `result()` waits for it and raises what it raised.
    A thread per call, not a pool: a commit makes two, and a pool's thread outlives them."""

    def __init__(self, call: Callable[[], T]) -> None:
        self._call = call
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="state-io", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._call()
        except BaseException as error:  # handed to result()
            self._error = error

    def wait(self) -> None:
        """Wait for the call to end, whatever its outcome."""
        self._thread.join()

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set, as the call returned


def write_all(fd: int, data: bytes) -> None:
    # One write per line; the loop only matters for a short write (disk full, signal).
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_dir(directory: Path) -> None:
    # A rename or unlink survives a power loss only once the directory itself is synced.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_temp(path: Path, data: bytes) -> tuple[int, str]:
    """A new file next to `path` holding `data`, flushed to disk; its open descriptor and name."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return fd, temp


def atomic_write(path: Path, data: bytes, *,
                 before_replace: Callable[[], object] | None = None) -> None:
    """Replace `path` with `data`: readers see the old content or the new, never a mix.

    `before_replace` runs once `data` is on disk beside `path` and before it takes its place;
    if it raises, `path` is left as it was."""
    fd, temp = write_temp(path, data)
    os.close(fd)
    try:
        if before_replace is not None:
            before_replace()
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def disk_errors(doing: str, where: Path) -> Iterator[None]:
    """An OSError of the backend's own file operations (a full disk, a read-only directory) as
    a StateError fit to print, naming the file."""
    try:
        yield
    except OSError as error:
        shown = error.filename or where
        raise StateError(f"{shown}: cannot {doing}: {error.strerror or error}") from None


def identity(fd: int) -> tuple[int, int]:
    status = os.fstat(fd)
    return status.st_dev, status.st_ino


def is_at(path: str, identity: tuple[int, int]) -> bool:
    """Whether the open file of that identity is the one at `path` now (not replaced, not
    deleted). Sound because the file is held open: its inode cannot be reused meanwhile."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return False
    return (status.st_dev, status.st_ino) == identity


def remove_leftovers(directory: Path, pattern: str, older_than: float) -> None:
    """Remove the files matching `pattern` not modified for `older_than` seconds: temporary
    files that live for milliseconds, left behind by a writer killed before it renamed or
    removed them. A file that cannot be removed is left; that is no error."""
    cutoff = time.time() - older_than
    for left in directory.glob(pattern):
        with contextlib.suppress(OSError):
            if left.lstat().st_mtime < cutoff:
                left.unlink()
