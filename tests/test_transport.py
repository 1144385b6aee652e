"""The http.client transport against real sockets: errors map to httpx's, TLS is verified."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from reconciler.transport import StdlibTransport, for_endpoint

CONTEXT = httpx.create_ssl_context()


@contextmanager
def server(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A one-thread TCP server calling `handle` for each accepted connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                handle(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def transport(read_timeout: float = 2.0) -> StdlibTransport:
    return StdlibTransport(CONTEXT, connect_timeout=2.0, read_timeout=read_timeout)


def test_request_and_keep_alive() -> None:
    seen: list[bytes] = []

    def handle(conn: socket.socket) -> None:
        for _ in range(2):
            seen.append(read_request(conn))
            conn.sendall(OK)

    with server(handle) as port:
        t = transport()
        for _ in range(2):
            request = httpx.Request("GET", f"http://127.0.0.1:{port}/v2/x?y=1",
                                    headers={"X-Auth-Token": "tok"})
            response = t.handle_request(request)
            response.read()
            assert response.status_code == 200
            assert response.json() == {}
        t.close()
    assert len(seen) == 2  # both on one connection
    assert seen[0].startswith(b"GET /v2/x?y=1 HTTP/1.1\r\n")
    assert b"x-auth-token: tok" in seen[0].lower()


def test_connection_refused_is_connect_error() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(httpx.ConnectError):
        transport().handle_request(httpx.Request("GET", f"http://127.0.0.1:{port}/"))


def test_closed_without_response_is_remote_protocol_error() -> None:
    with server(read_request) as port, pytest.raises(httpx.RemoteProtocolError):
        transport().handle_request(httpx.Request("POST", f"http://127.0.0.1:{port}/",
                                                 content=b"{}"))


def test_slow_response_is_read_timeout() -> None:
    release = threading.Event()

    def handle(conn: socket.socket) -> None:
        read_request(conn)
        release.wait(2)

    with server(handle) as port:
        with pytest.raises(httpx.ReadTimeout):
            transport(read_timeout=0.2).handle_request(
                httpx.Request("GET", f"http://127.0.0.1:{port}/"))
        release.set()


def test_idle_connection_closed_by_server_is_replaced_before_sending() -> None:
    connections = []

    def handle(conn: socket.socket) -> None:
        connections.append(1)
        read_request(conn)
        conn.sendall(OK)  # then the server closes this keep-alive connection

    with server(handle) as port:
        t = transport()
        url = f"http://127.0.0.1:{port}/"
        t.handle_request(httpx.Request("GET", url)).read()
        time.sleep(0.1)
        response = t.handle_request(httpx.Request("POST", url, content=b"{}"))
        response.read()
        assert response.status_code == 200
    assert len(connections) == 2


def test_tls_certificate_not_signed_by_a_trusted_ca_is_refused(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)

    def handle(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), tls.wrap_socket(conn, server_side=True) as wrapped:
            read_request(wrapped)
            wrapped.sendall(OK)

    with server(handle) as port:
        with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
            transport().handle_request(httpx.Request("GET", f"https://127.0.0.1:{port}/"))
        # Trusting that certificate explicitly makes the same request succeed, so the failure
        # above was the verification and nothing else.
        trusting = ssl.create_default_context(cafile=str(cert))
        response = StdlibTransport(trusting, 2, 2).handle_request(
            httpx.Request("GET", f"https://127.0.0.1:{port}/"))
        response.read()
        assert response.status_code == 200


def test_proxy_from_environment_uses_httpx_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    chosen = for_endpoint("https://roma.cn-north-4.myhuaweicloud.com", CONTEXT, 1, 1)
    assert isinstance(chosen, httpx.HTTPTransport)
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.delenv("https_proxy", raising=False)
    direct = for_endpoint("https://roma.cn-north-4.myhuaweicloud.com", CONTEXT, 1, 1)
    assert isinstance(direct, StdlibTransport)


def test_unsupported_scheme() -> None:
    with pytest.raises(httpx.UnsupportedProtocol):
        transport().handle_request(httpx.Request("GET", "ftp://127.0.0.1/"))


def test_default_context_checks_hostnames() -> None:
    assert CONTEXT.verify_mode == ssl.CERT_REQUIRED
    assert CONTEXT.check_hostname
