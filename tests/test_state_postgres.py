"""The postgres state backend on a real server: schema migrations, workspaces, writers in real
subprocesses killed with SIGKILL, the DSN's password, and migrations to and from local files."""

from __future__ import annotations

import gzip
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from reconciler.model import DispatchKey
from reconciler.state import postgres, postgres_lock
from reconciler.state.base import Intent, LockHeld, StateError
from reconciler.state.local import LocalBackend
from reconciler.state.migrate import migrate
from reconciler.state.postgres import PostgresBackend
from tests.state_helpers.history import (
    MIGRATE,
    PROV,
    build_local_history,
    commit_session,
    interrupted_session,
    key,
    rec,
    state_files,
)

REPO = Path(__file__).resolve().parent.parent

WRITER = r'''
"""A writer in its own process. argv: MODE DSN WORKSPACE PREFIX [ARG]

- put: print "ready", then put records in one session forever (the test kills it);
- sessions: committed sessions of three puts forever, "ready" after the first;
- burst: ARG committed sessions of three puts, waiting up to 30 s for the lock each time;
- hold: put PREFIX, print "locked", sleep ARG seconds, commit.

A key is printed (and flushed) only after its put returned: a printed key is acknowledged.
"""
import itertools
import sys
import time

from reconciler.model import DispatchKey, Spec
from reconciler.state.base import Provenance, Record
from reconciler.state.postgres import PostgresBackend

mode, dsn, workspace, prefix = sys.argv[1:5]
arg = sys.argv[5] if len(sys.argv) > 5 else ""
backend = PostgresBackend(dsn, workspace)
provenance = Provenance(operation="apply", time="2024-01-01T00:00:00Z", actor="writer",
                        ci_job="job-42")
counter = itertools.count()


def say(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def put(session):
    n = next(counter)
    key = DispatchKey("p", "i", f"{prefix}_{n}")
    session.put(Record(key, f"job-{n}", "a.yaml", f"d{n}", Spec(cron="0 0 * * * ?")))
    say(str(key))
    if n % 20 == 19:
        time.sleep(0.005)


if mode in ("sessions", "burst"):
    for number in range(int(arg)) if mode == "burst" else itertools.count():
        with backend.write_session(provenance, lock_timeout=30) as session:
            for _ in range(3):
                put(session)
            session.commit(f"{prefix} session {number}")
        if number == 0 and mode == "sessions":
            say("ready")
    sys.exit(0)
with backend.write_session(provenance, lock_timeout=10) as session:
    if mode == "hold":
        session.put(Record(DispatchKey("p", "i", prefix), "held", "a.yaml", "d",
                           Spec(cron="0 0 * * * ?")))
        say("locked")
        time.sleep(float(arg))
        session.commit("held")
        sys.exit(0)
    say("ready")
    while True:
        put(session)
'''


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def start_writer(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", WRITER, *args], stdout=subprocess.PIPE,
                            text=True, cwd=REPO, env=env)


def read_until(proc: subprocess.Popen[str], marker: str) -> list[str]:
    """The lines a writer printed before `marker`."""
    assert proc.stdout is not None
    lines = []
    while (line := proc.stdout.readline()) != marker + "\n":
        assert line.endswith("\n"), f"the writer stopped before {marker!r}: {line!r}"
        lines.append(line.strip())
    return lines


def kill(proc: subprocess.Popen[str], before: list[str]) -> list[str]:
    """SIGKILL a writer; every key it acknowledged."""
    assert proc.stdout is not None
    proc.send_signal(signal.SIGKILL)
    output = proc.stdout.read()
    assert proc.wait(timeout=10) == -signal.SIGKILL
    # a line without its newline was cut by the kill: not acknowledged
    return before + output.split("\n")[:-1]


def tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {str(name) for (name,) in rows}


def query(dsn: str, sql: Any, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


# -- schema -----------------------------------------------------------------------------------


def test_schema_is_created_by_the_first_writer_and_versioned(
        pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    reader = PostgresBackend(pg_dsn)
    assert reader.read().serial == 0
    assert reader.history() == []
    assert reader.current_lock() is None
    assert tables(pg_dsn) == set()  # reading creates nothing

    assert commit_session(PostgresBackend(pg_dsn), rec("a")) == 1
    assert tables(pg_dsn) == {"reconciler_schema_version", "reconciler_state",
                              "reconciler_dispatch", "reconciler_intent",
                              "reconciler_history", "reconciler_lock"}
    assert query(pg_dsn, "SELECT version FROM reconciler_schema_version") == [(1,)]
    assert commit_session(PostgresBackend(pg_dsn), rec("b")) == 2
    assert query(pg_dsn, "SELECT version FROM reconciler_schema_version") == [(1,)]

    # a later release appends a migration: applied once, on top of the data
    monkeypatch.setattr(postgres, "MIGRATIONS", (
        *postgres.MIGRATIONS, "CREATE TABLE reconciler_extra (x integer)"))
    assert set(PostgresBackend(pg_dsn).read().records) == {key("a"), key("b")}
    assert commit_session(PostgresBackend(pg_dsn), rec("c")) == 3
    assert query(pg_dsn, "SELECT version FROM reconciler_schema_version ORDER BY 1") == [
        (1,), (2,)]
    assert "reconciler_extra" in tables(pg_dsn)
    monkeypatch.undo()

    # and the release before it refuses the newer schema instead of misreading it
    with pytest.raises(StateError, match="schema is at version 2, newer than this reconciler "
                                         r"understands \(1\); upgrade"):
        PostgresBackend(pg_dsn).read()


def test_concurrent_first_writers_migrate_once(pg_dsn: str) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def first_run(n: int) -> None:
        try:
            backend = PostgresBackend(pg_dsn)
            start.wait()
            with backend.write_session(PROV, lock_timeout=30) as session:
                session.put(rec(f"t{n}"))
                session.commit(f"run {n}")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=first_run, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert query(pg_dsn, "SELECT version FROM reconciler_schema_version") == [(1,)]
    backend = PostgresBackend(pg_dsn)
    assert [h.serial for h in backend.history()] == [1, 2, 3, 4, 5, 6]
    assert len(backend.read().records) == 6


def test_history_holds_the_local_backends_bytes(pg_dsn: str, tmp_path: Path) -> None:
    pg, local = PostgresBackend(pg_dsn), LocalBackend(tmp_path / "state.json")
    commit_session(local, rec("a"), rec("b"))
    migrate(local, pg, MIGRATE)
    ((packed, records),) = query(pg_dsn, "SELECT snapshot, records FROM reconciler_history")
    assert gzip.decompress(packed) == local.path.read_bytes()
    assert packed == (tmp_path / "state.history" / "00000001.json.gz").read_bytes()
    assert records == 2


# -- workspaces -------------------------------------------------------------------------------


def test_workspaces_are_separate_states(pg_dsn: str) -> None:
    one, two = PostgresBackend(pg_dsn, "one"), PostgresBackend(pg_dsn, "two")
    commit_session(one, rec("a"))
    commit_session(one, rec("b"))
    commit_session(two, rec("x"))
    assert (one.read().serial, two.read().serial) == (2, 1)
    assert set(one.read().records) == {key("a"), key("b")}
    assert set(two.read().records) == {key("x")}
    assert one.read().lineage != two.read().lineage
    assert [h.serial for h in two.history()] == [1]
    assert "workspace one" in one.describe()
    # each has its own lock: holding one leaves the other free
    with one.write_session(PROV) as session:
        session.remove(key("a"))
        assert commit_session(two, rec("y")) == 2
        with pytest.raises(LockHeld), PostgresBackend(pg_dsn, "one").write_session(PROV):
            pytest.fail("the lock was taken twice")
        assert two.current_lock() is None
        session.commit("rm a")
    assert set(one.read().records) == {key("b")}
    assert set(two.read().records) == {key("x"), key("y")}


# -- kill -9 ----------------------------------------------------------------------------------


def test_kill9_of_the_holder_frees_the_lock_and_keeps_its_actions(
        pg_dsn: str, pg_workspace: str) -> None:
    commit_session(PostgresBackend(pg_dsn, pg_workspace), rec("before"))
    proc = start_writer("put", pg_dsn, pg_workspace, "k")
    read_until(proc, "ready")
    assert proc.stdout is not None
    before = [proc.stdout.readline().strip() for _ in range(50)]
    backend = PostgresBackend(pg_dsn, pg_workspace)
    held = backend.current_lock()
    assert held is not None
    assert held[0].pid == proc.pid
    assert held[1] is None

    acknowledged = {DispatchKey.parse(k) for k in kill(proc, before)}
    assert len(acknowledged) >= 50
    # the server ends the dead client's session, and its advisory lock with it
    assert wait_until(lambda: backend.current_lock() is None)
    pending = backend.read()
    assert pending.serial == 2
    assert acknowledged <= set(pending.records)
    with backend.write_session(PROV) as session:  # no force-unlock, no wait
        assert session.serial == 3
        session.put(rec("after"))
        session.commit("after")
    history = backend.history()
    assert [h.serial for h in history] == [1, 2, 3]
    recovered = len(backend.read_serial(2).records) - 1
    assert recovered in (len(acknowledged), len(acknowledged) + 1)
    assert history[1].summary == (
        f"recovered {recovered} recorded actions from an interrupted run")
    assert history[1].provenance.actor == "writer"
    assert acknowledged | {key("before"), key("after")} <= set(backend.read().records)
    assert query(pg_dsn, "SELECT count(*) FROM reconciler_lock WHERE workspace = %s",
                 pg_workspace) == [(0,)]


@pytest.mark.slow
def test_kill9_at_random_moments_loses_no_acknowledged_action(
        pg_dsn: str, pg_workspace: str) -> None:
    rng = random.Random(20240501)
    backend = PostgresBackend(pg_dsn, pg_workspace)
    acknowledged: set[DispatchKey] = set()
    for iteration in range(10):
        mode = "put" if iteration % 2 == 0 else "sessions"
        proc = start_writer(mode, pg_dsn, pg_workspace, f"r{iteration}")
        before = read_until(proc, "ready")
        time.sleep(rng.uniform(0.02, 0.3))
        acknowledged |= {DispatchKey.parse(k) for k in kill(proc, before)}
        assert wait_until(lambda: backend.current_lock() is None)
        missing = acknowledged - set(backend.read().records)
        assert not missing, f"iteration {iteration} ({mode}) lost {sorted(missing)[:5]}"
    assert len(acknowledged) > 100
    final = commit_session(backend, rec("final"))
    sealed = backend.read()
    assert sealed.serial == final
    assert acknowledged <= set(sealed.records)
    # at most one put per kill can land after its key was recorded but before it was printed
    assert len(sealed.records) <= len(acknowledged) + 1 + 10
    assert [h.serial for h in backend.history()] == list(range(1, final + 1))
    for serial in range(1, final + 1):
        assert backend.read_serial(serial).serial == serial


# -- two writers ------------------------------------------------------------------------------


@pytest.fixture
def holder(pg_dsn: str, pg_workspace: str) -> Iterator[subprocess.Popen[str]]:
    proc = start_writer("hold", pg_dsn, pg_workspace, "held", "1.0")
    read_until(proc, "locked")
    yield proc
    proc.kill()
    proc.wait()


def test_second_process_is_refused_naming_the_holder(
        pg_dsn: str, pg_workspace: str, holder: subprocess.Popen[str]) -> None:
    backend = PostgresBackend(pg_dsn, pg_workspace)
    with pytest.raises(LockHeld) as caught, backend.write_session(PROV):
        pytest.fail("the lock was taken twice")
    message = str(caught.value)
    assert f"on {socket.gethostname()} (pid {holder.pid})" in message
    assert "for 'apply'" in message
    assert "CI job job-42" in message
    assert caught.value.stale_reason is None
    assert DispatchKey("p", "i", "held") in backend.read().records


def test_second_process_waits_for_the_lock(
        pg_dsn: str, pg_workspace: str, holder: subprocess.Popen[str]) -> None:
    backend = PostgresBackend(pg_dsn, pg_workspace)
    started = time.monotonic()
    with backend.write_session(PROV, lock_timeout=10) as session:
        waited = time.monotonic() - started
        assert session.serial == 2  # the holder committed serial 1 before releasing
        session.put(rec("b"))
        session.commit("after the wait")
    assert 0.3 < waited < 10
    assert holder.wait(timeout=10) == 0
    assert [h.summary for h in backend.history()] == ["held", "after the wait"]


def test_two_processes_writing_at_once_take_turns(pg_dsn: str, pg_workspace: str) -> None:
    procs = [start_writer("burst", pg_dsn, pg_workspace, name, "10") for name in ("x", "y")]
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    written = {DispatchKey.parse(k) for out in outputs for k in out.split()}
    assert len(written) == 60
    backend = PostgresBackend(pg_dsn, pg_workspace)
    assert set(backend.read().records) == written
    history = backend.history()
    assert [h.serial for h in history] == list(range(1, 21))
    # each serial is one whole session of one writer: never interleaved
    for entry in history:
        prefix = entry.summary[0]
        changed = {k for k, r in backend.read_serial(entry.serial).records.items()
                   if r.version == entry.serial}
        assert len(changed) == 3
        assert {k.task_id[0] for k in changed} == {prefix}


# -- force-unlock and leftovers ---------------------------------------------------------------


def test_force_unlock_ends_the_holders_connection(pg_dsn: str, pg_workspace: str) -> None:
    holder = PostgresBackend(pg_dsn, pg_workspace, host="runner-7", pid=4242)
    other = PostgresBackend(pg_dsn, pg_workspace)
    with holder.write_session(PROV) as session:
        session.put(rec("a"))
        session.intend(Intent(key("b"), "i-b", "create", "now", "sha256:0"))
        held = other.current_lock()
        assert held is not None
        assert other.force_unlock(held[0].lock_id) == held[0]
        assert other.current_lock() is None
        # the forced holder can record nothing more, and says so
        with pytest.raises(StateError, match="cannot record an action"):
            session.put(rec("late"))
        with pytest.raises(StateError):
            session.commit("too late")
    assert query(pg_dsn, "SELECT count(*) FROM reconciler_lock WHERE workspace = %s",
                 pg_workspace) == [(0,)]
    with other.write_session(PROV) as session:
        assert session.serial == 2
        session.commit("nothing")
    assert [h.summary for h in other.history()] == [
        "recovered 2 recorded actions from an interrupted run"]
    snap = other.read()
    assert set(snap.records) == {key("a")}
    assert set(snap.intents) == {key("b")}


def test_a_session_fenced_off_records_nothing(pg_dsn: str, pg_workspace: str) -> None:
    backend = PostgresBackend(pg_dsn, pg_workspace)
    with backend.write_session(PROV) as session:
        session.put(rec("a"))
        # as if another writer had taken over the state row
        query(pg_dsn, "UPDATE reconciler_state SET session_id = 'someone-else' "
                      "WHERE workspace = %s", pg_workspace)
        with pytest.raises(StateError, match="no longer holds the lock"):
            session.put(rec("b"))
        with pytest.raises(StateError, match="no longer holds the lock"):
            session.commit("x")
    assert set(backend.read().records) == {key("a")}


def test_lock_row_left_by_a_dead_holder_is_not_a_lock(pg_dsn: str, pg_workspace: str) -> None:
    proc = start_writer("hold", pg_dsn, pg_workspace, "held", "60")
    read_until(proc, "locked")
    backend = PostgresBackend(pg_dsn, pg_workspace)
    held = backend.current_lock()
    assert held is not None
    kill(proc, [])
    assert wait_until(lambda: backend.current_lock() is None)
    # the row is still there: the holder never got to remove it
    rows = query(pg_dsn, "SELECT lock_id FROM reconciler_lock WHERE workspace = %s",
                 pg_workspace)
    assert rows == [(held[0].lock_id,)]
    with backend.write_session(PROV) as session:
        mine = backend.current_lock()
        assert mine is not None
        assert mine[0].lock_id != held[0].lock_id
        assert mine[0].pid == os.getpid()
        session.commit("nothing")
    # and force-unlock removes such a leftover too
    query(pg_dsn, "INSERT INTO reconciler_lock SELECT %s, 'L-1', 'apply', 'carol', 'h', 1, "
                  "NULL, 'c', 'h', 60, 1", pg_workspace)
    assert backend.current_lock() is None
    assert backend.force_unlock("L-1").who == "carol"
    with pytest.raises(StateError, match="not locked"):
        backend.force_unlock("L-1")


def test_lock_without_a_row_is_reported_as_unknown(pg_dsn: str, pg_workspace: str) -> None:
    backend = PostgresBackend(pg_dsn, pg_workspace)
    backend.read()
    commit_session(backend, rec("a"))
    with psycopg.connect(pg_dsn, autocommit=True) as squatter:
        squatter.execute("SELECT pg_advisory_lock(%s)", (postgres_lock.lock_key(pg_workspace),))
        with pytest.raises(LockHeld) as caught, backend.write_session(PROV):
            pytest.fail("the lock was taken twice")
        assert caught.value.info.lock_id == postgres_lock.UNKNOWN_LOCK_ID
        assert caught.value.info.who == "postgres"
        assert backend.force_unlock(postgres_lock.UNKNOWN_LOCK_ID).lock_id == "unknown"
        assert backend.current_lock() is None
    assert commit_session(backend, rec("b")) == 2


# -- the DSN ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dsn", [
    "host=127.0.0.1 port={port} user=u password=s3cret-pw dbname=x connect_timeout=3",
    "postgresql://u:s3cret-pw@127.0.0.1:{port}/x?connect_timeout=3",
])
def test_the_password_is_never_shown(dsn: str) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = PostgresBackend(dsn.format(port=port), "prod")
    assert "s3cret" not in backend.describe()
    assert "127.0.0.1" in backend.describe()
    assert backend.describe().endswith(", workspace prod")
    with pytest.raises(StateError) as caught:
        backend.read()
    message = str(caught.value)
    assert "s3cret" not in message
    assert "cannot connect" in message
    assert "\n" not in message
    assert caught.value.__suppress_context__


def test_an_invalid_dsn_is_refused_without_quoting_it() -> None:
    with pytest.raises(StateError, match="not a valid PostgreSQL connection string") as caught:
        PostgresBackend("host=h password='s3cret-pw")
    assert "s3cret" not in str(caught.value)
    with pytest.raises(StateError, match="workspace"):
        PostgresBackend("host=h", "")


def test_without_psycopg_the_error_says_what_to_install() -> None:
    code = ("import sys; sys.modules['psycopg'] = None\n"
            "from reconciler.model import ReconcilerError\n"
            "try:\n    import reconciler.state.postgres\n"
            "except ReconcilerError as error:\n    print(error)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert "pip install 'reconciler[postgres]'" in done.stdout


# -- migrating between backends ---------------------------------------------------------------


def test_migrate_local_to_postgres_to_local_keeps_everything(
        tmp_path: Path, pg_dsn: str) -> None:
    source = build_local_history(tmp_path / "a" / "state.json")
    files = state_files(tmp_path / "a")
    pg = PostgresBackend(pg_dsn, "migrated")

    there = migrate(source, pg, MIGRATE)
    assert (there.serials, there.last_serial, there.records) == (4, 4, 4)
    assert pg.read() == source.read()
    assert pg.history() == source.history()
    for serial in range(1, 5):
        assert pg.read_serial(serial) == source.read_serial(serial)
    assert state_files(tmp_path / "a") == files  # the source is untouched
    assert pg.current_lock() is None
    assert source.current_lock() is None

    back = LocalBackend(tmp_path / "b" / "state.json")
    migrate(pg, back, MIGRATE)
    # byte for byte: the snapshot, every history file and the index
    assert state_files(tmp_path / "b") == files
    assert back.read() == source.read()
    # and the copy is a working state: the next serial follows on
    assert commit_session(back, rec("g")) == 5
    assert commit_session(pg, rec("g")) == 5
    assert back.read().lineage == pg.read().lineage == source.read().lineage


def test_migrate_refuses_a_target_with_a_state(tmp_path: Path, pg_dsn: str) -> None:
    source = build_local_history(tmp_path / "a" / "state.json")
    pg = PostgresBackend(pg_dsn, "busy")
    commit_session(pg, rec("z"))
    lineage = pg.read().lineage
    with pytest.raises(StateError, match=f"already holds another state \\(lineage {lineage}, "
                                         "serial 1\\); migrate only into an empty one"):
        migrate(source, pg, MIGRATE)
    local = LocalBackend(tmp_path / "b" / "state.json")
    commit_session(local, rec("z"))
    with pytest.raises(StateError, match="already holds another state"):
        migrate(pg, local, MIGRATE)
    assert [h.serial for h in pg.history()] == [1]
    # a copy made before (or the source itself) is checked, not copied again ...
    copy = PostgresBackend(pg_dsn, "copy")
    migrate(source, copy, MIGRATE)
    assert migrate(source, copy, MIGRATE).copied_before
    assert [h.serial for h in copy.history()] == [h.serial for h in source.history()]
    # ... and refused when it is not the same in every serial (left incomplete, written to)
    commit_session(copy, rec("written-to-since"))
    with pytest.raises(StateError, match=r"already holds this state .*, but not as .* has it: "
                                         r"it differs in the current state"):
        migrate(source, copy, MIGRATE)
    # and the backends refuse on their own too, should a state appear after the check
    for backend in (pg, local):
        with pytest.raises(StateError, match="already has a state"):
            backend.import_snapshots([source.read_serial(1)], MIGRATE)


def test_migrate_refuses_an_unsealed_or_empty_source(tmp_path: Path, pg_dsn: str) -> None:
    source = build_local_history(tmp_path / "a" / "state.json")
    interrupted_session(source, rec("pending"))
    files = state_files(tmp_path / "a")
    pg = PostgresBackend(pg_dsn, "target")
    with pytest.raises(StateError, match="interrupted run, not sealed yet"):
        migrate(source, pg, MIGRATE)
    assert state_files(tmp_path / "a") == files
    assert pg.read().serial == 0
    with pytest.raises(StateError, match="no state to migrate"):
        migrate(LocalBackend(tmp_path / "empty" / "state.json"), pg, MIGRATE)


def test_migrate_waits_for_no_writer_of_the_source(
        tmp_path: Path, pg_dsn: str, pg_workspace: str) -> None:
    source = PostgresBackend(pg_dsn, pg_workspace)
    commit_session(source, rec("a"))
    with source.write_session(PROV), pytest.raises(LockHeld):
        migrate(source, LocalBackend(tmp_path / "state.json"), MIGRATE)
    assert not (tmp_path / "state.json").exists()
