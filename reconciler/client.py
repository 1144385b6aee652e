"""The ROMA Connect FDI dispatch API client: requests, retries, error parsing.

What it promises:
- Every id is checked with `is_valid_id` before it enters a URL; a bad one raises before any
  request is made.
- GET and PUT are retried (exponential backoff, full jitter) on connect errors, timeouts, dropped
  connections, 429 (honouring `Retry-After`) and 5xx.
- A POST is resent only when it certainly was not processed (the connection was never made, or
  429). When it may have been processed — read timeout, dropped connection, 5xx, an unreadable 2xx
  body — it raises `OutcomeUnknown` at once: the API has no idempotency key, so only the caller
  can resolve it, with a GET of the task, before anything is retried.
- Every failure is an `ApiError` with one printable line: status, error code, message, request id.
  Secrets never appear in messages, reprs or logs; request headers are never logged.
- Asynchronous: one event loop drives every request in flight over the keep-alive connections of
  `reconciler.aiotransport`; a thread per request would spend more CPU on the GIL than on HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import math
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Self

import httpx

from reconciler import __version__, compact_json
from reconciler.aiotransport import LOOPBACK_HOSTS, async_for_endpoint
from reconciler.auth import Auth
from reconciler.desired import parse_start_datetime
from reconciler.errorbody import clean, error_fields, redact, short
from reconciler.model import (
    SPEC_FIELDS,
    DispatchKey,
    ReconcilerError,
    RemoteDispatch,
    Spec,
    is_valid_id,
)

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/json;charset=UTF-8"
TASK_NOT_IN_PROJECT = "FDI.3180"
# Huawei's API gateways: APIGW on the shared one, APIG on a dedicated one (e.g. APIG.0101, "API
# does not exist"). Their 404 means the path is wrong, never that the dispatch is missing.
_GATEWAY_CODE = re.compile(r"APIGW?\.")
_REGION = re.compile(r"[a-z0-9-]+")
_SECRET_HEADERS = ("x-auth-token", "authorization")
_DEFAULT_HEADERS = ((b"Accept", b"application/json"),
                    (b"User-Agent", f"reconciler/{__version__}".encode()))
_BODY_HEADERS = (*_DEFAULT_HEADERS, (b"Content-Type", CONTENT_TYPE.encode()))
# Raised before a byte of the request reached the server: even a POST may be sent again.
_NOT_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError,
)
# Mistakes on our side that no retry can fix.
_LOCAL: tuple[type[Exception], ...] = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)


class ApiError(ReconcilerError):
    """A failed API call. `str()` is one line: `HTTP 400 FDI.3002: message (request id X)`."""

    def __init__(
        self,
        message: str,
        *,
        method: str,
        key: DispatchKey | None = None,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.method = method
        self.key = key
        head = " ".join(part for part in (
            f"HTTP {status}" if status is not None else "", code or "") if part)
        text = f"{head}: {message}" if head else message
        super().__init__(f"{text} (request id {request_id})" if request_id else text)


class OutcomeUnknown(ApiError):
    """A POST was (possibly) processed but its result is unknown: GET the task to find out.

    `created`: the API answered 2xx, so the dispatch does exist, but the answer could not be
    read; `retry_after`: seconds the API asked to wait before the next request (a 503's
    Retry-After), if any.
    """

    def __init__(self, message: str, *, created: bool = False,
                 retry_after: float | None = None, **details: Any) -> None:
        super().__init__(message, **details)
        self.created = created
        self.retry_after = retry_after

    def restated(self, message: str) -> OutcomeUnknown:
        """The same unknown outcome (status, code, request id of the API's answer) said anew,
        as what became of it is learnt."""
        return OutcomeUnknown(message, method=self.method, key=self.key, status=self.status,
                              code=self.code, request_id=self.request_id)


class DispatchClient:
    """Create, show and update the dispatch of a task, from coroutines of one event loop.

    The client itself holds settings only; `async with client:` opens its connections in the
    running loop and closes them at the end, so one client serves several `asyncio.run` calls
    (a refresh, then an apply) without carrying sockets from one loop into another.
    """

    def __init__(
        self,
        endpoint: str,
        auth: Auth,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._endpoint = endpoint.rstrip("/")
        self._urls = EndpointUrls(self._endpoint)
        self._auth = auth
        self._given = transport
        self._transport: httpx.AsyncBaseTransport | None = None
        self._depth = 0
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout).as_dict()
        self._connect_timeout = connect_timeout
        self._read_timeout = timeout
        self._max_retries = max(0, max_retries)
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._sleep = sleep
        self._rand = rand
        self._clock = clock
        self._ssl_context: ssl.SSLContext | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"DispatchClient(endpoint={self._endpoint!r}, auth={self._auth!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Refuse further use; connections are closed by the `async with` that opened them."""
        self._closed = True

    async def __aenter__(self) -> Self:
        if self._closed:
            raise ReconcilerError("the API client is closed")
        if self._depth == 0:
            if self._given is None and self._endpoint.startswith("https:"):
                self._verifying_context()  # unusable CA settings: one error now, not per request
            self._transport = self._given or async_for_endpoint(
                self._endpoint, self._verifying_context, self._connect_timeout,
                self._read_timeout)
        self._depth += 1
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._depth -= 1
        if self._depth == 0:
            transport, self._transport = self._transport, None
            if transport is not None and transport is not self._given:
                await transport.aclose()

    def _verifying_context(self) -> ssl.SSLContext:
        # Built once (~50 ms) and shared by every connection and every loop.
        if self._ssl_context is None:
            self._ssl_context = verifying_context()
        return self._ssl_context

    async def show(self, key: DispatchKey) -> RemoteDispatch | None:
        """The task's dispatch, or None when the task has none.

        None for a 200 without `dispatch_id` (or empty) and for a 404 carrying the API's error
        code: the reference documents no code for "no dispatch" (the emulator answers FDI.3181),
        so any but FDI.3180 (the task is not in the project) counts. A 404 without an error
        code, or with a gateway's (`APIGW.*` on the shared gateway, `APIG.*` on a dedicated
        one), raises ApiError: the path is wrong, which says nothing of the dispatch, and a None
        would let apply send a create.
        """
        response = await self._call("GET", key, _path(key, "GET"), None)
        if response.status_code == 404:
            error = self._error(response, "GET", key)
            if error.code and error.code != TASK_NOT_IN_PROJECT \
                    and not _GATEWAY_CODE.match(error.code):
                return None
            raise error
        if not response.is_success:
            raise self._error(response, "GET", key)
        if not response.content.strip():
            return None
        try:
            obj = _json_object(response)
            if not obj.get("dispatch_id"):
                return None
            return parse_dispatch(obj)
        except ValueError as exc:
            raise self._bad_response(response, "GET", key, str(exc), ApiError) from None

    async def create(self, key: DispatchKey, spec: Spec) -> RemoteDispatch:
        """POST the spec. Raises OutcomeUnknown when the dispatch may or may not exist now."""
        response = await self._call("POST", key, _path(key, "POST"), spec.body())
        if not response.is_success:
            raise self._error(response, "POST", key)
        try:
            return parse_dispatch(_json_object(response))
        except ValueError as exc:
            # A 2xx: the create happened, only its answer is unusable.
            raise self._bad_response(response, "POST", key, str(exc), OutcomeUnknown,
                                     created=True) from None

    async def update(self, key: DispatchKey, dispatch_id: str, spec: Spec) -> RemoteDispatch:
        """PUT the spec onto the existing dispatch `dispatch_id` of the task."""
        if not is_valid_id(dispatch_id):
            raise ApiError(f"invalid dispatch_id {short(dispatch_id)}: expected 1-64 of "
                           "[A-Za-z0-9_-]", method="PUT", key=key)
        response = await self._call("PUT", key, f"{_path(key, 'PUT')}/{dispatch_id}",
                                    spec.body())
        if not response.is_success:
            raise self._error(response, "PUT", key)
        try:
            return _updated(response, dispatch_id, spec)
        except ValueError as exc:
            raise self._bad_response(response, "PUT", key, str(exc), ApiError) from None

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """One exchange, the body read. Requests go straight to the transport rather than
        through httpx.AsyncClient, whose cookie jar, URL merging and auth flow cost more CPU
        per request than the exchange itself here, and which this client does not use."""
        transport = self._transport
        if transport is None:
            raise ReconcilerError("the API client is used outside `async with client`")
        response = await transport.handle_async_request(request)
        response.request = request
        if not response.is_closed:  # this project's transport hands complete bodies over closed
            try:
                await response.aread()
            finally:
                await response.aclose()
        return response

    async def _call(self, method: str, key: DispatchKey, path: str,
                    body: Mapping[str, Any] | None) -> httpx.Response:
        """Send with retries; returns the final response unless the retries ran out.

        Returns any response that is not retried (2xx, 4xx other than 429, ...); raises ApiError
        when retries are exhausted and OutcomeUnknown when a POST may have been processed.
        """
        content = b"" if body is None else compact_json.dumps(body).encode()
        url = self._urls.at(path)
        # What httpx.Request(content=...) would send, assembled here: its own assembly parses and
        # re-validates the headers and the body, which costs several times this.
        headers = [(b"Host", url.netloc), *_DEFAULT_HEADERS] if body is None else [
            (b"Host", url.netloc), *_BODY_HEADERS, (b"Content-Length", b"%d" % len(content))]
        attempt = 0
        renewed = False
        while True:
            if self._closed:
                raise ReconcilerError("the API client is closed")
            request = httpx.Request(method, url, headers=headers,
                                    stream=httpx.ByteStream(content),
                                    extensions={"timeout": self._timeout})
            request.read()  # the body is in memory: this makes `request.content` available
            if self._auth.ready(request):
                self._auth.apply(request)
            else:  # waits on IAM: in a thread, while the loop serves the requests in flight
                await asyncio.to_thread(self._auth.apply, request)
            started = time.monotonic()
            delay: float | None = None
            try:
                response = await self._send(request)
            except _LOCAL as exc:
                raise ApiError(_describe(exc, request), method=method, key=key) from None
            except _NOT_SENT as exc:
                error = ApiError(f"could not connect to {self._endpoint}: "
                                 f"{_describe(exc, request)}", method=method, key=key)
            except httpx.RequestError as exc:
                if method == "POST":
                    raise OutcomeUnknown(
                        f"{_describe(exc, request)} after the request was sent; the dispatch "
                        "may or may not have been created", method=method, key=key) from None
                error = ApiError(_describe(exc, request), method=method, key=key)
            else:
                status = response.status_code
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("%s %s -> %d in %.3fs", method, request.url.path, status,
                              time.monotonic() - started)
                if status == 401 and not renewed and self._auth.invalidate(request):
                    # A revoked token, renewed: the gateway refused the request before the API
                    # saw it, so even a POST may be sent again, once.
                    renewed = True
                    continue
                if status != 429 and status < 500:
                    return response
                if method == "POST" and status != 429:
                    wait = self._retry_after(response.headers.get("Retry-After"))
                    raise self._error(response, method, key, OutcomeUnknown, retry_after=wait)
                error = self._error(response, method, key)
                if status in (429, 503):
                    delay = self._retry_after(response.headers.get("Retry-After"))
            if attempt >= self._max_retries:
                raise error
            if delay is None:
                delay = self._rand() * min(self._max_backoff, self._backoff * 2 ** attempt)
            attempt += 1
            log.warning("%s %s: %s; retry %d of %d in %.2fs", method, key, error, attempt,
                        self._max_retries, delay)
            await self._sleep(delay)

    def _retry_after(self, value: str | None) -> float | None:
        """Seconds from a `Retry-After` header (delta seconds or an HTTP date), capped."""
        if not value:
            return None
        value = value.strip()
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            seconds = when.timestamp() - self._clock()
        if math.isnan(seconds):
            return None
        return min(max(0.0, seconds), self._max_backoff * 4)

    def _error(self, response: httpx.Response, method: str, key: DispatchKey,
               cls: type[ApiError] = ApiError, **extra: Any) -> ApiError:
        code, message, request_id = error_fields(response)
        status = response.status_code
        if status in (401, 403):
            message += f"; {self._auth.refused_hint}"
        elif status == 404 and code == TASK_NOT_IN_PROJECT:
            message = (f"task {key.task_id} is not in project {key.project_id} "
                       f"(instance {key.instance_id}): {message}")
        elif status == 404 and code is not None and _GATEWAY_CODE.match(code):
            message += "; the API gateway knows no such API: check the endpoint"
        elif cls is OutcomeUnknown:
            message += "; the dispatch may or may not have been created"
        # The code and request id too: a server may build them from what it was sent.
        return cls(_redact(message, response.request), method=method, key=key, status=status,
                   code=_redact_optional(code, response.request),
                   request_id=_redact_optional(request_id, response.request), **extra)

    def _bad_response(self, response: httpx.Response, method: str, key: DispatchKey,
                      problem: str, cls: type[ApiError], **extra: Any) -> ApiError:
        """An answer that cannot be used; `created=True` (with OutcomeUnknown): it was a 2xx
        to a POST, so the dispatch exists."""
        if extra.get("created"):
            message = f"the dispatch was created, but the answer is unusable: {problem}"
        else:
            message = f"unexpected response: {problem}"
            if cls is OutcomeUnknown:
                message += "; the dispatch may or may not have been created"
        return cls(_redact(message, response.request), method=method, key=key,
                   status=response.status_code,
                   request_id=_redact_optional(clean(response.headers.get("X-Request-Id"), 64),
                                               response.request), **extra)


def parse_dispatch(obj: Mapping[str, Any]) -> RemoteDispatch:
    """A dispatch object from a response, tolerating unknown fields. ValueError when unusable.

    `start_datetime` may be epoch ms or an ISO string (the documented example); when
    `use_quartz_cron` says which form is in use, the other form's fields are dropped, since the API
    may echo them empty or defaulted.
    """
    dispatch_id = obj.get("dispatch_id")
    if not isinstance(dispatch_id, str) or not is_valid_id(dispatch_id):
        raise ValueError(f"malformed dispatch_id {short(dispatch_id)}")
    fields = dict(obj)
    quartz = obj.get("use_quartz_cron")
    if isinstance(quartz, bool):
        for name in ("period", "dispatch_interval") if quartz else ("cron", "cron_timezone"):
            fields.pop(name, None)
    for name in ("cron", "cron_timezone", "period", "remark"):
        if fields.get(name) is not None and not isinstance(fields[name], str):
            raise ValueError(f"{name} is not a string")
    interval = fields.get("dispatch_interval")
    if isinstance(interval, str) and interval.strip().isdigit():
        fields["dispatch_interval"] = int(interval)
    elif interval is not None and (isinstance(interval, bool) or not isinstance(interval, int)):
        raise ValueError("dispatch_interval is not an integer")
    start = fields.get("start_datetime")
    if start is not None and start != "":
        fields["start_datetime"] = parse_start_datetime(start)
    return RemoteDispatch(dispatch_id, Spec.from_body(fields),
                          _epoch_ms(obj.get("created_date")),
                          _epoch_ms(obj.get("last_modified_date")))


def _updated(response: httpx.Response, dispatch_id: str, spec: Spec) -> RemoteDispatch:
    """The dispatch a 2xx to a PUT describes. ValueError when its answer is unusable.

    The update was applied: an answer that leaves things out (an empty body, `{}`, no
    `dispatch_id`, no spec field) is completed with what is known, the URL's dispatch id and the
    spec sent, rather than reported as a failure. An answer that contradicts them (another
    dispatch_id) or is not a JSON object is still refused: it may not come from the API.
    """
    if not response.content.strip():
        return RemoteDispatch(dispatch_id, spec)
    obj = _json_object(response)
    answered = obj.get("dispatch_id")
    if answered is None or answered == "":
        obj["dispatch_id"] = dispatch_id
    elif answered != dispatch_id:
        raise ValueError(f"the answer is about dispatch_id {short(answered)}, not "
                         f"{short(dispatch_id)}")
    found = parse_dispatch(obj)
    if all(obj.get(name) in (None, "") for name in SPEC_FIELDS):
        return RemoteDispatch(dispatch_id, spec, found.created_date, found.last_modified_date)
    return found


def verifying_context() -> ssl.SSLContext:
    """httpx's verifying TLS context (certifi's CAs, or those SSL_CERT_FILE/SSL_CERT_DIR name);
    ReconcilerError when the CA certificates cannot be loaded."""
    try:
        return httpx.create_ssl_context()
    except (OSError, ssl.SSLError) as exc:
        raise ReconcilerError(f"cannot load the CA certificates to verify TLS with ({exc}); "
                              "check SSL_CERT_FILE and SSL_CERT_DIR") from None


def endpoint_for(endpoint: str | None, region: str | None) -> str:
    """The API base URL: `endpoint` when given, else `https://roma.{region}.myhuaweicloud.com`.

    https is required except for loopback hosts (the emulator).
    """
    if endpoint and endpoint.strip():
        return _checked_endpoint(endpoint.strip())
    if region:
        if not _REGION.fullmatch(region):
            raise ReconcilerError(f"invalid region {short(region)}: expected lower-case letters, "
                                  "digits and '-' (e.g. cn-north-4)")
        return f"https://roma.{region}.myhuaweicloud.com"
    raise ReconcilerError("no API endpoint: set `region` (or RECONCILER_REGION), or `endpoint` "
                          "(or RECONCILER_ENDPOINT)")


def _checked_endpoint(text: str) -> str:
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL:
        raise ReconcilerError(f"invalid endpoint {short(text)}: not a URL") from None
    if url.userinfo:
        # Never echo it: the user part may hold a password.
        raise ReconcilerError("invalid endpoint: it must not contain user information (user@)")
    if url.scheme not in ("http", "https") or not url.host:
        raise ReconcilerError(f"invalid endpoint {short(text)}: expected https://HOST[:PORT]")
    if url.query or url.fragment:
        raise ReconcilerError(f"invalid endpoint {short(text)}: no query or fragment allowed")
    if url.port is not None and not 0 < url.port < 65536:
        raise ReconcilerError(f"invalid endpoint {short(text)}: the port must be 1-65535")
    if url.scheme == "http" and url.host not in LOOPBACK_HOSTS:
        raise ReconcilerError(f"invalid endpoint {short(text)}: https is required "
                              "(plain http only for 127.0.0.1, ::1 or localhost)")
    return text.rstrip("/")


class EndpointUrls:
    """The `httpx.URL`s of paths under the endpoint, built without parsing each one.

    `httpx.URL(text)` parses and re-validates the whole URL, 40 to 80 µs: with 50 requests in
    flight that was a fifth of the client's CPU per create. The endpoint is parsed once; the
    paths added to it are made of fixed ASCII words and ids checked against [A-Za-z0-9_-]
    (`_path`), which need no quoting, so the parsed endpoint with its path extended is exactly
    what parsing the joined text gives. Extending it relies on httpx keeping its parse in the
    named tuple `URL._uri_reference`, which is not public: so the first URL is also parsed the
    public way, and if the two differ in any part (a future httpx), every URL is parsed.
    """

    __slots__ = ("_base", "_endpoint", "_fast", "_path_at")

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint
        self._base: Any = None
        self._path_at = 0  # the position of the path in the named tuple
        self._fast: bool | None = None  # unknown until the first URL is compared

    def at(self, path: str) -> httpx.URL:
        """The URL of `path` (starting with "/", characters needing no quoting) under the
        endpoint."""
        if self._fast:
            return self._extended(path)
        parsed = httpx.URL(self._endpoint + path)
        if self._fast is None:
            self._fast = False
            with contextlib.suppress(Exception):  # whatever a different httpx raises
                self._base = httpx.URL(self._endpoint)._uri_reference
                self._path_at = type(self._base)._fields.index("path")
                self._fast = _same_url(self._extended(path), parsed)
        return parsed

    def _extended(self, path: str) -> httpx.URL:
        # Built positionally: the named tuple's _replace() costs several times more.
        parts = list(self._base)
        parts[self._path_at] += path
        url = httpx.URL.__new__(httpx.URL)
        url._uri_reference = type(self._base)(*parts)
        return url


def _same_url(one: httpx.URL, other: httpx.URL) -> bool:
    return all(getattr(one, part) == getattr(other, part) for part in (
        "scheme", "userinfo", "host", "port", "netloc", "raw_path", "path", "query", "fragment",
        "raw_host")) and str(one) == str(other)


def _path(key: DispatchKey, method: str) -> str:
    for name in ("project_id", "instance_id", "task_id"):
        value = getattr(key, name)
        if not is_valid_id(value):
            raise ApiError(f"invalid {name} {short(value)}: expected 1-64 of [A-Za-z0-9_-]",
                           method=method, key=key)
    return (f"/v2/{key.project_id}/fdi/instances/{key.instance_id}"
            f"/tasks/{key.task_id}/dispatches")


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        obj = json.loads(response.content)
    except ValueError:
        raise ValueError("the body is not JSON") from None
    except RecursionError:  # nested deeper than json parses: no answer of the API's
        raise ValueError("the body is nested too deeply") from None
    if not isinstance(obj, dict):
        raise ValueError("the body is not a JSON object")
    return obj


_ACCESS_KEY = re.compile(r"\bAccess=([^,\s]+)")


def _redact(text: str, request: httpx.Request) -> str:
    """Remove what the request carried of the credentials from text built from server or
    library output: the secret headers' values, and the access key inside an AK/SK signature
    (a server may echo it alone)."""
    for name in _SECRET_HEADERS:
        secret = request.headers.get(name)
        if secret:
            text = redact(text, secret)
            if (access := _ACCESS_KEY.search(secret)) is not None:
                text = redact(text, access.group(1))
    return text


def _redact_optional(text: str | None, request: httpx.Request) -> str | None:
    return None if text is None else _redact(text, request)


def _describe(exc: Exception, request: httpx.Request) -> str:
    detail = clean(str(exc), 200)
    name = type(exc).__name__
    return _redact(f"{name}: {detail}" if detail else name, request)


def _epoch_ms(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip():
        try:
            return parse_start_datetime(value)
        except ValueError:
            return None
    return None
