"""The `postgres` state backend: the local backend's contract on a shared PostgreSQL server.

Several states share one database, each named by a `workspace`; every table is keyed by it:

- `reconciler_state`: one row per workspace: the `lineage`, the last sealed `serial` with its
  provenance and summary, and the open (or interrupted) write session: its `session_id`,
  `pending_serial`, `pending_provenance` and how many `pending_actions` it recorded;
- `reconciler_dispatch`, `reconciler_intent`: one row per recorded dispatch and per intent. They
  are the current state, including the actions of a session not sealed yet;
- `reconciler_history`: one row per sealed serial with the full snapshot, gzip-compressed
  deterministic JSON: the very bytes the local backend keeps in `state.history/`. A snapshot is
  written once and read whole (`state diff`, `read_serial`), never queried inside, so `jsonb`
  would buy nothing; gzip is about 40% smaller than `jsonb` even after TOAST's compression
  (1.7 MB against 2.8 MB for 10,000 varied records), and equal bytes make a migration between
  backends exact and let `parse_snapshot` check `format_version` the same way for both;
- `reconciler_lock`: who holds the lock. The lock itself is a session-level advisory lock, so
  the server releases it when the holder's connection ends, whatever killed the holder
  (`reconciler.state.postgres_lock`);
- `reconciler_schema_version`: the migrations applied (`MIGRATIONS`, in order).

Each recorded action is one statement in its own implicit transaction (a batch from
`intend_many`/`put_many`: one transaction for all of them): the row change and
`pending_actions + 1` commit together, or not at all, and are durable when the call returns
(`synchronous_commit` is turned on for the session if the server has it off). `commit` seals
the session in one transaction: a history row with the snapshot built from the rows, then the
state row's serial.
A session that died is sealed the same way, as its own serial, by the next writer; it finds it
by `pending_actions > 0`. A crash at any instant thus leaves either the rows with their pending
count, or the sealed serial; never a half of either.

The lock, the session's writes and the heartbeat use one connection: a writer that lost its
connection (and so its lock) cannot write any more, and every action is fenced by `session_id`,
so a session forced away (`force_unlock`) cannot change the state of the next one.

Needs a direct connection or a session-mode pooler (advisory locks live in a server session; a
transaction-mode pooler such as PgBouncer's default would hand them to other clients). The first
write needs CREATE on the schema the search_path names first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, LiteralString

from reconciler.model import DispatchKey
from reconciler.state.base import (
    HistoryEntry,
    Intent,
    LockInfo,
    LockLost,
    Provenance,
    Record,
    Session,
    Snapshot,
    StateError,
)
from reconciler.state.postgres_sql import (
    CLEAR_INTENT,
    INTEND,
    MIGRATIONS,
    PUT,
    REMOVE,
)
from reconciler.state.snapshot import (
    MALFORMED,
    check_sequence,
    pack,
    parse_snapshot,
    snapshot_bytes,
    unpack,
)

try:
    import psycopg
    from psycopg import conninfo
    from psycopg.types.json import Jsonb
except ImportError as _missing:  # psycopg is the optional extra `reconciler[postgres]`
    raise StateError(
        "the postgres state backend needs psycopg 3: pip install 'reconciler[postgres]' "
        f"({_missing})"
    ) from None

from reconciler.state.postgres_lock import (
    AdvisoryLock,
    Connection,
    HeldLock,
    one_line,
)

_SCHEMA_LOCK_KEY = int.from_bytes(hashlib.sha256(b"reconciler schema").digest()[:8], "big",
                                  signed=True)


@dataclasses.dataclass(frozen=True, slots=True)
class _StateRow:
    lineage: str
    serial: int
    provenance: Provenance | None
    summary: str
    session_id: str | None
    pending_serial: int | None
    pending_provenance: Provenance | None
    pending_actions: int


class PostgresBackend:
    """State in a PostgreSQL database (see the module docstring): one writer at a time per
    workspace across every machine using the database, any number of readers, and nothing
    acknowledged lost to a kill of the writer at any instant."""

    def __init__(self, dsn: str, workspace: str = "default", *,
                 now: Callable[[], datetime] | None = None, host: str | None = None,
                 pid: int | None = None, lease_seconds: float = 60.0) -> None:
        """`dsn` is a libpq connection string or URI (libpq's PG* variables and ~/.pgpass
        apply); `now` must return timezone-aware times; `host`, `pid` default to this
        process's. Nothing connects until the first operation."""
        if not workspace:
            raise StateError("the state workspace must be a non-empty name")
        try:
            params = conninfo.conninfo_to_dict(dsn)
        except psycopg.Error:
            # libpq's message may quote the string, password included
            raise StateError("the state DSN is not a valid PostgreSQL connection string "
                             "(key=value pairs or a postgresql:// URI)") from None
        self._dsn = dsn
        self._secret = str(params["password"]) if params.get("password") else None
        self._shown = {k: v for k, v in params.items() if "password" not in k}
        self._connect_options: dict[str, Any] = {"fallback_application_name": "reconciler"}
        if "connect_timeout" not in params:
            self._connect_options["connect_timeout"] = 10
        self.workspace = workspace
        self.now: Callable[[], datetime] = now or (lambda: datetime.now(UTC))
        self.host = host if host is not None else socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()
        self.lease_seconds = lease_seconds
        self._lock = AdvisoryLock(workspace, now=self.now, host=self.host, pid=self.pid,
                                  lease_seconds=lease_seconds, where=self.describe(),
                                  secret=self._secret)
        self._schema_ready = False

    def describe(self) -> str:
        """The DSN without any password, and the workspace."""
        shown = conninfo.make_conninfo("", **self._shown) if self._shown else "(libpq defaults)"
        return f"postgres {shown}, workspace {self.workspace}"

    # -- connections --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn a database error into a StateError fit to print, without the password."""
        try:
            yield
        except psycopg.Error as error:
            raise StateError(f"{self.describe()}: cannot {doing}: "
                             f"{one_line(error, self._secret)}") from None

    def _connect(self) -> Connection:
        with self._errors("connect"):
            return psycopg.connect(self._dsn, autocommit=True, **self._connect_options)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Connection | None]:
        """A connection in a read-only, repeatable-read transaction (one consistent view), or
        None when the database has no reconciler schema yet: reads create nothing."""
        with self._errors("read the state"), self._connect() as conn:
            if not self._ensure_schema(conn, create=False):
                yield None
                return
            conn.read_only = True
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with conn.transaction():
                yield conn

    def _ensure_schema(self, conn: Connection, *, create: bool) -> bool:
        """Migrate the schema to `MIGRATIONS` (unless it is absent and not `create`); whether
        it exists now. Concurrent first runs queue on a transaction-level advisory lock."""
        if self._schema_ready:
            return True
        version = self._schema_version(conn)
        if version == len(MIGRATIONS):
            self._schema_ready = True
            return True
        if version == 0 and not create:
            return False
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
            conn.execute("CREATE TABLE IF NOT EXISTS reconciler_schema_version ("
                         "version integer PRIMARY KEY, "
                         "applied_at timestamptz NOT NULL DEFAULT now())")
            # again under the lock: another first run may have migrated meanwhile
            version = self._schema_version(conn)
            for number, statements in enumerate(MIGRATIONS[version:], version + 1):
                conn.execute(statements)
                conn.execute("INSERT INTO reconciler_schema_version (version) VALUES (%s)",
                             (number,))
        self._schema_ready = True
        return True

    def _schema_version(self, conn: Connection) -> int:
        row = conn.execute("SELECT to_regclass('reconciler_schema_version') IS NOT NULL"
                           ).fetchone()
        if not row or not row[0]:
            return 0
        row = conn.execute("SELECT coalesce(max(version), 0) FROM reconciler_schema_version"
                           ).fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            raise StateError(f"{self.describe()}: the database schema is at version {version}, "
                             f"newer than this reconciler understands ({len(MIGRATIONS)}); "
                             "upgrade reconciler to use it")
        return version

    # -- reading ------------------------------------------------------------------------------

    def read(self) -> Snapshot:
        """The current state, with the actions of a session not sealed yet (as the serial the
        next writer would seal them as); modifies nothing."""
        with self._reading() as conn:
            return Snapshot(lineage="", serial=0) if conn is None else self._load(conn)

    def _state_row(self, conn: Connection, *, for_update: bool = False) -> _StateRow | None:
        query: LiteralString = (
            "SELECT lineage, serial, provenance, summary, session_id, pending_serial, "
            "pending_provenance, pending_actions FROM reconciler_state WHERE workspace = %s")
        row = conn.execute(query + (" FOR UPDATE" if for_update else ""),
                           (self.workspace,)).fetchone()
        if row is None:
            return None
        try:
            return _StateRow(str(row[0]), int(row[1]),
                             Provenance.from_json(row[2]) if row[2] else None, str(row[3]),
                             row[4], row[5],
                             Provenance.from_json(row[6]) if row[6] else None, int(row[7]))
        except MALFORMED as error:
            raise StateError(f"{self.describe()}: malformed state row: {error!r}") from None

    def _load(self, conn: Connection) -> Snapshot:
        """The rows as a snapshot: pending if a session recorded actions, else the sealed one."""
        state = self._state_row(conn)
        if state is None:
            return Snapshot(lineage="", serial=0)
        if state.pending_actions and state.pending_serial is not None:
            summary = f"{state.pending_actions} recorded actions not yet committed"
            return self._rows_snapshot(conn, state.lineage, state.pending_serial,
                                       state.pending_provenance, summary)
        if state.serial == 0:
            return Snapshot(lineage="", serial=0)
        return self._rows_snapshot(conn, state.lineage, state.serial, state.provenance,
                                   state.summary)

    def _rows_snapshot(self, conn: Connection, lineage: str, serial: int,
                       provenance: Provenance | None, summary: str) -> Snapshot:
        # COLLATE "C": the order of Python's sorted(), whatever the database's locale
        records: dict[DispatchKey, Record] = {}
        intents: dict[DispatchKey, Intent] = {}
        try:
            for name, data in conn.execute(
                    'SELECT key, record FROM reconciler_dispatch WHERE workspace = %s '
                    'ORDER BY key COLLATE "C"', (self.workspace,)):
                key = DispatchKey.parse(name)
                records[key] = Record.from_json(key, data)
            for name, data in conn.execute(
                    'SELECT key, intent FROM reconciler_intent WHERE workspace = %s '
                    'ORDER BY key COLLATE "C"', (self.workspace,)):
                key = DispatchKey.parse(name)
                intents[key] = Intent.from_json(key, data)
        except MALFORMED as error:
            raise StateError(f"{self.describe()}: malformed row: {error!r}") from None
        return Snapshot(lineage, serial, records, intents, provenance, summary)

    def history(self) -> list[HistoryEntry]:
        """Every sealed serial, ascending."""
        with self._reading() as conn:
            if conn is None:
                return []
            rows = conn.execute("SELECT serial, provenance, summary FROM reconciler_history "
                                "WHERE workspace = %s ORDER BY serial", (self.workspace,))
            return [HistoryEntry(int(serial), Provenance.from_json(provenance or {}),
                                 str(summary)) for serial, provenance, summary in rows]

    def read_serial(self, serial: int) -> Snapshot:
        """The snapshot sealed as `serial`."""
        with self._reading() as conn:
            row = None if conn is None else conn.execute(
                "SELECT snapshot FROM reconciler_history WHERE workspace = %s AND serial = %s",
                (self.workspace, serial)).fetchone()
        if row is None:
            raise StateError(f"serial {serial} is not in the history of {self.describe()}")
        where = f"{self.describe()}, serial {serial}"
        return parse_snapshot(unpack(row[0], where), where)

    # -- writing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def write_session(self, provenance: Provenance, *,
                      lock_timeout: float = 0.0) -> Iterator[Session]:
        """Lock, seal an interrupted session if there is one, then yield a new session.

        Without `commit` (an exception) the session's actions stay recorded for the next
        writer to seal; the lock is always released."""
        held = self._acquire(provenance, lock_timeout)
        try:
            session = self._begin(held, provenance)
            try:
                yield session
            finally:
                session.close()
        finally:
            held.release()

    def _begin(self, held: HeldLock, provenance: Provenance) -> _PostgresSession:
        """Seal an interrupted session and open this one, in one transaction."""
        conn = held.conn
        session_id = str(uuid.uuid4())
        with held.guard, self._errors("open a write session"), conn.transaction():
            state = self._state_row(conn, for_update=True)
            if state is None:
                lineage, serial = str(uuid.uuid4()), 0
                conn.execute("INSERT INTO reconciler_state (workspace, lineage) VALUES (%s, %s)",
                             (self.workspace, lineage))
            else:
                lineage, serial = state.lineage, state.serial
                if state.pending_actions and state.pending_serial is not None:
                    count = state.pending_actions
                    summary = f"recovered {count} recorded actions from an interrupted run"
                    self._seal(conn, self._rows_snapshot(
                        conn, lineage, state.pending_serial, state.pending_provenance, summary))
                    serial = state.pending_serial
            conn.execute("UPDATE reconciler_state SET session_id = %s, pending_serial = %s, "
                         "pending_provenance = %s, pending_actions = 0 WHERE workspace = %s",
                         (session_id, serial + 1, Jsonb(provenance.to_json()), self.workspace))
        return _PostgresSession(self, held, session_id, serial + 1, provenance)

    def _seal(self, conn: Connection, snap: Snapshot) -> None:
        """Store `snap` as its serial's history and make it the sealed state (in the caller's
        transaction)."""
        self._insert_history(conn, snap)
        provenance = Jsonb(snap.provenance.to_json()) if snap.provenance else None
        conn.execute("UPDATE reconciler_state SET serial = %s, provenance = %s, summary = %s, "
                     "session_id = NULL, pending_serial = NULL, pending_provenance = NULL, "
                     "pending_actions = 0 WHERE workspace = %s",
                     (snap.serial, provenance, snap.summary, self.workspace))

    def _insert_history(self, conn: Connection, snap: Snapshot) -> None:
        packed = pack(snapshot_bytes(snap))
        provenance = Jsonb(snap.provenance.to_json()) if snap.provenance else None
        conn.execute("INSERT INTO reconciler_history "
                     "(workspace, serial, provenance, summary, records, snapshot) "
                     "VALUES (%s, %s, %s, %s, %s, %s)",
                     (self.workspace, snap.serial, provenance, snap.summary,
                      len(snap.records), packed))

    def import_snapshots(self, snapshots: Iterable[Snapshot], provenance: Provenance, *,
                         lock_timeout: float = 0.0) -> None:
        """Store the given sealed serials (ascending, one lineage) as this workspace's history
        and the last one as its state, in one transaction, under the lock. Refused unless the
        workspace has no state yet; for `reconciler.state.migrate`."""
        held = self._acquire(provenance, lock_timeout)
        conn = held.conn
        try:
            with held.guard, self._errors("import the state"), conn.transaction():
                state = self._state_row(conn, for_update=True)
                history = conn.execute("SELECT count(*) FROM reconciler_history "
                                       "WHERE workspace = %s", (self.workspace,)).fetchone()
                if (state is not None and (state.serial or state.pending_actions)) or (
                        history and history[0]):
                    raise StateError(f"{self.describe()} already has a state; migrate only "
                                     "into an empty one")
                last: Snapshot | None = None
                for snap in snapshots:
                    check_sequence(last, snap)
                    self._insert_history(conn, snap)
                    last = snap
                if last is None:
                    return
                self._replace_rows(conn, last)
        finally:
            held.release()

    def _replace_rows(self, conn: Connection, snap: Snapshot) -> None:
        conn.execute("DELETE FROM reconciler_dispatch WHERE workspace = %s", (self.workspace,))
        conn.execute("DELETE FROM reconciler_intent WHERE workspace = %s", (self.workspace,))
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO reconciler_dispatch (workspace, key, record, version) "
                "VALUES (%s, %s, %s, %s)",
                [(self.workspace, str(key), Jsonb(record.to_json()), record.version)
                 for key, record in snap.records.items()])
            cursor.executemany(
                "INSERT INTO reconciler_intent (workspace, key, intent) VALUES (%s, %s, %s)",
                [(self.workspace, str(key), Jsonb(intent.to_json()))
                 for key, intent in snap.intents.items()])
        provenance = Jsonb(snap.provenance.to_json()) if snap.provenance else None
        conn.execute("INSERT INTO reconciler_state (workspace, lineage, serial, provenance, "
                     "summary) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (workspace) DO UPDATE "
                     "SET lineage = EXCLUDED.lineage, serial = EXCLUDED.serial, "
                     "provenance = EXCLUDED.provenance, summary = EXCLUDED.summary, "
                     "session_id = NULL, pending_serial = NULL, pending_provenance = NULL, "
                     "pending_actions = 0",
                     (self.workspace, snap.lineage, snap.serial, provenance, snap.summary))

    # -- locking (reconciler.state.postgres_lock) ------------------------------------------

    def _acquire(self, provenance: Provenance, timeout: float) -> HeldLock:
        """Take the workspace's lock on a new connection, which the session then writes on."""
        conn = self._connect()
        try:
            with self._errors("take the state lock"):
                self._ensure_schema(conn, create=True)
                # An intent guards a create: it must be flushed before `intend` returns even if
                # the server's default skips that (any other setting flushes, or does more).
                # Keepalives end the connection (and so free the lock) of a holder whose
                # machine vanished without closing it, long before the kernel's two-hour
                # default.
                setting = conn.execute("SHOW synchronous_commit").fetchone()
                if setting is not None and setting[0] == "off":
                    conn.execute("SET synchronous_commit TO on")
                conn.execute("SET tcp_keepalives_idle TO 30")
                conn.execute("SET tcp_keepalives_interval TO 10")
                conn.execute("SET tcp_keepalives_count TO 3")
                return self._lock.take(conn, provenance, timeout)
        except BaseException:
            conn.close()
            raise

    def current_lock(self) -> tuple[LockInfo, str | None] | None:
        """The lock holder and why the lock is stale: its process is gone from this host, or
        its heartbeat is older than its lease. None if the advisory lock is free, even if a
        dead holder's lock row remains (the next writer replaces it)."""
        with self._errors("read the state lock"), self._connect() as conn:
            if not self._ensure_schema(conn, create=False):
                return None
            return self._lock.current(conn)

    def force_unlock(self, lock_id: str) -> LockInfo:
        """Release the lock if `lock_id` names it; returns who held it (see
        `AdvisoryLock.force_unlock`)."""
        with self._errors("release the state lock"), self._connect() as conn:
            if not self._ensure_schema(conn, create=False):
                raise StateError(f"{self.describe()}: the state is not locked")
            return self._lock.force_unlock(conn, lock_id)


class _PostgresSession:
    """A write session: each action is one committed statement, durable when the call returns.

    Safe to call from several threads: they take turns on the lock's connection (one round
    trip each)."""

    serial: int
    quick_puts = False  # every write is a round trip to the server

    def __init__(self, backend: PostgresBackend, held: HeldLock, session_id: str,
                 serial: int, provenance: Provenance) -> None:
        self._backend = backend
        self._held = held
        self._session_id = session_id
        self._provenance = provenance
        self.serial = serial
        self._actions = 0
        self._closed = False

    def _record(self, statement: LiteralString, key: DispatchKey, data: object = None,
                **extra: object) -> None:
        self._record_all(statement, [(key, data)], **extra)

    def _record_all(self, statement: LiteralString, items: Sequence[tuple[DispatchKey, object]],
                    **extra: object) -> None:
        """One statement per item, all in one transaction: one commit for the lot."""
        params = [{"ws": self._backend.workspace, "sid": self._session_id, "key": str(key),
                   "data": data, **extra} for key, data in items]
        conn = self._held.conn
        with self._held.guard:
            if self._closed:
                raise StateError("the write session is closed")
            with self._backend._errors("record an action"), (
                    conn.transaction() if len(params) > 1 else contextlib.nullcontext()):
                for one in params:
                    row = conn.execute(statement, one).fetchone()
                    if not row or row[0] != 1:
                        raise LockLost(self._backend.describe(), "record an action")
            self._actions += len(params)

    def put(self, record: Record) -> None:
        """Record a dispatch (stored with `version` = this session's serial); clears its intent."""
        self.put_many([record])

    def put_many(self, records: Sequence[Record]) -> None:
        """`put` for several dispatches in one transaction."""
        self._record_all(PUT, [(r.key, Jsonb(dataclasses.replace(r, version=self.serial)
                                              .to_json())) for r in records],
                         version=self.serial)

    def remove(self, key: DispatchKey) -> None:
        """Forget a dispatch; a key not in the state is not an error."""
        self._record(REMOVE, key)

    def intend(self, intent: Intent) -> None:
        """Durable even across a power loss before it returns: it guards a create."""
        self._record(INTEND, intent.key, Jsonb(intent.to_json()))

    def intend_many(self, intents: Sequence[Intent]) -> None:
        """Several intents in one transaction, so one commit (one WAL flush) for the batch."""
        self._record_all(INTEND, [(i.key, Jsonb(i.to_json())) for i in intents])

    def clear_intent(self, key: DispatchKey) -> None:
        self._record(CLEAR_INTENT, key)

    def commit(self, summary: str) -> Snapshot:
        """Seal the session as its serial in one transaction; with no actions, leave the serial
        alone and return the state as it is.

        Call it once every thread using the session has finished."""
        backend, conn = self._backend, self._held.conn
        with self._held.guard:
            if self._closed:
                raise StateError("the write session is closed")
            with backend._errors("commit the state"), conn.transaction():
                state = backend._state_row(conn, for_update=True)
                if state is None or state.session_id != self._session_id:
                    raise LockLost(backend.describe(), "commit")
                if not state.pending_actions:
                    self._end(conn)
                    snap = backend._load(conn)
                else:
                    snap = backend._rows_snapshot(conn, state.lineage, self.serial,
                                                  self._provenance, summary)
                    backend._seal(conn, snap)
            self._closed = True
            return snap

    def _end(self, conn: Connection) -> None:
        conn.execute("UPDATE reconciler_state SET session_id = NULL, pending_serial = NULL, "
                     "pending_provenance = NULL WHERE workspace = %s AND session_id = %s "
                     "AND pending_actions = 0", (self._backend.workspace, self._session_id))

    def close(self) -> None:
        """End the session; recorded actions not committed stay for the next writer to seal."""
        with self._held.guard:
            if self._closed:
                return
            self._closed = True
            if not self._actions:
                with contextlib.suppress(psycopg.Error):
                    self._end(self._held.conn)
