"""IAM password authentication: token requests, caching, refresh, errors and secrecy."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from reconciler.auth import CredentialsError
from reconciler.client import DispatchClient
from reconciler.emulator import Emulator
from reconciler.iam import (
    DOMAIN_ENV,
    PASSWORD_ENV,
    USERNAME_ENV,
    IamError,
    PasswordAuth,
    iam_endpoint_for,
    password_from_env,
)
from reconciler.model import DispatchKey, ReconcilerError

USER, PASSWORD, DOMAIN = "deployer", "Pa55word!-never-shown", "acme-account"
IAM = "https://iam.cn-north-4.myhuaweicloud.com"
PROJECT = "0b7a3e1c2d4f4a5b8c9d0e1f2a3b4c5d"
OTHER = "proj2"
START = 1_700_000_000.0
ENV = {USERNAME_ENV: USER, PASSWORD_ENV: PASSWORD, DOMAIN_ENV: DOMAIN}


def dispatch_url(project: str = PROJECT, base: str = "https://roma.example.com") -> str:
    return f"{base}/v2/{project}/fdi/instances/inst1/tasks/task1/dispatches"


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class FakeIam:
    """An IAM that issues `token-N` tokens lasting `lifetime` seconds, or answers `answers`."""

    def __init__(self, clock: Clock, lifetime: float = 86400.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.requests: list[httpx.Request] = []
        self.answers: list[Callable[[httpx.Request], httpx.Response]] = []
        self.lock = threading.Lock()
        self.delay = 0.0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
            number = len(self.requests)
            answer = self.answers.pop(0) if self.answers else None
        if self.delay:
            time.sleep(self.delay)
        if answer is not None:
            return answer(request)
        project = json.loads(request.content)["auth"]["scope"]["project"]["id"]
        now = self.clock()
        body = {"token": {"issued_at": iso(now), "expires_at": iso(now + self.lifetime),
                          "methods": ["password"], "project": {"id": project}}}
        return httpx.Response(201, json=body, headers={"X-Subject-Token": f"token-{number}"})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def iam(clock: Clock) -> FakeIam:
    return FakeIam(clock)


def make_auth(iam: FakeIam, clock: Clock, **kw: Any) -> PasswordAuth:
    return PasswordAuth(USER, PASSWORD, DOMAIN, IAM, transport=httpx.MockTransport(iam),
                        clock=clock, sleep=lambda _: None, **kw)


def sent_token(auth: PasswordAuth, url: str = dispatch_url()) -> str:
    request = httpx.Request("GET", url)
    auth.apply(request)
    return request.headers["X-Auth-Token"]


# -- the token request --------------------------------------------------------------------------

def test_the_request_is_the_documented_password_identity_scoped_to_the_project(
        iam: FakeIam, clock: Clock) -> None:
    assert sent_token(make_auth(iam, clock)) == "token-1"
    (request,) = iam.requests
    assert request.method == "POST"
    assert str(request.url) == f"{IAM}/v3/auth/tokens?nocatalog=true"
    assert request.headers["Content-Type"] == "application/json;charset=utf8"
    assert json.loads(request.content) == {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": USER, "password": PASSWORD, "domain": {"name": DOMAIN}}}},
        "scope": {"project": {"id": PROJECT}}}}


def test_one_token_per_project_then_cached(iam: FakeIam, clock: Clock) -> None:
    auth = make_auth(iam, clock)
    assert [sent_token(auth) for _ in range(5)] == ["token-1"] * 5
    assert sent_token(auth, dispatch_url(OTHER)) == "token-2"
    assert sent_token(auth) == "token-1"
    assert len(iam.requests) == 2
    scopes = [json.loads(r.content)["auth"]["scope"]["project"]["id"] for r in iam.requests]
    assert scopes == [PROJECT, OTHER]


def test_refreshed_five_minutes_before_expiry(iam: FakeIam, clock: Clock) -> None:
    iam.lifetime = 3600
    auth = make_auth(iam, clock)
    assert sent_token(auth) == "token-1"
    clock.now = START + 3600 - 300 - 1
    assert sent_token(auth) == "token-1"
    clock.now = START + 3600 - 300
    assert sent_token(auth) == "token-2"
    assert len(iam.requests) == 2


def test_a_short_lived_token_is_refreshed_at_half_its_life(iam: FakeIam, clock: Clock) -> None:
    iam.lifetime = 60
    auth = make_auth(iam, clock)
    assert sent_token(auth) == "token-1"
    clock.now = START + 29
    assert sent_token(auth) == "token-1"
    clock.now = START + 30
    assert sent_token(auth) == "token-2"


def test_the_lifetime_is_measured_on_iams_clock(iam: FakeIam, clock: Clock) -> None:
    """IAM's clock a day behind ours: the token still lives its lifetime from our point of view."""
    iam.clock = lambda: START - 86400  # type: ignore[assignment]
    iam.lifetime = 3600
    auth = make_auth(iam, clock)
    assert sent_token(auth) == "token-1"
    clock.now = START + 3000
    assert sent_token(auth) == "token-1"
    assert len(iam.requests) == 1


def test_without_issued_at_expiry_is_read_on_the_local_clock(clock: Clock) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json={"token": {"expires_at": "2023-11-14T23:13:20+00:00"}},
                              headers={"X-Subject-Token": "tok"})

    iam = FakeIam(clock)
    iam.answers = [answer, answer]
    auth = make_auth(iam, clock)
    assert sent_token(auth) == "tok"  # 2023-11-14T23:13:20Z is START + 1 h
    clock.now = START + 3600 - 301
    sent_token(auth)
    assert len(iam.requests) == 1
    clock.now = START + 3600 - 299
    sent_token(auth)
    assert len(iam.requests) == 2


def test_parallel_requests_share_one_token_request(iam: FakeIam, clock: Clock) -> None:
    iam.delay = 0.05
    auth = make_auth(iam, clock)
    results: list[str] = []
    lock = threading.Lock()

    def worker(project: str) -> None:
        token = sent_token(auth, dispatch_url(project))
        with lock:
            results.append(f"{project}={token}")

    threads = [threading.Thread(target=worker, args=(PROJECT if n % 2 else OTHER,))
               for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(iam.requests) == 2  # one per project, however many workers asked at once
    assert len(set(results)) == 2
    assert len(results) == 40


def test_a_path_without_a_project_is_refused(iam: FakeIam, clock: Clock) -> None:
    with pytest.raises(CredentialsError, match="names none"):
        sent_token(make_auth(iam, clock), "https://roma.example.com/v3/other")
    assert not iam.requests


def test_invalidate_forgets_the_token_that_was_refused(iam: FakeIam, clock: Clock) -> None:
    auth = make_auth(iam, clock)
    request = httpx.Request("GET", dispatch_url())
    auth.apply(request)
    assert auth.invalidate(request)
    assert not auth.invalidate(request)  # already forgotten
    assert sent_token(auth) == "token-2"
    assert not auth.invalidate(request)  # it carries token-1, no longer the cached one
    assert not auth.invalidate(httpx.Request("GET", "https://roma.example.com/"))


def test_invalidate_does_not_wait_for_a_fetch_in_progress(iam: FakeIam, clock: Clock) -> None:
    auth = make_auth(iam, clock)
    refused = httpx.Request("GET", dispatch_url())
    auth.apply(refused)  # token-1, cached
    clock.now += 86400  # due for renewal: the next request fetches a new token
    released = threading.Event()
    iam.answers.append(lambda request: (released.wait(5), iam_token(request, "token-2"))[1])
    fetching = threading.Thread(target=sent_token, args=(auth,))
    fetching.start()
    time.sleep(0.05)  # the fetch holds the project's lock now
    started = time.monotonic()
    assert auth.invalidate(refused)  # a 401 for token-1, on the event loop's thread
    assert time.monotonic() - started < 1
    released.set()
    fetching.join()
    assert sent_token(auth) == "token-2"


def test_unusable_ca_settings_are_reported_once_per_project(
        iam: FakeIam, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca.pem")
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    auth = make_auth(iam, clock)
    for _ in range(2):
        with pytest.raises(IamError, match="cannot load the CA certificates"):
            sent_token(auth)
    assert iam.requests == []  # nothing was sent without verification


def iam_token(request: httpx.Request, value: str) -> httpx.Response:
    project = json.loads(request.content)["auth"]["scope"]["project"]["id"]
    body = {"token": {"issued_at": iso(START), "expires_at": iso(START + 10 * 86400),
                      "project": {"id": project}}}
    return httpx.Response(201, json=body, headers={"X-Subject-Token": value})


# -- errors -------------------------------------------------------------------------------------

def keystone_401(request: httpx.Request) -> httpx.Response:
    return httpx.Response(401, json={"error": {
        "code": 401, "message": "The username or password is wrong.", "title": "Unauthorized"}},
        headers={"X-Request-Id": "req-1"})


def test_wrong_password_is_a_clear_error_sent_to_iam_once(iam: FakeIam, clock: Clock) -> None:
    iam.answers = [keystone_401]
    auth = make_auth(iam, clock)
    with pytest.raises(IamError) as caught:
        sent_token(auth)
    error = caught.value
    assert str(error) == (
        f"IAM refused a token for project {PROJECT}: HTTP 401: The username or password is "
        "wrong. (request id req-1); check HUAWEICLOUD_SDK_USERNAME, HUAWEICLOUD_SDK_PASSWORD "
        "and HUAWEICLOUD_SDK_DOMAIN_NAME (the account name)")
    assert (error.status, error.code, error.request_id) == (401, None, "req-1")
    assert isinstance(error, CredentialsError)
    assert isinstance(error, ReconcilerError)
    for _ in range(3):  # remembered: a lockout policy may count failed logins
        with pytest.raises(IamError, match="HTTP 401") as again:
            sent_token(auth)
        assert again.value is not error
    assert len(iam.requests) == 1


@pytest.mark.parametrize(("body", "expected"), [
    ({"error_code": "IAM.0001", "error_msg": "Bad user"}, "HTTP 403 IAM.0001: Bad user"),
    ({"code": 403, "reason": {"error_code": "IAM.0002", "error_msg": "No"}},
     "HTTP 403 IAM.0002: No"),
    ({"error": {"code": "IAM.0003", "message": "Locked"}}, "HTTP 403 IAM.0003: Locked"),
    ({"unexpected": True}, "HTTP 403: Forbidden"),
])
def test_error_shapes(clock: Clock, body: dict[str, Any], expected: str) -> None:
    iam = FakeIam(clock)
    iam.answers = [lambda r: httpx.Response(403, json=body)]
    with pytest.raises(IamError, match=expected.replace(".", r"\.")):
        sent_token(make_auth(iam, clock))


def test_a_non_json_error_body_is_quoted_briefly(clock: Clock) -> None:
    iam = FakeIam(clock)
    iam.answers = [lambda r: httpx.Response(400, text="<html>bad\nrequest</html>" + "x" * 500)]
    with pytest.raises(IamError) as caught:
        sent_token(make_auth(iam, clock))
    assert str(caught.value).startswith(
        f"IAM refused a token for project {PROJECT}: HTTP 400: Bad Request: <html>bad request")
    assert len(str(caught.value)) < 400


def test_not_found_asks_whether_the_endpoint_is_iam(clock: Clock) -> None:
    iam = FakeIam(clock)
    iam.answers = [lambda r: httpx.Response(404)]
    with pytest.raises(IamError, match=f"is {IAM} an IAM endpoint"):
        sent_token(make_auth(iam, clock))


def test_server_errors_and_throttling_are_retried(clock: Clock) -> None:
    iam = FakeIam(clock)
    iam.answers = [lambda r: httpx.Response(503), lambda r: httpx.Response(429)]
    slept: list[float] = []
    auth = PasswordAuth(USER, PASSWORD, DOMAIN, IAM, transport=httpx.MockTransport(iam),
                        clock=clock, sleep=slept.append)
    assert sent_token(auth) == "token-3"
    assert len(slept) == 2
    assert 0.5 <= slept[0] <= 1.0
    assert 1.0 <= slept[1] <= 2.0


def test_retries_run_out(clock: Clock) -> None:
    iam = FakeIam(clock)
    iam.answers = [lambda r: httpx.Response(500, json={"error_msg": "boom"})] * 5
    with pytest.raises(IamError, match="HTTP 500: boom"):
        sent_token(make_auth(iam, clock, max_retries=2))
    assert len(iam.requests) == 3


def test_timeouts_and_connection_errors(clock: Clock) -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    iam = FakeIam(clock)
    iam.answers = [timeout, refused, timeout]
    with pytest.raises(IamError) as caught:
        sent_token(make_auth(iam, clock))
    assert str(caught.value) == (f"cannot get an IAM token for project {PROJECT} from {IAM}: "
                                 "ReadTimeout: timed out")
    assert caught.value.status is None
    assert len(iam.requests) == 3


def created(headers: dict[str, str], body: Any) -> Callable[[httpx.Request], httpx.Response]:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return lambda r: httpx.Response(201, content=content, headers=headers)


GOOD = {"token": {"expires_at": iso(START + 3600), "issued_at": iso(START)}}


@pytest.mark.parametrize(("answer", "problem"), [
    (created({}, GOOD), "its X-Subject-Token header is unusable (the IAM token is empty)"),
    (created({"X-Subject-Token": "a b"}, GOOD), "X-Subject-Token header is unusable"),
    (created({"X-Subject-Token": "t"}, b"not json"), "no readable token.expires_at"),
    (created({"X-Subject-Token": "t"}, {"token": {}}), "no readable token.expires_at"),
    (created({"X-Subject-Token": "t"}, {"token": {"expires_at": "soon"}}),
     "no readable token.expires_at"),
    (created({"X-Subject-Token": "t"}, {"token": {"expires_at": 5}}),
     "no readable token.expires_at"),
    (created({"X-Subject-Token": "t"}, [1]), "no readable token.expires_at"),
    (created({"X-Subject-Token": "t"}, {"token": {"expires_at": iso(START - 1)}}),
     "the token has already expired"),
    (created({"X-Subject-Token": "t"},
             {"token": {**GOOD["token"], "project": {"id": "someone-else"}}}),
     "the token is scoped to another project ('someone-else')"),
])
def test_malformed_answers(clock: Clock, answer: Callable[[httpx.Request], httpx.Response],
                           problem: str) -> None:
    iam = FakeIam(clock)
    iam.answers = [answer]
    with pytest.raises(IamError) as caught:
        sent_token(make_auth(iam, clock))
    assert str(caught.value).startswith(
        f"IAM answered HTTP 201 to the token request for project {PROJECT}, but ")
    assert problem in str(caught.value)


# -- secrets ------------------------------------------------------------------------------------

def test_the_password_and_tokens_never_show(iam: FakeIam, clock: Clock,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    auth = make_auth(iam, clock)
    token = sent_token(auth)
    for text in (repr(auth), str(auth), repr([auth]), caplog.text):
        assert PASSWORD not in text
        assert token not in text
    assert repr(auth) == (f"PasswordAuth(user='deployer', domain='acme-account', "
                          f"iam_endpoint='{IAM}', password=***)")


def test_a_password_echoed_by_iam_is_redacted(clock: Clock,
                                              caplog: pytest.LogCaptureFixture) -> None:
    iam = FakeIam(clock)
    echo = {"error_msg": f"password {PASSWORD} rejected"}
    iam.answers = [lambda r: httpx.Response(503, json=echo)] * 3
    caplog.set_level(logging.DEBUG)
    with pytest.raises(IamError) as caught:
        sent_token(make_auth(iam, clock))
    assert "password *** rejected" in str(caught.value)
    assert PASSWORD not in str(caught.value)
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize(("user", "password", "domain", "message"), [
    (" ", PASSWORD, DOMAIN, "the user name is empty"),
    (USER, "", DOMAIN, "the password is empty"),
    (USER, "pass\nword", DOMAIN, "the password contains control characters"),
    (USER, PASSWORD, "", "the account (domain) name is empty"),
])
def test_unusable_credentials_are_refused_without_quoting_them(
        user: str, password: str, domain: str, message: str) -> None:
    with pytest.raises(CredentialsError) as caught:
        PasswordAuth(user, password, domain, IAM)
    assert str(caught.value) == message


# -- configuration ------------------------------------------------------------------------------

def test_iam_endpoint_for() -> None:
    assert iam_endpoint_for(None, "cn-north-4") == IAM
    assert iam_endpoint_for("  ", "ap-southeast-1") == \
        "https://iam.ap-southeast-1.myhuaweicloud.com"
    assert iam_endpoint_for("https://iam.myhuaweicloud.com/", "cn-north-4") == \
        "https://iam.myhuaweicloud.com"
    assert iam_endpoint_for("https://iam.example.com/v3", None) == "https://iam.example.com"
    assert iam_endpoint_for("http://127.0.0.1:8787", None) == "http://127.0.0.1:8787"


@pytest.mark.parametrize(("explicit", "region", "message"), [
    ("http://iam.example.com", None, "IAM endpoint: invalid endpoint .* https is required"),
    ("https://user:pw@iam.example.com", None, "must not contain user information"),
    ("ftp://iam.example.com", None, "IAM endpoint: invalid endpoint"),
    (None, "CN North 4", "invalid region"),
    (None, None, "auth: password needs the IAM endpoint: set `region` .* `iam_endpoint` "
                 r"\(or RECONCILER_IAM_ENDPOINT\)"),
])
def test_bad_iam_endpoints(explicit: str | None, region: str | None, message: str) -> None:
    with pytest.raises(ReconcilerError, match=message) as caught:
        iam_endpoint_for(explicit, region)
    assert "pw@" not in str(caught.value)


def test_password_from_env() -> None:
    assert password_from_env({}, iam_endpoint=None, region=None) is None
    auth = password_from_env(ENV, iam_endpoint=None, region="cn-north-4")
    assert isinstance(auth, PasswordAuth)
    assert f"iam_endpoint='{IAM}'" in repr(auth)


def test_password_from_env_names_what_is_missing() -> None:
    with pytest.raises(CredentialsError) as caught:
        password_from_env({PASSWORD_ENV: PASSWORD}, iam_endpoint=None, region="cn-north-4")
    assert str(caught.value) == (
        "HUAWEICLOUD_SDK_PASSWORD set but HUAWEICLOUD_SDK_USERNAME, HUAWEICLOUD_SDK_DOMAIN_NAME "
        "not: password authentication needs all of HUAWEICLOUD_SDK_USERNAME, "
        "HUAWEICLOUD_SDK_PASSWORD, HUAWEICLOUD_SDK_DOMAIN_NAME")
    assert PASSWORD not in str(caught.value)


def test_password_from_env_names_a_bad_variable_without_its_value() -> None:
    with pytest.raises(CredentialsError) as caught:
        password_from_env({**ENV, PASSWORD_ENV: "secret\x00value"}, iam_endpoint=None,
                          region="cn-north-4")
    assert str(caught.value) == \
        "HUAWEICLOUD_SDK_PASSWORD: the password contains control characters"


def test_password_from_env_needs_an_iam_endpoint() -> None:
    with pytest.raises(CredentialsError, match="needs the IAM endpoint"):
        password_from_env(ENV, iam_endpoint=None, region=None)


# -- against the emulator's IAM, over the wire ---------------------------------------------------

@pytest.fixture
def emu(clock: Clock) -> Iterator[Emulator]:
    with Emulator(clock=clock, iam_user=USER, iam_password=PASSWORD, iam_domain=DOMAIN,
                  iam_token_ttl=3600) as emulator:
        yield emulator


def send(emu: Emulator, auth: PasswordAuth, project: str = PROJECT) -> httpx.Response:
    request = httpx.Request("POST", dispatch_url(project, emu.url),
                            json={"period": "HOUR", "dispatch_interval": 1,
                                  "use_quartz_cron": False})
    auth.apply(request)
    with httpx.Client() as http:
        return http.send(request)


def test_the_emulator_issues_tokens_the_dispatch_api_accepts(emu: Emulator,
                                                             clock: Clock) -> None:
    auth = PasswordAuth(USER, PASSWORD, DOMAIN, emu.url, clock=clock)
    assert send(emu, auth).status_code == 200
    assert send(emu, auth, OTHER).status_code == 200
    assert send(emu, auth).status_code == 400  # the task has its dispatch: accepted, refused
    assert emu.iam_calls() == {"issued": 2, "refused": 0}
    clock.now = START + 3600 - 300  # refreshed before the emulator would refuse it
    assert send(emu, auth).status_code == 400
    assert emu.iam_calls() == {"issued": 3, "refused": 0}


def test_a_wrong_password_against_the_emulator(emu: Emulator, clock: Clock) -> None:
    auth = PasswordAuth(USER, "wrong-password", DOMAIN, emu.url, clock=clock)
    for _ in range(3):
        with pytest.raises(IamError) as caught:
            send(emu, auth)
        assert "HTTP 401: The username or password is wrong." in str(caught.value)
        assert "wrong-password" not in str(caught.value)
    assert emu.iam_calls() == {"issued": 0, "refused": 1}
    assert not emu.dispatches()


def test_the_event_loop_goes_on_while_a_token_is_fetched(iam: FakeIam, clock: Clock) -> None:
    released = threading.Event()
    order: list[str] = []

    def slow_for_other(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["auth"]["scope"]["project"]["id"] == OTHER:
            released.wait(5)
            order.append("token for the other project")
        return iam(request)

    auth = PasswordAuth(USER, PASSWORD, DOMAIN, IAM, transport=httpx.MockTransport(
        slow_for_other), clock=clock, sleep=lambda _: None)
    sent_token(auth, dispatch_url(PROJECT))  # this project's token is cached already

    def api(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"dispatch_id": "d1", "use_quartz_cron": True,
                                         "cron": "0 0 2 * * ?"})

    client = DispatchClient("https://roma.example.com", auth,
                            transport=httpx.MockTransport(api))

    async def main() -> None:
        async with client:
            other = asyncio.ensure_future(client.show(DispatchKey(OTHER, "i1", "t1")))
            await asyncio.sleep(0.05)  # its token is being fetched now
            assert not auth.ready(httpx.Request("GET", dispatch_url(OTHER)))
            await client.show(DispatchKey(PROJECT, "i1", "t1"))
            order.append("request in the cached project")
            released.set()
            assert (await other) is not None

    asyncio.run(main())
    assert order == ["request in the cached project", "token for the other project"]
    assert auth.ready(httpx.Request("GET", dispatch_url(OTHER)))
