from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from reconciler.userfiles import NotAFile, read_regular_file


def test_reads_a_regular_file_up_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert read_regular_file(path, 10) == b"x" * 10
    with pytest.raises(NotAFile, match="larger than 9 bytes"):
        read_regular_file(path, 9)


def test_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(NotAFile, match="is a directory"):
        read_regular_file(tmp_path, 100)
    with pytest.raises(NotAFile, match="a device"):
        read_regular_file("/dev/zero", 100)  # reading it would never end
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "missing", 100)


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_regular_file(fifo, 100)
        except BaseException as exc:  # handed to the test's thread
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "opening the FIFO waited for a writer"
    assert len(outcome) == 1
    assert isinstance(outcome[0], NotAFile)
