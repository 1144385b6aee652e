"""`reconciler import KEY DISPATCH_ID` and `reconciler import --all`: adopt, never create."""

from __future__ import annotations

from typing import Any

from reconciler import provenance
from reconciler.apply import record_of
from reconciler.cli.api import add_api_arguments, open_api
from reconciler.cli.console import EXIT_ERROR, EXIT_OK, Context, UsageError
from reconciler.cli.state_cmd import add_lock_timeout
from reconciler.cli.validate_cmd import load_or_report
from reconciler.client import ApiError
from reconciler.model import DispatchKey, Schedule, is_valid_id
from reconciler.refresh import read_live
from reconciler.state.backends import open_backend


def register(commands: Any) -> None:
    adopt = commands.add_parser(
        "import", help="adopt dispatches that already exist remotely into the state",
        description="Record existing dispatches in the state (GET only, never a create). The "
        "task must be in the desired files. With --all, every desired task that is not "
        "recorded yet and already has a dispatch is adopted.",
    )
    adopt.add_argument("key", nargs="?", metavar="KEY",
                       help="PROJECT/INSTANCE/TASK or the schedule name")
    adopt.add_argument("dispatch_id", nargs="?", metavar="DISPATCH_ID",
                       help="the dispatch id, as a check that the right one is adopted")
    adopt.add_argument("--all", action="store_true", help="adopt every desired task's dispatch")
    add_lock_timeout(adopt)
    add_api_arguments(adopt)
    adopt.set_defaults(handler=cmd_import)


def _find(schedules: tuple[Schedule, ...], text: str) -> Schedule:
    for schedule in schedules:
        if str(schedule.key) == text or schedule.name == text:
            return schedule
    if text.count("/") == 2:
        DispatchKey.parse(text)  # a malformed key gets its own message
    raise UsageError(f"{text} is not in the desired files; add its schedule first, then import")


def cmd_import(ctx: Context) -> int:
    args = ctx.args
    if args.all == bool(args.key):
        raise UsageError("give KEY and DISPATCH_ID, or --all")
    if args.key and (args.dispatch_id is None or not is_valid_id(args.dispatch_id)):
        raise UsageError("DISPATCH_ID is required: 1-64 of [A-Za-z0-9_-]")
    desired = load_or_report(ctx)
    if desired is None:
        return EXIT_ERROR
    backend = open_backend(ctx.settings)
    recorded = backend.read().records
    if args.all:
        wanted = [s for s in desired.schedules if s.key not in recorded]
    else:
        schedule = _find(desired.schedules, args.key)
        if schedule.key in recorded:
            raise UsageError(f"{schedule.name} ({schedule.key}) is already recorded with "
                             f"dispatch {recorded[schedule.key].dispatch_id}")
        wanted = [schedule]
    with open_api(ctx) as api:
        live, failures = read_live(api, [s.key for s in wanted], ctx.settings.parallelism)
    for failure in failures:
        ctx.console.error(f"error: cannot read the live dispatch of {failure}")
    found = [(s, live[s.key]) for s in wanted if live.get(s.key) is not None]
    if not args.all:
        if failures:
            return EXIT_ERROR
        if not found:
            raise ApiError(f"task {wanted[0].key} has no dispatch to import", method="GET",
                           key=wanted[0].key)
        if found[0][1] is not None and found[0][1].dispatch_id != args.dispatch_id:
            raise UsageError(f"task {wanted[0].key} has dispatch {found[0][1].dispatch_id}, "
                             f"not {args.dispatch_id}; nothing was imported")
    who = provenance.current("import", ctx.environ, ctx.now(), ctx.settings.base)
    with backend.write_session(who, lock_timeout=args.lock_timeout) as session:
        current = backend.read().records
        adopted = []
        for schedule, dispatch in found:
            if dispatch is None or schedule.key in current:
                continue
            source = f"{schedule.location.file}:{schedule.location.line}"
            session.put(record_of(schedule.key, schedule.name, source, dispatch, provenance=who))
            adopted.append((schedule, dispatch))
            ctx.console.print(f"  imported {schedule.name} ({schedule.key}): dispatch "
                              f"{dispatch.dispatch_id}")
        names = ", ".join(s.name for s, _ in adopted[:20])
        sealed = session.commit(f"import: {len(adopted)} adopted" + (f": {names}" if names
                                                                     else ""))
    missing = len(wanted) - len(found) - len(failures)
    ctx.console.print(f"Imported {len(adopted)}." + (
        f" {missing} desired tasks have no dispatch yet (apply will create them)."
        if args.all and missing else ""))
    if adopted:
        ctx.console.info(f"State serial {sealed.serial}. Run `reconciler plan` to see whether "
                         "they match the desired schedules.")
    return EXIT_ERROR if failures else EXIT_OK
