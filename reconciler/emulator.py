"""A local ROMA Connect FDI dispatch API, for trying `apply` without a cloud account and for tests.

It serves POST/GET/PUT of `/v2/{project}/fdi/instances/{instance}/tasks/{task}/dispatches[/{id}]`
with the documented validation and error codes, one dispatch per task, the gateway's token check,
optional JSON persistence, and injectable latency and faults. 400 errors use the wrapped body
`{"code": 400, "reason": {...}}`, all others the flat `{"error_code", "error_msg"}`, and every
response carries `X-Request-Id`, so clients meet every documented shape.

Built on the standard library's `ThreadingHTTPServer` (a thread per connection, HTTP/1.1
keep-alive): no extra dependency, and it keeps up with 50 concurrent clients at 20 ms latency.

Test hooks exist twice: as methods of `Emulator` (in-process) and over HTTP under `/_emulator/`
(for an emulator run as a subprocess); those control endpoints need no token.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hmac
import json
import logging
import os
import random
import re
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self, TextIO, overload
from urllib.parse import urlsplit

from reconciler.desired import MAX_START_MS, MIN_START_MS, parse_start_datetime
from reconciler.model import ReconcilerError

log = logging.getLogger(__name__)

INVALID = "FDI.3002"
TASK_ID_EMPTY = ("FDI.3149", "The task ID is empty.")
TASK_NOT_IN_PROJECT = ("FDI.3180", "The task does not belong to the project.")
# The real codes of these two are undocumented; each is one constant so it is easy to correct.
ALREADY_EXISTS = (INVALID, "The task already has a schedule.")
NO_DISPATCH = ("FDI.3181", "The dispatch does not exist.")
BAD_AUTH = ("APIGW.0301", "Incorrect IAM authentication information")
THROTTLED = ("APIGW.0308", "The throttling threshold has been reached")
NO_API = ("APIGW.0101", "The API does not exist or has not been published in the environment")
SERVER_ERROR = ("FDI.3000", "Internal server error.")
PERIODS = frozenset({"MIN", "HOUR", "DAY", "WEEK", "MON"})
FAULTS = ("drop_after_create", "error_before_create", "throttle")  # and "status:<code>"
_POST_ONLY = frozenset({"drop_after_create", "error_before_create"})
_DISPATCHES = re.compile(
    r"/v2/([^/]*)/fdi/instances/([^/]*)/tasks/([^/]*)/dispatches(?:/([^/]*))?/?")
_MAX_BODY = 1 << 20


@dataclass(frozen=True, slots=True)
class Reply:
    """What to answer; `drop` closes the connection without answering."""

    status: int = 200
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False


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
    """The dispatch API in a background thread; thread-safe (one lock around the store)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, latency_ms: float = 0.0,
                 data: str | Path | None = None, token: str | None = None,
                 seed: int | None = None, drop_after_create_rate: float = 0.0,
                 error_before_create_rate: float = 0.0, throttle_rate: float = 0.0,
                 clock: Callable[[], float] = time.time) -> None:
        """`port` 0 picks a free port; rates are probabilities per request; `seed` makes the
        faults and dispatch ids repeatable."""
        self.host = host
        self.port = port
        self._latency = latency_ms / 1000
        self._data = Path(data) if data is not None else None
        self._token = token
        self._rng = random.Random(seed)  # noqa: S311  (fault rolls and ids, not secrets)
        self._rates = {"drop_after_create": drop_after_create_rate,
                       "error_before_create": error_before_create_rate,
                       "throttle": throttle_rate}
        self._clock = clock
        self._lock = threading.Lock()
        self._store = _Store()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self._load()

    def start(self) -> str:
        """Serve in a background thread; returns the base URL, e.g. `http://127.0.0.1:PORT`."""
        if self._server is not None:
            return self.url
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._server = _Server((self.host, self.port), self, family)
        port = self._server.server_address[1]
        self.url = f"http://[{self.host}]:{port}" if ":" in self.host else \
            f"http://{self.host}:{port}"
        # A short poll interval keeps stop() fast; serve_forever only checks it between polls.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="emulator", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and close every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join()

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

    def handle(self, method: str, target: str, token: str | None, raw: bytes) -> Reply:
        """Answer one request (`token`: its X-Auth-Token); independent of sockets."""
        path = urlsplit(target).path
        if path.startswith("/_emulator/"):
            try:
                return self._control(method, path, raw)
            except (ValueError, TypeError, KeyError) as exc:
                return Reply(400, {"error_code": "EMU.400", "error_msg": str(exc)})
        match = _DISPATCHES.fullmatch(path)
        if match is None:
            return _flat(404, NO_API)
        project, instance, task, dispatch_id = match.groups()
        key = f"{project}/{instance}/{task}"
        with self._lock:
            counts = self._store.calls.setdefault(key, {})
            counts[method] = counts.get(method, 0) + 1
        if self._latency:
            time.sleep(self._latency)
        if not self._authorised(token):
            return _flat(401, BAD_AUTH)
        if (method, dispatch_id is None) not in (("GET", True), ("POST", True), ("PUT", False)):
            return _flat(404, NO_API)
        fault = self._take_fault(key, method, ("throttle", "error_before_create"), status=True)
        if fault == "throttle":
            return Reply(429, _flat(429, THROTTLED).body, (("Retry-After", "1"),))
        if fault == "error_before_create":
            return _flat(500, SERVER_ERROR)
        if fault is not None:
            code = int(fault.removeprefix("status:"))
            return Reply(code, {"error_code": f"EMU.{code}", "error_msg": "injected"})
        if not task:
            return _wrapped(TASK_ID_EMPTY[1], TASK_ID_EMPTY[0])
        if not project or not instance:
            return _wrapped(f"The {'project' if not project else 'instance'} ID is empty.")
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
        return Reply(404, {"error_code": "EMU.404", "error_msg": f"no control endpoint {route}"})

    def _authorised(self, token: str | None) -> bool:
        if not token:
            return False
        if self._token is None:
            return True
        return hmac.compare_digest(token.encode(), self._token.encode())

    def _take_fault(self, key: str, method: str, kinds: tuple[str, ...], *,
                    status: bool = False) -> str | None:
        """Consume the first matching injected fault (the key's own first), else roll the rates."""
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
        return uuid.UUID(int=self._rng.getrandbits(128), version=4).hex

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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops connections when 50 clients connect at once.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], emulator: Emulator,
                 family: socket.AddressFamily) -> None:
        self.address_family = family
        self.emulator = emulator
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket, is_open: bool) -> None:
        with self._open_lock:
            (self._open.add if is_open else self._open.discard)(connection)

    def close_connections(self) -> None:
        """Wake idle keep-alive threads, which would otherwise wait for their client."""
        with self._open_lock:
            for connection in self._open:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def _serve(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_BODY:
            self.close_connection = True
            self._send(Reply(400, {"error_code": "EMU.400", "error_msg": "bad Content-Length"}))
            return
        raw = self.rfile.read(length) if length else b""
        reply = self.server.emulator.handle(self.command, self.path,
                                            self.headers.get("X-Auth-Token"), raw)
        if reply.drop:
            self.close_connection = True
            return
        self._send(reply)

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def _send(self, reply: Reply) -> None:
        data = json.dumps(reply.body if reply.body is not None else {}).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Request-Id", uuid.uuid4().hex)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability in 0..1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `reconciler emulator`."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8787, help="port (0: pick a free one)")
    parser.add_argument("--latency-ms", type=float, default=0.0, metavar="N",
                        help="added latency per request")
    parser.add_argument("--data", metavar="FILE", help="persist dispatches in this JSON file")
    parser.add_argument("--token", help="accept only this X-Auth-Token (default: any non-empty)")
    parser.add_argument("--seed", type=int, help="seed for fault injection and ids")
    for fault in ("drop-after-create", "error-before-create", "throttle"):
        parser.add_argument(f"--{fault}-rate", type=_rate, default=0.0, metavar="P",
                            help=f"probability of the {fault.replace('-', ' ')} fault")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_from_args(args: argparse.Namespace, out: TextIO) -> int:
    """Serve until interrupted (Ctrl-C or SIGTERM); prints the URL first."""
    emulator = Emulator(host=args.host, port=args.port, latency_ms=args.latency_ms,
                        data=args.data, token=args.token, seed=args.seed,
                        drop_after_create_rate=args.drop_after_create_rate,
                        error_before_create_rate=args.error_before_create_rate,
                        throttle_rate=args.throttle_rate)
    try:
        url = emulator.start()
    except OSError as exc:
        raise ReconcilerError(f"emulator: cannot listen on {args.host}:{args.port}: "
                              f"{exc.strerror or exc}") from None
    print(f"emulator listening on {url} (Ctrl-C to stop)", file=out, flush=True)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        emulator.stop()
    return 0
