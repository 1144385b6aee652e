"""Small builders for records, schedules and snapshots used across tests."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

from reconciler.model import DispatchKey, Location, RemoteDispatch, Schedule, Spec
from reconciler.state.base import Record, Snapshot

NIGHTLY = Spec(cron="0 0 2 * * ?", cron_timezone="Asia/Shanghai", remark="nightly")
HOURLY = Spec(period="HOUR", dispatch_interval=6, start_datetime=1764518400000)


def key(task: str) -> DispatchKey:
    return DispatchKey("proj1", "inst1", task)


def schedule(task: str, spec: Spec = NIGHTLY, name: str | None = None, line: int = 5) -> Schedule:
    return Schedule(name or f"s-{task}", key(task), spec, Location("schedules/a.yaml", line, 5))


def record(task: str, spec: Spec = NIGHTLY, name: str | None = None, version: int = 1,
           dispatch_id: str | None = None) -> Record:
    return Record(
        key=key(task), name=name or f"s-{task}", source="schedules/a.yaml:5",
        dispatch_id=dispatch_id or f"d-{task}", spec=spec, created_date=1700000000000,
        last_modified_date=1700000000000, applied_at="2026-11-01T00:00:00Z",
        applied_by="tester", version=version,
    )


def snapshot(*records: Record, lineage: str = "lin-1", serial: int = 3) -> Snapshot:
    return Snapshot(lineage=lineage, serial=serial, records={r.key: r for r in records})


def remote(task: str, spec: Spec = NIGHTLY) -> RemoteDispatch:
    return RemoteDispatch(f"d-{task}", spec, 1700000000000, 1700000000000)


class Blocking:
    """A DispatchClient's coroutines called from plain test code: each call runs in its own
    event loop, inside `async with client`, as a command's refresh or apply does."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)

        def call(*args: Any) -> Any:
            async def scoped() -> Any:
                async with self.client:
                    return await method(*args)
            return asyncio.run(scoped())
        return call

    def __repr__(self) -> str:
        return repr(self.client)


def python_output(code: str) -> str:
    """What `code` prints, run in an interpreter of its own (it must exit 0): for what a test
    process cannot check on itself (process-wide settings, the modules a start loads)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout
