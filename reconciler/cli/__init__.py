"""Command line: argument parsing, settings, exit codes. The only package that prints.

Exit codes, for every command: 0 success, 1 any error (usage errors included: argparse's 2 is
turned into 1), 2 only for "succeeded, changes present" with --detailed-exitcode.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn, TextIO

from reconciler import __version__, config
from reconciler.cli import apply_cmd, import_cmd, plan_cmd, state_cmd, validate_cmd
from reconciler.cli.console import (
    EXIT_ERROR,
    EXIT_OK,
    Console,
    Context,
    Handler,
    Parser,
    UsageError,
)
from reconciler.model import ReconcilerError


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="reconciler",
        description="Schedule-as-code for ROMA Connect FDI task dispatches: "
        "validate desired YAML, plan against recorded state, apply.",
    )
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    parser.add_argument("-C", dest="directory", metavar="DIR",
                        help="run as if started in DIR")
    parser.add_argument("--config", metavar="FILE",
                        help=f"settings file (default: ./{config.CONFIG_NAME} if present)")
    parser.add_argument("--no-color", action="store_true",
                        help="no colour in output (also when NO_COLOR is set)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only what matters")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="more detail; tracebacks on internal errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    validate_cmd.register(commands)
    plan_cmd.register(commands)
    apply_cmd.register(commands)
    import_cmd.register(commands)
    state_cmd.register(commands)
    _accept_global_options_after_commands(parser)
    return parser


def _accept_global_options_after_commands(parser: argparse.ArgumentParser) -> None:
    """`reconciler plan --no-color` works like `reconciler --no-color plan`, as users expect.

    SUPPRESS defaults keep a value given before the command from being reset by the subparser.
    """
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for sub in action.choices.values():
            sub.add_argument("-C", dest="directory", metavar="DIR", default=argparse.SUPPRESS,
                             help=argparse.SUPPRESS)
            sub.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                             help=argparse.SUPPRESS)
            for flags, dest in ((("--no-color",), "no_color"), (("-q", "--quiet"), "quiet"),
                                (("-v", "--verbose"), "verbose")):
                sub.add_argument(*flags, dest=dest, action="store_true",
                                 default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            _accept_global_options_after_commands(sub)


def run() -> NoReturn:
    """The `reconciler` command: `main` in a process of its own, which it then ends."""
    _collect_less()
    _leave(main())


def _leave(code: int) -> NoReturn:
    """End the process once the standard streams and the log are flushed, without tearing the
    interpreter down.

    When `main` returns, what a command wrote is on disk (synced, its files closed) and its
    threads have ended; what is left is to free every object one by one and unload every
    module, which took 15-20 ms after an apply of 1,000 creates (mypy ends its runs the same
    way). Output that cannot be flushed makes the exit code 1: silently when its reader has
    gone (a closed pipe), as inside `main`, with one line for any other failure (a full disk).
    Under a profiler, a tracer or coverage, the interpreter is left to end as usual: they write
    their results at exit.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # ValueError: the stream was closed
            code = EXIT_ERROR
        except OSError as exc:
            code = EXIT_ERROR
            with contextlib.suppress(OSError):
                os.write(2, f"error: cannot write the output: {exc.strerror or exc}\n".encode())
    logging.shutdown()
    if sys.gettrace() is not None or sys.getprofile() is not None or "coverage" in sys.modules:
        sys.exit(code)
    os._exit(code)


def _collect_less() -> None:
    """Tune the cyclic garbage collector for one command's process.

    A command builds its objects (schedules, specs, records, requests) and keeps most of them to
    the end; few form cycles. With the default thresholds, an apply of 1,000 creates ran about
    50 collections, one of them full, traversing every object the imports made as well: 45 to
    60 ms of a 0.8 s run. Freezing what exists after the imports (the collector then skips it)
    and collecting the young generation every 10,000 allocations rather than 700 brought that
    to about 7 ms. Garbage without cycles is freed by reference counting as always.
    """
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(10_000, middle, old)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    now: Callable[[], datetime] = _utc_now,
) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    env = os.environ if environ is None else environ
    verbose = False
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help and --version exit through argparse
            return EXIT_OK if exc.code in (0, None) else EXIT_ERROR
        verbose = args.verbose
        base = Path(args.directory) if args.directory else Path.cwd()
        if not base.is_dir():
            raise UsageError(f"-C {args.directory}: not a directory")
        tty = hasattr(out, "isatty") and out.isatty()
        # no-color.org: NO_COLOR counts when set and not empty. A dumb terminal shows escape
        # codes as text.
        color = (not args.no_color and not env.get("NO_COLOR") and env.get("TERM") != "dumb"
                 and tty)
        interactive = tty and hasattr(sys.stdin, "isatty") and sys.stdin.isatty()
        console = Console(out, err, color, args.quiet, args.verbose, interactive)
        settings = config.load_settings(base, args.config, env)
        handler: Handler = args.handler
        return handler(Context(args, settings, console, env, now))
    except config.ConfigError as exc:
        err.write(f"{exc}\n")
        return EXIT_ERROR
    except ReconcilerError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        # 1, not the shell's 130: the exit codes are 0, 1 and 2 for every command, and CI
        # scripts test for them. What a run recorded before is kept; a rerun does the rest.
        err.write("interrupted\n")
        return EXIT_ERROR
    except BrokenPipeError:
        return EXIT_ERROR
    except Exception as exc:  # a bug: one line for users, the traceback with -v
        if verbose:
            raise
        err.write(f"internal error: {type(exc).__name__}: {exc} (run with -v for details)\n")
        return EXIT_ERROR
