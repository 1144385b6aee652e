"""Choosing the API a command talks to: the configured endpoint, or the built-in emulator."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from reconciler import emulator
from reconciler.auth import TokenAuth, auth_from_env
from reconciler.cli.console import Context
from reconciler.client import DispatchClient, endpoint_for

EMULATOR_DATA = ".reconciler/emulator.json"
EMULATOR_TOKEN = "emulator"  # noqa: S105 - the built-in emulator accepts any token


def add_api_arguments(parser: Any) -> None:
    parser.add_argument("--emulator", action="store_true",
                        help="talk to a built-in emulator of the API (data in "
                        f"{EMULATOR_DATA}), to try things without a cloud account")


@contextlib.contextmanager
def open_api(ctx: Context) -> Iterator[DispatchClient]:
    """The API client: the built-in emulator with --emulator, else the configured endpoint."""
    if ctx.args.emulator:
        data = ctx.settings.base / EMULATOR_DATA
        data.parent.mkdir(parents=True, exist_ok=True)
        with emulator.Emulator(data=data) as local:
            url = local.start()
            with DispatchClient(url, TokenAuth(EMULATOR_TOKEN)) as client:
                yield client
        return
    endpoint = endpoint_for(ctx.settings.endpoint, ctx.settings.region)
    with DispatchClient(endpoint, auth_from_env(ctx.environ)) as client:
        yield client
