"""The local state backend: files on disk, real subprocesses, real SIGKILLs."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import gzip
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings

from reconciler.model import DispatchKey, Spec
from reconciler.state import files, journal, local, snapshot
from reconciler.state.base import (
    Intent,
    LockHeld,
    LockInfo,
    LockLost,
    Provenance,
    Record,
    Snapshot,
    StateBackend,
    StateError,
)
from reconciler.state.local import LocalBackend
from tests.state_helpers import history
from tests.state_helpers.history import state_files
from tests.strategies import RECORDS

REPO = Path(__file__).resolve().parent.parent
WRITER = Path(__file__).resolve().parent / "state_helpers" / "writer.py"

PROV = Provenance(operation="apply", time="2024-05-01T10:00:00Z", actor="alice <a@example.com>",
                  commit="abc123", ci_job="https://ci.example/run/7", host="ci-1")


def key(task: str) -> DispatchKey:
    return DispatchKey("proj1", "inst1", task)


def rec(task: str, cron: str = "0 0 * * * ?", **extra: object) -> Record:
    return Record(key=key(task), name=f"job-{task}", source="schedules/a.yaml",
                  dispatch_id=f"d-{task}", spec=Spec(cron=cron, cron_timezone="UTC"),
                  **extra)  # type: ignore[arg-type]


def intent(task: str) -> Intent:
    return Intent(key(task), f"int-{task}", "create", "2024-05-01T10:00:00Z", "sha256:00")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / ".reconciler" / "state.json"


def commit_session(backend: LocalBackend, *records: Record, summary: str = "s") -> int:
    with backend.write_session(PROV) as session:
        for record in records:
            session.put(record)
        return session.commit(summary).serial


def start_writer(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(WRITER), *args], stdout=subprocess.PIPE,
                            text=True, cwd=REPO, env=env)


def interrupted_session(backend: StateBackend, *records: Record) -> None:
    history.interrupted_session(backend, *records, provenance=PROV)


# -- snapshot file ----------------------------------------------------------------------------


def test_round_trip_keeps_every_field(state: Path) -> None:
    backend: StateBackend = LocalBackend(state)
    full = rec("t1", created_date=1700000000000, last_modified_date=1700000001000,
               applied_at="2024-05-01T10:00:01Z", applied_by="alice", commit="abc123",
               ci_job="job-7")
    with backend.write_session(PROV) as session:
        assert session.serial == 1
        session.put(full)
        session.put(rec("t2", cron="0 5 * * * ?"))
        session.intend(intent("t3"))
        committed = session.commit("created 2")

    snap = LocalBackend(state).read()
    assert snap == committed
    assert snap.serial == 1
    assert len(snap.lineage) == 36
    assert snap.records[key("t1")] == dataclasses.replace(full, version=1)
    assert snap.records[key("t2")].spec == Spec(cron="0 5 * * * ?", cron_timezone="UTC")
    assert snap.intents == {key("t3"): intent("t3")}
    assert snap.provenance == PROV
    assert snap.summary == "created 2"
    assert backend.describe() == str(state)
    assert not state.with_suffix(".journal").exists()
    assert not state.with_suffix(".lock").exists()


def test_no_state_reads_as_empty(state: Path) -> None:
    snap = LocalBackend(state).read()
    assert (snap.lineage, snap.serial, dict(snap.records)) == ("", 0, {})
    assert not state.parent.exists()


def test_bytes_are_deterministic_and_diffable(tmp_path: Path) -> None:
    tasks = [f"t{n}" for n in range(20)]
    first, second = LocalBackend(tmp_path / "a" / "state.json"), LocalBackend(
        tmp_path / "b" / "state.json")
    commit_session(first, *(rec(t) for t in tasks))
    commit_session(second, *(rec(t) for t in reversed(tasks)))
    data_a = first.path.read_bytes()
    data_b = second.path.read_bytes()
    lineage_a, lineage_b = first.read().lineage, second.read().lineage
    assert lineage_a != lineage_b
    assert data_a.replace(lineage_a.encode(), lineage_b.encode()) == data_b

    text = data_a.decode()
    assert text.endswith("}\n")
    assert not text.endswith("\n\n")
    assert '\n  "dispatches": {\n    "proj1/inst1/t0": {\n      "applied_at"' in text
    assert json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n" == text
    assert json.loads(text)["format_version"] == 1
    # history copies are deterministic too: gzip without a timestamp
    history_a = (tmp_path / "a" / "state.history" / "00000001.json.gz").read_bytes()
    assert gzip.decompress(history_a) == data_a
    assert history_a == gzip.compress(data_a, compresslevel=3, mtime=0)


def test_serials_lineage_versions_and_empty_sessions(state: Path) -> None:
    backend = LocalBackend(state)
    assert commit_session(backend, rec("a")) == 1
    lineage = backend.read().lineage
    assert commit_session(backend, rec("b")) == 2
    mtime = state.stat().st_mtime_ns
    with backend.write_session(PROV) as session:
        assert session.serial == 3
        empty = session.commit("nothing")
    assert empty.serial == 2
    assert commit_session(backend) == 2
    assert state.stat().st_mtime_ns == mtime
    assert commit_session(backend, rec("a", cron="0 1 * * * ?")) == 3
    snap = backend.read()
    assert snap.lineage == lineage
    assert snap.serial == 3
    assert snap.records[key("a")].version == 3
    assert snap.records[key("b")].version == 2
    assert [h.serial for h in backend.history()] == [1, 2, 3]
    assert not state.with_suffix(".journal").exists()


def test_remove_and_intents(state: Path) -> None:
    backend = LocalBackend(state)
    commit_session(backend, rec("a"), rec("b"))
    with backend.write_session(PROV) as session:
        session.remove(key("a"))
        session.remove(key("never-recorded"))
        session.intend(intent("c"))
        session.intend(intent("d"))
        session.intend(intent("e"))
        session.clear_intent(key("d"))
        session.put(rec("c"))
        pending = LocalBackend(state).read()
        snap = session.commit("mixed")
    assert pending.records == snap.records
    assert pending.intents == snap.intents
    assert set(snap.records) == {key("b"), key("c")}
    assert set(snap.intents) == {key("e")}
    assert LocalBackend(state).read() == snap


def test_session_is_closed_after_commit(state: Path) -> None:
    backend = LocalBackend(state)
    with backend.write_session(PROV) as session:
        session.put(rec("a"))
        session.commit("one")
        with pytest.raises(StateError, match="closed"):
            session.put(rec("b"))
    assert set(backend.read().records) == {key("a")}


# -- journal ----------------------------------------------------------------------------------


def test_journal_is_visible_before_commit(state: Path) -> None:
    backend = LocalBackend(state)
    commit_session(backend, rec("a"))
    with backend.write_session(PROV) as session:
        session.put(rec("b"))
        session.intend(intent("c"))
        seen = LocalBackend(state).read()
        assert set(seen.records) == {key("a"), key("b")}
        assert set(seen.intents) == {key("c")}
        assert seen.records[key("b")].version == 2
        assert json.loads(state.read_text())["serial"] == 1
        session.commit("b")


def test_read_modifies_no_file(state: Path) -> None:
    backend = LocalBackend(state)
    commit_session(backend, rec("a"))
    interrupted_session(backend, rec("b"))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in state.parent.rglob("*")
              if p.is_file()}
    assert set(backend.read().records) == {key("a"), key("b")}
    backend.history()
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in state.parent.rglob("*")
             if p.is_file()}
    assert before == after


def test_interrupted_session_is_recovered_as_its_own_serial(state: Path) -> None:
    commit_session(LocalBackend(state), rec("a"))
    interrupted_session(LocalBackend(state), rec("b"), rec("c"))
    assert state.with_suffix(".journal").exists()
    assert not state.with_suffix(".lock").exists()

    fresh = LocalBackend(state)
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
    assert len(fresh.read().records) == 4


def test_interrupted_empty_session_leaves_nothing(state: Path) -> None:
    backend = LocalBackend(state)
    commit_session(backend, rec("a"))
    interrupted_session(backend)
    assert not state.with_suffix(".journal").exists()
    assert commit_session(backend, rec("b")) == 2


def test_first_session_interrupted_then_recovered(state: Path) -> None:
    interrupted_session(LocalBackend(state), rec("a"))
    assert not state.exists()
    snap = LocalBackend(state).read()
    assert set(snap.records) == {key("a")}
    assert snap.lineage
    assert commit_session(LocalBackend(state), rec("b")) == 2
    assert LocalBackend(state).read().lineage == snap.lineage


@pytest.mark.parametrize("torn", [
    b'{"op":"put","key":"proj1/inst1/c","record":{"na',  # cut short: no newline
    b'{"op":"put","key":"proj1/inst1/c","rec\x00\x00\n',  # complete line, invalid JSON
])
def test_torn_last_journal_line_is_ignored(state: Path, torn: bytes) -> None:
    backend = LocalBackend(state)
    interrupted_session(backend, rec("a"), rec("b"))
    journal = state.with_suffix(".journal")
    with journal.open("ab") as handle:
        handle.write(torn)
    assert set(LocalBackend(state).read().records) == {key("a"), key("b")}
    assert commit_session(LocalBackend(state), rec("d")) == 2
    assert set(LocalBackend(state).read().records) == {key("a"), key("b"), key("d")}


def test_corrupt_middle_journal_line_is_an_error(state: Path) -> None:
    interrupted_session(LocalBackend(state), rec("a"), rec("b"), rec("c"))
    journal = state.with_suffix(".journal")
    lines = journal.read_bytes().split(b"\n")
    lines[2] = lines[2][:20]
    journal.write_bytes(b"\n".join(lines))
    with pytest.raises(StateError, match=rf"{journal}:3: corrupt journal line") as caught:
        LocalBackend(state).read()
    assert caught.value.__suppress_context__
    with pytest.raises(StateError, match=r"state\.journal:3"):
        commit_session(LocalBackend(state), rec("d"))


def test_journal_from_a_replaced_state_is_refused(state: Path) -> None:
    backend = LocalBackend(state)
    commit_session(backend, rec("a"))
    old = state.read_bytes()
    commit_session(backend, rec("b"))
    interrupted_session(backend, rec("c"))
    state.write_bytes(old)  # e.g. a git checkout of an older state.json
    with pytest.raises(StateError, match=r"continues serial 2.*at serial 1"):
        backend.read()


def test_corrupt_state_file_is_a_clear_error(state: Path) -> None:
    commit_session(LocalBackend(state), rec("a"))
    state.write_text('{"format_version": 1,\n  "serial": oops}\n')
    with pytest.raises(StateError) as caught:
        LocalBackend(state).read()
    assert str(state) in str(caught.value)
    assert "line 2 column" in str(caught.value)
    assert caught.value.__suppress_context__
    with pytest.raises(StateError, match="not valid JSON"):
        commit_session(LocalBackend(state), rec("b"))


def test_newer_format_version_is_refused(state: Path) -> None:
    commit_session(LocalBackend(state), rec("a"))
    doc = json.loads(state.read_text())
    doc["format_version"] = 2
    state.write_text(json.dumps(doc))
    with pytest.raises(StateError, match="format_version 2, newer"):
        LocalBackend(state).read()


def test_malformed_state_content_is_a_clear_error(state: Path) -> None:
    commit_session(LocalBackend(state), rec("a"))
    doc = json.loads(state.read_text())
    doc["dispatches"] = {"not a key": {}}
    state.write_text(json.dumps(doc))
    with pytest.raises(StateError, match="malformed state"):
        LocalBackend(state).read()


@pytest.mark.parametrize(("field", "value"), [
    ("dispatch_id", None), ("name", None), ("dispatch_id", "bad/id"), ("version", "3"),
    ("version", True), ("created_date", "yesterday"), ("applied_at", 5), ("commit", 7),
    ("lineage", None), ("serial", 1.7), ("serial", True), ("format_version", True),
])
def test_values_of_the_wrong_type_are_refused_not_coerced(state: Path, field: str,
                                                          value: object) -> None:
    # A null dispatch_id used to be read as the text "None", and an update PUT to it.
    commit_session(LocalBackend(state), rec("a"))
    doc = json.loads(state.read_text())
    where = doc if field in ("lineage", "serial", "format_version") \
        else doc["dispatches"][str(key("a"))]
    where[field] = value
    state.write_text(json.dumps(doc))
    with pytest.raises(StateError, match=r"malformed state|not a state file"):
        LocalBackend(state).read()


def test_actions_never_rewrite_the_snapshot(state: Path) -> None:
    backend = LocalBackend(state)
    commit_session(backend, rec("seed"))
    before = state.stat()
    journal = state.with_suffix(".journal")
    with backend.write_session(PROV) as session:
        for n in range(1000):
            session.put(rec(f"k{n}"))
        during = state.stat()
        lines = journal.read_bytes().count(b"\n")
        session.commit("1000")
    assert (during.st_ino, during.st_mtime_ns, during.st_size) == (
        before.st_ino, before.st_mtime_ns, before.st_size)
    assert lines == 1001
    assert len(backend.read().records) == 1001


# -- kill -9 ----------------------------------------------------------------------------------


def kill_at_random(mode: str, state: Path, prefix: str, rng: random.Random) -> list[str]:
    """Run a writer, SIGKILL it at a random moment after it started writing, return the keys it
    acknowledged."""
    proc = start_writer(mode, str(state), prefix)
    assert proc.stdout is not None
    before: list[str] = []
    while (line := proc.stdout.readline()) != "ready\n":
        assert line.endswith("\n"), f"the writer stopped before it was ready: {line!r}"
        before.append(line)
    time.sleep(rng.uniform(0.02, 0.3))
    proc.send_signal(signal.SIGKILL)
    # read() and not communicate(): readline() may have buffered lines communicate() skips
    output = proc.stdout.read()
    assert proc.wait(timeout=10) == -signal.SIGKILL
    # a line without its newline was cut by the kill: not acknowledged
    return [line.strip() for line in before] + output.split("\n")[:-1]


@pytest.mark.slow
def test_kill9_loses_no_acknowledged_action(state: Path) -> None:
    rng = random.Random(20240501)
    acknowledged: set[DispatchKey] = set()
    for iteration in range(16):
        mode = "put" if iteration % 2 == 0 else "sessions"
        keys = kill_at_random(mode, state, f"r{iteration}", rng)
        # a kill may land before the first put (e.g. while the writer seals the last run's
        # journal): that is a case to survive too, so an empty `keys` is fine here
        # the killed writer's lock stays, reported stale, until someone forces it away
        held = LocalBackend(state).current_lock()
        if held is not None:
            assert held[1] is not None
            assert held[1].endswith("is not running on this host")
            LocalBackend(state).force_unlock(held[0].lock_id)
        acknowledged |= {DispatchKey.parse(k) for k in keys}
        snap = LocalBackend(state).read()
        missing = acknowledged - set(snap.records)
        assert not missing, f"iteration {iteration} ({mode}) lost {sorted(missing)[:5]}"
        # a kill between a put and its print leaves at most one unacknowledged record per run
        assert len(set(snap.records) - acknowledged) <= iteration + 1
    assert len(acknowledged) > 100
    final = LocalBackend(state)
    assert commit_session(final, rec("final")) == final.read().serial
    sealed = final.read()
    assert acknowledged <= set(sealed.records)
    # at most one put per kill can land after its key was written but before it was printed
    assert len(acknowledged) + 1 <= len(sealed.records) <= len(acknowledged) + 1 + 16
    assert not state.with_suffix(".journal").exists()
    assert [h.serial for h in final.history()] == list(range(1, sealed.serial + 1))


@pytest.mark.slow
@pytest.mark.parametrize("step", ["start", "history", "index", "snapshot"])
def test_kill9_between_commit_steps(state: Path, step: str) -> None:
    backend = LocalBackend(state)
    commit_session(backend, rec("before"))
    proc = start_writer("crash", str(state), "c", step)
    output, _ = proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGKILL
    acknowledged = {DispatchKey.parse(k) for k in output.split("\n") if k and k != "ready"}
    assert len(acknowledged) == 5

    snap = LocalBackend(state).read()
    assert snap.serial == 2
    assert set(snap.records) == acknowledged | {key("before")}
    assert [h.serial for h in LocalBackend(state).history()] == (
        [1, 2] if step == "snapshot" else [1])

    held = LocalBackend(state).current_lock()
    assert held is not None
    assert held[1] == f"process {proc.pid} is not running on this host"
    LocalBackend(state).force_unlock(held[0].lock_id)
    assert commit_session(LocalBackend(state), rec("after")) == 3
    final = LocalBackend(state)
    assert set(final.read().records) == acknowledged | {key("before"), key("after")}
    history = final.history()
    assert [h.serial for h in history] == [1, 2, 3]
    expected = "crash test" if step == "snapshot" else (
        "recovered 5 recorded actions from an interrupted run")
    assert history[1].summary == expected
    assert set(final.read_serial(2).records) == acknowledged | {key("before")}
    assert not state.with_suffix(".journal").exists()


# -- lock -------------------------------------------------------------------------------------


@pytest.fixture
def holder(state: Path) -> Iterator[subprocess.Popen[str]]:
    proc = start_writer("hold", str(state), "held", "1.0")
    assert proc.stdout is not None
    assert proc.stdout.readline() == "locked\n"
    yield proc
    proc.kill()
    proc.wait()


def test_second_writer_is_refused_naming_the_holder(
        state: Path, holder: subprocess.Popen[str]) -> None:
    backend = LocalBackend(state)
    with pytest.raises(LockHeld) as caught, backend.write_session(PROV):
        pytest.fail("the lock was taken twice")
    message = str(caught.value)
    assert f"(pid {holder.pid})" in message
    assert f"on {socket.gethostname()} " in message
    assert "for 'apply'" in message
    assert "CI job job-42" in message
    assert caught.value.stale_reason is None
    assert caught.value.info.pid == holder.pid
    # while held, the holder's record is already visible to readers
    assert DispatchKey("p", "i", "held") in backend.read().records


def test_second_writer_waits_for_the_lock(state: Path, holder: subprocess.Popen[str]) -> None:
    backend = LocalBackend(state)
    started = time.monotonic()
    with backend.write_session(PROV, lock_timeout=5) as session:
        waited = time.monotonic() - started
        assert session.serial == 2  # the holder committed serial 1 before releasing
        session.put(rec("b"))
        session.commit("after the wait")
    assert 0.5 < waited < 5
    assert holder.wait(timeout=5) == 0
    assert backend.read().serial == 2


def test_lock_content_and_release(state: Path) -> None:
    backend = LocalBackend(state, pid=os.getpid())
    prov = Provenance(operation="state rm", time="t", actor="x", ci_job="job-9")
    with backend.write_session(prov):
        held = backend.current_lock()
        assert held is not None
        info, stale = held
        assert stale is None
        assert (info.operation, info.pid, info.host, info.ci_job) == (
            "state rm", os.getpid(), socket.gethostname(), "job-9")
        assert info.who
        assert json.loads(state.with_suffix(".lock").read_text())["lock_id"] == info.lock_id
    assert backend.current_lock() is None
    with pytest.raises(ValueError), backend.write_session(prov):
        raise ValueError("fail")
    assert backend.current_lock() is None


def test_heartbeat_refreshes_the_lock(state: Path) -> None:
    start = datetime(2024, 5, 1, tzinfo=UTC)
    ticks = iter(range(10_000))
    lock = threading.Lock()

    def clock() -> datetime:
        with lock:
            return start + timedelta(seconds=next(ticks))

    backend = LocalBackend(state, now=clock, lease_seconds=0.2)
    with backend.write_session(PROV):
        first = json.loads(state.with_suffix(".lock").read_text())
        time.sleep(0.3)
        later = json.loads(state.with_suffix(".lock").read_text())
    assert later["lock_id"] == first["lock_id"]
    assert later["created"] == first["created"]
    assert later["heartbeat"] > first["heartbeat"]
    assert later["lease_seconds"] == 0.2


def write_lock(state: Path, *, host: str | None = None, pid: int | None = None) -> None:
    """A lock file as another writer would have left it."""
    info = LockInfo(lock_id="L-1", operation="apply", who="carol",
                    host=host or socket.gethostname(), pid=pid or os.getpid(),
                    created="2024-05-01T10:00:00Z", heartbeat="2024-05-01T10:00:00Z")
    state.parent.mkdir(parents=True, exist_ok=True)
    data = {name: getattr(info, name) for name in info.__slots__}
    state.with_suffix(".lock").write_text(json.dumps({**data, "lease_seconds": 60}))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_of_a_dead_process_is_stale_and_kept(state: Path) -> None:
    pid = dead_pid()
    write_lock(state, pid=pid)
    backend = LocalBackend(state)
    with pytest.raises(LockHeld) as caught, backend.write_session(PROV):
        pytest.fail("a stale lock was taken over")
    assert caught.value.stale_reason == f"process {pid} is not running on this host"
    assert "reconciler force-unlock L-1" in str(caught.value)
    assert state.with_suffix(".lock").exists()


def test_lock_with_an_old_heartbeat_is_stale(state: Path) -> None:
    write_lock(state, host="elsewhere", pid=1)
    now = datetime(2024, 5, 1, 10, 1, 15, tzinfo=UTC)
    held = LocalBackend(state, now=lambda: now).current_lock()
    assert held is not None
    assert held[1] == "no heartbeat for 75s (lease 60s)"
    with pytest.raises(LockHeld) as caught, LocalBackend(state, now=lambda: now).write_session(
            PROV):
        pytest.fail("a stale lock was taken over")
    assert caught.value.stale_reason == "no heartbeat for 75s (lease 60s)"
    assert "force-unlock L-1" in str(caught.value)
    # within its lease, a lock from another host is simply held
    fresh = LocalBackend(state, now=lambda: now - timedelta(seconds=30))
    assert fresh.current_lock() == (held[0], None)
    with pytest.raises(LockHeld) as caught, fresh.write_session(PROV):
        pytest.fail("a live lock was taken over")
    assert caught.value.stale_reason is None
    assert "state is locked: lock L-1 held by carol on elsewhere (pid 1)" in str(caught.value)


def test_force_unlock(state: Path) -> None:
    backend = LocalBackend(state)
    with pytest.raises(StateError, match="not locked"):
        backend.force_unlock("L-1")
    write_lock(state, pid=dead_pid())
    with pytest.raises(StateError, match="lock id does not match: held by lock L-1"):
        backend.force_unlock("L-2")
    assert state.with_suffix(".lock").exists()
    assert backend.force_unlock("L-1").who == "carol"
    assert backend.current_lock() is None
    assert commit_session(backend, rec("a")) == 1


def test_unreadable_lock_turns_stale_and_can_be_forced(state: Path) -> None:
    state.parent.mkdir(parents=True)
    lock = state.with_suffix(".lock")
    lock.write_bytes(b"")
    now = datetime.fromtimestamp(lock.stat().st_mtime, UTC)
    young = LocalBackend(state, now=lambda: now).current_lock()
    assert young is not None
    assert young[1] is None
    old = LocalBackend(state, now=lambda: now + timedelta(seconds=90)).current_lock()
    assert old is not None
    assert old[1] is not None
    assert old[1].startswith("no heartbeat for")
    LocalBackend(state).force_unlock(old[0].lock_id)
    assert not lock.exists()


# -- history ----------------------------------------------------------------------------------


def test_history_and_read_serial(state: Path) -> None:
    backend = LocalBackend(state)
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
    for unknown in (0, 4, -1):
        with pytest.raises(StateError, match=f"serial {unknown} is not in the history"):
            backend.read_serial(unknown)


def test_history_index_survives_torn_and_duplicate_lines(state: Path) -> None:
    backend = LocalBackend(state)
    commit_session(backend, rec("a"), summary="one")
    index = state.with_suffix(".history") / "index.jsonl"
    with index.open("ab") as handle:
        handle.write(b'{"serial": 2, "provenance"')  # torn by a crash
    commit_session(backend, rec("b"), summary="two")
    with index.open("ab") as handle:  # re-indexed by a recovery: the last line wins
        handle.write(b'{"serial":2,"provenance":{},"summary":"again"}\n')
        handle.write(b'{"serial":9,"provenance":{},"summary":"never sealed"}\n')
    assert [(h.serial, h.summary) for h in backend.history()] == [(1, "one"), (2, "again")]


def test_concurrent_puts_and_intents_from_many_threads(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "state.json")
    keys = [DispatchKey("p", "i", f"t{n:03d}") for n in range(400)]
    with backend.write_session(PROV) as session:

        def work(chunk: list[DispatchKey]) -> None:
            for key in chunk:
                session.intend(Intent(key, "i", "create", "now", "sha256:x"))
                session.put(Record(key, key.task_id, "f.yaml:1", f"d-{key.task_id}",
                                   Spec(cron="0 0 2 * * ?")))

        threads = [threading.Thread(target=work, args=(keys[n::8],)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        pending = backend.read()  # the journal as another process would read it
        assert set(pending.records) == set(keys)
        assert pending.intents == {}
        sealed = session.commit("threads")
    assert set(sealed.records) == set(keys)
    assert backend.read().records == sealed.records
    saved = json.loads(backend.path.read_text())
    assert saved["dispatches"]["p/i/t123"]["dispatch_id"] == "d-t123"


# -- fencing: a writer whose lock was forced away ----------------------------------------------


def force_unlock(state: Path) -> None:
    backend = LocalBackend(state)
    held = backend.current_lock()
    assert held is not None
    backend.force_unlock(held[0].lock_id)


def test_writer_forced_away_cannot_overwrite_the_next_holders_commit(state: Path) -> None:
    commit_session(LocalBackend(state), rec("seed"))
    old = LocalBackend(state, host="runner-1", pid=4242)
    with old.write_session(PROV) as forced:
        forced.put(rec("a"))
        force_unlock(state)
        new = LocalBackend(state)
        with new.write_session(PROV) as session:
            assert session.serial == 3  # the forced writer's journal was sealed as serial 2
            session.put(rec("b"))
            session.commit("b")
        after = state_files(state.parent)

        with pytest.raises(LockLost, match=r"no longer holds the lock \(was it force-unlocked"
                                           r"\?\); could not make sure to record an action"):
            forced.put(rec("late"))
        with pytest.raises(LockLost):
            forced.intend(intent("late"))
        with pytest.raises(LockLost):
            forced.remove(key("b"))
        with pytest.raises(LockLost, match="refused to commit"):
            forced.commit("late")
    # closing and unlocking the forced session touched nothing either
    assert state_files(state.parent) == after
    snap = LocalBackend(state).read()
    assert snap.serial == 3
    assert set(snap.records) == {key("seed"), key("a"), key("b")}
    assert not snap.intents
    assert [h.summary for h in LocalBackend(state).history()] == [
        "s", "recovered 1 recorded actions from an interrupted run", "b"]


def test_writer_forced_away_leaves_the_next_holders_journal_and_lock(state: Path) -> None:
    commit_session(LocalBackend(state), rec("seed"))
    with contextlib.ExitStack() as forced_block:
        forced = forced_block.enter_context(
            LocalBackend(state, host="runner-1", pid=4242).write_session(PROV))
        forced.put(rec("a"))
        force_unlock(state)
        new = LocalBackend(state)
        with new.write_session(PROV) as session:
            session.put(rec("b"))
            journal = state.with_suffix(".journal").read_bytes()
            lock = state.with_suffix(".lock").read_bytes()
            with pytest.raises(LockLost):
                forced.put(rec("late"))
            with pytest.raises(LockLost):
                forced.commit("late")
            forced_block.close()  # the forced run ends: its session closes, its lock releases
            assert state.with_suffix(".journal").read_bytes() == journal
            assert state.with_suffix(".lock").read_bytes() == lock
            assert set(new.read().records) == {key("seed"), key("a"), key("b")}
            assert session.commit("b").serial == 3
    assert set(new.read().records) == {key("seed"), key("a"), key("b")}
    assert new.current_lock() is None
    assert not state.with_suffix(".journal").exists()


def test_forced_writer_without_a_successor_keeps_its_actions_for_the_next(state: Path) -> None:
    with LocalBackend(state, host="runner-1", pid=4242).write_session(PROV) as forced:
        forced.put(rec("a"))
        force_unlock(state)
        # written before the check found the lock gone: kept, though its caller was told it
        # may not be (a dispatch created, then recorded, belongs in the state either way)
        with pytest.raises(LockLost, match="could not make sure to record an action"):
            forced.put(rec("late"))
        with pytest.raises(LockLost, match="refused to commit"):
            forced.commit("late")
    assert state.with_suffix(".journal").exists()
    assert commit_session(LocalBackend(state), rec("b")) == 2
    assert set(LocalBackend(state).read().records) == {key("a"), key("late"), key("b")}


def test_next_writer_reads_the_journal_once_its_flock_is_free(state: Path) -> None:
    """A forced writer's commit holds the journal's flock while it checks the lock and seals:
    the next writer reads (seals, deletes) the journal only after, and so sees all of it."""
    commit_session(LocalBackend(state), rec("seed"))
    with LocalBackend(state, host="runner-1", pid=4242).write_session(PROV) as forced:
        forced.put(rec("a"))
        journal = state.with_suffix(".journal")
        fd = os.open(journal, os.O_RDWR | os.O_APPEND)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # as the forced writer's commit holds it
            force_unlock(state)
            sealed = threading.Event()

            def next_writer() -> None:
                with LocalBackend(state).write_session(PROV) as session:
                    sealed.set()
                    session.commit("nothing")

            thread = threading.Thread(target=next_writer)
            thread.start()
            assert not sealed.wait(0.3), "the next writer did not wait for the journal"
            late = {"op": "put", "key": str(key("late")),
                    "record": dataclasses.replace(rec("late"), version=2).to_json()}
            os.write(fd, (json.dumps(late) + "\n").encode())
        finally:
            os.close(fd)  # releases the flock
        thread.join(10)
        assert sealed.is_set()
    assert set(LocalBackend(state).read().records) == {key("seed"), key("a"), key("late")}


def test_heartbeat_of_a_forced_writer_leaves_the_next_lock_alone(state: Path) -> None:
    with LocalBackend(state, lease_seconds=0.1).write_session(PROV):
        force_unlock(state)
        with LocalBackend(state).write_session(PROV) as session:
            lock = state.with_suffix(".lock").read_bytes()
            time.sleep(0.15)  # several heartbeats of the forced writer
            assert state.with_suffix(".lock").read_bytes() == lock
            session.put(rec("b"))
            session.commit("b")
    assert LocalBackend(state).read().serial == 1


def test_disk_errors_are_state_errors_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    backend = LocalBackend(tmp_path / "a-file" / "sub" / "state.json")
    with pytest.raises(StateError, match=r"a-file.*: cannot take the state lock: ") as caught, \
            backend.write_session(PROV):
        pytest.fail("a session opened below a file")
    assert caught.value.__suppress_context__
    with pytest.raises(StateError, match="cannot take the state lock"):
        backend.import_snapshots([], PROV)


def test_a_lock_file_appears_complete_and_a_draft_left_by_a_kill_blocks_nobody(
        state: Path) -> None:
    backend = LocalBackend(state)
    state.parent.mkdir(parents=True, exist_ok=True)
    # what a writer killed between writing its lock draft and linking it leaves behind
    (state.parent / f".{backend.lock_path.name}.0f0f").write_bytes(b'{"lock_id": "half')
    with backend.write_session(PROV) as session:
        held = backend.current_lock()
        assert held is not None
        assert held[0].pid == os.getpid()
        assert held[1] is None
        assert json.loads(backend.lock_path.read_bytes())["lock_id"] == held[0].lock_id
        session.commit("s")
    assert backend.current_lock() is None


def test_the_holder_sweeps_away_drafts_left_long_ago(state: Path) -> None:
    backend = LocalBackend(state)
    state.parent.mkdir(parents=True, exist_ok=True)
    old = state.parent / f".{backend.lock_path.name}.killed-long-ago"
    recent = state.parent / f".{backend.lock_path.name}.being-written-now"
    other = state.parent / "unrelated.file"
    for path in (old, recent, other):
        path.write_bytes(b'{"lock_id": "half')
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    os.utime(other, (an_hour_ago, an_hour_ago))
    with backend.write_session(PROV) as session:
        session.commit("s")
    assert not old.exists()
    assert recent.exists()  # perhaps another writer's, about to be linked: left alone
    assert other.exists()


def test_a_writer_whose_draft_was_swept_tries_again(state: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    backend = LocalBackend(state)
    state.parent.mkdir(parents=True, exist_ok=True)
    link = os.link
    swept: list[str] = []

    def link_after_a_sweep(source: str, target: str) -> None:
        if not swept:  # the first draft disappears before it is linked
            swept.append(str(source))
            os.unlink(source)
        link(source, target)

    monkeypatch.setattr(os, "link", link_after_a_sweep)
    with backend.write_session(PROV) as session:
        session.commit("s")
    assert len(swept) == 1
    assert backend.current_lock() is None


def test_a_history_that_cannot_be_written_leaves_state_json_as_it_was(
        state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = LocalBackend(state)
    commit_session(backend, rec("a"))
    before = state.read_bytes()

    def full(self: LocalBackend, snap: Snapshot, data: bytes) -> None:
        time.sleep(0.05)  # still writing when state.json's new content is ready beside it
        raise OSError(errno.ENOSPC, "No space left on device", str(self.history_dir))

    monkeypatch.setattr(LocalBackend, "_write_history", full)
    with backend.write_session(PROV) as session:
        session.put(rec("b"))
        with pytest.raises(StateError, match="No space left"):
            session.commit("b")
    assert state.read_bytes() == before
    assert [p.name for p in state.parent.iterdir() if p.name.endswith(".tmp")] == []
    monkeypatch.undo()
    # the journal kept what the failed commit could not seal
    assert key("b") in LocalBackend(state).read().records


def test_a_failed_state_write_waits_for_the_history_being_written(
        state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = LocalBackend(state)
    commit_session(backend, rec("a"))
    write_history = LocalBackend._write_history
    finished: list[int] = []

    def slow(self: LocalBackend, snap: Snapshot, data: bytes) -> None:
        time.sleep(0.1)
        write_history(self, snap, data)
        finished.append(snap.serial)

    write_temp = files.write_temp

    def full(path: Path, data: bytes) -> tuple[int, str]:
        if path == state:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return write_temp(path, data)

    monkeypatch.setattr(LocalBackend, "_write_history", slow)
    monkeypatch.setattr(files, "write_temp", full)
    threads = threading.active_count()
    with backend.write_session(PROV) as session:
        session.put(rec("b"))
        with pytest.raises(StateError, match="No space left"):
            session.commit("b")
        assert finished == [2]  # the history thread ended before the error came out
    assert threading.active_count() <= threads
    assert json.loads(state.read_bytes())["serial"] == 1


@settings(max_examples=300, deadline=None)
@given(RECORDS)
def test_a_put_line_is_the_entry_as_json_writes_it(record: Record) -> None:
    entry = {"op": "put", "key": str(record.key), "record": record.to_json()}
    assert journal.put_entry(record)[0] == (
        json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        + "\n").encode()


@settings(max_examples=100, deadline=None)
@given(RECORDS.filter(lambda record: type(record.created_date) in (int, type(None))))
def test_a_record_of_plain_values_is_put_by_its_template(record: Record) -> None:
    # Not left to the general encoder, which would write the same, only slower.
    general = journal.json_line
    journal.json_line = None  # type: ignore[assignment]
    try:
        line = journal.put_entry(record)[0]
    finally:
        journal.json_line = general
    assert line == general({"op": "put", "key": str(record.key), "record": record.to_json()})


def test_a_commit_takes_each_record_as_it_was_encoded_when_put(
        state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = LocalBackend(state)
    commit_session(backend, rec("old"))

    def not_again(record: Record, newline: str) -> str:
        raise AssertionError(f"{record.key} encoded again at the commit")

    with backend.write_session(PROV) as session:
        session.put_many([rec("a"), rec("b")])
        session.put(rec("c"))
        # only the record of the previous serial is left to encode now
        encode = snapshot._record_text
        monkeypatch.setattr(snapshot, "_record_text", lambda record, newline: (
            encode(record, newline) if record.key == key("old") else not_again(record, newline)))
        session.commit("s")
    monkeypatch.undo()
    sealed = LocalBackend(state).read()
    assert set(sealed.records) == {key("old"), key("a"), key("b"), key("c")}
    assert state.read_bytes() == (json.dumps(snapshot.snapshot_document(sealed), sort_keys=True,
                                             indent=2, ensure_ascii=False) + "\n").encode()


def test_a_journal_that_cannot_be_synced_leaves_state_json_as_it_was(
        state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The sync runs beside the encoding; the serial is sealed only once it has succeeded.
    backend = LocalBackend(state)
    commit_session(backend, rec("a"))
    sync = local._datasync

    def failing(fd: int) -> None:
        if threading.current_thread().name == "state-io":  # the commit's own sync
            raise OSError(errno.EIO, "Input/output error")
        sync(fd)

    monkeypatch.setattr(local, "_datasync", failing)
    with backend.write_session(PROV) as session:
        session.put(rec("b"))
        with pytest.raises(StateError, match="Input/output error"):
            session.commit("b")
    monkeypatch.undo()
    assert json.loads(state.read_bytes())["serial"] == 1
    assert state.with_suffix(".journal").exists()  # kept, to recover b from
    assert key("b") in LocalBackend(state).read().records


def test_a_record_put_twice_is_committed_as_last_put(state: Path) -> None:
    backend = LocalBackend(state)
    with backend.write_session(PROV) as session:
        session.put(rec("a", cron="0 0 1 * * ?"))
        session.put_many([rec("a", cron="0 0 2 * * ?"), rec("b")])
        session.commit("s")
    sealed = LocalBackend(state).read()
    assert sealed.records[key("a")].spec.cron == "0 0 2 * * ?"
    assert state.read_bytes() == (json.dumps(snapshot.snapshot_document(sealed), sort_keys=True,
                                             indent=2, ensure_ascii=False) + "\n").encode()


# -- a write that fails half way (a full disk) -------------------------------------------------


def _failing_half_way(real: object, failures: list[int]) -> object:
    """`write_all` that, while `failures` holds a count, writes half of the data and fails."""
    def write_all(fd: int, data: bytes) -> None:
        if failures and failures[0] > 0:
            failures[0] -= 1
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)  # type: ignore[operator]
    return write_all


def test_a_failed_write_leaves_no_half_line_for_the_next_ones(
        state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = LocalBackend(state)
    failures = [0]
    monkeypatch.setattr(local, "write_all", _failing_half_way(local.write_all, failures))
    with backend.write_session(PROV) as session:
        session.put(rec("t0"))
        failures[0] = 1
        with pytest.raises(StateError, match="No space left"):
            session.put(rec("t1"))
        session.put(rec("t2"))  # space again
        session.put(rec("t3"))
        # Killed before the commit: the next reader seals the journal as it is.
    assert sorted(backend.read().records) == [key("t0"), key("t2"), key("t3")]


def test_a_write_that_cannot_be_undone_stops_the_session_keeping_what_it_had(
        state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = LocalBackend(state)
    failures = [0]
    monkeypatch.setattr(local, "write_all", _failing_half_way(local.write_all, failures))

    def no_truncate(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    with backend.write_session(PROV) as session:
        session.put(rec("t0"))
        failures[0] = 1
        monkeypatch.setattr(os, "ftruncate", no_truncate)
        with pytest.raises(StateError, match="No space left"):
            session.put(rec("t1"))
        with pytest.raises(StateError, match="could not be undone"):
            session.put(rec("t2"))
        monkeypatch.undo()
    assert sorted(backend.read().records) == [key("t0")]  # the half line, last, is dropped


def test_an_unsealed_journal_behind_a_replaced_state_is_refused_not_dropped(
        tmp_path: Path) -> None:
    # Here serial 1; elsewhere (another clone, then `git pull`) serials 2 and 3 of the same state.
    here = LocalBackend(tmp_path / "here" / ".reconciler" / "state.json")
    commit_session(here, rec("t0"))
    elsewhere_dir = tmp_path / "elsewhere" / ".reconciler"
    elsewhere_dir.mkdir(parents=True)
    elsewhere = LocalBackend(elsewhere_dir / "state.json")
    elsewhere.path.write_bytes(here.path.read_bytes())
    other = dataclasses.replace(PROV, actor="carol", time="2024-05-02T00:00:00Z")
    for task in ("t8", "t9"):
        with elsewhere.write_session(other) as session:
            session.put(rec(task))
            session.commit(f"put {task}")
    interrupted_session(here, rec("t1"))  # never sealed: its record exists nowhere else
    here.path.write_bytes(elsewhere.path.read_bytes())  # the pull replaces state.json
    for attempt in (here.read, lambda: commit_session(here, rec("t2"))):
        with pytest.raises(StateError, match="holds 1 actions of an interrupted run"):
            attempt()
    assert here.journal_path.exists()  # kept, with the record only it holds


def test_a_journal_its_own_commit_folded_is_still_dropped(state: Path) -> None:
    backend = LocalBackend(state)
    commit_session(backend, rec("t0"))
    with backend.write_session(PROV) as session:
        session.put(rec("t1"))
        journal = backend.journal_path.read_bytes()
        session.commit("second")
    backend.journal_path.write_bytes(journal)  # its deletion was lost (not synced)
    assert sorted(backend.read().records) == [key("t0"), key("t1")]
    commit_session(backend, rec("t2"))
    assert backend.read().serial == 3


def test_a_symlinked_state_is_written_through_its_link(tmp_path: Path) -> None:
    target = tmp_path / "shared" / "state.json"
    commit_session(LocalBackend(target), rec("t0"))
    link = tmp_path / "project" / ".reconciler" / "state.json"
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    commit_session(LocalBackend(link), rec("t1"))
    assert link.is_symlink()
    assert sorted(LocalBackend(target).read().records) == [key("t0"), key("t1")]
    # Its history (and journal and lock) beside the target, shared by every link to it.
    assert not (link.parent / "state.history").exists()
    assert [e.serial for e in LocalBackend(target).history()] == [1, 2]
