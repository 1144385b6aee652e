"""Choosing the API a command talks to: the configured endpoint, or the built-in emulator."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from reconciler import emulator
from reconciler.auth import TOKEN_ENV, Auth, CredentialsError, TokenAuth, auth_from_env
from reconciler.cli.console import Context
from reconciler.client import DispatchClient, endpoint_for
from reconciler.signer import AK_ENV, SK_ENV, aksk_from_env

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
    with DispatchClient(endpoint, select_auth(ctx.settings.auth, ctx.environ)) as client:
        yield client


def select_auth(method: str | None, environ: Mapping[str, str]) -> Auth:
    """The credentials to sign requests with: `auth` from the settings, else the first found of
    a token (`RECONCILER_TOKEN`) and an AK/SK pair (`HUAWEICLOUD_SDK_AK`/`_SK`)."""
    if method == "token":
        return auth_from_env(environ)
    aksk = aksk_from_env(environ)
    if method == "aksk":
        if aksk is None:
            raise CredentialsError(f"auth: aksk needs {AK_ENV} and {SK_ENV} in the environment")
        return aksk
    if environ.get(TOKEN_ENV):
        return auth_from_env(environ)
    if aksk is not None:
        return aksk
    raise CredentialsError(f"no API credentials: set {TOKEN_ENV} (an IAM token), or "
                           f"{AK_ENV} and {SK_ENV} (an access key pair)")
