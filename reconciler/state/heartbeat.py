"""The heartbeat thread both backends keep beside a held lock."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Heartbeat:
    """Once started, calls `beat` every `interval` seconds from a daemon thread, until `beat`
    returns False (the lock is no longer ours) or `stop()` is called."""

    def __init__(self, interval: float, beat: Callable[[], bool]) -> None:
        self._interval = interval
        self._beat = beat
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state-lock-heartbeat",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def stopped(self) -> bool:
        """Whether `stop()` was called: a beat under way may check it before writing."""
        return self._stopped.is_set()

    def stop(self) -> None:
        """Stop beating and wait for a beat under way to end."""
        self._stopped.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            if not self._beat():
                return
