"""The emulator's HTTP/1.1 server: an asyncio Protocol served from a background thread.

A minimal HTTP/1.1 server rather than `http.server`: the emulator is the far end of the apply and
refresh benchmarks, on the same 2 cores as the client, so its CPU per request, and how late it
answers, bound them. `http.server` (a thread per connection, `email` header parsing) costs about
twice the CPU per request of asyncio streams, and streams were replaced in turn by this Protocol:
bytes are parsed in the loop's callback as they arrive, and the answer is written by a timer set
for the request's arrival plus the injected latency. With streams, a request waited for its task
to be scheduled before its latency even began, so under 50 concurrent clients answers came
several milliseconds late and `python bench/apply.py` measured the emulator as much as the client.

A request is carried out when it arrives, and its answer encoded then; the timer only writes the
bytes. Answers fall due in bursts (a client's burst of requests arrives in one pass of the loop),
and whatever is left for the timer is done for each answer of the burst one after another, in
the way of the client's next requests; work done at arrival is done while the answers wait
anyway. Against 50 clients at 20 ms (1,000 requests): 100 us more work per request at answer
time lengthened an apply's run by 15-90 ms, at arrival by nothing measurable; carried out at
arrival, answers left 0.51 ms after they were due on average instead of 0.72 ms, and a minimal
client's run went from 1.19-1.25x its floor to 1.09-1.11x.

What it speaks: `Content-Length` bodies only (chunked requests get 411), keep-alive and
pipelining (answered in order; reading pauses while more than a request's worth waits, and while
the client leaves its answers unread),
`Expect: 100-continue`, 64 KiB of header, 1 MiB of body. A malformed request is answered 4xx/5xx
with `Connection: close`, after which the connection is half-closed and what the client still
sends is discarded for up to a second: closing with unread data would reset the connection and
could destroy the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol

log = logging.getLogger("reconciler.emulator")

MAX_HEAD = 64 << 10
MAX_BODY = 1 << 20
REASONS = {status.value: status.phrase for status in HTTPStatus}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP method or header name
_FIELD = r"([!#$%&'*+.^_`|~0-9A-Za-z-]+):([^\r\n]*)\r\n"
_FIELD_BLOCK = re.compile(f"(?:{_FIELD})*")
_FIELDS = re.compile(_FIELD)
_DISCARD_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Reply:
    """What to answer; `drop` closes the connection without answering."""

    status: int = 200
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]  # names lower-cased; repeated fields joined with ", "
    length: int
    connection: str  # the answer's Connection header: "close", "keep-alive" or "" (none)


class Application(Protocol):
    def receive(self, request: Request, body: bytes) -> tuple[float, Reply]:
        """On arrival: carry the request out; how long after its arrival to answer, and what."""


class BadRequest(Exception):
    """A request refused before the application sees it: (status, message)."""


def refusal(status: int, message: str) -> Reply:
    """The emulator's own errors (not the API's): EMU.<status>."""
    return Reply(status, {"error_code": f"EMU.{status}", "error_msg": message})


class HttpServer:
    """Serves `app` on `listener` from a thread of its own until `stop()`."""

    def __init__(self, app: Application, listener: socket.socket) -> None:
        self._app = app
        self._listener = listener
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Event | None = None
        self._connections: set[_Connection] = set()

    def start(self) -> None:
        """Serve in a background thread; returns once the server is accepting."""
        started: Future[None] = Future()
        thread = threading.Thread(target=self._run, args=(started,), name="emulator",
                                  daemon=True)
        thread.start()
        started.result()  # raises what kept the server from starting
        self._thread = thread

    def stop(self) -> None:
        """Stop serving, close every open connection and wait for the thread; idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._loop is not None and self._closing is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                self._loop.call_soon_threadsafe(self._closing.set)
        thread.join()

    def _run(self, started: Future[None]) -> None:
        try:
            selector = _WakeSelector()
            with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selector)) as runner:
                runner.run(self._serve(started, selector))
        except Exception as exc:
            if started.done():
                log.exception("emulator: the server failed")
            else:
                started.set_exception(exc)
        finally:
            self._listener.close()

    async def _serve(self, started: Future[None], selector: _WakeSelector) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._closing = asyncio.Event()
        server = await loop.create_server(
            lambda: _Connection(self._app, self._connections, selector.arrival),
            sock=self._listener)
        started.set_result(None)
        try:
            await self._closing.wait()
        finally:
            server.close()
            for connection in list(self._connections):  # idle keep-alive ones included
                connection.abort()
            await server.wait_closed()
            await asyncio.sleep(0)  # let the closed transports release their sockets


class _WakeSelector(selectors.DefaultSelector):
    """The platform's selector, noting when each wait ends.

    A request's latency runs from its arrival, not from when this single thread gets round to
    reading it: 50 requests arriving together are read one after another, and timing each from
    its reading would add that queue to its answer, which an API serving them side by side does
    not. Against 50 clients at 20 ms, a client saw its answers after 22.8 ms on average timed
    from their reading, 22.2 ms timed from the wait's end.
    """

    def __init__(self) -> None:
        super().__init__()
        self._woke = time.monotonic()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(timeout)
        self._woke = time.monotonic()  # the clock of asyncio's loop.time()
        return ready

    def arrival(self) -> float:
        """When the bytes being read now arrived, as far as the loop can tell: when its last
        wait ended. Bytes that came in after that, before the loop got to their socket in the
        same pass, count as arrived then too (a pass takes about a millisecond here); a
        pipelined request waiting for the one before it is timed from the pass that takes it."""
        return self._woke


class _Connection(asyncio.Protocol):
    """One client connection, answered in order, one request at a time.

    Driven by the event loop's callbacks: bytes are parsed as they arrive, and a request's
    answer is written by a timer `latency` after it arrived, so the answer time is the latency
    itself, not the latency plus the time this server took to get round to the request. The
    loop wakes no task and makes no stream objects per request.
    """

    def __init__(self, app: Application, registry: set[_Connection],
                 arrival: Callable[[], float] = time.monotonic) -> None:
        self._app = app
        self._arrival = arrival  # when the request being read arrived
        self._registry = registry
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._head: Request | None = None  # parsed, its body still arriving
        self._busy = False  # a request is being answered: later ones wait in the buffer
        self._continued = False
        self._discarding = False
        self._eof = False
        self._write_paused = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._registry.add(self)  # (asyncio has set TCP_NODELAY on its socket)

    def connection_lost(self, exc: Exception | None) -> None:
        # A complete request whose answer is pending is still carried out, as an API does when
        # its client has gone (a killed apply): only the answer is lost.
        self._registry.discard(self)
        self._transport = None

    def eof_received(self) -> bool:
        # The client has sent all it will: what is complete is still answered, then we close.
        self._eof = True
        if self._discarding or not (self._busy or self._write_paused):
            self._close()
        return True  # keep the write side open for an answer still to come

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        self._buffer += data
        if not self._busy:
            self._next()
        elif len(self._buffer) > MAX_HEAD + MAX_BODY and self._transport is not None:
            self._transport.pause_reading()  # pipelined faster than answered: wait

    def abort(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.abort()

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def pause_writing(self) -> None:
        # The client is not reading its answers: read no more requests until it does.
        self._write_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._transport is not None:
            self._transport.resume_reading()
            self._next()

    def _next(self) -> None:
        """Answer the complete requests in the buffer, in order, until one has to wait: for
        its latency, for more bytes, or for the client to read the answers already written.
        A loop, not a recursion: a client may pipeline thousands of requests."""
        while self._transport is not None and not self._busy and not self._write_paused:
            taken = self._take()
            if taken is None:
                return
            request, body = taken
            self._busy = True
            connection = request.connection
            try:
                delay, reply = self._app.receive(request, body)
                answer = None if reply.drop else encode(
                    reply, connection, head_only=request.method == "HEAD")
            except Exception:
                log.exception("emulator: %s %s failed", request.method, request.target)
                delay, reply, connection = 0.0, _server_error(), "close"
                answer = encode(reply, connection)
            log.debug("emulator: %s %s: %s", request.method, request.target,
                      "dropped" if reply.drop else reply.status)
            if delay > 0:
                self._timer = asyncio.get_running_loop().call_at(
                    self._arrival() + delay, self._answer_later, answer, connection)
                return
            if not self._answer(answer, connection):
                return

    def _take(self) -> tuple[Request, bytes] | None:
        """The next complete request and its body, taken from the buffer; None when it is not
        all there yet (or was refused, or will never come)."""
        transport = self._transport
        assert transport is not None
        buffer = self._buffer
        request = self._head
        if request is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    self._refuse(431, f"the header exceeds {MAX_HEAD} bytes")
                elif self._eof:
                    self._close()
                return None
            if end + 4 > MAX_HEAD:
                self._refuse(431, f"the header exceeds {MAX_HEAD} bytes")
                return None
            try:
                request = parse_head(bytes(buffer[:end + 4]))
            except BadRequest as exc:
                self._refuse(*exc.args)
                return None
            del buffer[:end + 4]
            self._head = request
            self._continued = False
        if len(buffer) < request.length:
            if self._eof:
                self._close()
                return None
            if not self._continued and request.headers.get(
                    "expect", "").lower() == "100-continue":
                self._continued = True
                transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return None
        body = bytes(buffer[:request.length])
        del buffer[:request.length]
        self._head = None
        return request, body

    def _answer_later(self, answer: bytes | None, connection: str) -> None:
        self._timer = None
        if self._answer(answer, connection):
            self._next()  # a pipelined request may be waiting; at EOF, the end

    def _answer(self, answer: bytes | None, connection: str) -> bool:
        """Write the encoded answer (None: drop the connection instead); whether the
        connection goes on."""
        self._busy = False
        transport = self._transport
        if transport is None:  # the client has gone
            return False
        if answer is None:
            transport.close()
            return False
        transport.write(answer)
        if connection == "close" or transport.is_closing():
            transport.close()
            return False
        if not self._write_paused:
            transport.resume_reading()  # if a flood of pipelined requests had paused it
        return True

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request that cannot be read, then half-close and discard what the client
        still sends, for up to a second: closing with unread data would reset the connection
        and could destroy the answer."""
        log.debug("emulator: refused a request: %d %s", status, message)
        transport = self._transport
        assert transport is not None
        self._busy = self._discarding = True
        self._buffer.clear()
        transport.write(encode(refusal(status, message), "close"))
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(_DISCARD_SECONDS, self._close)


def _server_error() -> Reply:
    return Reply(500, {"error_code": "FDI.3000", "error_msg": "Internal server error."})


def parse_head(head: bytes) -> Request:
    """The request line and header fields of `head` (ending with CRLF CRLF); BadRequest if
    malformed (400), chunked (411), with too large a body (413) or not HTTP/1.x (505)."""
    text = head.decode("latin-1").lstrip("\r\n")  # empty lines before a request are allowed
    request_line, _, block = text[:-2].partition("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise BadRequest(400, f"malformed request line {request_line[:100]!r}")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(505 if re.fullmatch(r"HTTP/[0-9.]+", version) else 400,
                         f"unsupported protocol {version[:20]!r}")
    headers: dict[str, str] = {}
    # One regex over all the fields in the common case; the line-by-line loop below names the
    # malformed field, and also reads fields whose values hold a lone CR or LF.
    fields = _FIELDS.findall(block) if _FIELD_BLOCK.fullmatch(block) else _fields(block)
    for raw_name, raw_value in fields:
        name, value = raw_name.lower(), raw_value.strip(" \t")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if "transfer-encoding" in headers:
        raise BadRequest(411, "Transfer-Encoding is not supported: send a Content-Length")
    length = headers.get("content-length", "0")
    if not (length.isascii() and length.isdigit()):  # so are repeated, differing values
        raise BadRequest(400, "bad Content-Length")
    digits = length.lstrip("0") or "0"
    if len(digits) > 9 or int(digits) > MAX_BODY:
        raise BadRequest(413, f"the body exceeds {MAX_BODY} bytes")
    tokens = {token.strip() for token in headers.get("connection", "").lower().split(",")}
    keep = "close" not in tokens and (version == "HTTP/1.1" or "keep-alive" in tokens)
    connection = "close" if not keep else "" if version == "HTTP/1.1" else "keep-alive"
    if target.startswith("//"):  # a path, not an authority (as http.server reads it)
        target = "/" + target.lstrip("/")
    return Request(method, target, headers, int(digits), connection)


def _fields(block: str) -> list[tuple[str, str]]:
    """The (name, value) of each CRLF-ended line of `block`; BadRequest naming the first
    malformed one."""
    fields = []
    for line in block.split("\r\n")[:-1]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):  # also refuses obsolete line folding
            raise BadRequest(400, f"malformed header field {line[:100]!r}")
        fields.append((name, value))
    return fields


_date = (0, "")
# Request ids need only be unique, not secret: drawn without a system call per answer.
_request_ids = random.Random(os.urandom(16))  # noqa: S311


def encode(reply: Reply, connection: str, *, head_only: bool = False) -> bytes:
    """The whole answer in one buffer, so it leaves in one write."""
    global _date  # noqa: PLW0603  (a per-second cache; a race only formats it twice)
    if _date[0] != (now := int(time.time())):
        _date = (now, formatdate(now, usegmt=True))
    data = json.dumps(reply.body if reply.body is not None else {}).encode()
    head = (f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, '')}\r\n"
            f"Server: reconciler-emulator\r\nDate: {_date[1]}\r\n"
            "Content-Type: application/json;charset=UTF-8\r\n"
            f"Content-Length: {len(data)}\r\n"
            f"X-Request-Id: {_request_ids.getrandbits(128):032x}\r\n")
    head += "".join(f"{name}: {value}\r\n" for name, value in reply.headers)
    if connection:
        head += f"Connection: {connection}\r\n"
    return (head + "\r\n").encode("latin-1") + (b"" if head_only else data)
