"""Choosing the API a command talks to: the configured endpoint, or the built-in emulator."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from reconciler.auth import TOKEN_ENV, Auth, CredentialsError, TokenAuth, auth_from_env
from reconciler.cli.console import Context
from reconciler.client import DispatchClient, endpoint_for
from reconciler.iam import DOMAIN_ENV, PASSWORD_ENV, USERNAME_ENV, password_from_env
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
        from reconciler.emulator.api import Emulator  # noqa: PLC0415  (~0.2 s of imports)

        with Emulator(data=data) as local:
            url = local.start()
            with DispatchClient(url, TokenAuth(EMULATOR_TOKEN)) as client:
                yield client
        return
    settings = ctx.settings
    endpoint = endpoint_for(settings.endpoint, settings.region)
    auth = select_auth(settings.auth, ctx.environ, region=settings.region,
                       iam_endpoint=settings.iam_endpoint)
    with DispatchClient(endpoint, auth) as client:
        yield client


def select_auth(method: str | None, environ: Mapping[str, str], *, region: str | None = None,
                iam_endpoint: str | None = None) -> Auth:
    """The credentials to authenticate requests with.

    `method` (the `auth` setting) pins one and then its variables are required. Without it, the
    first complete set found is used, in this order: a token (`RECONCILER_TOKEN`), an access key
    pair (`HUAWEICLOUD_SDK_AK`/`_SK`), an IAM user (`HUAWEICLOUD_SDK_USERNAME`/`_PASSWORD`/
    `_DOMAIN_NAME`); a set only partly given is an error once the search reaches it. The IAM
    endpoint (`iam_endpoint`, else derived from `region`) matters only for the IAM user.
    """
    if method == "token":
        return auth_from_env(environ)
    if method == "aksk":
        aksk = aksk_from_env(environ)
        if aksk is None:
            raise CredentialsError(f"auth: aksk needs {AK_ENV} and {SK_ENV} in the environment")
        return aksk
    if method == "password":
        password = password_from_env(environ, iam_endpoint=iam_endpoint, region=region)
        if password is None:
            raise CredentialsError(f"auth: password needs {USERNAME_ENV}, {PASSWORD_ENV} and "
                                   f"{DOMAIN_ENV} in the environment")
        return password
    if environ.get(TOKEN_ENV, "").strip():
        return auth_from_env(environ)
    aksk = aksk_from_env(environ)
    if aksk is not None:
        return aksk
    password = password_from_env(environ, iam_endpoint=iam_endpoint, region=region)
    if password is not None:
        return password
    raise CredentialsError(f"no API credentials: set {TOKEN_ENV} (an IAM token), "
                           f"{AK_ENV} and {SK_ENV} (an access key pair), or {USERNAME_ENV}, "
                           f"{PASSWORD_ENV} and {DOMAIN_ENV} (an IAM user)")
