"""`reconciler validate` and `reconciler schema`."""

from __future__ import annotations

from typing import Any

from reconciler.cli.console import EXIT_ERROR, EXIT_OK, Context
from reconciler.render import problems as render_problems
from reconciler.schema import schema_text
from reconciler.validate import DesiredState, load_desired


def register(commands: Any) -> None:
    validate = commands.add_parser(
        "validate", help="check desired files: YAML, JSON Schema, cron, zones, ranges",
        description="Load and check the desired files: no state, no network. "
        "Every problem of every file is reported as FILE:LINE:COL: message.",
    )
    validate.add_argument("paths", nargs="*", metavar="PATH",
                          help="files or directories (default: schedules/ or the config's)")
    validate.add_argument("--format", choices=("text", "json", "github", "sarif"),
                          default="text", help="text (default), json, github annotations, "
                          "or a SARIF 2.1.0 log")
    validate.set_defaults(handler=cmd_validate)

    schema = commands.add_parser(
        "schema", help="print the JSON Schema of desired files",
        description="Print the JSON Schema (for editors: yaml-language-server $schema).",
    )
    schema.set_defaults(handler=cmd_schema)


def load_or_report(ctx: Context, paths: tuple[str, ...] = ()) -> DesiredState | None:
    """Desired state for commands that go on to plan; problems are printed, None returned."""
    state = load_desired(paths or ctx.settings.schedules, ctx.settings.base)
    if state.problems:
        ctx.console.err.write(render_problems.text(state.problems))
        ctx.console.error(render_problems.summary(len(state.files), state.entries,
                                                  len(state.problems)))
        return None
    return state


def cmd_validate(ctx: Context) -> int:
    paths = tuple(ctx.args.paths) or ctx.settings.schedules
    state = load_desired(paths, ctx.settings.base)
    fmt = ctx.args.format
    problems = state.problems
    if fmt == "json":
        ctx.console.print(render_problems.as_json(problems, len(state.files),
                                                  state.entries), end="")
    elif fmt == "github":
        ctx.console.print(render_problems.github(problems), end="")
    elif fmt == "sarif":
        ctx.console.print(render_problems.sarif(problems), end="")
    else:
        ctx.console.err.write(render_problems.text(problems))
        line = render_problems.summary(len(state.files), state.entries, len(problems))
        if problems:
            ctx.console.error(line)
        elif not ctx.console.quiet:
            ctx.console.print(line)
    return EXIT_ERROR if problems else EXIT_OK


def cmd_schema(ctx: Context) -> int:
    ctx.console.print(schema_text(), end="")
    return EXIT_OK
