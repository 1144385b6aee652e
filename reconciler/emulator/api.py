"""A local ROMA Connect FDI dispatch API, for trying `apply` without a cloud account and for tests.

It serves POST/GET/PUT of `/v2/{project}/fdi/instances/{instance}/tasks/{task}/dispatches[/{id}]`
with the documented validation and error codes, one dispatch per task, the gateway's token check,
optional JSON persistence, and injectable latency and faults. 400 errors use the wrapped body
`{"code": 400, "reason": {...}}`, all others the flat `{"error_code", "error_msg"}`, and every
response carries `X-Request-Id`, so clients meet every documented shape.

This module is the API itself, independent of sockets (`handle` answers one request); the
HTTP/1.1 server around it is `reconciler.emulator.server`.

Authentication (a token, AK/SK signatures, IAM tokens) is the gateway's:
`reconciler.emulator.gateway`.

Test hooks exist twice: as methods of `Emulator` (in-process) and over HTTP under `/_emulator/`
(for an emulator run as a subprocess); those control endpoints need no token.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import random
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, overload
from urllib.parse import urlsplit

from reconciler.desired import MAX_START_MS, MIN_START_MS, parse_start_datetime
from reconciler.emulator.gateway import DEFAULT_TOKEN_TTL, TOKENS_PATH, Gateway
from reconciler.emulator.server import HttpServer, Reply, Request, refusal
from reconciler.model import ReconcilerError

log = logging.getLogger(__name__)

INVALID = "FDI.3002"
MAX_PATH_ID = 64
TASK_ID_EMPTY = ("FDI.3149", "The task ID is empty.")
TASK_NOT_IN_PROJECT = ("FDI.3180", "The task does not belong to the project.")
# The real codes of these two are undocumented; each is one constant so it is easy to correct.
ALREADY_EXISTS = (INVALID, "The task already has a schedule.")
NO_DISPATCH = ("FDI.3181", "The dispatch does not exist.")
THROTTLED = ("APIGW.0308", "The throttling threshold has been reached")
NO_API = ("APIGW.0101", "The API does not exist or has not been published in the environment")
SERVER_ERROR = ("FDI.3000", "Internal server error.")
PERIODS = frozenset({"MIN", "HOUR", "DAY", "WEEK", "MON"})
FAULTS = ("drop_after_create", "error_before_create", "throttle")  # and "status:<code>"
_POST_ONLY = frozenset({"drop_after_create", "error_before_create"})
# A random UUID's version (4) and variant (RFC 4122) bits, as uuid.UUID sets them.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (4 << 76) | (0x8000 << 48)
_DISPATCHES = re.compile(
    r"/v2/([^/]*)/fdi/instances/([^/]*)/tasks/([^/]*)/dispatches(?:/([^/]*))?/?")


def _flat(status: int, error: tuple[str, str]) -> Reply:
    return Reply(status, {"error_code": error[0], "error_msg": error[1]})


def _wrapped(message: str, code: str = INVALID) -> Reply:
    return Reply(400, {"code": 400, "reason": {"error_code": code, "error_msg": message}})


class _Invalid(Exception):
    """A request field the API refuses; the message names the field."""


@dataclass(slots=True)
class _Fault:
    key: str | None
    fault: str
    remaining: int


@dataclass(slots=True)
class _Store:
    dispatches: dict[str, dict[str, Any]] = field(default_factory=dict)
    unknown_tasks: set[str] = field(default_factory=set)
    calls: dict[str, dict[str, int]] = field(default_factory=dict)
    faults: list[_Fault] = field(default_factory=list)


class Emulator:
    """The dispatch API served from a background thread; thread-safe (one lock around the
    store; the server calls the core from its event loop, tests from their own threads)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, latency_ms: float = 0.0,
                 data: str | Path | None = None, token: str | None = None,
                 seed: int | None = None, drop_after_create_rate: float = 0.0,
                 error_before_create_rate: float = 0.0, throttle_rate: float = 0.0,
                 ak: str | None = None, sk: str | None = None, iam_user: str | None = None,
                 iam_password: str | None = None, iam_domain: str | None = None,
                 iam_token_ttl: float = DEFAULT_TOKEN_TTL,
                 clock: Callable[[], float] = time.time) -> None:
        """`port` 0 picks a free port; rates are probabilities per request; `seed` makes the
        faults and dispatch ids repeatable. `token`, `ak`/`sk` and `iam_*` configure the
        gateway (see `reconciler.emulator.gateway`; ValueError when incomplete)."""
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is not in 0..65535")
        if not 0.0 <= latency_ms <= 600_000.0:  # also refuses nan and inf
            raise ValueError(f"latency {latency_ms} ms is not in 0..600000")
        self.host = host
        self.port = port
        self._latency = latency_ms / 1000
        self._data = Path(data) if data is not None else None
        self._gateway = Gateway(token=token, ak=ak, sk=sk, iam_user=iam_user,
                                iam_password=iam_password, iam_domain=iam_domain,
                                iam_token_ttl=iam_token_ttl, clock=clock)
        self._rng = random.Random(seed)  # noqa: S311  (fault rolls and ids, not secrets)
        self._rates = {"drop_after_create": drop_after_create_rate,
                       "error_before_create": error_before_create_rate,
                       "throttle": throttle_rate}
        self._any_rate = any(rate > 0 for rate in self._rates.values())
        self._clock = clock
        self._lock = threading.Lock()
        self._store = _Store()
        self._server: HttpServer | None = None
        self.url = ""
        self._load()

    def start(self) -> str:
        """Serve in a background thread; returns the base URL, e.g. `http://127.0.0.1:PORT`,
        once the server is listening (OSError if it cannot)."""
        if self._server is not None:
            return self.url
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # Bound here, so errors reach the caller; a backlog of 128 takes 50+ clients at once.
        listener = socket.create_server((self.host, self.port), family=family, backlog=128)
        port = listener.getsockname()[1]
        self.url = f"http://[{self.host}]:{port}" if ":" in self.host else \
            f"http://{self.host}:{port}"
        server = HttpServer(self, listener)
        server.start()
        self._server = server
        return self.url

    def stop(self) -> None:
        """Stop serving, close every open connection and wait for the server thread; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @overload
    def calls(self, key: None = None) -> dict[str, dict[str, int]]: ...
    @overload
    def calls(self, key: str) -> dict[str, int]: ...

    def calls(self, key: str | None = None) -> dict[str, dict[str, int]] | dict[str, int]:
        """Requests received per task key and method (all of them, refused ones included)."""
        with self._lock:
            if key is not None:
                return dict(self._store.calls.get(key, {}))
            return {k: dict(v) for k, v in self._store.calls.items()}

    def dispatches(self) -> dict[str, dict[str, Any]]:
        """A copy of every stored dispatch by task key."""
        with self._lock:
            return copy.deepcopy(self._store.dispatches)

    def put_dispatch(self, key: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace a task's dispatch as someone outside the tool would; unvalidated,
        so tests can also plant what the real API should never return."""
        task = _split_key(key)[2]
        with self._lock:
            old = self._store.dispatches.get(key, {})
            now = self._now()
            obj = {"dispatch_id": old.get("dispatch_id") or self._new_id(), "task_id": task,
                   "created_date": old.get("created_date", now), "last_modified_date": now,
                   **body}
            self._store.dispatches[key] = obj
            self._save()
            return dict(obj)

    def delete_dispatch(self, key: str) -> bool:
        """Delete a dispatch outside the tool (the API itself has no delete)."""
        with self._lock:
            found = self._store.dispatches.pop(key, None) is not None
            if found:
                self._save()
            return found

    def add_fault(self, key: str | None, fault: str, times: int = 1) -> None:
        """Make the next `times` matching requests of `key` (None: any task) fail with `fault`.

        drop_after_create and error_before_create hit POSTs only; throttle and status:<code>
        hit any dispatch request. A fault for the key wins over one for any task.
        """
        if fault not in FAULTS and not re.fullmatch(r"status:[1-5][0-9][0-9]", fault):
            raise ValueError(f"unknown fault {fault!r}: one of {', '.join(FAULTS)}, status:<code>")
        if key is not None:
            _split_key(key)
        with self._lock:
            self._store.faults.append(_Fault(key, fault, max(1, times)))

    def mark_unknown_task(self, key: str) -> None:
        """Answer every request of this task with 404 FDI.3180 (not in the project)."""
        _split_key(key)
        with self._lock:
            self._store.unknown_tasks.add(key)
            self._save()

    def iam_calls(self) -> dict[str, int]:
        """Token requests answered: `issued` and `refused` (wrong user, password or account)."""
        return self._gateway.iam_calls()

    def handle(self, method: str, target: str, token: str | None = None, raw: bytes = b"", *,
               headers: Mapping[str, str] | None = None) -> Reply:
        """Answer one request (`token`: its X-Auth-Token, else taken from `headers`);
        independent of sockets: what the server does, with the latency slept here."""
        fields = {name.lower(): value for name, value in (headers or {}).items()}
        if token is not None:
            fields["x-auth-token"] = token
        delay, reply = self.receive(Request(method, target, fields, len(raw), ""), raw)
        if delay:
            time.sleep(delay)
        return reply

    def receive(self, request: Request, body: bytes) -> tuple[float, Reply]:
        """A request has arrived: it is counted and carried out now, and a dispatch request's
        answer is sent after the latency."""
        method = request.method
        if method not in ("GET", "POST", "PUT", "DELETE"):
            return 0.0, refusal(501, f"unsupported method {method}")
        path, match = self._arrive(method, request.target)
        reply = self._respond(method, path, match, request.headers, body, target=request.target)
        return (self._latency if match is not None else 0.0), reply

    def _arrive(self, method: str, target: str) -> tuple[str, re.Match[str] | None]:
        """The request's path and, for a dispatch request (counted here), its match."""
        # The common origin form without urlsplit (a few microseconds a request).
        path = target.partition("?")[0].partition("#")[0] if target[:1] == "/" else \
            urlsplit(target).path
        match = _DISPATCHES.fullmatch(path)
        if match is not None:
            key = "/".join(match.groups()[:3])
            with self._lock:
                counts = self._store.calls.setdefault(key, {})
                counts[method] = counts.get(method, 0) + 1
        return path, match

    def _respond(self, method: str, path: str, match: re.Match[str] | None,
                 headers: Mapping[str, str], raw: bytes, *, target: str) -> Reply:
        """The answer to a request; `headers` has lower-case names, `target` is as received."""
        if path.startswith("/_emulator/"):
            try:
                return self._control(method, path, raw)
            except (ValueError, TypeError, KeyError) as exc:
                return refusal(400, str(exc))
        if match is None:
            if path.rstrip("/") == TOKENS_PATH:
                return self._gateway.issue_token(method, raw)
            return _flat(404, NO_API)
        project, instance, task, dispatch_id = match.groups()
        key = f"{project}/{instance}/{task}"
        if (refused := self._gateway.refuse(method, target, headers, raw, project)) is not None:
            return refused
        if (method, dispatch_id is None) not in (("GET", True), ("POST", True), ("PUT", False)):
            return _flat(404, NO_API)
        fault = self._take_fault(key, method, ("throttle", "error_before_create"), status=True)
        if fault == "throttle":
            return Reply(429, _flat(429, THROTTLED).body, (("Retry-After", "1"),))
        if fault == "error_before_create":
            return _flat(500, SERVER_ERROR)
        if fault is not None:
            code = int(fault.removeprefix("status:"))
            return refusal(code, "injected")
        if not task:
            return _wrapped(TASK_ID_EMPTY[1], TASK_ID_EMPTY[0])
        if not project or not instance:
            return _wrapped(f"The {'project' if not project else 'instance'} ID is empty.")
        for name, value in (("project", project), ("instance", instance), ("task", task),
                            ("dispatch", dispatch_id or "-")):
            if len(value) > MAX_PATH_ID:  # the documented bound of every path parameter
                return _wrapped(f"The {name} ID is longer than {MAX_PATH_ID} characters.")
        with self._lock:
            if key in self._store.unknown_tasks:
                return _flat(404, TASK_NOT_IN_PROJECT)
            if method == "GET":
                current = self._store.dispatches.get(key)
                return Reply(200, dict(current)) if current else _flat(404, NO_DISPATCH)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _wrapped("The request body must be a JSON object.")
        try:
            spec = _validate(body)
        except _Invalid as exc:
            return _wrapped(str(exc))
        if method == "POST":
            return self._create(key, task, spec)
        return self._update(key, str(dispatch_id), spec)

    def _create(self, key: str, task: str, spec: dict[str, Any]) -> Reply:
        with self._lock:
            if key in self._store.dispatches:
                return _wrapped(ALREADY_EXISTS[1], ALREADY_EXISTS[0])
            now = self._now()
            obj = {"dispatch_id": self._new_id(), "task_id": task, **spec,
                   "created_date": now, "last_modified_date": now}
            self._store.dispatches[key] = obj
            self._save()
        if self._take_fault(key, "POST", ("drop_after_create",)) is not None:
            return Reply(drop=True)
        return Reply(200, dict(obj))

    def _update(self, key: str, dispatch_id: str, spec: dict[str, Any]) -> Reply:
        with self._lock:
            current = self._store.dispatches.get(key)
            if current is None or current.get("dispatch_id") != dispatch_id:
                return _flat(404, NO_DISPATCH)
            # The tool always sends the whole spec: replace it, keep identity and creation.
            obj = {"dispatch_id": dispatch_id, "task_id": current.get("task_id"), **spec,
                   "created_date": current.get("created_date"),
                   "last_modified_date": self._now()}
            self._store.dispatches[key] = obj
            self._save()
            return Reply(200, dict(obj))

    def _control(self, method: str, path: str, raw: bytes) -> Reply:
        route = path.removeprefix("/_emulator/").rstrip("/")
        body: Any = json.loads(raw) if raw.strip() and method == "POST" else {}
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        if (method, route) == ("GET", "calls"):
            return Reply(200, self.calls())
        if (method, route) == ("GET", "dispatches"):
            return Reply(200, self.dispatches())
        if (method, route) == ("POST", "dispatches"):
            dispatch = body["dispatch"]
            if not isinstance(dispatch, dict):
                raise ValueError("dispatch must be a JSON object")
            return Reply(200, self.put_dispatch(body["key"], dispatch))
        if method == "DELETE" and route.startswith("dispatches/"):
            return Reply(200, {"deleted": self.delete_dispatch(route.removeprefix("dispatches/"))})
        if (method, route) == ("POST", "faults"):
            self.add_fault(body.get("key"), body["fault"], int(body.get("times", 1)))
            return Reply(200, {})
        if (method, route) == ("POST", "unknown-tasks"):
            self.mark_unknown_task(body["key"])
            return Reply(200, {})
        if (method, route) == ("GET", "iam"):
            return Reply(200, self.iam_calls())
        return refusal(404, f"no control endpoint {route}")

    def _take_fault(self, key: str, method: str, kinds: tuple[str, ...], *,
                    status: bool = False) -> str | None:
        """Consume the first matching injected fault (the key's own first), else roll the rates."""
        if not self._store.faults and not self._any_rate:  # the usual case: nothing injected
            return None

        def matches(f: _Fault) -> bool:
            if f.fault in _POST_ONLY and method != "POST":
                return False
            return f.fault in kinds or (status and f.fault.startswith("status:"))

        with self._lock:
            for wanted in (key, None):
                for fault in self._store.faults:
                    if fault.key == wanted and matches(fault):
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._store.faults.remove(fault)
                        return fault.fault
            for kind in kinds:
                rate = self._rates[kind]
                if rate > 0 and (kind not in _POST_ONLY or method == "POST") \
                        and self._rng.random() < rate:
                    return kind
        return None

    def _new_id(self) -> str:
        # uuid.UUID(int=..., version=4).hex, without building the UUID object.
        bits = self._rng.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET
        return f"{bits:032x}"

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def _load(self) -> None:
        if self._data is None or not self._data.exists():
            return
        try:
            saved = json.loads(self._data.read_text(encoding="utf-8"))
            self._store.dispatches = {str(k): dict(v) for k, v in saved["dispatches"].items()}
            self._store.unknown_tasks = {str(k) for k in saved.get("unknown_tasks", [])}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ReconcilerError(f"emulator data file {self._data}: unreadable ({exc})") from None

    def _save(self) -> None:
        """Rewrite the data file atomically (temp file + os.replace); caller holds the lock.

        No fsync: it protects against power loss, not a killed process, and would serialise
        every request behind the disk.
        """
        if self._data is None:
            return
        saved = {"dispatches": self._store.dispatches,
                 "unknown_tasks": sorted(self._store.unknown_tasks)}
        self._data.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self._data.name}.", dir=self._data.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(saved, handle, indent=2, sort_keys=True)
                handle.write("\n")
            os.replace(tmp, self._data)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _validate(body: Mapping[str, Any]) -> dict[str, Any]:
    """The stored spec fields of a valid TaskDispatch; _Invalid naming the field otherwise."""
    spec: dict[str, Any] = {}
    cron = body.get("cron")
    if cron not in (None, ""):
        if not isinstance(cron, str) or not 8 <= len(cron) <= 255:
            raise _Invalid("cron must be a string of 8-255 characters.")
        spec["cron"] = cron
    quartz = body.get("use_quartz_cron", False)
    if not isinstance(quartz, bool) or quartz != ("cron" in spec):
        raise _Invalid("use_quartz_cron must be true when cron is set, false otherwise.")
    spec["use_quartz_cron"] = quartz
    timezone = body.get("cron_timezone")
    if timezone not in (None, ""):
        if not isinstance(timezone, str) or not quartz:
            raise _Invalid("cron_timezone must be a string and is only allowed with cron.")
        spec["cron_timezone"] = timezone
    period = body.get("period")
    if period not in (None, ""):
        if period not in PERIODS:
            raise _Invalid(f"period must be one of {', '.join(sorted(PERIODS))}.")
        spec["period"] = period
    interval = body.get("dispatch_interval")
    if interval is not None:
        if isinstance(interval, bool) or not isinstance(interval, int) or not 1 <= interval <= 59:
            raise _Invalid("dispatch_interval must be an integer from 1 to 59.")
        spec["dispatch_interval"] = interval
    if quartz and ("period" in spec or "dispatch_interval" in spec):
        raise _Invalid("period and dispatch_interval must be empty when use_quartz_cron is true.")
    if not quartz and ("period" not in spec or "dispatch_interval" not in spec):
        raise _Invalid("period and dispatch_interval are required without cron.")
    remark = body.get("remark")
    if remark is not None:
        if not isinstance(remark, str) or len(remark) > 36:
            raise _Invalid("remark must be a string of at most 36 characters.")
        spec["remark"] = remark
    start = body.get("start_datetime")
    if start is not None:
        try:
            spec["start_datetime"] = parse_start_datetime(start)
        except ValueError:
            raise _Invalid(f"start_datetime must be epoch milliseconds in {MIN_START_MS}-"
                           f"{MAX_START_MS} or an ISO-8601 time.") from None
    return spec


def _split_key(key: str) -> tuple[str, str, str]:
    parts = key.split("/") if isinstance(key, str) else []
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"invalid key {key!r}: expected PROJECT_ID/INSTANCE_ID/TASK_ID")
    return parts[0], parts[1], parts[2]
