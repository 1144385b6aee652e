"""Cost of one recorded action in each state backend: 10,000 puts in one write session.

Each put is durable when it returns (a journal line in a file for `local`; a committed row for
`postgres`, on a throwaway server started here with fsync on, reached over TCP on loopback).
Targets: local <= 0.2 ms per action, postgres <= 2 ms per action. The sealing commit (a full
snapshot into history) is reported apart: it is paid once per run, not per action.
Usage: python bench/state_backends.py [--count 10000] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from common import REPO

sys.path.insert(0, str(REPO))

from reconciler.model import DispatchKey, Spec
from reconciler.state.base import Provenance, Record, StateBackend
from reconciler.state.local import LocalBackend
from tests.pg import find_bindir, start_server

TARGET_MS = {"local": 0.2, "postgres": 2.0}
PROVENANCE = Provenance(operation="apply", time="2024-05-01T10:00:00Z", actor="bench")


@dataclass(frozen=True, slots=True)
class Result:
    backend: str
    count: int
    seconds: float
    commit_seconds: float

    @property
    def per_action_ms(self) -> float:
        return self.seconds / self.count * 1000


def records(count: int) -> list[Record]:
    return [Record(DispatchKey("0b7a3e1c2d4f4a5b8c9d0e1f2a3b4c5d", "inst-bench", f"task{n:05d}"),
                   f"bench-{n:05d}", f"schedules/bench.yaml:{n + 1}", f"dispatch-{n:05d}",
                   Spec(cron="0 0 2 * * ?", cron_timezone="Asia/Shanghai", remark="bench"),
                   created_date=1700000000000 + n, applied_at="2024-05-01T10:00:01Z",
                   applied_by="bench")
            for n in range(count)]


def measure(name: str, backend: StateBackend, batch: list[Record], threads: int) -> Result:
    with backend.write_session(PROVENANCE) as session:
        started = time.perf_counter()

        def put_all(part: list[Record]) -> None:
            for record in part:
                session.put(record)

        if threads == 1:
            put_all(batch)
        else:
            workers = [threading.Thread(target=put_all, args=(batch[n::threads],))
                       for n in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
        elapsed = time.perf_counter() - started
        sealed = time.perf_counter()
        snap = session.commit(f"{len(batch)} puts")
        commit = time.perf_counter() - sealed
    assert len(snap.records) == len(batch), "not every put was recorded"
    return Result(name, len(batch), elapsed, commit)


def report(result: Result) -> None:
    target = TARGET_MS[result.backend]
    verdict = "ok" if result.per_action_ms <= target else "MISSED"
    print(f"{result.backend:9} {result.count} puts in {result.seconds:7.3f} s = "
          f"{result.per_action_ms:7.4f} ms/action (target <= {target:g} ms: {verdict}); "
          f"commit {result.commit_seconds * 1000:.0f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1,
                        help="threads putting concurrently into the one session (apply's pool)")
    args = parser.parse_args(argv)
    batch = records(args.count)
    results: list[Result] = []

    with tempfile.TemporaryDirectory(prefix="bench-state-") as directory:
        local = LocalBackend(Path(directory) / ".reconciler" / "state.json")
        results.append(measure("local", local, batch, args.threads))
    report(results[-1])

    bindir = find_bindir()
    if bindir is None:
        print("postgres  skipped: no PostgreSQL server binaries found")
        return 1
    from reconciler.state.postgres import PostgresBackend

    server = start_server(bindir, durable=True)
    try:
        postgres = PostgresBackend(server.dsn(), "bench")
        results.append(measure("postgres", postgres, batch, args.threads))
    finally:
        server.stop()
    report(results[-1])

    local_ms, pg_ms = (r.per_action_ms for r in results)
    print(f"ratio     postgres / local = {pg_ms / local_ms:.1f}x per action")
    missed = [r for r in results if r.per_action_ms > TARGET_MS[r.backend]]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
