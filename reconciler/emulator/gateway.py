"""The API gateway in front of the emulated API: who may call it, and IAM's token endpoint.

Three modes, which can be combined:
- default: any non-empty `X-Auth-Token` (or exactly `token` when one is given);
- IAM (`iam_user`, `iam_password`, `iam_domain`): `POST /v3/auth/tokens` issues project-scoped
  tokens for that one user (lasting `iam_token_ttl` seconds), and only an issued, unexpired token
  of the request's project is accepted (besides `token`, if given);
- AK/SK (`ak`, `sk`): a request with an `Authorization` header must carry a valid
  `SDK-HMAC-SHA256` signature by that key pair, its `X-Sdk-Date` within 15 minutes of the
  emulator's clock. A request without a signature is refused unless it carries a token that
  `token` or IAM accepts (the gateway takes either kind of credential); with AK/SK alone, tokens
  are refused.
Refusals are 401 `APIGW.0301` (403 `APIGW.0302` for a token of another project), with a reason.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler.emulator.server import REASONS, Reply, refusal
from reconciler.model import is_valid_id
from reconciler.signer import DATE_FORMAT, verify

BAD_AUTH = ("APIGW.0301", "Incorrect IAM authentication information")
NOT_AUTHORISED = ("APIGW.0302", "The IAM user is not authorized to access the API")
WRONG_PASSWORD = "The username or password is wrong."  # noqa: S105  (a message)
TOKENS_PATH = "/v3/auth/tokens"
DEFAULT_TOKEN_TTL = 24 * 3600.0  # what IAM gives
MAX_SKEW_SECONDS = 15 * 60  # how far X-Sdk-Date may be from the server's clock
_ACCESS = re.compile(r"SDK-HMAC-SHA256 Access=([^,\s]+), ")


class _BadTokenRequest(Exception):
    """A field of a token request IAM refuses; the message names the field."""


@dataclass(frozen=True, slots=True)
class _IamUser:
    """The one IAM user the token endpoint knows."""

    name: str
    password: str = field(repr=False)
    domain: str


@dataclass(frozen=True, slots=True)
class _Issued:
    project_id: str
    expires_at: float


class Gateway:
    """Authentication of the emulator's requests; thread-safe (one lock around the tokens)."""

    def __init__(self, *, token: str | None = None, ak: str | None = None,
                 sk: str | None = None, iam_user: str | None = None,
                 iam_password: str | None = None, iam_domain: str | None = None,
                 iam_token_ttl: float = DEFAULT_TOKEN_TTL,
                 clock: Callable[[], float] = time.time) -> None:
        """`ak`/`sk` and the three `iam_*` credentials each come together or not at all
        (ValueError otherwise)."""
        self._token = token
        self._aksk = _key_pair(ak, sk)
        self._iam = _iam_user(iam_user, iam_password, iam_domain)
        if not iam_token_ttl > 0:
            raise ValueError("the lifetime of IAM tokens must be positive")
        self._iam_ttl = iam_token_ttl
        self._any_token = token is None and self._aksk is None and self._iam is None
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, _Issued] = {}
        self._iam_calls = {"issued": 0, "refused": 0}

    def iam_calls(self) -> dict[str, int]:
        """Token requests answered: `issued` and `refused` (wrong user, password or account)."""
        with self._lock:
            return dict(self._iam_calls)

    def refuse(self, method: str, target: str, headers: Mapping[str, str], raw: bytes,
               project: str) -> Reply | None:
        """Why a dispatch request is not authenticated, or None when it is; `headers` has
        lower-case names, `target` is as received."""
        if self._any_token:  # the default, and the hot path: a token must be there
            return None if headers.get("x-auth-token") else _flat(401, BAD_AUTH)
        if self._aksk is not None and "authorization" in headers:
            return self._check_signature(method, target, headers, raw)
        token = headers.get("x-auth-token")
        if not token:
            if self._aksk is not None:
                return _unauthorised("no signature (Authorization) and no token (X-Auth-Token)")
            return _flat(401, BAD_AUTH)
        if self._token is not None and hmac.compare_digest(token.encode(), self._token.encode()):
            return None
        if self._iam is not None:
            return self._check_issued(token, project)
        return _unauthorised("the token is not valid")

    def _check_signature(self, method: str, target: str, headers: Mapping[str, str],
                         raw: bytes) -> Reply | None:
        assert self._aksk is not None
        ak, sk = self._aksk
        access = _ACCESS.match(headers["authorization"])
        if access is None:
            return _unauthorised("the Authorization header is not an SDK-HMAC-SHA256 signature")
        if not hmac.compare_digest(access.group(1).encode(), ak.encode()):
            return _unauthorised("the access key does not exist")  # never echo a key
        now = self._clock()
        try:
            sent = datetime.strptime(headers.get("x-sdk-date", ""), DATE_FORMAT)
        except ValueError:
            return _unauthorised("the X-Sdk-Date header is missing or not YYYYMMDDTHHMMSSZ")
        if abs(now - sent.replace(tzinfo=UTC).timestamp()) > MAX_SKEW_SECONDS:
            return _unauthorised("the X-Sdk-Date header is more than 15 minutes away from the "
                                 "server's time")
        # The client signed the URL it sent: the Host header and the target as received.
        url = f"http://{headers.get('host', '')}{target}" if target[:1] == "/" else target
        if not verify(method, url, headers, raw, ak=ak, sk=sk, max_skew_seconds=MAX_SKEW_SECONDS,
                      now=datetime.fromtimestamp(now, UTC)):
            return _unauthorised("verify aksk signature fail")
        return None

    def _check_issued(self, token: str, project: str) -> Reply | None:
        with self._lock:
            issued = self._tokens.get(token)
        if issued is None:
            return _unauthorised("the token is not valid")
        if issued.expires_at <= self._clock():
            return _unauthorised("the token has expired")
        if issued.project_id != project:
            return Reply(403, {"error_code": NOT_AUTHORISED[0],
                               "error_msg": f"{NOT_AUTHORISED[1]}: the token is scoped to "
                                            "another project"})
        return None

    def issue_token(self, method: str, raw: bytes) -> Reply:
        """IAM's `POST /v3/auth/tokens` with a password identity and a project scope."""
        if self._iam is None:
            return refusal(404, "no IAM here: start the emulator with --iam-user, "
                            "--iam-password and --iam-domain")
        if method != "POST":
            return _keystone(405, f"{method} is not allowed here")
        try:
            name, password, domain, project = _token_request(raw)
        except _BadTokenRequest as exc:
            return _keystone(400, str(exc))
        user = self._iam
        matches = [hmac.compare_digest(given.encode(), wanted.encode()) for given, wanted in
                   ((name, user.name), (password, user.password), (domain, user.domain))]
        now = self._clock()
        with self._lock:
            if not all(matches):
                self._iam_calls["refused"] += 1
                return _keystone(401, WRONG_PASSWORD)
            self._iam_calls["issued"] += 1
            tokens = self._tokens
            for expired in [t for t, issued in tokens.items() if issued.expires_at <= now]:
                del tokens[expired]
            token = f"emu-{os.urandom(24).hex()}"
            tokens[token] = _Issued(project, now + self._iam_ttl)
        body = {"token": {
            "methods": ["password"], "catalog": [],
            "issued_at": _iso(now), "expires_at": _iso(now + self._iam_ttl),
            "project": {"id": project, "name": project, "domain": {"name": domain}},
            "user": {"name": name, "domain": {"name": domain}}}}
        return Reply(201, body, (("X-Subject-Token", token),))


def _flat(status: int, error: tuple[str, str]) -> Reply:
    return Reply(status, {"error_code": error[0], "error_msg": error[1]})


def _unauthorised(reason: str) -> Reply:
    return Reply(401, {"error_code": BAD_AUTH[0], "error_msg": f"{BAD_AUTH[1]}: {reason}"})


def _keystone(status: int, message: str) -> Reply:
    """IAM's (OpenStack Keystone's) error body."""
    return Reply(status, {"error": {"code": status, "message": message,
                                    "title": REASONS.get(status, "")}})


def _token_request(raw: bytes) -> tuple[str, str, str, str]:
    """(user name, password, account name, project id) of a token request; _BadTokenRequest naming
    the field otherwise. Only names identify the user and account here, and only a project id
    the scope (IAM also takes ids and project names)."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise _BadTokenRequest("The request body must be a JSON object.") from None
    methods = _member(body, "auth.identity.methods", list)
    if "password" not in methods:
        raise _BadTokenRequest('auth.identity.methods must contain "password".')
    user = "auth.identity.password.user"
    name, password = _member(body, f"{user}.name", str), _member(body, f"{user}.password", str)
    domain = _member(body, f"{user}.domain.name", str)
    project = _member(body, "auth.scope.project.id", str)
    if not is_valid_id(project):
        raise _BadTokenRequest("auth.scope.project.id must be 1-64 of [A-Za-z0-9_-].")
    return name, password, domain, project


def _member(obj: Any, path: str, kind: type) -> Any:
    for name in path.split("."):
        obj = obj.get(name) if isinstance(obj, dict) else None
    if not isinstance(obj, kind) or not obj:
        what = "a non-empty string" if kind is str else "a non-empty list"
        raise _BadTokenRequest(f"{path} must be {what}.")
    return obj


def _iso(moment: float) -> str:
    """IAM's time format: `2020-01-04T09:05:22.701000Z`."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _key_pair(ak: str | None, sk: str | None) -> tuple[str, str] | None:
    if ak is None and sk is None:
        return None
    if not ak or not sk:
        raise ValueError("an AK needs its SK and the other way round (both non-empty)")
    return ak, sk


def _iam_user(name: str | None, password: str | None, domain: str | None) -> _IamUser | None:
    if name is None and password is None and domain is None:
        return None
    if not name or not password or not domain:
        raise ValueError("the IAM user needs a name, a password and an account (domain) name")
    return _IamUser(name, password, domain)
