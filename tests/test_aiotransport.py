"""The asyncio HTTP/1.1 transport against real local servers, and its response parser alone."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import random
import shutil
import socket
import ssl
import subprocess
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.aiotransport import (
    MAX_HEAD,
    AsyncHttp1Transport,
    ProxyError,
    ResponseParser,
    async_for_endpoint,
)

CONTEXT = httpx.create_ssl_context()
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(main: Coroutine[Any, Any, None], expected: str | None = None) -> None:
    """Run a test's coroutine; an exception reported to the loop (from a protocol callback,
    say) fails the test even when the awaiting code never saw it, unless its message is
    `expected`."""
    reported: list[dict[str, Any]] = []

    async def wrapper() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: reported.append(ctx))
        await main

    asyncio.run(wrapper())
    assert [ctx for ctx in reported if ctx["message"] != expected] == []


class Server:
    """A local asyncio server calling `handle` for each connection; counts them, and the ones
    the client closed."""

    def __init__(self, handle: Handler, tls: ssl.SSLContext | None = None) -> None:
        self._handle = handle
        self._tls = tls
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0
        self.closed_by_client = 0
        self.url = ""

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._tls)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self._tls else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        # Ending normally even when cancelled at exit, which asyncio's stream server expects.
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def wait_for_client_close(self, reader: asyncio.StreamReader) -> None:
        """For handlers: wait until the client closes this connection, and count it."""
        if await reader.read() == b"":
            self.closed_by_client += 1


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """The next request's head and body, or None when the client closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


def answering(*responses: bytes, close: bool = False) -> Handler:
    """A handler answering each request, on whichever connection, with the next of `responses`
    (the last one repeated); closing the connection after one response when `close`."""
    answered = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        while await read_request(reader) is not None:
            writer.write(responses[min(answered, len(responses) - 1)])
            answered += 1
            await writer.drain()
            if close:
                return
    return handle


def transport(read_timeout: float = 2.0, max_idle: int = 100) -> AsyncHttp1Transport:
    return AsyncHttp1Transport(CONTEXT, connect_timeout=2.0, read_timeout=read_timeout,
                               max_idle=max_idle)


async def send(t: httpx.AsyncBaseTransport, method: str, url: str,
               **kwargs: Any) -> httpx.Response:
    response = await t.handle_async_request(httpx.Request(method, url, **kwargs))
    await response.aread()
    return response


# Sending, keep-alive and concurrency.

def test_requests_share_one_keep_alive_connection() -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await read_request(reader)) is not None:
            seen.append(request)
            writer.write(OK)

    async def main() -> None:
        async with Server(handle) as server:
            t = transport()
            for _ in range(3):
                response = await send(t, "POST", f"{server.url}/v2/x?y=1", content=b'{"a":1}',
                                      headers={"X-Auth-Token": "tok"})
                assert response.status_code == 200
                assert response.json() == {}
                assert response.reason_phrase == "OK"
                assert response.http_version == "HTTP/1.1"
            await t.aclose()
            assert server.connections == 1

    run(main())
    head, body = seen[0]
    assert head.startswith(b"POST /v2/x?y=1 HTTP/1.1\r\n")
    assert b"\r\nx-auth-token: tok\r\n" in head.lower()
    assert b"\r\nhost: 127.0.0.1:" in head.lower()
    assert body == b'{"a":1}'


def test_through_an_httpx_client() -> None:
    async def main() -> None:
        async with Server(answering(OK)) as server, httpx.AsyncClient(
                transport=transport()) as client:
            response = await client.get(f"{server.url}/")
            assert response.json() == {}

    run(main())


def test_concurrent_requests_get_their_own_responses() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await read_request(reader)) is not None:
            path = request[0].split(b" ")[1]
            await asyncio.sleep(random.random() / 100)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))

    async def main() -> None:
        async with Server(handle) as server:
            t = transport()
            for _ in range(2):  # the second round on the pooled connections
                paths = [f"/task/{n}" for n in range(50)]
                responses = await asyncio.gather(
                    *(send(t, "GET", f"{server.url}{path}") for path in paths))
                assert [r.text for r in responses] == paths
            assert server.connections <= 50
            await t.aclose()

    run(main())


def test_idle_connections_beyond_max_idle_are_closed() -> None:
    server: Server

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(0.05)  # so that the five requests need five connections
        writer.write(OK)
        await server.wait_for_client_close(reader)

    async def main() -> None:
        nonlocal server
        async with Server(handle) as server:
            t = transport(max_idle=2)
            await asyncio.gather(*(send(t, "GET", server.url) for _ in range(5)))
            await asyncio.sleep(0.05)
            assert (server.connections, server.closed_by_client) == (5, 3)
            await t.aclose()
            await asyncio.sleep(0.05)
            assert server.closed_by_client == 5

    run(main())


def test_header_with_a_line_break_is_refused() -> None:
    async def main() -> None:
        with pytest.raises(httpx.LocalProtocolError):
            await send(transport(), "GET", "http://127.0.0.1:9/",
                       headers={"X-A": "b\r\nX-Injected: 1"})

    run(main())


def test_body_from_an_iterator_is_sent_chunked() -> None:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"0\r\n\r\n"))
        writer.write(OK)

    async def parts() -> Any:
        yield b"ab"
        yield b"cd"

    async def main() -> None:
        async with Server(handle) as server:
            t = transport()
            assert (await send(t, "POST", server.url, content=parts())).status_code == 200
            await t.aclose()

    run(main())
    assert b"\r\nTransfer-Encoding: chunked\r\n" in seen[0]
    assert seen[0].endswith(b"\r\n\r\n4\r\nabcd\r\n0\r\n\r\n")


# Response framing.

def test_chunked_body_with_extensions_and_trailers() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;name=value\r\nhello\r\n1 ; x\r\n \r\n6\r\nworld!\r\n"
               b"0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n")

    async def main() -> None:
        async with Server(answering(chunked)) as server:
            t = transport()
            for _ in range(2):
                assert (await send(t, "GET", server.url)).content == b"hello world!"
            await t.aclose()
            assert server.connections == 1

    run(main())


@pytest.mark.parametrize("coding", ["gzip", "deflate, gzip"])
def test_a_content_coded_body_is_decoded_by_httpx(coding: str) -> None:
    payload = b'{"dispatch_id": "d1"}'
    # Codings are listed in the order they were applied.
    body = gzip.compress(zlib.compress(payload) if coding.startswith("deflate") else payload)
    response = (b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n%s"
                % (coding.encode(), len(body), body))

    async def main() -> None:
        async with Server(answering(response)) as server:
            t = transport()
            got = await t.handle_async_request(httpx.Request("GET", server.url))
            assert await got.aread() == payload
            await t.aclose()

    run(main())


def test_an_identity_body_is_the_content_at_once() -> None:
    response = b"HTTP/1.1 200 OK\r\nContent-Encoding: identity\r\nContent-Length: 2\r\n\r\n{}"

    async def main() -> None:
        async with Server(answering(response, OK)) as server:
            t = transport()
            for _ in range(2):
                got = await t.handle_async_request(httpx.Request("GET", server.url))
                assert got.content == b"{}"  # no aread() needed: the body was complete
                assert got.is_closed  # and nothing is left to release
                assert await got.aread() == b"{}"
                await got.aclose()
                assert got.json() == {}
            await t.aclose()

    run(main())


def test_body_delimited_by_close_and_connection_not_reused() -> None:
    async def main() -> None:
        async with Server(answering(b"HTTP/1.1 200 OK\r\n\r\nuntil close", close=True)) as server:
            t = transport()
            for _ in range(2):
                assert (await send(t, "GET", server.url)).content == b"until close"
            await t.aclose()
            assert server.connections == 2

    run(main())


def test_interim_responses_are_skipped() -> None:
    interim = (b"HTTP/1.1 100 Continue\r\n\r\n"
               b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + OK)

    async def main() -> None:
        async with Server(answering(interim)) as server:
            t = transport()
            response = await send(t, "POST", server.url, content=b"{}")
            assert (response.status_code, response.content) == (200, b"{}")
            assert "link" not in response.headers
            await t.aclose()

    run(main())


def test_head_204_and_304_have_no_body_and_keep_the_connection() -> None:
    responses = (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                 b"HTTP/1.1 204 No Content\r\n\r\n",
                 b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
                 OK)

    async def main() -> None:
        async with Server(answering(*responses)) as server:
            t = transport()
            head = await send(t, "HEAD", server.url)
            assert (head.status_code, head.headers["content-length"], head.content) == (
                200, "10", b"")
            assert (await send(t, "DELETE", server.url)).status_code == 204
            assert (await send(t, "GET", server.url)).status_code == 304
            assert (await send(t, "GET", server.url)).content == b"{}"
            await t.aclose()
            assert server.connections == 1

    run(main())


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}extra",
])
def test_connection_not_reused_after_close_http10_or_excess_bytes(response: bytes) -> None:
    async def main() -> None:
        async with Server(answering(response)) as server:
            t = transport()
            for _ in range(2):
                assert (await send(t, "GET", server.url)).content == b"{}"
            await t.aclose()
            assert server.connections == 2

    run(main())


def test_http10_keep_alive_is_reused() -> None:
    response = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}"

    async def main() -> None:
        async with Server(answering(response)) as server:
            t = transport()
            for _ in range(2):
                assert (await send(t, "GET", server.url)).http_version == "HTTP/1.0"
            await t.aclose()
            assert server.connections == 1

    run(main())


def test_idle_connection_closed_by_server_is_replaced_before_sending() -> None:
    async def main() -> None:
        # The server keeps nothing alive, yet says nothing about it.
        async with Server(answering(OK, close=True)) as server:
            t = transport()
            await send(t, "GET", server.url)
            await asyncio.sleep(0.05)
            assert (await send(t, "POST", server.url, content=b"{}")).status_code == 200
            await t.aclose()
            assert server.connections == 2

    run(main())


# Errors.

def free_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


def test_connection_refused_is_connect_error() -> None:
    async def main() -> None:
        with pytest.raises(httpx.ConnectError):
            await send(transport(), "POST", f"http://127.0.0.1:{free_port()}/", content=b"{}")

    run(main())


def test_slow_connect_is_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    async def never(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(10)

    async def main() -> None:
        monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", never)
        t = AsyncHttp1Transport(CONTEXT, connect_timeout=0.05, read_timeout=1)
        with pytest.raises(httpx.ConnectTimeout):
            await send(t, "GET", "http://127.0.0.1:9/")

    run(main())


def test_unsupported_scheme() -> None:
    async def main() -> None:
        with pytest.raises(httpx.UnsupportedProtocol):
            await send(transport(), "GET", "ftp://127.0.0.1/")

    run(main())


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts and reads, never answers."""
    await reader.read()


def test_no_answer_is_read_timeout_and_the_connection_is_dropped() -> None:
    server: Server

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await server.wait_for_client_close(reader)

    async def main() -> None:
        nonlocal server
        async with Server(handle) as server:
            t = transport(read_timeout=0.1)
            with pytest.raises(httpx.ReadTimeout):
                await send(t, "GET", server.url)
            await asyncio.sleep(0.05)
            assert server.closed_by_client == 1
            # The request's own timeout comes first.
            with pytest.raises(httpx.ReadTimeout):
                await asyncio.wait_for(send(transport(read_timeout=5), "GET", server.url,
                                            extensions={"timeout": {"read": 0.1}}), 1)

    run(main())


async def close_without_answer(reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
    await read_request(reader)


def test_closed_without_response_is_remote_protocol_error() -> None:
    async def main() -> None:
        async with Server(close_without_answer) as server:
            with pytest.raises(httpx.RemoteProtocolError,
                               match=r"^the server closed the connection without a response$"):
                await send(transport(), "POST", server.url, content=b"{}")

    run(main())


def test_closed_before_the_response_is_complete() -> None:
    truncated = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}"

    async def main() -> None:
        async with Server(answering(truncated, close=True)) as server:
            with pytest.raises(httpx.RemoteProtocolError, match="before the response"):
                await send(transport(), "GET", server.url)

    run(main())


@pytest.mark.parametrize("response", [
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    b"garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nNo-Colon\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n",
])
def test_malformed_response_is_remote_protocol_error_and_drops_the_connection(
        response: bytes) -> None:
    async def main() -> None:
        async with Server(answering(response, OK)) as server:
            t = transport()
            with pytest.raises(httpx.RemoteProtocolError):
                await send(t, "GET", server.url)
            assert (await send(t, "GET", server.url)).content == b"{}"
            await t.aclose()
            assert server.connections == 2

    run(main())


def test_server_reset_while_sending_is_write_error() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()  # a reset, with the body still coming

    async def main() -> None:
        async with Server(handle) as server:
            with pytest.raises(httpx.WriteError):
                await send(transport(), "POST", server.url, content=b"x" * (16 << 20))

    run(main())


def test_cancelled_request_closes_its_connection() -> None:
    server: Server

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if server.connections == 1:
            await server.wait_for_client_close(reader)
        else:
            writer.write(OK)
            await reader.read()

    async def main() -> None:
        nonlocal server
        async with Server(handle) as server:
            t = transport()
            task = asyncio.create_task(send(t, "GET", server.url))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.05)
            assert server.closed_by_client == 1
            assert (await send(t, "GET", server.url)).status_code == 200
            await t.aclose()
            assert server.connections == 2

    run(main())


def test_aclose_fails_a_request_in_flight() -> None:
    async def main() -> None:
        async with Server(silent) as server:
            t = transport()
            task = asyncio.create_task(send(t, "GET", server.url))
            await asyncio.sleep(0.05)
            await t.aclose()
            with pytest.raises(httpx.ReadError):
                await task
            with pytest.raises(RuntimeError):
                await send(t, "GET", server.url)

    run(main())


# TLS and proxies.

def test_tls_certificate_not_signed_by_a_trusted_ca_is_refused(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)

    async def main() -> None:
        async with Server(answering(OK), tls=tls) as server:
            with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
                await send(transport(), "GET", server.url)
            # Trusting that certificate explicitly makes the same request succeed, so the
            # failure above was the verification and nothing else.
            made: list[ssl.SSLContext] = []

            def trusting_context() -> ssl.SSLContext:
                made.append(ssl.create_default_context(cafile=str(cert)))
                return made[-1]

            trusting = AsyncHttp1Transport(trusting_context, 2, 2, max_idle=0)
            assert made == []  # built on the first TLS connection, not before
            for _ in range(2):
                assert (await send(trusting, "GET", server.url)).content == b"{}"
            await trusting.aclose()
            # The refused handshake never reached the handler; with nothing kept idle, each
            # request had its own connection, and the context was built once for both.
            assert server.connections == 2
            assert len(made) == 1

    # The server's side of the refused handshake, reported in asyncio's debug mode.
    run(main(), expected="Error on transport creation for incoming connection")


def test_plain_http_never_builds_a_tls_context() -> None:
    def refuse() -> ssl.SSLContext:
        raise AssertionError("a TLS context was built for plain http")

    async def main() -> None:
        async with Server(answering(OK)) as server:
            t = AsyncHttp1Transport(refuse, 2, 2)
            assert (await send(t, "GET", server.url)).content == b"{}"
            await t.aclose()

    run(main())


def test_proxy_from_environment_uses_httpx_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = "https://roma.cn-north-4.myhuaweicloud.com"
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(async_for_endpoint(endpoint, CONTEXT, 1, 1), AsyncHttp1Transport)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert isinstance(async_for_endpoint(endpoint, CONTEXT, 1, 1), httpx.AsyncHTTPTransport)
    monkeypatch.setenv("NO_PROXY", ".myhuaweicloud.com")
    assert isinstance(async_for_endpoint(endpoint, CONTEXT, 1, 1), AsyncHttp1Transport)


def test_requests_go_through_the_proxy_the_environment_names(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The proxy here answers itself (a forward proxy would pass the request on): what matters
    # is that the request reached it, in the absolute form a proxy is sent.
    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await read_request(reader)) is not None:
            seen.append(request[0].split(b"\r\n")[0])
            writer.write(OK)
            await writer.drain()

    async def main() -> None:
        async with Server(proxy) as server:
            monkeypatch.setenv("HTTP_PROXY", server.url.removeprefix("http://"))  # host:port
            # Not reachable directly: only through the proxy.
            transport = async_for_endpoint("http://api.invalid:8080", CONTEXT, 2, 2)
            assert isinstance(transport, httpx.AsyncHTTPTransport)
            async with httpx.AsyncClient(transport=transport) as client:
                response = await client.get("http://api.invalid:8080/v2/x")
            assert response.content == b"{}"
    run(main())
    assert seen == [b"GET http://api.invalid:8080/v2/x HTTP/1.1"]


def test_loopback_never_goes_through_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    for host in ("127.0.0.1", "localhost", "[::1]"):
        transport = async_for_endpoint(f"http://{host}:8787", CONTEXT, 1, 1)
        assert isinstance(transport, AsyncHttp1Transport), host


@pytest.mark.parametrize(("proxy", "message"), [
    ("ftp://user:hunter2@proxy:21", "expected http://HOST:PORT"),
    ("socks5://user:hunter2@proxy:1080", "SOCKS proxies need the socksio package"),
])
def test_an_unusable_proxy_is_one_clear_error_without_its_password(
        monkeypatch: pytest.MonkeyPatch, proxy: str, message: str) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(ProxyError, match=message) as caught:
        async_for_endpoint("https://roma.cn-north-4.myhuaweicloud.com", CONTEXT, 1, 1)
    assert "hunter2" not in str(caught.value)
    assert "HTTPS_PROXY" in str(caught.value)


# The parser alone: split anywhere, the result is the same; garbage is a protocol error.

def parse(pieces: list[bytes], head_request: bool = False) -> tuple[Any, ...]:
    parser = ResponseParser(head_request)
    complete = False
    for piece in pieces:
        complete = parser.feed(piece)
    if not complete:
        assert parser.feed_eof()
    return (parser.status, parser.reason, parser.http_version, parser.headers, parser.body,
            parser.keep_alive, parser.leftover)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$%&'*+^`|~",
                min_size=1, max_size=12).filter(
    lambda name: name.lower() not in {"content-length", "transfer-encoding", "connection"})
VALUE = st.binary(max_size=20).map(
    lambda raw: bytes(b if 0x21 <= b <= 0x7E or b >= 0x80 else 0x61 for b in raw))


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, bool, int, bytes, list[tuple[bytes, bytes]]]:
    """A valid response on the wire, whether it answers a HEAD, and what it should parse to."""
    head_request = draw(st.booleans())
    status = draw(st.sampled_from([200, 201, 204, 304, 400, 404, 500, 503]))
    http11 = draw(st.booleans())
    headers = [(name.encode(), value) for name, value in draw(st.lists(st.tuples(TOKEN, VALUE),
                                                                           max_size=5))]
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    keep_alive = framing != "close" and draw(st.booleans())
    if http11 and not keep_alive:
        headers.append((b"Connection", b"close"))
    elif not http11 and keep_alive:
        headers.append((b"Connection", b"keep-alive"))
    no_body = head_request or status in (204, 304)
    wire_body = b""
    if framing == "length":
        headers.append((b"Content-Length", str(len(body)).encode()))
        wire_body = body
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        cuts = draw(st.lists(st.integers(0, len(body)), max_size=4))
        for piece in split(body, cuts):
            if piece:
                extension = b";ext=1" if draw(st.booleans()) else b""
                wire_body += b"%x%s\r\n%s\r\n" % (len(piece), extension, piece)
        wire_body += b"0\r\n" + (b"X-Trailer: t\r\n" if draw(st.booleans()) else b"") + b"\r\n"
    else:
        wire_body = body
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" if draw(st.booleans()) else b""
    head = b"HTTP/1.%d %d Reason Phrase\r\n" % (http11, status) + b"".join(
        b"%s: %s\r\n" % field for field in headers) + b"\r\n"
    data = interim + head + (b"" if no_body else wire_body)
    return data, head_request, status, b"" if no_body else body, headers


@settings(max_examples=200, deadline=None)
@given(responses(), st.lists(st.integers(min_value=0), max_size=12))
def test_parser_gives_the_same_result_however_the_bytes_are_split(
        response: tuple[bytes, bool, int, bytes, list[tuple[bytes, bytes]]],
        cuts: list[int]) -> None:
    data, head_request, status, body, headers = response
    whole = parse([data], head_request)
    assert whole[0] == status
    assert whole[1] == b"Reason Phrase"
    assert whole[3] == headers
    assert whole[4] == body
    assert not whole[6]
    assert parse(split(data, cuts), head_request) == whole
    assert parse([data[i:i + 1] for i in range(len(data))], head_request) == whole


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=400),
                 responses().map(lambda r: r[0]).flatmap(
                     lambda data: st.tuples(st.just(data), st.integers(0, len(data)),
                                            st.binary(max_size=3)).map(
                         lambda t: t[0][:t[1]] + t[2] + t[0][t[1] + len(t[2]):]))),
       st.lists(st.integers(min_value=0), max_size=12), st.booleans())
def test_parser_raises_only_remote_protocol_error(data: bytes, cuts: list[int],
                                                  head_request: bool) -> None:
    with contextlib.suppress(httpx.RemoteProtocolError):
        parse(split(data, cuts), head_request)


def test_parser_limits_the_head_without_waiting_for_its_end() -> None:
    parser = ResponseParser()
    start, piece = b"HTTP/1.1 200 OK\r\nX: ", b"a" * 1000
    parser.feed(start)
    for _ in range((MAX_HEAD - len(start) - 1) // len(piece)):
        assert not parser.feed(piece)
    with pytest.raises(httpx.RemoteProtocolError, match="64 KiB"):
        parser.feed(piece)
