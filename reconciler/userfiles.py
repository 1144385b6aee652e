"""Reading a file a user named on the command line or in the environment.

Such a path may be anything: `/dev/zero` (reading it never ends), a FIFO (opening it waits for a
writer that may never come), a directory, a file of gigabytes. Each command turns the refusal
into its own error, located as its other errors are.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class NotAFile(ValueError):
    """The path exists but is not a regular file, or is larger than allowed."""


def read_regular_file(path: Path | str, max_bytes: int) -> bytes:
    """The bytes of `path`, a regular file of at most `max_bytes`.

    Raises OSError as opening or reading does (FileNotFoundError, PermissionError, ...), and
    `NotAFile` for a directory, a device, a FIFO or a socket, or a file over `max_bytes`.
    """
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. It changes
    # nothing for a regular file, the only kind read here.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise NotAFile("is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise NotAFile("is a device, a FIFO or a socket")
        if info.st_size > max_bytes:
            raise NotAFile(f"is larger than {_size(max_bytes)}")
        chunks = []
        left = max_bytes + 1  # one byte more tells a file that grew past the limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise NotAFile(f"is larger than {_size(max_bytes)}")
        return data
    finally:
        os.close(fd)


def _size(count: int) -> str:
    return f"{count // (1024 * 1024)} MiB" if count >= 1024 * 1024 else f"{count} bytes"
