"""The state backend contract, run against every backend: local files and a real PostgreSQL.

Each test gets a `make(**options)` that opens the same fresh state as often as asked, as separate
runs would; options are the constructor's keywords both backends share (now, host, pid,
lease_seconds).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from reconciler.model import DispatchKey, Spec
from reconciler.state.base import (
    Intent,
    LockHeld,
    Provenance,
    Record,
    StateBackend,
    StateError,
)
from reconciler.state.local import LocalBackend
from tests.state_helpers import history

if TYPE_CHECKING:
    from tests.pg import PgServer

Make = Callable[..., StateBackend]

PROV = Provenance(operation="apply", time="2024-05-01T10:00:00Z", actor="alice <a@example.com>",
                  commit="abc123", ci_job="https://ci.example/run/7", host="ci-1")
HOLDER = Provenance(operation="apply", time="2024-05-01T09:59:00Z", actor="bob",
                    ci_job="job-42")
T0 = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)


def key(task: str) -> DispatchKey:
    return DispatchKey("proj1", "inst1", task)


def rec(task: str, cron: str = "0 0 * * * ?", **extra: Any) -> Record:
    return Record(key=key(task), name=f"job-{task}", source="schedules/a.yaml",
                  dispatch_id=f"d-{task}", spec=Spec(cron=cron, cron_timezone="UTC"), **extra)


def intent(task: str) -> Intent:
    return Intent(key(task), f"int-{task}", "create", "2024-05-01T10:00:00Z", "sha256:00")


@pytest.fixture(scope="session")
def contract_dsn(pg_server: PgServer) -> str:
    return pg_server.create_database("contract")


@pytest.fixture(params=["local", "postgres"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Make:
    if request.param == "local":
        path = tmp_path / ".reconciler" / "state.json"
        return lambda **options: LocalBackend(path, **options)
    from reconciler.state.postgres import PostgresBackend

    dsn = request.getfixturevalue("contract_dsn")
    workspace = request.getfixturevalue("pg_workspace")
    return lambda **options: PostgresBackend(dsn, workspace, **options)


def commit_session(backend: StateBackend, *records: Record, summary: str = "s") -> int:
    return history.commit_session(backend, *records, summary=summary, provenance=PROV)


def interrupted_session(backend: StateBackend, *records: Record) -> None:
    history.interrupted_session(backend, *records, provenance=PROV)


class Holder:
    """A writer in a thread: takes the lock, optionally puts a record, holds the lock until
    `stop()` (or for `seconds`), then commits if it recorded anything."""

    def __init__(self, backend: StateBackend, record: Record | None = None,
                 seconds: float | None = None) -> None:
        self.backend, self.record, self.seconds = backend, record, seconds
        self.locked = threading.Event()
        self.release = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        assert self.locked.wait(10), "the holder did not get the lock"
        assert self.error is None, self.error

    def _run(self) -> None:
        try:
            with self.backend.write_session(HOLDER) as session:
                if self.record is not None:
                    session.put(self.record)
                self.locked.set()
                if self.seconds is None:
                    self.release.wait(30)
                else:
                    time.sleep(self.seconds)
                if self.record is not None:
                    session.commit("held")
        except BaseException as error:  # reported by the test that cares
            self.error = error
        finally:
            self.locked.set()

    def stop(self) -> None:
        self.release.set()
        self.thread.join(30)


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.stop()


# -- records, serials, lineage ----------------------------------------------------------------


def test_round_trip_keeps_every_field(make: Make) -> None:
    backend = make()
    full = rec("t1", created_date=1700000000000, last_modified_date=1700000001000,
               applied_at="2024-05-01T10:00:01Z", applied_by="alice", commit="abc123",
               ci_job="job-7")
    with backend.write_session(PROV) as session:
        assert session.serial == 1
        session.put(full)
        session.put(rec("t2", cron="0 5 * * * ?"))
        session.intend(intent("t3"))
        committed = session.commit("created 2")

    snap = make().read()
    assert snap == committed
    assert snap.serial == 1
    assert len(snap.lineage) == 36
    assert snap.records[key("t1")] == dataclasses.replace(full, version=1)
    assert snap.records[key("t2")].spec == Spec(cron="0 5 * * * ?", cron_timezone="UTC")
    assert snap.intents == {key("t3"): intent("t3")}
    assert snap.provenance == PROV
    assert snap.summary == "created 2"
    assert make().current_lock() is None


def test_no_state_reads_as_empty(make: Make) -> None:
    backend = make()
    snap = backend.read()
    assert (snap.lineage, snap.serial, dict(snap.records), dict(snap.intents)) == ("", 0, {}, {})
    assert backend.history() == []
    assert backend.current_lock() is None
    with pytest.raises(StateError, match="serial 1 is not in the history"):
        backend.read_serial(1)
    with pytest.raises(StateError, match="not locked"):
        backend.force_unlock("L-1")


def test_serials_lineage_versions_and_empty_sessions(make: Make) -> None:
    backend = make()
    assert commit_session(backend, rec("a")) == 1
    lineage = backend.read().lineage
    assert commit_session(backend, rec("b")) == 2
    with backend.write_session(PROV) as session:
        assert session.serial == 3
        empty = session.commit("nothing")
    assert empty.serial == 2
    assert empty == backend.read()
    assert commit_session(backend) == 2
    assert commit_session(backend, rec("a", cron="0 1 * * * ?")) == 3
    snap = make().read()
    assert snap.lineage == lineage
    assert snap.serial == 3
    assert snap.records[key("a")].version == 3
    assert snap.records[key("b")].version == 2
    assert [h.serial for h in backend.history()] == [1, 2, 3]


def test_empty_first_session_makes_no_state(make: Make) -> None:
    backend = make()
    with backend.write_session(PROV) as session:
        assert session.commit("nothing").serial == 0
    assert make().read() == backend.read()
    assert backend.read().serial == 0
    assert backend.history() == []


def test_remove_and_intents(make: Make) -> None:
    backend = make()
    commit_session(backend, rec("a"), rec("b"))
    with backend.write_session(PROV) as session:
        session.remove(key("a"))
        session.remove(key("never-recorded"))
        session.intend(intent("c"))
        session.intend(intent("d"))
        session.intend(intent("e"))
        session.clear_intent(key("d"))
        session.put(rec("c"))  # a put clears its key's intent
        pending = make().read()
        snap = session.commit("mixed")
    assert pending.records == snap.records
    assert pending.intents == snap.intents
    assert set(snap.records) == {key("b"), key("c")}
    assert set(snap.intents) == {key("e")}
    assert make().read() == snap


def test_session_is_closed_after_commit(make: Make) -> None:
    backend = make()
    with backend.write_session(PROV) as session:
        session.put(rec("a"))
        session.commit("one")
        with pytest.raises(StateError, match="closed"):
            session.put(rec("b"))
        with pytest.raises(StateError, match="closed"):
            session.commit("again")
    assert set(backend.read().records) == {key("a")}


# -- pending actions and recovery -------------------------------------------------------------


def test_pending_actions_are_visible_to_readers(make: Make) -> None:
    backend = make()
    commit_session(backend, rec("a"))
    other = Provenance(operation="import", time="2024-05-02T00:00:00Z", actor="bob")
    with backend.write_session(other) as session:
        assert make().read().serial == 1  # a session that recorded nothing shows nothing
        session.put(rec("b"))
        session.intend(intent("c"))
        seen = make().read()
        assert set(seen.records) == {key("a"), key("b")}
        assert set(seen.intents) == {key("c")}
        assert seen.serial == 2
        assert seen.records[key("b")].version == 2
        assert seen.provenance == other
        assert seen.summary == "2 recorded actions not yet committed"
        assert [h.serial for h in make().history()] == [1]
        session.commit("b")
    assert make().read().summary == "b"


def test_interrupted_session_is_recovered_as_its_own_serial(make: Make) -> None:
    commit_session(make(), rec("a"))
    interrupted_session(make(), rec("b"), rec("c"))
    assert make().current_lock() is None

    fresh = make()
    snap = fresh.read()
    assert set(snap.records) == {key("a"), key("b"), key("c")}
    assert snap.serial == 2

    other = Provenance(operation="import", time="2024-05-02T00:00:00Z", actor="bob")
    with fresh.write_session(other) as session:
        assert session.serial == 3
        session.put(rec("d"))
        session.commit("import d")
    history = fresh.history()
    assert [(h.serial, h.summary) for h in history] == [
        (1, "s"),
        (2, "recovered 2 recorded actions from an interrupted run"),
        (3, "import d"),
    ]
    assert history[1].provenance == PROV
    assert history[2].provenance == other
    assert set(fresh.read_serial(2).records) == {key("a"), key("b"), key("c")}
    assert fresh.read_serial(2).records[key("b")].version == 2
    assert len(fresh.read().records) == 4


def test_interrupted_empty_session_leaves_nothing(make: Make) -> None:
    backend = make()
    commit_session(backend, rec("a"))
    interrupted_session(backend)
    assert backend.read().serial == 1
    assert commit_session(backend, rec("b")) == 2
    assert [h.serial for h in backend.history()] == [1, 2]


def test_first_session_interrupted_then_recovered(make: Make) -> None:
    interrupted_session(make(), rec("a"))
    snap = make().read()
    assert set(snap.records) == {key("a")}
    assert snap.serial == 1
    assert snap.lineage
    assert make().history() == []
    assert commit_session(make(), rec("b")) == 2
    assert make().read().lineage == snap.lineage
    assert [h.summary for h in make().history()] == [
        "recovered 1 recorded actions from an interrupted run", "s"]


# -- history ----------------------------------------------------------------------------------


def test_history_and_read_serial(make: Make) -> None:
    backend = make()
    provs = [Provenance(operation=op, time=f"2024-05-0{n}T00:00:00Z", actor="a")
             for n, op in enumerate(["apply", "import", "state rm"], 1)]
    for prov, summary, change in zip(
            provs, ["one", "two", "three"], ["a", "b", None], strict=True):
        with backend.write_session(prov) as session:
            if change:
                session.put(rec(change))
            else:
                session.remove(key("a"))
            session.commit(summary)
    history = backend.history()
    assert [(h.serial, h.summary, h.provenance) for h in history] == [
        (1, "one", provs[0]), (2, "two", provs[1]), (3, "three", provs[2])]
    assert set(backend.read_serial(1).records) == {key("a")}
    assert set(backend.read_serial(2).records) == {key("a"), key("b")}
    assert set(backend.read_serial(3).records) == {key("b")}
    assert backend.read_serial(3) == backend.read()
    assert backend.read_serial(2).provenance == provs[1]
    assert backend.read_serial(2).summary == "two"
    for unknown in (0, 4, -1):
        with pytest.raises(StateError, match=f"serial {unknown} is not in the history"):
            backend.read_serial(unknown)


# -- the lock ---------------------------------------------------------------------------------


def test_second_writer_is_refused_naming_the_holder(make: Make, holders: list[Holder]) -> None:
    holders.append(Holder(make(host="runner-7", pid=4242), record=rec("held")))
    backend = make()
    with pytest.raises(LockHeld) as caught, backend.write_session(PROV):
        pytest.fail("the lock was taken twice")
    message = str(caught.value)
    assert "held by " in message
    assert "on runner-7 (pid 4242)" in message
    assert "for 'apply'" in message
    assert "CI job job-42" in message
    assert caught.value.stale_reason is None
    info = caught.value.info
    assert (info.host, info.pid, info.operation, info.ci_job) == (
        "runner-7", 4242, "apply", "job-42")
    assert info.who
    assert backend.current_lock() == (info, None)
    # while held, the holder's record is already visible to readers
    assert key("held") in backend.read().records


def test_second_writer_waits_for_the_lock(make: Make, holders: list[Holder]) -> None:
    started = time.monotonic()
    holders.append(Holder(make(host="runner-7", pid=4242), record=rec("held"), seconds=0.6))
    backend = make()
    with backend.write_session(PROV, lock_timeout=10) as session:
        waited = time.monotonic() - started
        assert session.serial == 2  # the holder committed serial 1 before releasing
        session.put(rec("b"))
        session.commit("after the wait")
    assert 0.5 < waited < 10
    assert backend.read().serial == 2
    holders.append(Holder(make(host="runner-8", pid=1)))
    started = time.monotonic()
    with pytest.raises(LockHeld, match="on runner-8"), backend.write_session(
            PROV, lock_timeout=0.3):
        pytest.fail("the lock was taken twice")
    assert 0.25 < time.monotonic() - started < 5


def test_lock_content_and_release(make: Make) -> None:
    backend = make(pid=os.getpid())
    prov = Provenance(operation="state rm", time="t", actor="x", ci_job="job-9")
    with backend.write_session(prov):
        held = make().current_lock()
        assert held is not None
        info, stale = held
        assert stale is None
        assert (info.operation, info.pid, info.host, info.ci_job) == (
            "state rm", os.getpid(), socket.gethostname(), "job-9")
        assert info.who
        assert info.created == info.heartbeat
        datetime.fromisoformat(info.created)
    assert backend.current_lock() is None
    with pytest.raises(ValueError, match="fail"), backend.write_session(prov):
        raise ValueError("fail")
    assert backend.current_lock() is None
    assert commit_session(backend, rec("a")) == 1


def test_lock_with_an_old_heartbeat_is_stale(make: Make, holders: list[Holder]) -> None:
    holders.append(Holder(make(host="elsewhere", pid=1, now=lambda: T0)))
    later = make(now=lambda: T0 + timedelta(seconds=75))
    held = later.current_lock()
    assert held is not None
    assert held[1] == "no heartbeat for 75s (lease 60s)"
    with pytest.raises(LockHeld) as caught, later.write_session(PROV):
        pytest.fail("a stale lock was taken over")
    assert caught.value.stale_reason == "no heartbeat for 75s (lease 60s)"
    assert f"force-unlock {held[0].lock_id}" in str(caught.value)
    # within its lease, a lock from another host is simply held
    fresh = make(now=lambda: T0 + timedelta(seconds=30))
    assert fresh.current_lock() == (held[0], None)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_naming_a_dead_process_on_this_host_is_stale(
        make: Make, holders: list[Holder]) -> None:
    pid = dead_pid()
    holders.append(Holder(make(pid=pid)))
    held = make().current_lock()
    assert held is not None
    assert held[1] == f"process {pid} is not running on this host"


def test_force_unlock(make: Make, holders: list[Holder]) -> None:
    holder = Holder(make(host="runner-7", pid=4242))
    holders.append(holder)
    backend = make()
    held = backend.current_lock()
    assert held is not None
    with pytest.raises(StateError, match="lock id does not match: held by lock"):
        backend.force_unlock("L-2")
    assert backend.current_lock() == held
    released = backend.force_unlock(held[0].lock_id)
    assert released == held[0]
    assert backend.current_lock() is None
    assert commit_session(backend, rec("a")) == 1
    holder.stop()
    assert backend.read().serial == 1
    assert commit_session(backend, rec("b")) == 2


def test_writer_forced_away_cannot_touch_the_next_holders_state(make: Make) -> None:
    commit_session(make(), rec("seed"))
    with make(host="runner-7", pid=4242).write_session(PROV) as forced:
        forced.put(rec("a"))
        other = make()
        held = other.current_lock()
        assert held is not None
        other.force_unlock(held[0].lock_id)
        with other.write_session(PROV) as session:
            assert session.serial == 3  # what the forced writer recorded is sealed as 2
            session.put(rec("b"))
            for late in (lambda: forced.put(rec("late")), lambda: forced.intend(intent("x")),
                         lambda: forced.remove(key("seed")), lambda: forced.commit("late")):
                with pytest.raises(StateError):
                    late()
            session.commit("b")
        with pytest.raises(StateError):
            forced.commit("later still")
    snap = make().read()
    assert snap.serial == 3
    assert set(snap.records) == {key("seed"), key("a"), key("b")}
    assert not snap.intents
    assert [h.summary for h in make().history()] == [
        "s", "recovered 1 recorded actions from an interrupted run", "b"]
    assert make().current_lock() is None


def test_heartbeat_refreshes_the_lock(make: Make) -> None:
    ticks = iter(range(100_000))
    clock_lock = threading.Lock()

    def clock() -> datetime:
        with clock_lock:
            return T0 + timedelta(seconds=next(ticks))

    backend = make(now=clock, lease_seconds=0.2)
    with backend.write_session(PROV):
        first = make().current_lock()
        time.sleep(0.4)
        later = make().current_lock()
    assert first is not None
    assert later is not None
    assert later[0].lock_id == first[0].lock_id
    assert later[0].created == first[0].created
    assert later[0].heartbeat > first[0].heartbeat


# -- threads ----------------------------------------------------------------------------------


def test_concurrent_puts_and_intents_from_many_threads(make: Make) -> None:
    backend = make()
    keys = [DispatchKey("p", "i", f"t{n:03d}") for n in range(400)]
    errors: list[BaseException] = []
    with backend.write_session(PROV) as session:

        def work(chunk: list[DispatchKey]) -> None:
            try:
                for key in chunk:
                    session.intend(Intent(key, "i", "create", "now", "sha256:x"))
                    session.put(Record(key, key.task_id, "f.yaml:1", f"d-{key.task_id}",
                                       Spec(cron="0 0 2 * * ?")))
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=work, args=(keys[n::8],)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        pending = make().read()  # as another process would read it
        assert set(pending.records) == set(keys)
        assert pending.intents == {}
        assert pending.summary == "800 recorded actions not yet committed"
        sealed = session.commit("threads")
    assert set(sealed.records) == set(keys)
    assert make().read().records == sealed.records
    assert make().read().records[DispatchKey("p", "i", "t123")].dispatch_id == "d-t123"
