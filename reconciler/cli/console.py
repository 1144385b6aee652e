"""What every command handler gets: parsed args, settings, streams, environment, clock."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn, TextIO

from reconciler import config
from reconciler.model import ReconcilerError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2


class UsageError(ReconcilerError):
    pass


class Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; the contract reserves 2 for "changes present"."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see --help)")


@dataclass
class Console:
    """Where output goes and how it looks; tests pass their own streams."""

    out: TextIO
    err: TextIO
    color: bool
    quiet: bool
    verbose: bool
    interactive: bool = False

    def print(self, text: str = "", *, end: str = "\n") -> None:
        self.out.write(text + end)

    def info(self, text: str) -> None:
        """Progress and notes: stderr, silenced by --quiet."""
        if not self.quiet:
            self.err.write(text + "\n")

    def error(self, text: str) -> None:
        self.err.write(text + "\n")


@dataclass(frozen=True)
class Context:
    args: argparse.Namespace
    settings: config.Settings
    console: Console
    environ: Mapping[str, str]
    now: Callable[[], datetime]


Handler = Callable[[Context], int]
