"""A state writer run as a separate process by tests/test_state_local.py.

Usage: writer.py MODE STATE_PATH PREFIX [ARG]

- `put`: one session putting records forever in bursts of 20; never commits (the test kills
  it). `ready` is printed before the session opens, so a kill may also land while it seals the
  journal of the run killed before.
- `sessions`: small sessions of three puts, each committed, forever; `ready` is printed after
  the first one, so kills land in the put/commit cycle.
- `crash`: one session of five puts, then a commit that SIGKILLs this process right after the
  commit step named by ARG (`start`, `history`, `index`, `snapshot`).
- `hold`: take the lock for operation `apply`, put one record, sleep ARG seconds, commit.

`ready` starts the test's random delay before its SIGKILL. Every key is printed (and flushed)
only after `put` returned: a printed key is acknowledged.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from reconciler.model import DispatchKey, Spec
from reconciler.state import local
from reconciler.state.base import Provenance, Record, Session, Snapshot
from reconciler.state.local import LocalBackend


def record(key: DispatchKey, n: int) -> Record:
    return Record(key=key, name=f"job-{n}", source="schedules/a.yaml", dispatch_id=f"d{n}",
                  spec=Spec(cron="0 0 * * * ?", remark=f"run {n}"))


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def crash_after(step: str) -> None:
    """Kill this process after the commit step `step` (by wrapping the step itself)."""
    original_write = local.atomic_write
    original_index = LocalBackend._append_index
    original_seal = LocalBackend._seal

    def atomic_write(path: Path, data: bytes, **options: Any) -> None:
        original_write(path, data, **options)
        if (step == "history" and path.name.endswith(".json.gz")) or (
                step == "snapshot" and path.name == "state.json"):
            die()

    def append_index(self: LocalBackend, snap: Snapshot) -> None:
        original_index(self, snap)
        if step == "index":
            die()

    def seal(self: LocalBackend, snap: Snapshot, *args: Any) -> None:
        if step == "start":
            die()
        original_seal(self, snap, *args)

    local.atomic_write = atomic_write
    LocalBackend._append_index = append_index  # type: ignore[method-assign]
    LocalBackend._seal = seal  # type: ignore[method-assign]


def main() -> None:
    mode, path, prefix = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    arg = sys.argv[4] if len(sys.argv) > 4 else ""
    backend = LocalBackend(path)
    provenance = Provenance(operation="apply" if mode == "hold" else f"test-{mode}",
                            time="2024-01-01T00:00:00Z", actor="writer", ci_job="job-42")
    counter = itertools.count()

    def put(session: Session) -> None:
        n = next(counter)
        key = DispatchKey("p", "i", f"{prefix}_{n}")
        session.put(record(key, n))
        say(str(key))
        if n % 20 == 19:
            # bursts and pauses: kills land both mid-write and between writes, and the state
            # stays small enough for the test to run in seconds
            time.sleep(0.005)

    if mode == "crash":
        crash_after(arg)
    if mode == "sessions":
        for number in itertools.count():
            with backend.write_session(provenance, lock_timeout=5) as session:
                for _ in range(3):
                    put(session)
                session.commit(f"{prefix} session {number}")
            if number == 0:
                say("ready")
    if mode == "put":
        say("ready")
    with backend.write_session(provenance, lock_timeout=5) as session:
        if mode == "hold":
            session.put(record(DispatchKey("p", "i", prefix), 0))
            say("locked")
            time.sleep(float(arg))
            session.commit("held")
            return
        for _ in range(5) if mode == "crash" else itertools.count():
            put(session)
        session.commit("crash test")


if __name__ == "__main__":
    main()
