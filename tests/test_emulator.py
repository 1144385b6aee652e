from __future__ import annotations

import argparse
import asyncio
import functools
import io
import json
import os
import re
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.auth import TokenAuth
from reconciler.client import DispatchClient, OutcomeUnknown
from reconciler.emulator import Emulator, Reply, add_arguments, run_from_args, server
from reconciler.emulator.server import BadRequest, parse_head
from reconciler.model import DispatchKey, ReconcilerError, Spec
from reconciler.signer import AkSkAuth
from tests.factories import Blocking, python_output

KEY = "proj1/inst1/task1"
PATH = "/v2/proj1/fdi/instances/inst1/tasks/task1/dispatches"
CRON = {"use_quartz_cron": True, "cron": "0 0 2 * * ?", "remark": "nightly"}
PERIOD = {"use_quartz_cron": False, "period": "HOUR", "dispatch_interval": 6}
HEADERS = {"X-Auth-Token": "any-token"}
# One shared TLS context: httpx builds a new one per client otherwise, at ~50 ms of CPU each.
TLS = ssl.create_default_context()
get = functools.partial(httpx.get, verify=TLS)
post = functools.partial(httpx.post, verify=TLS)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def emu(clock: Clock) -> Iterator[Emulator]:
    with Emulator(clock=clock, seed=1) as emulator:
        yield emulator


@pytest.fixture
def http(emu: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.url, headers=HEADERS, verify=TLS) as client:
        yield client


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    inner = body.get("reason", body)
    return response.status_code, inner["error_code"], inner["error_msg"]


def test_create_show_update_lifecycle(http: httpx.Client, clock: Clock) -> None:
    created = http.post(PATH, json=CRON)
    assert created.status_code == 200
    obj = created.json()
    assert len(obj["dispatch_id"]) == 32
    assert uuid.UUID(hex=obj["dispatch_id"]).version == 4  # a random UUID, as the API's are
    assert uuid.UUID(hex=obj["dispatch_id"]).hex == obj["dispatch_id"]
    assert len(created.headers["X-Request-Id"]) == 32
    assert obj == {**CRON, "dispatch_id": obj["dispatch_id"], "task_id": "task1",
                   "created_date": 1_700_000_000_000, "last_modified_date": 1_700_000_000_000}
    assert http.get(PATH).json() == obj

    clock.now += 60
    updated = http.put(f"{PATH}/{obj['dispatch_id']}", json=PERIOD)
    assert updated.status_code == 200
    assert updated.json() == {**PERIOD, "dispatch_id": obj["dispatch_id"], "task_id": "task1",
                              "created_date": 1_700_000_000_000,
                              "last_modified_date": 1_700_000_060_000}
    assert http.get(PATH).json() == updated.json()
    assert created.headers["X-Request-Id"] != updated.headers["X-Request-Id"]


def test_iso_start_datetime_is_converted(http: httpx.Client) -> None:
    body = {**PERIOD, "start_datetime": "2020-11-14T07:38:25.609Z"}
    assert http.post(PATH, json=body).json()["start_datetime"] == 1605339505609


@pytest.mark.parametrize(("change", "field"), [
    ({"period": "YEAR"}, "period"),
    ({"dispatch_interval": 0}, "dispatch_interval"),
    ({"dispatch_interval": 60}, "dispatch_interval"),
    ({"dispatch_interval": "6"}, "dispatch_interval"),
    ({"dispatch_interval": True}, "dispatch_interval"),
    ({"remark": "x" * 37}, "remark"),
    ({"use_quartz_cron": True}, "use_quartz_cron"),
    ({"start_datetime": 946684799999}, "start_datetime"),
    ({"start_datetime": 2147512447001}, "start_datetime"),
    ({"start_datetime": "tomorrow"}, "start_datetime"),
    ({"start_datetime": True}, "start_datetime"),
    ({"period": None}, "period"),
])
def test_invalid_period_fields(http: httpx.Client, change: dict[str, Any], field: str) -> None:
    response = http.post(PATH, json={**PERIOD, **change})
    status, code, message = error_of(response)
    assert (status, code) == (400, "FDI.3002")
    assert response.json()["code"] == 400  # the wrapped shape
    assert field in message
    assert "X-Request-Id" in response.headers


@pytest.mark.parametrize(("change", "field"), [
    ({"cron": "* * *"}, "cron"),
    ({"cron": "0 " * 128}, "cron"),
    ({"use_quartz_cron": False}, "use_quartz_cron"),
    ({"use_quartz_cron": "yes"}, "use_quartz_cron"),
    ({"period": "DAY"}, "period"),
])
def test_invalid_cron_fields(http: httpx.Client, change: dict[str, Any], field: str) -> None:
    status, code, message = error_of(http.post(PATH, json={**CRON, **change}))
    assert (status, code) == (400, "FDI.3002")
    assert field in message


def test_valid_edges_are_accepted(http: httpx.Client) -> None:
    body = {**PERIOD, "dispatch_interval": 59, "remark": "x" * 36, "start_datetime": 946684800000}
    assert http.post(PATH, json=body).status_code == 200
    cron = {**CRON, "cron": "0 0 2 * *"[:8]}
    assert http.post(PATH.replace("task1", "task2"), json=cron).status_code == 200


@pytest.mark.parametrize("content", [b"[1]", b"not json", b""])
def test_body_must_be_a_json_object(http: httpx.Client, content: bytes) -> None:
    assert error_of(http.post(PATH, content=content))[:2] == (400, "FDI.3002")
    assert http.get(PATH).status_code == 404


def test_empty_task_id(http: httpx.Client) -> None:
    response = http.post(PATH.replace("task1", ""), json=CRON)
    assert error_of(response) == (400, "FDI.3149", "The task ID is empty.")


@pytest.mark.parametrize(("part", "name"), [("proj1", "project"), ("inst1", "instance"),
                                            ("task1", "task")])
def test_path_ids_longer_than_64_characters_are_refused(http: httpx.Client, emu: Emulator,
                                                         part: str, name: str) -> None:
    at_bound = PATH.replace(part, "p" * 64)
    assert http.post(at_bound, json=CRON).status_code == 200
    response = http.post(PATH.replace(part, "p" * 65), json=CRON)
    assert error_of(response) == (400, "FDI.3002",
                                  f"The {name} ID is longer than 64 characters.")
    assert len(emu.dispatches()) == 1
    created = http.post(PATH, json=CRON).json()
    long_id = f"{PATH}/{'d' * 65}"
    assert error_of(http.put(long_id, json=CRON)) == (
        400, "FDI.3002", "The dispatch ID is longer than 64 characters.")
    assert http.get(PATH).json() == created


def test_one_dispatch_per_task(http: httpx.Client, emu: Emulator) -> None:
    first = http.post(PATH, json=CRON).json()
    assert error_of(http.post(PATH, json=PERIOD)) == (
        400, "FDI.3002", "The task already has a schedule.")
    assert list(emu.dispatches().values()) == [first]


def test_missing_dispatch_and_wrong_dispatch_id(http: httpx.Client) -> None:
    response = http.get(PATH)
    assert response.json() == {"error_code": "FDI.3181",
                               "error_msg": "The dispatch does not exist."}
    assert response.status_code == 404
    assert error_of(http.put(f"{PATH}/nope", json=CRON))[:2] == (404, "FDI.3181")
    http.post(PATH, json=CRON)
    assert error_of(http.put(f"{PATH}/nope", json=CRON))[:2] == (404, "FDI.3181")


def test_unknown_task(http: httpx.Client, emu: Emulator) -> None:
    emu.mark_unknown_task(KEY)
    for response in (http.get(PATH), http.post(PATH, json=CRON)):
        assert response.json() == {"error_code": "FDI.3180",
                                   "error_msg": "The task does not belong to the project."}
    assert emu.dispatches() == {}


def test_unknown_path_and_method(http: httpx.Client) -> None:
    assert error_of(http.get("/v2/x"))[:2] == (404, "APIGW.0101")
    assert error_of(http.put(PATH, json=CRON))[:2] == (404, "APIGW.0101")


def test_any_non_empty_token_by_default(emu: Emulator) -> None:
    assert get(emu.url + PATH).json() == {
        "error_code": "APIGW.0301", "error_msg": "Incorrect IAM authentication information"}
    assert get(emu.url + PATH, headers={"X-Auth-Token": ""}).status_code == 401
    assert get(emu.url + PATH, headers={"X-Auth-Token": "whatever"}).status_code == 404


def test_configured_token_must_match() -> None:
    with Emulator(token="right") as emu:
        assert get(emu.url + PATH, headers={"X-Auth-Token": "wrong"}).status_code == 401
        assert get(emu.url + PATH, headers={"X-Auth-Token": "right"}).status_code == 404


def test_fault_throttle(http: httpx.Client, emu: Emulator) -> None:
    emu.add_fault(KEY, "throttle", times=2)
    for _ in range(2):
        response = http.get(PATH)
        assert (response.status_code, response.headers["Retry-After"]) == (429, "1")
    assert http.get(PATH).status_code == 404


def test_fault_status_and_scope(http: httpx.Client, emu: Emulator) -> None:
    emu.add_fault(KEY, "status:503")
    other = PATH.replace("task1", "task2")
    assert http.post(other, json=CRON).status_code == 200  # another task is not affected
    response = http.post(PATH, json=CRON)
    assert response.status_code == 503
    assert response.json() == {"error_code": "EMU.503", "error_msg": "injected"}
    emu.add_fault(None, "status:502")
    assert http.get(other).status_code == 502
    assert http.get(other).status_code == 200


def test_fault_error_before_create(http: httpx.Client, emu: Emulator) -> None:
    emu.add_fault(KEY, "error_before_create")
    assert http.get(PATH).status_code == 404  # POST-only: a GET does not consume it
    assert http.post(PATH, json=CRON).status_code == 500
    assert emu.dispatches() == {}
    assert http.post(PATH, json=CRON).status_code == 200


def test_fault_drop_after_create(http: httpx.Client, emu: Emulator) -> None:
    emu.add_fault(None, "drop_after_create")
    with pytest.raises(httpx.RemoteProtocolError):
        http.post(PATH, json=CRON)
    assert list(emu.dispatches()) == [KEY]
    assert http.get(PATH).status_code == 200  # the client reconnects


def test_fault_rates_are_seeded() -> None:
    with Emulator(throttle_rate=1.0) as emu:
        assert get(emu.url + PATH, headers=HEADERS).status_code == 429
    outcomes = []
    for _ in range(2):
        with Emulator(seed=7, error_before_create_rate=0.5) as emu, \
                httpx.Client(base_url=emu.url, headers=HEADERS, verify=TLS) as http:
            outcomes.append([http.post(PATH.replace("task1", f"t{i}"), json=CRON).status_code
                             for i in range(16)])
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0]) == {200, 500}


def test_unknown_fault_is_refused(emu: Emulator) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        emu.add_fault(KEY, "explode")


def test_persistence_across_restart(tmp_path: Path) -> None:
    data = tmp_path / "emu" / "data.json"
    with Emulator(data=data) as emu:
        created = post(emu.url + PATH, json=CRON, headers=HEADERS).json()
        emu.mark_unknown_task("p/i/gone")
    assert json.loads(data.read_text())["dispatches"][KEY] == created
    assert os.listdir(data.parent) == ["data.json"]  # no temp files left
    with Emulator(data=data) as emu:
        assert get(emu.url + PATH, headers=HEADERS).json() == created
        gone = "/v2/p/fdi/instances/i/tasks/gone/dispatches"
        assert get(emu.url + gone, headers=HEADERS).json()["error_code"] == "FDI.3180"
        emu.delete_dispatch(KEY)
    assert json.loads(data.read_text())["dispatches"] == {}


def test_counters(http: httpx.Client, emu: Emulator) -> None:
    http.post(PATH, json=CRON)
    http.post(PATH, json=CRON)
    http.get(PATH)
    get(emu.url + PATH)  # refused (no token) but counted
    assert emu.calls(KEY) == {"POST": 2, "GET": 2}
    assert emu.calls() == {KEY: {"POST": 2, "GET": 2}}
    assert emu.calls("other/x/y") == {}


def test_direct_control_methods(http: httpx.Client, emu: Emulator) -> None:
    planted = emu.put_dispatch(KEY, {**CRON, "extra": 1})
    assert http.get(PATH).json() == planted
    assert planted["extra"] == 1
    changed = emu.put_dispatch(KEY, PERIOD)
    assert changed["dispatch_id"] == planted["dispatch_id"]
    assert "cron" not in changed
    assert emu.delete_dispatch(KEY) is True
    assert emu.delete_dispatch(KEY) is False
    assert http.get(PATH).status_code == 404
    with pytest.raises(ValueError, match="invalid key"):
        emu.put_dispatch("no-slashes", CRON)


def test_control_api_over_http(emu: Emulator) -> None:
    with httpx.Client(base_url=emu.url, verify=TLS) as control:  # no token needed
        planted = control.post("/_emulator/dispatches", json={"key": KEY, "dispatch": CRON})
        assert planted.status_code == 200
        assert control.get("/_emulator/dispatches").json() == {KEY: planted.json()}
        fault = {"key": None, "fault": "status:500", "times": 1}
        assert control.post("/_emulator/faults", json=fault).status_code == 200
        assert get(emu.url + PATH, headers=HEADERS).status_code == 500
        assert control.get("/_emulator/calls").json() == {KEY: {"GET": 1}}
        assert control.delete(f"/_emulator/dispatches/{KEY}").json() == {"deleted": True}
        assert emu.dispatches() == {}
        assert control.post("/_emulator/unknown-tasks", json={"key": KEY}).status_code == 200
        assert get(emu.url + PATH, headers=HEADERS).status_code == 404
        assert get(emu.url + PATH, headers=HEADERS).json()["error_code"] == "FDI.3180"
        bad = control.post("/_emulator/faults", json={"key": KEY, "fault": "nope"})
        assert bad.status_code == 400
        assert control.get("/_emulator/nothing").status_code == 404


def test_fifty_concurrent_keep_alive_clients() -> None:
    clients, latency = 50, 0.020
    with Emulator(latency_ms=latency * 1000) as emu:
        started: list[float] = []
        barrier = threading.Barrier(clients, action=lambda: started.append(time.perf_counter()))
        statuses: list[int] = []
        lock = threading.Lock()

        def work(n: int) -> None:
            with httpx.Client(base_url=emu.url, headers=HEADERS, verify=TLS) as http:
                path = PATH.replace("task1", f"t{n}")
                barrier.wait()
                codes = [http.post(path, json=CRON).status_code, http.get(path).status_code]
            with lock:
                statuses.extend(codes)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started[0]
        assert statuses == [200] * (2 * clients)
        sequential = 2 * clients * latency
        assert elapsed < 0.5 * sequential, f"{elapsed:.3f}s for {2 * clients} requests"
        assert len(emu.dispatches()) == clients


def test_dispatch_client_end_to_end(emu: Emulator) -> None:
    key = DispatchKey("proj1", "inst1", "task1")
    spec = Spec(cron="0 0 2 * * ?", cron_timezone="Asia/Shanghai", remark="nightly")
    with DispatchClient(emu.url, TokenAuth("t")) as raw:
        client = Blocking(raw)
        assert client.show(key) is None
        created = client.create(key, spec)
        assert created.spec == spec
        assert client.show(key) == created
        period = Spec(period="DAY", dispatch_interval=1, start_datetime=1_764_518_400_000)
        updated = client.update(key, created.dispatch_id, period)
        assert (updated.dispatch_id, updated.spec) == (created.dispatch_id, period)
        assert client.show(key) == updated

        other = DispatchKey("proj1", "inst1", "task2")
        emu.add_fault(str(other), "drop_after_create")
        with pytest.raises(OutcomeUnknown):
            client.create(other, spec)
        found = client.show(other)
        assert found is not None
        assert found.spec == spec
    assert emu.calls(str(other)) == {"POST": 1, "GET": 1}


def test_python_m_emulator_serves_until_terminated(tmp_path: Path) -> None:
    data = tmp_path / "data.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler.emulator", "--port", "0", "--token", "tok",
         "--data", str(data)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.split()[3]
        assert url.startswith("http://127.0.0.1:")
        response = post(url + PATH, json=CRON, headers={"X-Auth-Token": "tok"})
        assert response.status_code == 200
        assert get(url + PATH, headers=HEADERS).status_code == 401
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
        if process.stdout is not None:
            process.stdout.close()
    assert KEY in json.loads(data.read_text())["dispatches"]


def test_python_m_emulator_loads_only_the_emulator() -> None:
    """No command line, no httpx: a process with all of them loaded answered bursts later."""
    script = ("import sys, runpy\n"
              "sys.argv = ['x', '--help']\n"
              "try:\n"
              "    runpy.run_module('reconciler.emulator', run_name='__main__')\n"
              "except SystemExit:\n"
              "    pass\n"
              "import reconciler.emulator.api\n"
              "print(sorted(m for m in ('reconciler.cli', 'httpx', 'deepdiff', 'yaml')\n"
              "             if m in sys.modules))\n")
    assert python_output(script).splitlines()[-1] == "[]"


def test_python_m_emulator_error_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data.json"
    data.write_text("{not json")
    done = subprocess.run([sys.executable, "-m", "reconciler.emulator", "--port", "0",
                           "--data", str(data)], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("error: emulator data file")
    assert "Traceback" not in done.stderr


def test_unreadable_data_file_is_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "data.json"
    data.write_text("{not json")
    with pytest.raises(ReconcilerError, match="emulator data file"):
        Emulator(data=data)


def test_stop_closes_idle_keep_alive_connections() -> None:
    emu = Emulator()
    emu.start()
    with httpx.Client(base_url=emu.url, headers=HEADERS, verify=TLS) as http:
        assert http.get(PATH).status_code == 404  # leaves a kept-alive connection open
        started = time.perf_counter()
        emu.stop()
        assert time.perf_counter() - started < 0.5
        with pytest.raises(httpx.TransportError):
            http.get(PATH)


# The HTTP/1.1 server itself, over raw sockets.

def connect(emu: Emulator) -> socket.socket:
    host, port = urlsplit(emu.url).hostname, urlsplit(emu.url).port
    assert host is not None
    assert port is not None
    return socket.create_connection((host, port), timeout=5)


def request(method: str = "GET", path: str = PATH, body: bytes = b"", extra: str = "",
            version: str = "HTTP/1.1") -> bytes:
    head = (f"{method} {path} {version}\r\nHost: emulator\r\nX-Auth-Token: t\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def read_response(stream: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """One response (status, lower-cased headers, body); EOFError if the server closed."""
    status_line = stream.readline()
    if not status_line:
        raise EOFError
    headers = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, stream.read(int(headers["content-length"]))


def refused(emu: Emulator, data: bytes) -> tuple[int, str]:
    """Send `data` on a new connection; the one answer's status and error code, after checking
    the server closed the connection."""
    with connect(emu) as sock, sock.makefile("rb") as stream:
        sock.sendall(data)
        status, headers, body = read_response(stream)
        assert headers["connection"] == "close"
        assert stream.read() == b""  # closed
    return status, json.loads(body)["error_code"]


def still_serving(emu: Emulator) -> None:
    assert get(emu.url + PATH, headers=HEADERS).status_code == 404


@pytest.mark.parametrize(("data", "status"), [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /only-two-parts\r\n\r\n", 400),
    (b"GET / HTTP/1.1 extra\r\n\r\n", 400),
    (b"G(T / HTTP/1.1\r\n\r\n", 400),
    (b"GET / SPDY/3\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX-A: 1\r\n folded: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"\xff\xfe / HTTP/1.1\r\n\r\n", 400),
])
def test_malformed_request_is_refused_and_closed(emu: Emulator, data: bytes,
                                                 status: int) -> None:
    assert refused(emu, data) == (status, f"EMU.{status}")
    assert emu.calls() == {}
    still_serving(emu)


def test_header_size_limit(emu: Emulator) -> None:
    big = request(extra=f"X-Big: {'a' * 70_000}\r\n")
    assert refused(emu, big) == (431, "EMU.431")
    with connect(emu) as sock, sock.makefile("rb") as stream:  # below the limit: served
        sock.sendall(request(extra=f"X-Big: {'a' * 60_000}\r\n"))
        assert read_response(stream)[0] == 404
    still_serving(emu)


def test_body_size_limit(emu: Emulator) -> None:
    head = f"POST {PATH} HTTP/1.1\r\nX-Auth-Token: t\r\nContent-Length: {(1 << 20) + 1}\r\n\r\n"
    assert refused(emu, head.encode()) == (413, "EMU.413")
    padded = b"{}" + b" " * ((1 << 20) - 2)  # exactly the limit: read, parsed, validated
    with connect(emu) as sock, sock.makefile("rb") as stream:
        sock.sendall(request("POST", body=padded))
        status, _, body = read_response(stream)
    assert (status, json.loads(body)["reason"]["error_code"]) == (400, "FDI.3002")
    still_serving(emu)


def test_chunked_body_is_refused(emu: Emulator) -> None:
    data = (f"POST {PATH} HTTP/1.1\r\nX-Auth-Token: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            "2\r\n{}\r\n0\r\n\r\n").encode()
    assert refused(emu, data) == (411, "EMU.411")
    assert emu.calls() == {}
    still_serving(emu)


def test_pipelined_requests_on_one_connection(emu: Emulator) -> None:
    other = PATH.replace("task1", "task2")
    with connect(emu) as sock, sock.makefile("rb") as stream:
        sock.sendall(request("POST", body=json.dumps(CRON).encode()) + request()
                     + request(path=other))
        answers = [read_response(stream) for _ in range(3)]
        assert [status for status, _, _ in answers] == [200, 200, 404]
        assert json.loads(answers[0][2]) == json.loads(answers[1][2])
        assert len({headers["x-request-id"] for _, headers, _ in answers}) == 3
        assert all("connection" not in headers for _, headers, _ in answers)
        sock.sendall(request())  # still open: keep-alive is the default
        assert read_response(stream)[0] == 200
    assert emu.calls(KEY) == {"POST": 1, "GET": 2}


@pytest.mark.parametrize(("extra", "version", "closes"), [
    ("Connection: close\r\n", "HTTP/1.1", True),
    ("Connection: keep-alive, Close\r\n", "HTTP/1.1", True),
    ("", "HTTP/1.0", True),
    ("Connection: keep-alive\r\n", "HTTP/1.0", False),
])
def test_connection_header(emu: Emulator, extra: str, version: str, closes: bool) -> None:
    with connect(emu) as sock, sock.makefile("rb") as stream:
        sock.sendall(request(extra=extra, version=version) + request())
        status, headers, _ = read_response(stream)
        assert status == 404
        assert headers["connection"] == ("close" if closes else "keep-alive")
        if closes:
            assert stream.read() == b""  # the second request is not answered
        else:
            assert read_response(stream)[0] == 404


def test_client_disconnecting_mid_request(emu: Emulator) -> None:
    whole = request("POST", body=json.dumps(CRON).encode())
    for cut in (10, whole.index(b"\r\n\r\n") + 4, len(whole) - 5):
        with connect(emu) as sock:
            sock.sendall(whole[:cut])
    with connect(emu) as sock:  # a reset rather than a close
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(whole[:-5])
    still_serving(emu)
    assert emu.dispatches() == {}
    assert emu.calls() == {KEY: {"GET": 1}}  # the incomplete requests never reached the API


def test_disconnect_while_the_answer_is_delayed() -> None:
    with Emulator(latency_ms=100) as emu:
        with connect(emu) as sock:
            sock.sendall(request("POST", body=json.dumps(CRON).encode()))
        time.sleep(0.2)
        # The request was complete, so the API handled it; the lost answer broke nothing.
        assert list(emu.dispatches()) == [KEY]
        assert get(emu.url + PATH, headers=HEADERS).status_code == 200


def test_a_client_that_half_closes_still_gets_its_delayed_answers() -> None:
    with Emulator(latency_ms=50) as emu, connect(emu) as sock, \
            sock.makefile("rb") as stream:
        sock.sendall(request("POST", body=json.dumps(CRON).encode()) + request())
        sock.shutdown(socket.SHUT_WR)  # all it will send
        assert [read_response(stream)[0] for _ in range(2)] == [200, 200]
        assert stream.read() == b""  # then the server closes


def test_a_pipelining_flood_is_answered_in_full_and_in_order() -> None:
    # Far more than the server buffers while an answer is delayed: it stops reading, and
    # reads on once it has answered.
    body = json.dumps(CRON).encode() + b" " * 200_000
    count = 40
    with Emulator(latency_ms=5) as emu, connect(emu) as sock, sock.makefile("rb") as stream:
        sender = threading.Thread(target=sock.sendall,
                                  args=(request("PUT", path=PATH + "/d1", body=body) * count,))
        sender.start()
        statuses = [read_response(stream)[0] for _ in range(count)]
        sender.join()
    assert statuses == [404] * count  # no dispatch d1: each one answered
    assert emu.calls(KEY) == {"PUT": count}


def test_a_request_whose_client_reset_the_connection_is_still_carried_out() -> None:
    with Emulator(latency_ms=100) as emu:
        with connect(emu) as sock:
            sock.sendall(request("POST", body=json.dumps(CRON).encode()))
            time.sleep(0.02)  # arrived, its answer pending
            # Gone with a reset, as a killed process with unread data goes.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        time.sleep(0.2)
        assert list(emu.dispatches()) == [KEY]
        assert emu.calls(KEY) == {"POST": 1}


def test_thousands_of_pipelined_requests_are_all_answered(emu: Emulator) -> None:
    count = 3000  # answered at once (no latency), one after another on one connection
    with connect(emu) as sock, sock.makefile("rb") as stream:
        sender = threading.Thread(target=sock.sendall, args=(request() * count,))
        sender.start()
        statuses = [read_response(stream)[0] for _ in range(count)]
        sender.join()
    assert statuses == [404] * count
    assert emu.calls(KEY) == {"GET": count}


class _Transport(asyncio.Transport):
    """What the server's connection sees of a socket whose reader has stopped reading."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _Answering:
    def receive(self, request: Any, body: bytes) -> tuple[float, Reply]:
        return 0.0, Reply(200, {"path": request.target})


def test_no_more_requests_are_read_while_the_client_does_not_read_its_answers() -> None:
    connection = server._Connection(_Answering(), set())
    transport = _Transport()
    connection.connection_made(transport)
    connection.data_received(request(path="/a"))
    assert len(transport.written) == 1
    connection.pause_writing()  # the write buffer is full: the client is not reading
    assert not transport.reading
    connection.data_received(request(path="/b") + request(path="/c"))
    assert len(transport.written) == 1  # held back, not piled up in the write buffer
    connection.resume_writing()
    assert transport.reading
    assert [json.loads(answer.split(b"\r\n\r\n", 1)[1])["path"]
            for answer in transport.written] == ["/a", "/b", "/c"]


def test_expect_100_continue(emu: Emulator) -> None:
    body = json.dumps(CRON).encode()
    with connect(emu) as sock, sock.makefile("rb") as stream:
        sock.sendall(request("POST", body=body, extra="Expect: 100-continue\r\n")[:-len(body)])
        assert stream.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert stream.readline() == b"\r\n"
        sock.sendall(body)
        assert read_response(stream)[0] == 200


def test_unsupported_method(emu: Emulator) -> None:
    with connect(emu) as sock, sock.makefile("rb") as stream:
        sock.sendall(request("PATCH") + request("HEAD") + request())
        status, _, body = read_response(stream)
        assert (status, json.loads(body)["error_code"]) == (501, "EMU.501")
        head_status, head_headers, _ = read_response(stream)  # no body after a HEAD answer
        assert head_status == 501
        assert int(head_headers["content-length"]) > 0
    with connect(emu) as sock, sock.makefile("rb") as stream:
        sock.sendall(request("HEAD") + request())
        stream.readline()
        while stream.readline() != b"\r\n":
            pass
        assert read_response(stream)[0] == 404  # the next answer follows the HEAD's headers


def test_response_headers(emu: Emulator) -> None:
    with connect(emu) as sock, sock.makefile("rb") as stream:
        sock.sendall(request())
        status, headers, body = read_response(stream)
    assert status == 404
    assert headers["content-type"] == "application/json;charset=UTF-8"
    assert int(headers["content-length"]) == len(body)
    assert len(headers["x-request-id"]) == 32
    assert headers["date"].endswith(" GMT")


def test_unexpected_error_answers_500_and_closes(emu: Emulator,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> Reply:
        raise OSError("disk full")

    monkeypatch.setattr(emu, "_respond", broken)
    with connect(emu) as sock, sock.makefile("rb") as stream:
        sock.sendall(request() + request())
        status, headers, body = read_response(stream)
        assert (status, json.loads(body)["error_code"]) == (500, "FDI.3000")
        assert headers["connection"] == "close"
        assert stream.read() == b""
    monkeypatch.undo()
    still_serving(emu)


def test_latency_holds_no_thread() -> None:
    clients, latency = 100, 0.3
    with Emulator(latency_ms=latency * 1000) as emu:
        threads = threading.active_count()
        socks = [connect(emu) for _ in range(clients)]
        try:
            started = time.perf_counter()
            for sock in socks:
                sock.sendall(request())
            time.sleep(latency / 3)
            assert threading.active_count() == threads
            for sock in socks:
                with sock.makefile("rb") as stream:
                    assert read_response(stream)[0] == 404
            assert time.perf_counter() - started < latency + 1.0
        finally:
            for sock in socks:
                sock.close()
        assert emu.calls(KEY) == {"GET": clients}


class _SlowToRead:
    """An application that holds the server's thread for `work` seconds to read each request,
    and answers `latency` seconds after it arrived."""

    def __init__(self, work: float, latency: float) -> None:
        self.work, self.latency = work, latency

    def receive(self, request: Any, body: bytes) -> tuple[float, Reply]:
        time.sleep(self.work)
        return self.latency, Reply(200, {})


def _serving(app: Any) -> tuple[server.HttpServer, int]:
    listener = socket.create_server(("127.0.0.1", 0))
    http_server = server.HttpServer(app, listener)
    http_server.start()
    return http_server, listener.getsockname()[1]


def test_latency_runs_from_a_requests_arrival_not_from_when_the_server_read_it() -> None:
    # A keeps the server's one thread busy for `work`; B and C arrive meanwhile, and are read
    # one after another once A is. Timed from its arrival, C is answered about work + latency
    # after A was sent (0.6 s); timed from its reading, only at 3 x work + latency (1.0 s).
    work, latency = 0.2, 0.4
    http_server, port = _serving(_SlowToRead(work, latency))
    try:
        socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        try:
            time.sleep(0.1)  # for the server to take the connections on: it is about to be busy
            started = time.perf_counter()
            socks[0].sendall(request())
            time.sleep(work / 4)  # A is being read
            for sock in socks[1:]:
                sock.sendall(request())
            answered = []
            for sock in socks:
                with sock.makefile("rb") as stream:
                    assert read_response(stream)[0] == 200
                answered.append(time.perf_counter() - started)
        finally:
            for sock in socks:
                sock.close()
    finally:
        http_server.stop()
    assert latency <= answered[0] <= answered[2] < 3 * work + latency - 0.2


class _Unencodable:
    """An application whose answer cannot be written as JSON (a bug of the emulator's own)."""

    def receive(self, request: Any, body: bytes) -> tuple[float, Reply]:
        return 5.0, Reply(200, {"not json": object()})


def test_an_answer_that_cannot_be_encoded_is_a_500_at_once_not_a_hung_connection() -> None:
    http_server, port = _serving(_Unencodable())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
                sock.makefile("rb") as stream:
            started = time.perf_counter()
            sock.sendall(request())
            status, headers, body = read_response(stream)
            assert time.perf_counter() - started < 2.5  # not after the 5 s latency
            assert (status, json.loads(body)["error_code"]) == (500, "FDI.3000")
            assert headers["connection"] == "close"
            assert stream.read() == b""
    finally:
        http_server.stop()


def test_a_request_after_an_idle_wait_is_answered_after_the_latency() -> None:
    # Its arrival is when the wait that saw it ended, not when the wait began.
    latency = 0.3
    http_server, port = _serving(_SlowToRead(0.0, latency))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            time.sleep(latency)  # the server waits, idle
            started = time.perf_counter()
            sock.sendall(request())
            with sock.makefile("rb") as stream:
                assert read_response(stream)[0] == 200
            assert time.perf_counter() - started >= latency - 0.005
    finally:
        http_server.stop()


def test_a_request_is_carried_out_on_arrival_and_answered_after_the_latency() -> None:
    # The answer's work is done while it waits: answers falling due together then leave
    # together, instead of one request's processing after another's.
    latency = 0.5
    with Emulator(latency_ms=latency * 1000) as emu, connect(emu) as sock, \
            sock.makefile("rb") as stream:
        started = time.perf_counter()
        sock.sendall(request("POST", body=json.dumps(CRON).encode()))
        deadline = started + latency / 2
        while KEY not in emu.dispatches() and time.perf_counter() < deadline:
            time.sleep(0.01)
        assert KEY in emu.dispatches()  # created, the answer not yet sent
        assert time.perf_counter() - started < latency
        status, _, body = read_response(stream)
        assert time.perf_counter() - started >= latency - 0.005
    assert status == 200
    assert json.loads(body)["dispatch_id"] == emu.dispatches()[KEY]["dispatch_id"]


def test_a_dropped_answer_is_dropped_after_the_latency() -> None:
    latency = 0.3
    with Emulator(latency_ms=latency * 1000) as emu, connect(emu) as sock, \
            sock.makefile("rb") as stream:
        emu.add_fault(KEY, "drop_after_create")
        started = time.perf_counter()
        sock.sendall(request("POST", body=json.dumps(CRON).encode()))
        assert stream.read() == b""  # closed without an answer
        assert time.perf_counter() - started >= latency - 0.005
        assert KEY in emu.dispatches()


def test_handle_is_usable_without_a_server() -> None:
    emu = Emulator(latency_ms=30)
    started = time.perf_counter()
    reply = emu.handle("POST", PATH + "?x=1", "t", json.dumps(CRON).encode())
    assert time.perf_counter() - started >= 0.03
    assert reply.status == 200
    assert reply.body["task_id"] == "task1"
    assert emu.handle("GET", "http://host" + PATH, None, b"").status == 401
    assert emu.calls(KEY) == {"POST": 1, "GET": 1}
    assert emu.handle("GET", "/_emulator/calls", None, b"").body == emu.calls()


def test_start_and_stop() -> None:
    emu = Emulator()
    url = emu.start()
    assert emu.start() == url  # already serving
    still_serving(emu)
    emu.stop()
    emu.stop()  # idempotent
    with pytest.raises(httpx.TransportError):
        get(url + PATH, headers=HEADERS)
    port = int(url.rsplit(":", 1)[1])
    with Emulator(port=port) as again:  # the port is free again, and restarting works
        assert again.url == url
        still_serving(again)
        with pytest.raises(OSError):
            Emulator(port=port).start()  # busy


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        emu = Emulator(host="::1")
        emu.start()
    except OSError:
        pytest.skip("no IPv6 loopback")
    with emu:
        assert emu.url.startswith("http://[::1]:")
        still_serving(emu)


# -- IAM tokens ---------------------------------------------------------------------------------

IAM_USER = {"iam_user": "deployer", "iam_password": "Pa55word!", "iam_domain": "acme"}
OTHER_PATH = PATH.replace("proj1", "proj2")


def token_body(user: str = "deployer", password: str = "Pa55word!", domain: str = "acme",
               project: str = "proj1") -> dict[str, Any]:
    return {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "password": password, "domain": {"name": domain}}}},
        "scope": {"project": {"id": project}}}}


@pytest.fixture
def iam_emu(clock: Clock) -> Iterator[Emulator]:
    with Emulator(clock=clock, iam_token_ttl=600, **IAM_USER) as emulator:
        yield emulator


def issue(emu: Emulator, **kw: str) -> httpx.Response:
    return post(emu.url + "/v3/auth/tokens?nocatalog=true", json=token_body(**kw))


def test_iam_issues_a_project_scoped_token(iam_emu: Emulator) -> None:
    answer = issue(iam_emu)
    assert answer.status_code == 201
    token = answer.headers["X-Subject-Token"]
    body = answer.json()["token"]
    assert body["issued_at"] == "2023-11-14T22:13:20.000000Z"
    assert body["expires_at"] == "2023-11-14T22:23:20.000000Z"
    assert body["project"] == {"id": "proj1", "name": "proj1", "domain": {"name": "acme"}}
    assert body["methods"] == ["password"]
    assert token not in json.dumps(body)
    assert iam_emu.iam_calls() == {"issued": 1, "refused": 0}


def test_issued_tokens_are_checked(iam_emu: Emulator, clock: Clock) -> None:
    token = issue(iam_emu).headers["X-Subject-Token"]
    assert get(iam_emu.url + PATH, headers={"X-Auth-Token": token}).status_code == 404  # passed
    other = get(iam_emu.url + OTHER_PATH, headers={"X-Auth-Token": token})
    assert error_of(other) == (403, "APIGW.0302", "The IAM user is not authorized to access "
                               "the API: the token is scoped to another project")
    unknown = get(iam_emu.url + PATH, headers={"X-Auth-Token": "made-up"})
    assert error_of(unknown) == (401, "APIGW.0301", "Incorrect IAM authentication information: "
                                 "the token is not valid")
    assert get(iam_emu.url + PATH).status_code == 401
    clock.now += 600
    expired = get(iam_emu.url + PATH, headers={"X-Auth-Token": token})
    assert error_of(expired)[2].endswith("the token has expired")


def test_a_configured_token_is_accepted_beside_issued_ones(clock: Clock) -> None:
    with Emulator(clock=clock, token="fixed", **IAM_USER) as emu:
        assert get(emu.url + PATH, headers={"X-Auth-Token": "fixed"}).status_code == 404
        assert get(emu.url + PATH, headers={"X-Auth-Token": "other"}).status_code == 401
        token = issue(emu).headers["X-Subject-Token"]
        assert get(emu.url + PATH, headers={"X-Auth-Token": token}).status_code == 404


@pytest.mark.parametrize("wrong", [{"user": "someone"}, {"password": "guess"},
                                   {"domain": "other-account"}])
def test_wrong_credentials_get_iams_401(iam_emu: Emulator, wrong: dict[str, str]) -> None:
    answer = issue(iam_emu, **wrong)
    assert answer.status_code == 401
    assert answer.json() == {"error": {"code": 401, "message": "The username or password is "
                                       "wrong.", "title": "Unauthorized"}}
    assert "X-Subject-Token" not in answer.headers
    assert iam_emu.iam_calls() == {"issued": 0, "refused": 1}


@pytest.mark.parametrize(("body", "field"), [
    (b"not json", "The request body must be a JSON object."),
    ({"auth": {}}, "auth.identity.methods"),
    ({"auth": {"identity": {"methods": ["token"]}}}, "auth.identity.methods must contain"),
    ({"auth": {"identity": {"methods": ["password"]}}}, "auth.identity.password.user.name"),
    ({**token_body(), "auth": {**token_body()["auth"], "scope": {"domain": {"name": "acme"}}}},
     "auth.scope.project.id"),
    (token_body(project="../etc"), "auth.scope.project.id must be 1-64"),
    (token_body(password=""), "auth.identity.password.user.password"),
])
def test_malformed_token_requests(iam_emu: Emulator, body: Any, field: str) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = post(iam_emu.url + "/v3/auth/tokens", content=content)
    assert answer.status_code == 400
    assert answer.json()["error"]["title"] == "Bad Request"
    assert field in answer.json()["error"]["message"]


def test_token_endpoint_without_iam_and_other_methods(emu: Emulator,
                                                      iam_emu: Emulator) -> None:
    missing = issue(emu)
    assert (missing.status_code, missing.json()["error_code"]) == (404, "EMU.404")
    assert "--iam-user" in missing.json()["error_msg"]
    assert get(iam_emu.url + "/v3/auth/tokens").status_code == 405


def test_iam_control_endpoint(iam_emu: Emulator) -> None:
    issue(iam_emu)
    issue(iam_emu, password="nope")
    assert get(iam_emu.url + "/_emulator/iam").json() == {"issued": 1, "refused": 1}


@pytest.mark.parametrize("options", [
    {"iam_user": "u"}, {"iam_user": "u", "iam_password": "p"},
    {**IAM_USER, "iam_domain": ""}, {"ak": "A"}, {"sk": "S"}, {"ak": "", "sk": "S"},
    {**IAM_USER, "iam_token_ttl": 0},
])
def test_incomplete_credentials_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"needs|must be positive"):
        Emulator(**options)


# -- AK/SK signatures ---------------------------------------------------------------------------

AK, SK = "EMUAKEXAMPLE00000001", "emu-secret-key-0123456789abcdef"


def sdk_clock(clock: Clock, offset: float = 0) -> Callable[[], datetime]:
    return lambda: datetime.fromtimestamp(clock() + offset, UTC)


@pytest.fixture
def aksk_emu(clock: Clock) -> Iterator[Emulator]:
    with Emulator(clock=clock, ak=AK, sk=SK) as emulator:
        yield emulator


def signed_send(emu: Emulator, clock: Clock, method: str = "POST", path: str = PATH,
                body: dict[str, Any] | None = CRON, *, sk: str = SK, offset: float = 0,
                tamper: Callable[[httpx.Request], httpx.Request] | None = None) -> httpx.Response:
    request = httpx.Request(method, emu.url + path, json=body,
                            headers={"User-Agent": "test", "Accept": "application/json"})
    AkSkAuth(AK, sk, clock=sdk_clock(clock, offset)).apply(request)
    if tamper is not None:
        request = tamper(request)
    with httpx.Client(verify=TLS) as http:
        return http.send(request)


def test_a_good_signature_is_accepted(aksk_emu: Emulator, clock: Clock) -> None:
    created = signed_send(aksk_emu, clock)
    assert created.status_code == 200
    dispatch_id = created.json()["dispatch_id"]
    assert signed_send(aksk_emu, clock, "GET", body=None).json()["dispatch_id"] == dispatch_id
    assert signed_send(aksk_emu, clock, "PUT", f"{PATH}/{dispatch_id}?a=b c&a=1",
                       PERIOD).status_code == 200
    assert signed_send(aksk_emu, clock, "GET", body=None, offset=-14 * 60).status_code == 200


def rebuilt(request: httpx.Request, **changes: Any) -> httpx.Request:
    """A copy of the signed request with a different URL or body, its headers kept."""
    headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
    return httpx.Request(request.method, changes.get("url", request.url), headers=headers,
                         content=changes.get("content", request.content))


@pytest.mark.parametrize(("tamper", "reason"), [
    (lambda r: rebuilt(r, content=r.content.replace(b"nightly", b"hourly!")),
     "verify aksk signature fail"),
    (lambda r: rebuilt(r, url=str(r.url).replace("task1", "task2")),
     "verify aksk signature fail"),
    (lambda r: rebuilt(r, url=str(r.url) + "?extra=1"), "verify aksk signature fail"),
    (lambda r: set_header(r, "X-Sdk-Date", "20231114T221321Z"), "verify aksk signature fail"),
    (lambda r: set_header(r, "X-Sdk-Date", "yesterday"), "X-Sdk-Date header is missing or not"),
    (lambda r: set_header(r, "Authorization",
                          r.headers["Authorization"].replace(AK, "SOMEONE-ELSE")),
     "the access key does not exist"),
    (lambda r: set_header(r, "Authorization", "Bearer abc"), "not an SDK-HMAC-SHA256 signature"),
    (lambda r: set_header(r, "X-Project-Id", "proj2"), "verify aksk signature fail"),
])
def test_tampered_requests_are_refused(aksk_emu: Emulator, clock: Clock,
                                       tamper: Callable[[httpx.Request], httpx.Request],
                                       reason: str) -> None:
    answer = signed_send(aksk_emu, clock, tamper=tamper)
    assert error_of(answer)[:2] == (401, "APIGW.0301")
    assert reason in error_of(answer)[2]
    assert not aksk_emu.dispatches()


def set_header(request: httpx.Request, name: str, value: str) -> httpx.Request:
    request.headers[name] = value
    return request


@pytest.mark.parametrize("offset", [-16 * 60, 16 * 60])
def test_a_stale_or_future_date_is_refused(aksk_emu: Emulator, clock: Clock,
                                           offset: float) -> None:
    answer = signed_send(aksk_emu, clock, offset=offset)
    assert error_of(answer) == (401, "APIGW.0301", "Incorrect IAM authentication information: "
                                "the X-Sdk-Date header is more than 15 minutes away from the "
                                "server's time")


def test_a_wrong_sk_is_refused_without_echoing_anything(aksk_emu: Emulator,
                                                        clock: Clock) -> None:
    answer = signed_send(aksk_emu, clock, sk="not-the-secret-key")
    assert error_of(answer) == (401, "APIGW.0301", "Incorrect IAM authentication information: "
                                "verify aksk signature fail")
    assert AK not in answer.text


def test_with_aksk_alone_tokens_and_unsigned_requests_are_refused(aksk_emu: Emulator) -> None:
    unsigned = get(aksk_emu.url + PATH)
    assert error_of(unsigned)[2].endswith("no signature (Authorization) and no token "
                                          "(X-Auth-Token)")
    assert get(aksk_emu.url + PATH, headers=HEADERS).status_code == 401


def test_signatures_and_tokens_together(clock: Clock) -> None:
    with Emulator(clock=clock, ak=AK, sk=SK, token="fixed") as emu:
        assert signed_send(emu, clock, "GET", body=None).status_code == 404
        assert get(emu.url + PATH, headers={"X-Auth-Token": "fixed"}).status_code == 404
        assert get(emu.url + PATH, headers={"X-Auth-Token": "other"}).status_code == 401
        # A request that carries a signature is judged by it, whatever token it also has.
        bad = signed_send(emu, clock, "GET", body=None, sk="wrong-secret",
                          tamper=lambda r: set_header(r, "X-Auth-Token", "fixed"))
        assert bad.status_code == 401


def test_a_request_signed_by_huaweis_sdk_is_accepted() -> None:
    from huaweicloudsdkcore.auth.credentials import (  # type: ignore[import-untyped]
        BasicCredentials,
    )
    from huaweicloudsdkcore.sdk_request import SdkRequest  # type: ignore[import-untyped]

    with Emulator(ak=AK, sk=SK) as emu:
        body = json.dumps(CRON).encode()
        for method, content in (("POST", body), ("GET", None)):
            request = SdkRequest(method=method, schema="http", host=urlsplit(emu.url).netloc,
                                 resource_path=PATH, query_params=[("nocache", "1")],
                                 header_params={"Content-Type": "application/json"},
                                 body=content)
            BasicCredentials(AK, SK, "proj1").sign_request(request)
            answer = httpx.request(method, request.url, headers=request.header_params,
                                   content=content)
            assert answer.status_code == 200, answer.text


def test_handle_takes_headers(clock: Clock) -> None:
    emu = Emulator(clock=clock, ak=AK, sk=SK)
    request = httpx.Request("GET", "http://emulator" + PATH)
    AkSkAuth(AK, SK, clock=sdk_clock(clock)).apply(request)
    assert emu.handle("GET", PATH, headers=dict(request.headers)).status == 404
    assert emu.handle("GET", PATH, "token").status == 401


def test_run_from_args_refuses_half_a_key_pair() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ReconcilerError, match="emulator: an AK needs its SK"):
        run_from_args(parser.parse_args(["--port", "0", "--ak", AK]), io.StringIO())


@pytest.mark.parametrize("argv", [["--port", "99999"], ["--port", "-1"], ["--port", "x"],
                                  ["--latency-ms", "-5"], ["--latency-ms", "nan"],
                                  ["--latency-ms", "inf"], ["--latency-ms", "soon"]])
def test_out_of_range_options_are_usage_errors(argv: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(argv)
    assert f"argument {argv[0]}" in capsys.readouterr().err


@pytest.mark.parametrize("options", [{"port": 70000}, {"latency_ms": -1.0},
                                     {"latency_ms": float("nan")}])
def test_emulator_refuses_out_of_range_settings(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="not in"):
        Emulator(**options)


def _reference_fields(head: bytes) -> dict[str, str] | tuple[Any, ...]:
    """The header fields as the line-by-line reading gives them (or its refusal)."""
    text = head.decode("latin-1").lstrip("\r\n")
    _, *lines = text[:-4].split("\r\n")
    fields: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            return (400, f"malformed header field {line[:100]!r}")
        name, value = name.lower(), value.strip(" \t")
        fields[name] = f"{fields[name]}, {value}" if name in fields else value
    return fields


_header_names = st.sampled_from(["Host", "X-Auth-Token", "content-type", "Accept", "X-A",
                                 "Bad Name", "", " folded", "x(y)"])
_header_values = st.text(alphabet=" \tabcXYZ019:,;\r\n\x80\xff", max_size=12)


@given(st.lists(st.tuples(_header_names, _header_values), max_size=6))
def test_header_fields_read_as_line_by_line(fields: list[tuple[str, str]]) -> None:
    """The one-regex reading of the fields agrees with reading them line by line, the lines
    with a lone CR or LF in a value and the malformed ones included."""
    block = "".join(f"{name}:{value}\r\n" for name, value in fields)
    head = f"GET / HTTP/1.1\r\n{block}\r\n".encode("latin-1")
    if head.count(b"\r\n\r\n") != 1 or not head.endswith(b"\r\n\r\n"):
        return  # a value ending a line early ends the head elsewhere: not one head
    expected = _reference_fields(head)
    if any(name.lower() == "content-length" or name.lower() == "transfer-encoding"
           for name, _ in fields):
        return
    try:
        got: dict[str, str] | tuple[Any, ...] = parse_head(head).headers
    except BadRequest as exc:
        got = exc.args
    assert got == expected
