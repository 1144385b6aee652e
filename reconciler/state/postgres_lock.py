"""The postgres backend's lock: one writer per workspace across every machine, its holder named.

The lock itself is a session-level advisory lock on the workspace's key, so the server frees it
when the holder's connection ends, whatever ended it. A row of `reconciler_lock` names the
holder (id, user, host, pid, operation, CI job, times, and the server process of its
connection), kept fresh by a heartbeat every lease/4; a row whose server process no longer
holds the advisory lock is a dead holder's, and the next holder replaces it. The lock's
connection is also the one the session writes on (see `reconciler.state.postgres`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg

from reconciler.provenance import utc_iso
from reconciler.state.base import LockHeld, LockInfo, Provenance, StateError, current_user
from reconciler.state.heartbeat import Heartbeat
from reconciler.state.postgres_sql import HOLDER_PID

Connection = psycopg.Connection[tuple[Any, ...]]

UNKNOWN_LOCK_ID = "unknown"
"""The id reported when the advisory lock is held by a connection that wrote no lock row;
`force_unlock` accepts it."""

TERMINATE_WAIT_SECONDS = 10.0
"""How long `force_unlock` waits for the server to end the holder's connection."""


def lock_key(workspace: str) -> int:
    """The advisory lock key of a workspace: 64 bits of a hash, so collisions with other
    workspaces or other applications' keys are negligible."""
    digest = hashlib.sha256(f"reconciler state {workspace}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def one_line(error: BaseException, secret: str | None) -> str:
    """A database error's message on one line, without the password."""
    text = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if secret:
        text = text.replace(secret, "***")
    return text or type(error).__name__


class AdvisoryLock:
    """The lock of `workspace`, taken, read and forced on connections the backend opens;
    `where` names the state in messages, `secret` is masked in them."""

    def __init__(self, workspace: str, *, now: Callable[[], datetime], host: str, pid: int,
                 lease_seconds: float, where: str, secret: str | None) -> None:
        self.workspace = workspace
        self.now = now
        self.host = host
        self.pid = pid
        self.lease_seconds = lease_seconds
        self.key = lock_key(workspace)
        self._where = where
        self._secret = secret

    def take(self, conn: Connection, provenance: Provenance, timeout: float) -> HeldLock:
        """Take the advisory lock on `conn`, polling up to `timeout` s (LockHeld naming the
        holder after that), and write the lock row, replacing one a dead holder left."""
        deadline = time.monotonic() + timeout
        while not self._try(conn):
            held = self.current(conn)
            remaining = deadline - time.monotonic()
            if held is not None and remaining <= 0:
                raise LockHeld(*held)
            time.sleep(max(0.0, min(0.05, remaining)))
        stamp = utc_iso(self.now())
        info = LockInfo(str(uuid.uuid4()), provenance.operation, current_user(), self.host,
                        self.pid, stamp, stamp, provenance.ci_job)
        with conn.transaction():
            conn.execute("DELETE FROM reconciler_lock WHERE workspace = %s", (self.workspace,))
            conn.execute(
                "INSERT INTO reconciler_lock (workspace, lock_id, operation, who, host, "
                "pid, ci_job, created, heartbeat, lease_seconds, backend_pid) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, pg_backend_pid())",
                (self.workspace, info.lock_id, info.operation, info.who, info.host,
                 info.pid, info.ci_job, info.created, info.heartbeat, self.lease_seconds))
        return HeldLock(self, conn, info)

    def _try(self, conn: Connection) -> bool:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        return bool(row and row[0])

    def _holder_pid(self, conn: Connection) -> int | None:
        """The server process (backend) holding the workspace's advisory lock, if any."""
        unsigned = self.key & 0xFFFF_FFFF_FFFF_FFFF
        row = conn.execute(HOLDER_PID, (unsigned >> 32, unsigned & 0xFFFF_FFFF)).fetchone()
        return int(row[0]) if row else None

    def current(self, conn: Connection) -> tuple[LockInfo, str | None] | None:
        """The lock holder and why the lock is stale; None if the advisory lock is free, even
        if a dead holder's lock row remains (the next writer replaces it)."""
        holder = self._holder_pid(conn)
        if holder is None:
            return None
        found = self._row(conn)
        if found is None or found[2] != holder:
            # Held, but by a connection that has not written its row (yet): describe the
            # server session; its age turns it stale after a lease like any other.
            row = conn.execute("SELECT usename, coalesce(host(client_addr), 'local socket'), "
                               "backend_start FROM pg_stat_activity WHERE pid = %s",
                               (holder,)).fetchone()
            who, where, since = "unknown", "unknown", utc_iso(self.now())
            if row is not None and row[2] is not None:
                who, where, since = str(row[0]), str(row[1]), utc_iso(row[2])
            info, lease = LockInfo(UNKNOWN_LOCK_ID, "unknown", who, where, 0, since, since), \
                self.lease_seconds
        else:
            info, lease, _ = found
        return info, info.stale_reason(lease=lease, host=self.host, now=self.now())

    def _row(self, conn: Connection) -> tuple[LockInfo, float, int] | None:
        row = conn.execute("SELECT lock_id, operation, who, host, pid, created, heartbeat, "
                           "ci_job, lease_seconds, backend_pid FROM reconciler_lock "
                           "WHERE workspace = %s", (self.workspace,)).fetchone()
        if row is None:
            return None
        info = LockInfo(str(row[0]), str(row[1]), str(row[2]), str(row[3]), int(row[4]),
                        str(row[5]), str(row[6]), row[7])
        return info, float(row[8]), int(row[9])

    def force_unlock(self, conn: Connection, lock_id: str) -> LockInfo:
        """Release the lock if `lock_id` names it; returns who held it.

        The holder's database connection is ended (`pg_terminate_backend`), which frees the
        advisory lock; a holder still running then fails at its next action, and what it had
        recorded is sealed by the next writer. Ending another role's connection needs that role,
        a superuser or membership in `pg_signal_backend`. A lock row left by a dead holder (the
        advisory lock already free) is simply removed."""
        holder = self._holder_pid(conn)
        current = self.current(conn)
        found = self._row(conn)
        if current is not None:
            info = current[0]
        elif found is not None:
            info = found[0]
        else:
            raise StateError(f"{self._where}: the state is not locked")
        if info.lock_id != lock_id:
            raise StateError(f"lock id does not match: held by {info.describe()}")
        if holder is not None and current is not None:
            self._terminate(conn, holder)
        conn.execute("DELETE FROM reconciler_lock WHERE workspace = %s AND lock_id = %s",
                     (self.workspace, lock_id))
        return info

    def _terminate(self, conn: Connection, holder: int) -> None:
        try:
            row = conn.execute("SELECT pg_terminate_backend(%s)", (holder,)).fetchone()
        except psycopg.errors.InsufficientPrivilege as error:
            raise StateError(f"{self._where}: cannot end the lock holder's connection "
                             f"(server process {holder}): {one_line(error, self._secret)}; "
                             "it needs the holder's role, a superuser or pg_signal_backend"
                             ) from None
        if not row or not row[0]:
            return  # already gone
        deadline = time.monotonic() + TERMINATE_WAIT_SECONDS
        while self._holder_pid(conn) == holder:
            if time.monotonic() > deadline:
                raise StateError(f"{self._where}: the lock holder's connection (server "
                                 f"process {holder}) did not end within "
                                 f"{TERMINATE_WAIT_SECONDS:g}s")
            time.sleep(0.02)


class HeldLock:
    """The advisory lock and the one connection holding it, shared by the session's writes and
    a heartbeat thread that refreshes the lock row every lease/4.

    psycopg serialises calls on a connection, but a transaction block spans several; `guard`
    keeps every use (an action, a commit, a heartbeat) whole."""

    def __init__(self, lock: AdvisoryLock, conn: Connection, info: LockInfo) -> None:
        self._lock = lock
        self.conn = conn
        self.info = info
        self.guard = threading.Lock()
        self._heartbeat = Heartbeat(lock.lease_seconds / 4, self._beat)
        self._heartbeat.start()

    def _beat(self) -> bool:
        lock = self._lock
        with self.guard:
            if self._heartbeat.stopped:
                return False
            stamp = utc_iso(lock.now())
            try:
                cursor = self.conn.execute(
                    "UPDATE reconciler_lock SET heartbeat = %s "
                    "WHERE workspace = %s AND lock_id = %s",
                    (stamp, lock.workspace, self.info.lock_id))
            except psycopg.Error:
                return False  # the connection is gone, and the lock with it
            if cursor.rowcount == 0:
                return False  # forced away: never touch the next holder's row
            self.info = dataclasses.replace(self.info, heartbeat=stamp)
            return True

    def release(self) -> None:
        """Stop the heartbeat, remove the lock row and the advisory lock, close the connection.
        A connection already lost (killed, forced away) is not an error here."""
        self._heartbeat.stop()
        with self.guard:
            with contextlib.suppress(psycopg.Error):
                self.conn.execute("DELETE FROM reconciler_lock WHERE workspace = %s AND "
                                  "lock_id = %s", (self._lock.workspace, self.info.lock_id))
                self.conn.execute("SELECT pg_advisory_unlock(%s)", (self._lock.key,))
            self.conn.close()
