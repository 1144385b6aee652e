"""`reconciler state list|show|rm|history|diff|lock` and `reconciler force-unlock`."""

from __future__ import annotations

import json
from typing import Any

from reconciler import audit, provenance
from reconciler.cli.console import EXIT_OK, Context, Parser, UsageError
from reconciler.model import DispatchKey
from reconciler.render import diff as render_diff
from reconciler.state.backends import open_backend
from reconciler.state.base import Record, Snapshot


def add_lock_timeout(parser: Any) -> None:
    parser.add_argument("--lock-timeout", type=float, default=0.0, metavar="SECONDS",
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
    lock = sub.add_parser("lock", help="show the current lock, if any")
    lock.set_defaults(handler=cmd_lock)

    unlock = commands.add_parser("force-unlock", help="release a lock left by a dead process",
                                 description="Remove the state lock with this id. Only do this "
                                 "when no run holds it any more.")
    unlock.add_argument("lock_id", metavar="LOCK_ID")
    unlock.set_defaults(handler=cmd_force_unlock)


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
        records = [find_record(snapshot, text) for text in ctx.args.keys]
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
    ctx.console.print(info.describe().capitalize() + ".")
    if stale:
        ctx.console.print(f"It looks stale: {stale}. If no run is in progress: "
                          f"reconciler force-unlock {info.lock_id}")
    return EXIT_OK


def cmd_force_unlock(ctx: Context) -> int:
    info = open_backend(ctx.settings).force_unlock(ctx.args.lock_id)
    ctx.console.print(f"Released {info.describe()}.")
    return EXIT_OK
