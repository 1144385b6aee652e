"""`reconciler plan` and `reconciler show`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconciler import planfile
from reconciler.apply import DispatchApi
from reconciler.cli.api import add_api_arguments, open_api
from reconciler.cli.console import EXIT_CHANGES, EXIT_ERROR, EXIT_OK, Context
from reconciler.cli.validate_cmd import load_or_report
from reconciler.model import Plan
from reconciler.plan import make_plan
from reconciler.provenance import utc_iso
from reconciler.refresh import ReadFailure, read_live
from reconciler.render import markdown, text
from reconciler.state.backends import open_backend
from reconciler.state.base import Snapshot
from reconciler.validate import DesiredState

FORMATS = ("text", "json", "markdown")


def register(commands: Any) -> None:
    plan = commands.add_parser(
        "plan", help="show what apply would do",
        description="Validate the desired files, then compare them with the recorded state.",
    )
    plan.add_argument("--out", metavar="FILE", help="save the plan for `reconciler apply FILE`")
    plan.add_argument("--detailed-exitcode", action="store_true",
                      help="exit 2 when the plan has changes (0: none, 1: error)")
    plan.add_argument("--format", choices=FORMATS, default="text",
                      help="text (default), json (documented, stable) or markdown (PR comment)")
    plan.add_argument("--refresh", action="store_true",
                      help="also read the live dispatch of every desired or recorded task: "
                      "shows import, drift and dispatches deleted outside")
    add_api_arguments(plan)
    plan.set_defaults(handler=cmd_plan)

    show = commands.add_parser("show", help="render a saved plan",
                               description="Render a plan saved with `plan --out`.")
    show.add_argument("planfile", metavar="PLANFILE")
    show.add_argument("--format", choices=FORMATS, default="text")
    show.set_defaults(handler=cmd_show)


def render(ctx: Context, plan: Plan, fmt: str) -> str:
    if fmt == "json":
        return planfile.dumps(plan)
    if fmt == "markdown":
        return markdown.render(plan)
    return text.render(plan, ctx.now(), color=ctx.console.color)


def build_plan(
    ctx: Context, desired: DesiredState, api: DispatchApi | None = None, *,
    snapshot: Snapshot | None = None,
) -> tuple[Plan, list[ReadFailure]]:
    """The plan against `snapshot` (else the state as read now); with `api`, refreshed with the
    live dispatch of every desired or recorded key.

    Keys whose live dispatch could not be read are returned apart (and printed); they are
    planned from the recorded state alone.
    """
    if snapshot is None:
        snapshot = open_backend(ctx.settings).read()
    live = None
    failures: list[ReadFailure] = []
    if api is not None:
        keys = {s.key for s in desired.schedules} | set(snapshot.records)
        live, failures = read_live(api, keys, ctx.settings.parallelism)
        for failure in failures:
            ctx.console.error(f"error: cannot read the live dispatch of {failure}")
    plan = make_plan(
        desired.schedules,
        snapshot,
        desired_digest=planfile.desired_digest(desired.files),
        created_at=utc_iso(ctx.now()),
        remote=live,
    )
    return plan, failures


def cmd_plan(ctx: Context) -> int:
    desired = load_or_report(ctx)
    if desired is None:
        return EXIT_ERROR
    if ctx.args.refresh:
        with open_api(ctx) as api:
            plan, failures = build_plan(ctx, desired, api)
    else:
        plan, failures = build_plan(ctx, desired)
    ctx.console.print(render(ctx, plan, ctx.args.format), end="")
    if ctx.args.out:
        out = ctx.settings.base / ctx.args.out
        planfile.save(plan, out)
        ctx.console.info(f"Saved the plan to {ctx.args.out}; apply it with "
                         f"`reconciler apply {ctx.args.out}`.")
    if failures:
        ctx.console.error(f"{len(failures)} live dispatches could not be read; the plan used "
                          "the recorded state for them.")
        return EXIT_ERROR
    if ctx.args.detailed_exitcode and plan.has_changes:
        return EXIT_CHANGES
    return EXIT_OK


def cmd_show(ctx: Context) -> int:
    plan = planfile.load(ctx.settings.base / Path(ctx.args.planfile))
    ctx.console.print(render(ctx, plan, ctx.args.format), end="")
    return EXIT_OK
