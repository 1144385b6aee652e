"""IAM password authentication: a project-scoped token per project, fetched when first needed.

`auth: password` trades an IAM user's name, password and account (domain) name for a token
(`POST {iam}/v3/auth/tokens`; the token is the `X-Subject-Token` header of the answer) and sends it
as `X-Auth-Token`. A token is scoped to one project and the dispatch API's paths name the project
(`/v2/{project_id}/...`), so there is one token per project id met in the requests, fetched the
first time that project is used and kept until shortly before it expires.

What it promises:
- At most one token request per project at a time (parallel workers wait for it), and none while
  the cached token has more than its refresh margin left to live.
- A refusal is remembered for the rest of the run: a wrong password reaches IAM once, not once per
  dispatch (an account lockout policy may count failed logins).
- The password and the tokens never appear in messages, reprs or logs. The password is sent only
  to the IAM endpoint, over https (plain http only to a loopback address, for the emulator).
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from reconciler import __version__
from reconciler.auth import CredentialsError, TokenAuth, project_in
from reconciler.client import endpoint_for, verifying_context
from reconciler.errorbody import clean, error_fields, redact, short
from reconciler.model import ReconcilerError

log = logging.getLogger(__name__)

USERNAME_ENV = "HUAWEICLOUD_SDK_USERNAME"
PASSWORD_ENV = "HUAWEICLOUD_SDK_PASSWORD"  # noqa: S105  (a variable name, not a secret)
DOMAIN_ENV = "HUAWEICLOUD_SDK_DOMAIN_NAME"
IAM_ENDPOINT_ENV = "RECONCILER_IAM_ENDPOINT"
TOKENS_PATH = "/v3/auth/tokens"
# Refresh this long before `expires_at` (at most half the token's lifetime): a request that
# starts with a token must not see it expire on the way.
REFRESH_MARGIN = 300.0
_HINT = f"check {USERNAME_ENV}, {PASSWORD_ENV} and {DOMAIN_ENV} (the account name)"
_USER, _PASSWORD, _DOMAIN = "user name", "password", "account (domain) name"


class IamError(CredentialsError):
    """IAM did not issue a token. `str()` is one printable line without any secret."""

    def __init__(self, text: str, *, status: int | None = None, code: str | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.code = code
        self.request_id = request_id

    def again(self) -> IamError:
        """A fresh copy to raise in another thread (an exception object carries a traceback)."""
        return IamError(str(self), status=self.status, code=self.code, request_id=self.request_id)


@dataclass(frozen=True, slots=True)
class _Token:
    value: str = field(repr=False)
    refresh_at: float  # on the local clock


def iam_endpoint_for(explicit: str | None, region: str | None) -> str:
    """The IAM base URL: `explicit` when given, else `https://iam.{region}.myhuaweicloud.com`.

    https is required except for loopback hosts. A trailing `/v3` is dropped, so an OpenStack-style
    auth URL (`https://iam.example.com/v3`) works too.
    """
    if explicit and explicit.strip():
        try:
            base = endpoint_for(explicit, None)
        except ReconcilerError as exc:
            raise CredentialsError(f"IAM endpoint: {exc}") from None
        return base.removesuffix("/v3")
    if region:
        endpoint_for(None, region)  # the region's own check and message
        return f"https://iam.{region}.myhuaweicloud.com"
    raise CredentialsError("auth: password needs the IAM endpoint: set `region` (or "
                           f"RECONCILER_REGION), or `iam_endpoint` (or {IAM_ENDPOINT_ENV})")


class PasswordAuth:
    """IAM user credentials, sent to IAM for project-scoped tokens (the `Auth` protocol).

    `apply` sets `X-Auth-Token` to a token scoped to the project named by the request's path
    (`/v2/{project_id}/...`), from the cache or fetched now. Thread-safe. Fetching retries
    connection errors, timeouts, 429 and 5xx `max_retries` times; any other failure, and the
    last retry's, raises IamError and is remembered for that project.
    """

    __slots__ = ("_clock", "_domain", "_endpoint", "_failures", "_guard", "_locks",
                 "_max_retries", "_password", "_sleep", "_ssl_context", "_timeout", "_tokens",
                 "_transport", "_user")
    refused_hint = (f"IAM issued the token: does the IAM user ({USERNAME_ENV}) have permission "
                    "for ROMA Connect in this project?")

    def __init__(self, user: str, password: str, domain: str, iam_endpoint: str, *,
                 transport: httpx.BaseTransport | None = None, timeout: float = 30.0,
                 connect_timeout: float = 10.0, max_retries: int = 2,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._user = _checked(_USER, user.strip())
        self._password = _checked(_PASSWORD, password)
        self._domain = _checked(_DOMAIN, domain.strip())
        self._endpoint = iam_endpoint.rstrip("/")
        self._transport = transport
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._max_retries = max(0, max_retries)
        self._clock = clock
        self._sleep = sleep
        self._ssl_context: ssl.SSLContext | None = None
        self._tokens: dict[str, _Token] = {}
        self._failures: dict[str, IamError] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def __repr__(self) -> str:
        return (f"PasswordAuth(user={self._user!r}, domain={self._domain!r}, "
                f"iam_endpoint={self._endpoint!r}, password=***)")

    def ready(self, request: httpx.Request) -> bool:
        """False when `apply` would ask IAM for the project's token first."""
        project_id = project_in(request)
        if project_id is None:
            return True  # apply refuses it at once
        # A fresh token, or a remembered failure raised again at once.
        return self._fresh(project_id) is not None or project_id in self._failures

    def apply(self, request: httpx.Request) -> None:
        """Set `X-Auth-Token` for the request's project. Raises IamError when IAM issues none,
        CredentialsError when the path names no project."""
        request.headers["X-Auth-Token"] = self.token(_project_of(request))

    def token(self, project_id: str) -> str:
        """A token scoped to `project_id` with more than the refresh margin left to live."""
        fresh = self._fresh(project_id)
        if fresh is not None:
            return fresh
        with self._lock_for(project_id):
            # Another thread may have fetched it (or failed) while this one waited.
            fresh = self._fresh(project_id)
            if fresh is not None:
                return fresh
            failure = self._failures.get(project_id)
            if failure is not None:
                raise failure.again()
            try:
                fetched = self._fetch(project_id)
            except IamError as exc:
                self._failures[project_id] = exc
                raise
            with self._guard:
                self._tokens[project_id] = fetched
            return fetched.value

    def _fresh(self, project_id: str) -> str | None:
        """The cached token of the project while it has more than the refresh margin to live."""
        cached = self._tokens.get(project_id)
        return cached.value if cached is not None and self._clock() < cached.refresh_at else None

    def invalidate(self, request: httpx.Request) -> bool:
        """Forget the token `request` was sent with, after the API refused it (401): a token can
        be revoked before it expires (password or permission changes). True when it was the
        cached one, so that one more attempt would use a new token."""
        project_id = project_in(request)
        sent = request.headers.get("X-Auth-Token")
        if project_id is None or not sent:
            return False
        # Under the short guard, not the project's lock: a fetch in another thread may hold
        # that for as long as IAM takes, and this runs on the event loop.
        with self._guard:
            cached = self._tokens.get(project_id)
            if cached is None or cached.value != sent:
                return False
            del self._tokens[project_id]
            return True

    def _lock_for(self, project_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(project_id, threading.Lock())

    # -- one token request ---------------------------------------------------------------------

    def _fetch(self, project_id: str) -> _Token:
        body = json.dumps(self._request_body(project_id)).encode()
        attempt = 0
        while True:
            asked_at = self._clock()
            try:
                response = self._post(body)
            except httpx.HTTPError as exc:
                error = IamError(f"cannot get an IAM token for project {project_id} from "
                                 f"{self._endpoint}: {self._describe(exc)}")
            else:
                status = response.status_code
                if status in (200, 201):
                    return self._token_from(response, project_id, asked_at)
                error = self._refused(response, project_id)
                if status != 429 and status < 500:
                    raise error
            if attempt >= self._max_retries:
                raise error
            attempt += 1
            delay = random.uniform(0.5, 1.0) * 2 ** (attempt - 1)  # noqa: S311  (jitter)
            log.warning("%s; retry %d of %d in %.1fs", error, attempt, self._max_retries, delay)
            self._sleep(delay)

    def _request_body(self, project_id: str) -> dict[str, Any]:
        user = {"name": self._user, "password": self._password,
                "domain": {"name": self._domain}}
        return {"auth": {"identity": {"methods": ["password"], "password": {"user": user}},
                         "scope": {"project": {"id": project_id}}}}

    def _post(self, body: bytes) -> httpx.Response:
        # Redirects are not followed: the password goes to the configured endpoint only.
        with httpx.Client(verify=self._tls(), timeout=self._timeout, transport=self._transport,
                          follow_redirects=False) as http:
            return http.post(f"{self._endpoint}{TOKENS_PATH}", params={"nocatalog": "true"},
                             content=body, headers={
                                 "Content-Type": "application/json;charset=utf8",
                                 "Accept": "application/json",
                                 "User-Agent": f"reconciler/{__version__}"})

    def _tls(self) -> ssl.SSLContext:
        # Built once (~50 ms of CPU) and only when a token is actually needed.
        with self._guard:
            if self._ssl_context is None:
                try:
                    self._ssl_context = verifying_context()
                except ReconcilerError as exc:  # remembered for the project like a refusal
                    raise IamError(str(exc)) from None
            return self._ssl_context

    def _token_from(self, response: httpx.Response, project_id: str, asked_at: float) -> _Token:
        value = response.headers.get("X-Subject-Token", "")
        try:
            TokenAuth(value)
        except CredentialsError as exc:
            raise self._bad_answer(response, project_id,
                                   f"its X-Subject-Token header is unusable ({exc})") from None
        try:
            token = json.loads(response.content)["token"]
            expires = _parse_time(token["expires_at"])
            issued = _parse_time(token["issued_at"]) if token.get("issued_at") else None
            project = token.get("project")
            scoped = project.get("id") if isinstance(project, dict) else None
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            raise self._bad_answer(response, project_id,
                                   "its body has no readable token.expires_at") from None
        if scoped is not None and scoped != project_id:
            raise self._bad_answer(response, project_id,
                                   f"the token is scoped to another project ({short(scoped)})")
        # Measured on IAM's clock when it says when it issued the token, so that a skewed local
        # clock does not shorten or stretch the cache.
        lifetime = (expires - issued).total_seconds() if issued is not None else \
            expires.timestamp() - asked_at
        if lifetime <= 0:
            raise self._bad_answer(response, project_id, "the token has already expired")
        log.debug("IAM token for project %s: valid for %.0fs", project_id, lifetime)
        return _Token(value.strip(), asked_at + lifetime - min(REFRESH_MARGIN, lifetime / 2))

    def _bad_answer(self, response: httpx.Response, project_id: str, problem: str) -> IamError:
        request_id = self._redact_optional(clean(response.headers.get("X-Request-Id"), 64))
        text = (f"IAM answered HTTP {response.status_code} to the token request for project "
                f"{project_id}, but {problem}")
        return IamError(text + (f" (request id {request_id})" if request_id else ""),
                        status=response.status_code, request_id=request_id)

    def _refused(self, response: httpx.Response, project_id: str) -> IamError:
        status = response.status_code
        code, message, request_id = error_fields(response)
        # All of it: a server may build its code and request id from what it was sent.
        code, request_id = self._redact_optional(code), self._redact_optional(request_id)
        head = " ".join(part for part in (f"HTTP {status}", code or "") if part)
        text = f"IAM refused a token for project {project_id}: {head}: {self._redact(message)}"
        if request_id:
            text += f" (request id {request_id})"
        if status in (401, 403):
            text += f"; {_HINT}"
        elif status == 404:
            text += f"; is {self._endpoint} an IAM endpoint?"
        return IamError(text, status=status, code=code, request_id=request_id)

    def _describe(self, exc: Exception) -> str:
        detail = clean(str(exc), 200)
        name = type(exc).__name__
        return self._redact(f"{name}: {detail}" if detail else name)

    def _redact(self, text: str) -> str:
        """Server and library text may echo what was sent: never show the password."""
        return redact(text, self._password)

    def _redact_optional(self, text: str | None) -> str | None:
        return None if text is None else self._redact(text)


def password_from_env(environ: Mapping[str, str], *, iam_endpoint: str | None,
                      region: str | None) -> PasswordAuth | None:
    """IAM user credentials from the environment; None when none of the three variables is set.

    CredentialsError naming the missing variables when only some are set, the variable whose
    value is unusable (never quoting it), or the IAM endpoint setting that is missing or wrong.
    """
    names = (USERNAME_ENV, PASSWORD_ENV, DOMAIN_ENV)
    values = {name: environ.get(name, "") for name in names}
    present = [name for name in names if values[name].strip()]
    if not present:
        return None
    missing = [name for name in names if name not in present]
    if missing:
        raise CredentialsError(f"{', '.join(present)} set but {', '.join(missing)} not: "
                               f"password authentication needs all of {', '.join(names)}")
    for name, what in zip(names, (_USER, _PASSWORD, _DOMAIN), strict=True):
        try:
            _checked(what, values[name])
        except CredentialsError as exc:
            raise CredentialsError(f"{name}: {exc}") from None
    return PasswordAuth(values[USERNAME_ENV], values[PASSWORD_ENV], values[DOMAIN_ENV],
                        iam_endpoint_for(iam_endpoint, region))


def _checked(what: str, value: str) -> str:
    """`value`, or CredentialsError saying what is wrong with it without quoting it."""
    if not value.strip():
        raise CredentialsError(f"the {what} is empty")
    if not value.isprintable():
        raise CredentialsError(f"the {what} contains control characters")
    return value


def _project_of(request: httpx.Request) -> str:
    project_id = project_in(request)
    if project_id is None:
        raise CredentialsError("an IAM token is scoped to a project, and the request path names "
                               "none (expected /v2/{project_id}/...)")
    return project_id


def _parse_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise TypeError("not a string")
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


