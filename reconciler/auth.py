"""Authentication of API requests.

An `Auth` adds its headers to a fully built `httpx.Request` just before it is sent, once per
attempt: a signer (AK/SK) needs the final method, URL, headers and body, and a fresh date on every
retry. Secrets stay inside the `Auth` object: its repr never shows them.

Three kinds: `TokenAuth` here (a token given by the user), `reconciler.signer.AkSkAuth` (an access
key pair) and `reconciler.iam.PasswordAuth` (an IAM user's password, exchanged for tokens).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from reconciler.model import ReconcilerError

if TYPE_CHECKING:  # annotations only: the emulator loads this module, and needs no httpx
    import httpx

TOKEN_ENV = "RECONCILER_TOKEN"  # noqa: S105  (a variable name, not a secret)
_PROJECT_PATH = re.compile(r"/v2/([A-Za-z0-9_-]{1,64})/")


def project_in(request: httpx.Request) -> str | None:
    """The project a request is for, as its path names it (`/v2/{project_id}/...`)."""
    match = _PROJECT_PATH.search(request.url.path)
    return match.group(1) if match is not None else None


class CredentialsError(ReconcilerError):
    """No usable credentials; the message names what to set, never a secret value."""


class Auth(Protocol):
    @property
    def refused_hint(self) -> str:
        """What to check when the API refuses the credentials (401/403), fit to append to the
        error message; names variables, never values."""

    def ready(self, request: httpx.Request) -> bool:
        """Whether `apply(request)` runs at once, without waiting on the network (for a token
        from IAM, say). When it would wait, the client calls it from a worker thread, so that
        the event loop and the other requests in flight go on meanwhile."""

    def apply(self, request: httpx.Request) -> None:
        """Add the authentication headers to `request` (called for every attempt)."""

    def invalidate(self, request: httpx.Request) -> bool:
        """The API refused `request` (401): forget what it was sent with. True when another
        attempt would carry different credentials (a renewed token), so it is worth making."""


class TokenAuth:
    """An IAM token sent as `X-Auth-Token` (the `X-Subject-Token` IAM returned)."""

    __slots__ = ("_token",)
    refused_hint = (f"check {TOKEN_ENV}: is the IAM token valid, unexpired and scoped to this "
                    "project?")

    def __init__(self, token: str) -> None:
        token = token.strip()
        if not token:
            raise CredentialsError("the IAM token is empty")
        # Checked here so that no lower layer ever builds an error message quoting the header.
        if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
            raise CredentialsError(
                "the IAM token contains spaces, control or non-ASCII characters; "
                "it must be the X-Subject-Token value returned by IAM"
            )
        self._token = token

    def ready(self, request: httpx.Request) -> bool:
        return True

    def apply(self, request: httpx.Request) -> None:
        request.headers["X-Auth-Token"] = self._token

    def invalidate(self, request: httpx.Request) -> bool:
        return False  # the user's token is all there is

    def __repr__(self) -> str:
        return "TokenAuth(token=***)"


def auth_from_env(environ: Mapping[str, str]) -> Auth:
    """The credentials found in the environment; CredentialsError when there are none."""
    token = environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise CredentialsError(
            f"no API credentials: set {TOKEN_ENV} to an IAM token "
            "(the X-Subject-Token header of POST https://iam.{region}.myhuaweicloud.com"
            "/v3/auth/tokens)"
        )
    try:
        return TokenAuth(token)
    except CredentialsError as exc:
        raise CredentialsError(f"{TOKEN_ENV}: {exc}") from None
