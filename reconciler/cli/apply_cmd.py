"""`reconciler apply` and `reconciler emulator`."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Self

from reconciler import config, planfile, provenance
from reconciler.apply import ActionResult, Applier, Progress, summarise
from reconciler.cli.api import add_api_arguments, open_api
from reconciler.cli.console import EXIT_ERROR, EXIT_OK, Context, UsageError
from reconciler.cli.plan_cmd import build_plan, render
from reconciler.cli.state_cmd import add_lock_timeout
from reconciler.cli.validate_cmd import load_or_report
from reconciler.emulator import cli as emulator_cli
from reconciler.model import ReconcilerError
from reconciler.render.text import summary_line
from reconciler.state.backends import open_backend


def register(commands: Any) -> None:
    apply = commands.add_parser(
        "apply", help="create and update dispatches so the API matches the desired files",
        description="Execute a fresh plan (shown first; asks for 'yes' on a terminal unless "
        "--auto-approve) or a plan saved with `plan --out`. Re-running after any failure or "
        "crash does only what is still missing.",
    )
    apply.add_argument("planfile", nargs="?", metavar="PLANFILE",
                       help="a saved plan; refused if stale")
    apply.add_argument("--auto-approve", action="store_true",
                       help="do not ask for confirmation")
    apply.add_argument("--parallelism", type=_parallelism, metavar="N",
                       help=f"concurrent API calls (default {config.DEFAULT_PARALLELISM})")
    apply.add_argument("--refresh", action="store_true",
                       help="read the live dispatches first: adopt existing ones, revert drift")
    add_api_arguments(apply)
    apply.add_argument("--report", metavar="FILE",
                       help="write one JSON line per action (key, action, request body, HTTP "
                       "status, dispatch id, duration, error) for audit pipelines")
    add_lock_timeout(apply)
    apply.set_defaults(handler=cmd_apply)

    serve = commands.add_parser(
        "emulator", help="serve a local FDI dispatch API for trying apply and for tests",
        description="A local emulator of the ROMA Connect FDI dispatch API: POST/GET/PUT with "
        "the documented validation and error codes, a token check, optional persistence, "
        "latency and fault injection.",
    )
    emulator_cli.add_arguments(serve)
    serve.set_defaults(handler=cmd_emulator)


def _parallelism(text: str) -> int:
    return config.parse_parallelism(text, "--parallelism")


def _confirm(ctx: Context) -> bool:
    if ctx.args.auto_approve or ctx.args.planfile:
        return True
    if not ctx.console.interactive:
        raise UsageError("refusing to apply without confirmation: stdin is not a terminal; "
                         "review the plan and pass --auto-approve, or apply a saved plan")
    ctx.console.print("\nDo you want to apply these changes? Only 'yes' will be accepted.")
    ctx.console.print("  Enter a value: ", end="")
    ctx.console.out.flush()
    answer = sys.stdin.readline().strip()
    if answer != "yes":
        ctx.console.error("Apply cancelled.")
        return False
    return True


def cmd_apply(ctx: Context) -> int:
    desired = load_or_report(ctx)
    if desired is None:
        return EXIT_ERROR
    digest = planfile.desired_digest(desired.files)
    saved = planfile.load(ctx.settings.base / Path(ctx.args.planfile)) if ctx.args.planfile \
        else None
    reporter = _Reporter(ctx, ctx.settings.base / ctx.args.report if ctx.args.report else None)
    backend = open_backend(ctx.settings)
    who = provenance.current("apply", ctx.environ, ctx.now(), ctx.settings.base)
    # The lock before anything is planned or asked: nobody approves a plan only to meet a held
    # lock, and no other run can change the state between the plan shown and its execution.
    with reporter, contextlib.ExitStack() as api_scope, backend.write_session(
        who, lock_timeout=ctx.args.lock_timeout
    ) as session:
        current = backend.read()
        api = None
        if saved is not None:
            planfile.check_fresh(saved, current, digest)
            plan = saved
        else:
            if ctx.args.refresh:
                api = api_scope.enter_context(open_api(ctx))
            plan, failures = build_plan(ctx, desired, api, snapshot=current)
            if failures:
                ctx.console.error(f"{len(failures)} live dispatches could not be read; nothing "
                                  "was applied.")
                return EXIT_ERROR
        if saved is None:
            # --quiet keeps the summary line: enough in CI logs where the plan was reviewed.
            shown = summary_line(plan) + "\n" if ctx.console.quiet else render(ctx, plan, "text")
            ctx.console.print(shown, end="")
        if not plan.has_changes:
            if saved is not None:
                ctx.console.print("No changes in the saved plan.")
            return EXIT_OK
        if api is None:  # credentials and endpoint are checked before anyone is asked
            api = api_scope.enter_context(open_api(ctx))
        if not _confirm(ctx):
            return EXIT_ERROR
        # Records say when they were applied: not when the command started, which a wait for
        # the lock or for someone's 'yes' may have put minutes back.
        applying = replace(who, time=provenance.utc_iso(ctx.now()))
        applier = Applier(api, session, applying, parallelism=ctx.args.parallelism
                          or ctx.settings.parallelism, on_result=reporter)
        results = applier.run(plan.actions, set(current.intents))
        reporter.finish()
        summary = summarise(results)
        try:
            sealed = session.commit(f"apply: {summary}")
        except ReconcilerError:
            # The summary still: the API calls were made, and the records written so far are
            # sealed by the next run (the error below says why this one could not).
            ctx.console.error(f"Apply finished, but its state could not be sealed: {summary}.")
            raise
    failed = [r for r in results if not r.ok]
    line = f"Apply {'finished with errors' if failed else 'complete'}: {summary}."
    (ctx.console.error if failed else ctx.console.print)(line)
    ctx.console.info(f"State serial {sealed.serial} ({backend.describe()}).")
    return EXIT_ERROR if failed else EXIT_OK


class _Reporter:
    """One line per finished action; a live progress line on a terminal; the --report file.

    Report lines are written and flushed as results arrive, so a killed run keeps them.
    """

    def __init__(self, ctx: Context, report: Path | None) -> None:
        self.console = ctx.console
        self.live = ctx.console.interactive and not ctx.console.quiet
        self.shown = False
        self.report = None
        if report is not None:
            # Opened before the lock is taken: a report that cannot be written stops the run
            # before anything is applied.
            try:
                self.report = report.open("a", encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"--report {ctx.args.report}: cannot write "
                                 f"({exc.strerror or exc})") from None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.report is not None:
            self.report.close()

    def __call__(self, result: ActionResult, progress: Progress) -> None:
        action = result.action
        if self.report is not None:
            self.report.write(json.dumps(report_line(result), sort_keys=True) + "\n")
            self.report.flush()
        if self.live and self.shown:
            self.console.err.write("\r\033[K")
        if result.ok:
            if not self.console.quiet:
                self.console.print(f"  {result.outcome} {action.name} ({action.key}): "
                                   f"dispatch {result.dispatch_id} [{result.duration:.2f}s]")
        else:
            self.console.error(f"  {result.outcome} {action.kind.value} {action.name} "
                               f"({action.key}): {result.error}")
        if self.live:
            self.console.err.write(f"[{progress.done}/{progress.total}] {progress.failed} failed, "
                                   f"{progress.rate:.1f}/s")
            self.console.err.flush()
            self.shown = True

    def finish(self) -> None:
        if self.live and self.shown:
            self.console.err.write("\r\033[K")
        if self.report is not None:
            self.report.close()  # and with that, any error of its last write


def report_line(result: ActionResult) -> dict[str, Any]:
    """One action for audit pipelines; bodies are what was sent, which holds no secrets."""
    action = result.action
    return {
        "key": str(action.key),
        "name": action.name,
        "action": action.kind.value,
        "outcome": result.outcome,
        "ok": result.ok,
        "request_body": action.after.body() if action.after is not None else None,
        "calls": list(result.calls),
        # A successful call is a 200 (the API's only success status); failures carry theirs.
        "http_status": result.status if result.status is not None
        else (200 if result.ok and result.calls else None),
        "dispatch_id": result.dispatch_id,
        "duration_s": round(result.duration, 4),
        "error": result.error,
    }


def cmd_emulator(ctx: Context) -> int:
    return emulator_cli.run_from_args(ctx.args, ctx.console.out)
