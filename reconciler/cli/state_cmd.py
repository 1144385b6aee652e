"""`reconciler state list|show|rm|history|diff|lock|migrate` and `reconciler force-unlock`."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

from reconciler import audit, config, provenance
from reconciler.argtypes import number_in
from reconciler.cli.console import EXIT_OK, Context, Parser, UsageError
from reconciler.model import DispatchKey
from reconciler.render import diff as render_diff
from reconciler.state.backends import open_backend
from reconciler.state.base import Record, Snapshot
from reconciler.state.migrate import Migration, migrate

# Wrapped by hand: the raw formatter that keeps the examples' layout keeps this one's too.
MIGRATE_DESCRIPTION = """\
Copy the configured state (the source: `state:` in reconciler.yaml and
RECONCILER_STATE_*) with every serial of its history into an empty target,
check the copy serial by serial, and leave the source as it was. The source
is locked during the copy, so no run writes a serial the copy would miss.
Refused when the target already holds a state. Afterwards, point `state:` in
reconciler.yaml at the target.
"""

MIGRATE_EXAMPLES = """\
examples:
  # a local state file into PostgreSQL, workspace "prod"; libpq reads the password from
  # PGPASSWORD or ~/.pgpass, so it is neither in the DSN nor on the command line
  RECONCILER_STATE_DSN="host=db.example.internal dbname=reconciler user=ci" \\
    reconciler state migrate --to postgres --to-workspace prod

  # a PostgreSQL workspace back into a local file (state.backend: postgres configured)
  reconciler state migrate --to local --to-path .reconciler/state.json
"""


MAX_LOCK_TIMEOUT = 24 * 3600.0
"""A day: no CI job waits longer, and a bound keeps `1e308` from overflowing the lock's clock."""
_LOCK_TIMEOUT = number_in(float, 0.0, MAX_LOCK_TIMEOUT, "a number of seconds", "s")


def add_lock_timeout(parser: Any) -> None:
    parser.add_argument("--lock-timeout", type=_LOCK_TIMEOUT, default=0.0, metavar="SECONDS",
                        help="wait this long for another writer's lock (default 0: fail at once)")


def register(commands: Any) -> None:
    state = commands.add_parser("state", help="inspect and edit the recorded state",
                                description="Inspect and edit the recorded state. Every edit "
                                "is a new serial.")
    sub = state.add_subparsers(dest="state_command", metavar="SUBCOMMAND", parser_class=Parser)
    sub.required = True
    listing = sub.add_parser("list", help="one line per recorded dispatch")
    listing.set_defaults(handler=cmd_list)
    show = sub.add_parser("show", help="one recorded dispatch in full (JSON)")
    show.add_argument("key", metavar="KEY", help="PROJECT/INSTANCE/TASK or the schedule name")
    show.set_defaults(handler=cmd_show)
    remove = sub.add_parser("rm", help="forget recorded dispatches (nothing is sent to the API)")
    remove.add_argument("keys", nargs="+", metavar="KEY",
                        help="PROJECT/INSTANCE/TASK or the schedule name")
    add_lock_timeout(remove)
    remove.set_defaults(handler=cmd_rm)
    history = sub.add_parser("history", help="every serial: when, who, what")
    history.set_defaults(handler=cmd_history)
    diff = sub.add_parser(
        "diff", help="audit diff of two state versions (default: previous serial vs current)",
        description="Compare two versions of the state, record by record. A version is a "
        "serial from `state history`, a path to a state file, or git:REV (the state file as "
        "committed at a git revision, read without a checkout). Without versions: the previous "
        "serial against the current state; with one: that version against the current state.",
    )
    diff.add_argument("old", nargs="?", metavar="OLD",
                      help="SERIAL, FILE or git:REV (default: the serial before the current)")
    diff.add_argument("new", nargs="?", metavar="NEW",
                      help="SERIAL, FILE or git:REV (default: the current state)")
    diff.add_argument("--format", choices=("text", "json"), default="text",
                      help="text (default) or json (documented, stable)")
    diff.set_defaults(handler=cmd_diff)
    lock = sub.add_parser(
        "lock", help="show the current lock, if any",
        description="Show who holds the state lock (id, user, host, pid, since when, "
        "operation, CI job) and whether it looks stale: a dead process on this host, or no "
        "heartbeat within its lease.")
    lock.set_defaults(handler=cmd_lock)
    _register_migrate(sub)

    unlock = commands.add_parser(
        "force-unlock", help="release a lock left by a dead process",
        description="Release the state lock with this id (`reconciler state lock` shows it). "
        "Only do this when no run holds it any more. Local backend: the lock file is removed. "
        "Postgres backend: the holder's database session is ended (pg_terminate_backend, which "
        "needs the holder's role, a superuser or pg_signal_backend), which frees its advisory "
        "lock, and its lock-info row is removed; a row left by a holder whose session already "
        "died is simply removed (such a lock is already free). Either way a writer forced "
        "away can no longer commit nor overwrite what the next writer records, and what it had "
        "recorded is sealed by the next writer.")
    unlock.add_argument("lock_id", metavar="LOCK_ID",
                        help="the id `state lock` or the lock error shows")
    unlock.set_defaults(handler=cmd_force_unlock)


def _register_migrate(sub: Any) -> None:
    move = sub.add_parser(
        "migrate", help="copy the state with its history into another backend",
        description=MIGRATE_DESCRIPTION, epilog=MIGRATE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    move.add_argument("--to", required=True, choices=config.BACKENDS,
                      help="the target backend")
    move.add_argument("--to-path", metavar="PATH",
                      help="--to local: the target state file, relative to the project "
                      f"(default: state.path, {config.DEFAULT_STATE_PATH})")
    move.add_argument("--to-dsn", metavar="DSN",
                      help="--to postgres: a libpq connection string or postgresql:// URI "
                      "(default: RECONCILER_STATE_DSN, then state.dsn). Leave the password "
                      "out: libpq reads PGPASSWORD and ~/.pgpass, and a command line is "
                      "visible to other users of the machine")
    move.add_argument("--to-workspace", metavar="NAME",
                      help="--to postgres: the target workspace (default: state.workspace, "
                      "'default')")
    add_lock_timeout(move)
    move.set_defaults(handler=cmd_migrate)


def find_record(snapshot: Snapshot, text: str) -> Record:
    """A record by key, or by schedule name when that is unambiguous."""
    if text.count("/") == 2:
        record = snapshot.records.get(DispatchKey.parse(text))
        if record is None:
            raise UsageError(f"{text} is not in the state")
        return record
    named = [r for r in snapshot.records.values() if r.name == text]
    if len(named) == 1:
        return named[0]
    if not named:
        raise UsageError(f"no recorded dispatch has the key or name {text!r}")
    raise UsageError(f"{len(named)} recorded dispatches are named {text!r}; give the key")


def cmd_list(ctx: Context) -> int:
    snapshot = open_backend(ctx.settings).read()
    if not snapshot.records:
        ctx.console.info("The state records no dispatches.")
        return EXIT_OK
    for key in sorted(snapshot.records):
        record = snapshot.records[key]
        ctx.console.print(f"{key}\t{record.name}\t{record.dispatch_id}\t{record.source}")
    return EXIT_OK


def cmd_show(ctx: Context) -> int:
    snapshot = open_backend(ctx.settings).read()
    record = find_record(snapshot, ctx.args.key)
    document = {"key": str(record.key), **record.to_json()}
    ctx.console.print(json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False))
    return EXIT_OK


def cmd_rm(ctx: Context) -> int:
    backend = open_backend(ctx.settings)
    who = provenance.current("state rm", ctx.environ, ctx.now(), ctx.settings.base)
    with backend.write_session(who, lock_timeout=ctx.args.lock_timeout) as session:
        snapshot = backend.read()
        # One key named twice (by its name and its key, say) is removed once.
        found = {(r := find_record(snapshot, text)).key: r for text in ctx.args.keys}
        records = list(found.values())
        for record in records:
            session.remove(record.key)
        names = ", ".join(f"{r.name} ({r.key})" for r in records)
        sealed = session.commit(f"forgot {len(records)}: {names}")
    for record in records:
        ctx.console.print(f"Removed {record.name} ({record.key}) from the state; "
                          f"dispatch {record.dispatch_id} is left as it is remotely.")
    ctx.console.info(f"State serial {sealed.serial}.")
    return EXIT_OK


def cmd_history(ctx: Context) -> int:
    entries = open_backend(ctx.settings).history()
    if not entries:
        ctx.console.info("No state history yet.")
        return EXIT_OK
    for entry in entries:
        p = entry.provenance
        commit = f" {p.commit[:12]}" if p.commit else ""
        ctx.console.print(f"{entry.serial}\t{p.time}\t{p.operation}\t{p.actor}{commit}\t"
                          f"{entry.summary}")
    return EXIT_OK


def cmd_diff(ctx: Context) -> int:
    result = audit.diff_versions(ctx.args.old, ctx.args.new, open_backend(ctx.settings),
                                 ctx.settings.base, ctx.settings.state_path())
    if ctx.args.format == "json":
        ctx.console.print(render_diff.as_json(result), end="")
    else:
        ctx.console.print(render_diff.text(result, color=ctx.console.color), end="")
    return EXIT_OK


def cmd_lock(ctx: Context) -> int:
    current = open_backend(ctx.settings).current_lock()
    if current is None:
        ctx.console.print("No lock is held.")
        return EXIT_OK
    info, stale = current
    described = info.describe()  # not str.capitalize(): it lower-cases the rest (ids, times)
    ctx.console.print(described[:1].upper() + described[1:] + ".")
    if stale:
        ctx.console.print(f"It looks stale: {stale}. If no run is in progress: "
                          f"reconciler force-unlock {info.lock_id}")
    return EXIT_OK


def cmd_force_unlock(ctx: Context) -> int:
    info = open_backend(ctx.settings).force_unlock(ctx.args.lock_id)
    ctx.console.print(f"Released {info.describe()}.")
    return EXIT_OK


def cmd_migrate(ctx: Context) -> int:
    target_state = _migration_target(ctx)
    source_state = ctx.settings.state
    if _same_state(ctx, source_state, target_state):
        option = "--to-path" if target_state.backend == "local" else "--to-workspace or --to-dsn"
        raise UsageError(f"the target is the configured state itself; give {option} to name "
                         "another")
    if ctx.args.to_dsn and config.dsn_has_password(ctx.args.to_dsn):
        ctx.console.error("warning: --to-dsn holds a password, which other users of this "
                          "machine can see in the process list; prefer PGPASSWORD, ~/.pgpass "
                          "or RECONCILER_STATE_DSN")
    target = open_backend(replace(ctx.settings, state=target_state))
    source = open_backend(ctx.settings)
    who = provenance.current("state migrate", ctx.environ, ctx.now(), ctx.settings.base)
    done = migrate(source, target, who, lock_timeout=ctx.args.lock_timeout)
    if done.copied_before:
        ctx.console.print("Nothing to copy: the target already holds this state.")
    else:
        ctx.console.print(_migration_summary(done))
    ctx.console.print(f"  from {source.describe()}")
    ctx.console.print(f"  to   {target.describe()}")
    ctx.console.print("Verified: the target's state and every serial of its history match the "
                      "source; the source is unchanged.")
    ctx.console.info(_next_step(target_state))
    return EXIT_OK


def _migration_target(ctx: Context) -> config.StateSettings:
    """The target's settings: the configured ones with the backend and --to-* options."""
    args, state = ctx.args, ctx.settings.state
    if args.to == "local":
        if args.to_dsn or args.to_workspace:
            raise UsageError("--to-dsn and --to-workspace are for --to postgres; "
                             "--to local takes --to-path")
        return replace(state, backend="local", path=args.to_path or state.path)
    if args.to_path:
        raise UsageError("--to-path is for --to local; --to postgres takes --to-dsn and "
                         "--to-workspace")
    dsn = args.to_dsn or state.dsn
    if not dsn:
        raise UsageError("--to postgres needs a DSN: --to-dsn DSN, RECONCILER_STATE_DSN, or "
                         "state.dsn in reconciler.yaml")
    if args.to_workspace == "":
        raise UsageError("--to-workspace must be a non-empty name")
    return replace(state, backend="postgres", dsn=dsn,
                   workspace=args.to_workspace or state.workspace)


def _same_state(ctx: Context, source: config.StateSettings,
                target: config.StateSettings) -> bool:
    """Whether both settings name one state. Another spelling of the same database is not
    caught here; `migrate` then finds the target holding the source's lineage and refuses."""
    if source.backend != target.backend:
        return False
    if source.backend == "local":
        base = ctx.settings.base
        return (base / source.path).resolve() == (base / target.path).resolve()
    return (source.dsn, source.workspace) == (target.dsn, target.workspace)


def _migration_summary(done: Migration) -> str:
    def count(number: int, one: str, many: str) -> str:
        return f"{number} {one if number == 1 else many}"

    intents = count(done.intents, "pending create intent", "pending create intents")
    return (f"Migrated state {done.lineage} at serial {done.last_serial}: "
            f"{count(done.records, 'dispatch', 'dispatches')}"
            f"{', ' + intents if done.intents else ''}, "
            f"{count(done.serials, 'history entry', 'history entries')} copied.")


def _next_step(target: config.StateSettings) -> str:
    if target.backend == "local":
        return (f"To use the copy, set `state: {{backend: local, path: {target.path}}}` in "
                "reconciler.yaml. Delete the old state only once nothing uses it any more.")
    return (f"To use the copy, set `state: {{backend: postgres, workspace: "
            f"{target.workspace}}}` in reconciler.yaml and give every runner "
            "RECONCILER_STATE_DSN (its password in PGPASSWORD or ~/.pgpass). Delete the old "
            "state only once nothing uses it any more.")
