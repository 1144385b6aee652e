"""The PostgreSQL backend's SQL: its schema, as migrations, and the statements of a session."""

from __future__ import annotations

from typing import LiteralString

MIGRATIONS: tuple[LiteralString, ...] = (
    # 1: the initial schema.
    """
    CREATE TABLE reconciler_state (
        workspace text PRIMARY KEY,
        lineage text NOT NULL,
        serial bigint NOT NULL DEFAULT 0,
        provenance jsonb,
        summary text NOT NULL DEFAULT '',
        session_id text,
        pending_serial bigint,
        pending_provenance jsonb,
        pending_actions bigint NOT NULL DEFAULT 0,
        CHECK (pending_actions = 0 OR pending_serial IS NOT NULL)
    ) WITH (fillfactor = 50);
    -- every action bumps pending_actions: the free space keeps those updates HOT, on one page

    CREATE TABLE reconciler_dispatch (
        workspace text NOT NULL,
        key text NOT NULL,
        record jsonb NOT NULL,
        version bigint NOT NULL,
        PRIMARY KEY (workspace, key)
    );

    CREATE TABLE reconciler_intent (
        workspace text NOT NULL,
        key text NOT NULL,
        intent jsonb NOT NULL,
        PRIMARY KEY (workspace, key)
    );

    CREATE TABLE reconciler_history (
        workspace text NOT NULL,
        serial bigint NOT NULL,
        provenance jsonb,
        summary text NOT NULL,
        records integer NOT NULL,
        snapshot bytea NOT NULL,
        sealed_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (workspace, serial)
    );
    -- already gzip-compressed: TOAST's own compression would only spend CPU on it
    ALTER TABLE reconciler_history ALTER COLUMN snapshot SET STORAGE EXTERNAL;

    CREATE TABLE reconciler_lock (
        workspace text PRIMARY KEY,
        lock_id text NOT NULL,
        operation text NOT NULL,
        who text NOT NULL,
        host text NOT NULL,
        pid integer NOT NULL,
        ci_job text,
        created text NOT NULL,
        heartbeat text NOT NULL,
        lease_seconds double precision NOT NULL,
        backend_pid integer NOT NULL
    );
    """,
)
"""The schema, as migrations applied in order; append to it, never edit an applied one."""


# -- a session's actions: in each, `s` counts the action only if the state row still names this
# session (the fence); the data changes that follow run only if `s` did (`FROM s`, `EXISTS
# (SELECT FROM s)`), and `count(*)` tells which.

def _fenced(*changes: LiteralString) -> LiteralString:
    """The fence, then `changes` as the CTEs after it. Only this module's literals go in, never
    a runtime value: values travel as the statement's %(name)s parameters."""
    head: LiteralString = """
    WITH s AS (
        UPDATE reconciler_state SET pending_actions = pending_actions + 1
        WHERE workspace = %(ws)s AND session_id = %(sid)s
        RETURNING 1
    )"""
    ctes: LiteralString = "".join(changes)
    return head + ctes + "\n    SELECT count(*) FROM s"  # noqa: S608 - constants only


PUT = _fenced(
    """,
    i AS (
        DELETE FROM reconciler_intent
        WHERE workspace = %(ws)s AND key = %(key)s AND EXISTS (SELECT FROM s)
    )""",
    """,
    d AS (
        INSERT INTO reconciler_dispatch (workspace, key, record, version)
        SELECT %(ws)s, %(key)s, %(data)s, %(version)s FROM s
        ON CONFLICT (workspace, key)
        DO UPDATE SET record = EXCLUDED.record, version = EXCLUDED.version
    )""")

REMOVE = _fenced(""",
    d AS (
        DELETE FROM reconciler_dispatch
        WHERE workspace = %(ws)s AND key = %(key)s AND EXISTS (SELECT FROM s)
    )""")

INTEND = _fenced(""",
    d AS (
        INSERT INTO reconciler_intent (workspace, key, intent)
        SELECT %(ws)s, %(key)s, %(data)s FROM s
        ON CONFLICT (workspace, key) DO UPDATE SET intent = EXCLUDED.intent
    )""")

CLEAR_INTENT = _fenced(""",
    d AS (
        DELETE FROM reconciler_intent
        WHERE workspace = %(ws)s AND key = %(key)s AND EXISTS (SELECT FROM s)
    )""")

HOLDER_PID: LiteralString = """
    SELECT pid FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 1
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND classid::bigint = %s AND objid::bigint = %s
    LIMIT 1"""
