from __future__ import annotations

import asyncio
import json
import logging
import string
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.auth import CredentialsError, TokenAuth, auth_from_env
from reconciler.client import (
    ApiError,
    DispatchClient,
    EndpointUrls,
    OutcomeUnknown,
    endpoint_for,
)
from reconciler.errorbody import redact
from reconciler.model import DispatchKey, ReconcilerError, RemoteDispatch, Spec
from reconciler.signer import AkSkAuth
from tests.factories import Blocking

TOKEN = "MIIZ-secret-token_value+/="
KEY = DispatchKey("proj1", "inst1", "task1")
PATH = "/v2/proj1/fdi/instances/inst1/tasks/task1/dispatches"
CRON = Spec(cron="0 0 2 * * ?", cron_timezone="Asia/Shanghai", remark="nightly")
PERIOD = Spec(period="HOUR", dispatch_interval=6, start_datetime=1_764_518_400_000)
NOW = 1_800_000_000.0

Handler = Callable[[httpx.Request], httpx.Response]


def dispatch(**fields: Any) -> dict[str, Any]:
    return {"dispatch_id": "d1", "task_id": "task1", "use_quartz_cron": True,
            "cron": "0 0 2 * * ?", "created_date": 1, "last_modified_date": 2, **fields}


class Script:
    """A MockTransport handler answering from a list: responses, exceptions or status codes."""

    def __init__(self, *steps: httpx.Response | Exception | type[Exception] | int) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, type):
            raise step("boom", request=request)  # type: ignore[call-arg]
        if isinstance(step, Exception):
            raise step
        if isinstance(step, int):
            return httpx.Response(step, json={"error_code": f"X.{step}", "error_msg": "m"})
        return step


def make(handler: Handler, delays: list[float] | None = None, **kw: Any) -> Blocking:
    slept = delays if delays is not None else []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    return Blocking(DispatchClient("https://roma.example.com", TokenAuth(TOKEN),
                                   transport=httpx.MockTransport(handler), sleep=sleep,
                                   rand=lambda: 0.5, clock=lambda: NOW, **kw))


def ok(body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.Response(200, json=dispatch() if body is None else body)


# -- requests -----------------------------------------------------------------------------------

def test_create_posts_the_spec_body_to_the_task_path() -> None:
    script = Script(ok())
    result = make(script).create(KEY, CRON)
    (request,) = script.requests
    assert request.method == "POST"
    assert request.url == f"https://roma.example.com{PATH}"
    assert request.headers["Content-Type"] == "application/json;charset=UTF-8"
    assert request.headers["X-Auth-Token"] == TOKEN
    assert json.loads(request.content) == CRON.body()
    assert result.dispatch_id == "d1"
    assert result.spec == Spec(cron="0 0 2 * * ?")
    assert (result.created_date, result.last_modified_date) == (1, 2)


def test_update_puts_to_the_dispatch_path() -> None:
    script = Script(ok(dispatch(use_quartz_cron=False, period="HOUR", dispatch_interval=6,
                                start_datetime=1_764_518_400_000)))
    result = make(script).update(KEY, "d1", PERIOD)
    (request,) = script.requests
    assert (request.method, request.url.path) == ("PUT", f"{PATH}/d1")
    assert json.loads(request.content) == PERIOD.body()
    assert result.spec == PERIOD


def test_show_gets_without_a_body() -> None:
    script = Script(ok())
    assert make(script).show(KEY) is not None
    (request,) = script.requests
    assert (request.method, request.url.path, request.content) == ("GET", PATH, b"")
    assert "Content-Type" not in request.headers


def test_endpoint_path_prefix_is_kept() -> None:
    script = Script(ok())
    client = Blocking(DispatchClient("https://gw.example.com/roma/", TokenAuth(TOKEN),
                                     transport=httpx.MockTransport(script)))
    client.show(KEY)
    assert script.requests[0].url.path == "/roma" + PATH


@pytest.mark.parametrize("key", [
    DispatchKey("proj1", "../admin", "task1"),
    DispatchKey("proj1", "inst1", "a" * 65),
    DispatchKey("", "inst1", "task1"),
    DispatchKey("proj1", "inst1", "task1?x=1"),
    DispatchKey("proj1", "inst1", "t%2F"),
])
def test_bad_ids_are_refused_before_any_request(key: DispatchKey) -> None:
    script = Script(ok())
    client = make(script)
    calls: list[Callable[[], object]] = [lambda: client.show(key),
                                         lambda: client.create(key, CRON),
                                         lambda: client.update(key, "d1", CRON)]
    for call in calls:
        with pytest.raises(ApiError, match="invalid"):
            call()
    assert script.requests == []


@pytest.mark.parametrize("dispatch_id", ["../d1", "x" * 65, "", "d 1"])
def test_bad_dispatch_id_is_refused_before_any_request(dispatch_id: str) -> None:
    script = Script(ok())
    with pytest.raises(ApiError, match="invalid dispatch_id"):
        make(script).update(KEY, dispatch_id, CRON)
    assert script.requests == []


# -- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "headers", "expected"), [
    ({"error_code": "FDI.3002", "error_msg": "bad remark"}, {},
     "HTTP 400 FDI.3002: bad remark"),
    ({"code": 400, "reason": {"error_code": "FDI.3002", "error_msg": "bad remark"}}, {},
     "HTTP 400 FDI.3002: bad remark"),
    ({"error_code": "FDI.3002", "error_msg": "bad remark", "request_id": "r1",
      "error_details": "x"}, {}, "HTTP 400 FDI.3002: bad remark (request id r1)"),
    ({"code": 400, "reason": {"error_code": "FDI.3002", "error_msg": "bad remark"},
      "request_id": "r2"}, {"X-Request-Id": "other"},
     "HTTP 400 FDI.3002: bad remark (request id r2)"),
    ({"error_code": "FDI.3002", "error_msg": "bad remark"}, {"X-Request-Id": "r3"},
     "HTTP 400 FDI.3002: bad remark (request id r3)"),
    ({"error_msg": "no code"}, {}, "HTTP 400: no code"),
])
def test_error_shapes(body: dict[str, Any], headers: dict[str, str], expected: str) -> None:
    script = Script(httpx.Response(400, json=body, headers=headers))
    with pytest.raises(ApiError) as caught:
        make(script).update(KEY, "d1", CRON)
    error = caught.value
    assert str(error) == expected
    assert error.status == 400
    assert error.method == "PUT"
    assert error.key == KEY
    assert type(error) is ApiError


def test_non_json_error_body_uses_reason_phrase_and_a_clean_snippet() -> None:
    text = "<html>oops\x1b[31m\r\n" + "y" * 500
    script = Script(httpx.Response(400, text=text, headers={"X-Request-Id": "rq"}))
    with pytest.raises(ApiError) as caught:
        make(script).show(KEY)
    message = str(caught.value)
    assert message.startswith("HTTP 400: Bad Request: <html>oops")
    assert message.endswith("(request id rq)")
    assert "\x1b" not in message
    assert "\n" not in message
    assert len(caught.value.message) <= len("Bad Request: ") + 200


def test_empty_error_body_uses_reason_phrase() -> None:
    with pytest.raises(ApiError) as caught:
        make(Script(httpx.Response(409))).show(KEY)
    assert str(caught.value) == "HTTP 409: Conflict"


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_hint_at_the_token(status: int) -> None:
    body = {"error_code": "APIGW.0301", "error_msg": "Incorrect IAM authentication information"}
    with pytest.raises(ApiError) as caught:
        make(Script(httpx.Response(status, json=body))).show(KEY)
    assert f"HTTP {status} APIGW.0301" in str(caught.value)
    assert "RECONCILER_TOKEN" in str(caught.value)


# -- retries -------------------------------------------------------------------------------------

def test_get_retries_503_with_exponential_full_jitter_delays() -> None:
    delays: list[float] = []
    script = Script(503, 503, 503, ok())
    assert make(script, delays).show(KEY) is not None
    assert len(script.requests) == 4
    assert delays == [0.25, 0.5, 1.0]  # rand() 0.5 × 0.5·2^attempt


def test_backoff_is_capped_by_max_backoff() -> None:
    delays: list[float] = []
    script = Script(502, 502, 502, 502, ok())
    make(script, delays, backoff=1.0, max_backoff=3.0).show(KEY)
    assert delays == [0.5, 1.0, 1.5, 1.5]


def test_retries_give_up_with_the_last_status_and_code() -> None:
    delays: list[float] = []
    script = Script(500, 503)
    with pytest.raises(ApiError) as caught:
        make(script, delays, max_retries=2).update(KEY, "d1", CRON)
    assert len(script.requests) == 3
    assert len(delays) == 2
    assert (caught.value.status, caught.value.code) == (503, "X.503")
    assert type(caught.value) is ApiError


@pytest.mark.parametrize(("retry_after", "expected"), [
    ("7", 7.0),
    ("0.5", 0.5),
    (format_datetime(datetime.fromtimestamp(NOW + 12, UTC), usegmt=True), 12.0),
    (format_datetime(datetime.fromtimestamp(NOW - 60, UTC), usegmt=True), 0.0),
    ("99999", 120.0),  # capped at 4 × max_backoff
    ("soon", 0.25),  # unparsable: the usual backoff
])
def test_429_honours_retry_after(retry_after: str, expected: float) -> None:
    delays: list[float] = []
    script = Script(httpx.Response(429, headers={"Retry-After": retry_after}), ok())
    make(script, delays).show(KEY)
    assert delays == [expected]


@pytest.mark.parametrize("failure", [httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadTimeout,
                                     httpx.RemoteProtocolError, httpx.ReadError])
def test_put_retries_transport_errors(failure: type[Exception]) -> None:
    delays: list[float] = []
    script = Script(failure, ok())
    make(script, delays).update(KEY, "d1", CRON)
    assert len(script.requests) == 2
    assert delays == [0.25]


def test_connect_errors_exhausted_raise_api_error_without_status() -> None:
    script = Script(httpx.ConnectError)
    with pytest.raises(ApiError, match=r"could not connect to https://roma\.example") as caught:
        make(script, max_retries=1).show(KEY)
    assert caught.value.status is None
    assert len(script.requests) == 2


@pytest.mark.parametrize("failure", [
    500, 503, httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError,
    httpx.Response(200, text="<html>"), httpx.Response(200, json=[1]),
    httpx.Response(200, json={"task_id": "task1"}),
])
def test_post_with_unknown_outcome_is_not_retried(failure: Any) -> None:
    delays: list[float] = []
    script = Script(failure, ok())
    answered = isinstance(failure, httpx.Response) and failure.is_success
    with pytest.raises(OutcomeUnknown, match="the dispatch was created, but the answer is "
                       "unusable" if answered else "may or may not have been created") as caught:
        make(script, delays).create(KEY, CRON)
    assert caught.value.created is answered  # a 2xx means it exists: never to be sent again
    assert len(script.requests) == 1
    assert delays == []


def test_a_503_s_retry_after_is_handed_on_with_the_unknown_outcome() -> None:
    script = Script(httpx.Response(503, headers={"Retry-After": "7"}))
    with pytest.raises(OutcomeUnknown) as caught:
        make(script).create(KEY, CRON)
    assert caught.value.retry_after == 7.0
    assert caught.value.created is False


def test_post_500_outcome_unknown_keeps_status_and_code() -> None:
    script = Script(httpx.Response(500, json={"error_code": "FDI.3000", "error_msg": "oops"},
                                   headers={"X-Request-Id": "r9"}))
    with pytest.raises(OutcomeUnknown) as caught:
        make(script).create(KEY, CRON)
    assert (caught.value.status, caught.value.code, caught.value.request_id) == (
        500, "FDI.3000", "r9")
    assert caught.value.method == "POST"


def test_post_is_retried_when_certainly_not_processed() -> None:
    delays: list[float] = []
    script = Script(httpx.ConnectError, httpx.Response(429, headers={"Retry-After": "2"}),
                    httpx.PoolTimeout, ok())
    assert make(script, delays).create(KEY, CRON).dispatch_id == "d1"
    assert len(script.requests) == 4
    assert delays == [0.25, 2.0, 1.0]


def test_post_throttled_until_the_end_is_a_plain_api_error() -> None:
    with pytest.raises(ApiError) as caught:
        make(Script(429), max_retries=1).create(KEY, CRON)
    assert type(caught.value) is ApiError
    assert caught.value.status == 429


def test_post_refused_is_a_plain_api_error() -> None:
    body = {"code": 400, "reason": {"error_code": "FDI.3002", "error_msg": "exists"}}
    script = Script(httpx.Response(400, json=body))
    with pytest.raises(ApiError) as caught:
        make(script).create(KEY, CRON)
    assert type(caught.value) is ApiError
    assert len(script.requests) == 1


# -- show and responses --------------------------------------------------------------------------

@pytest.mark.parametrize("response", [
    httpx.Response(200, json={}),
    httpx.Response(200),
    httpx.Response(200, json={"task_id": "task1", "dispatch_id": ""}),
    httpx.Response(404, json={"error_code": "FDI.3181", "error_msg": "no dispatch"}),
    httpx.Response(404, json={"code": 404, "reason": {"error_code": "FDI.3181",
                                                      "error_msg": "no dispatch"}}),
    # The reference documents no code for it: any API code but FDI.3180 counts.
    httpx.Response(404, json={"code": 404, "reason": {"error_code": "FDI.3999",
                                                      "error_msg": "not found"}}),
])
def test_show_none_when_the_task_has_no_dispatch(response: httpx.Response) -> None:
    assert make(Script(response)).show(KEY) is None


def test_show_raises_when_the_task_is_not_in_the_project() -> None:
    body = {"error_code": "FDI.3180", "error_msg": "The task does not belong to the project."}
    with pytest.raises(ApiError) as caught:
        make(Script(httpx.Response(404, json=body))).show(KEY)
    assert caught.value.code == "FDI.3180"
    assert "task task1 is not in project proj1" in str(caught.value)


@pytest.mark.parametrize("response", [
    httpx.Response(404, text="Not Found"),
    httpx.Response(404, json={"error_code": "APIGW.0101", "error_msg": "no such API"}),
    # The dedicated gateway's code for the same answer.
    httpx.Response(404, json={"error_code": "APIG.0101", "error_msg": "API does not exist"}),
])
def test_show_raises_on_a_404_that_is_not_the_api(response: httpx.Response) -> None:
    with pytest.raises(ApiError, match="HTTP 404"):
        make(Script(response)).show(KEY)


@pytest.mark.parametrize("code", ["APIGW.0101", "APIG.0101"])
def test_a_gateway_404_says_the_endpoint_is_wrong(code: str) -> None:
    body = {"error_code": code, "error_msg": "API does not exist"}
    with pytest.raises(ApiError, match="check the endpoint") as caught:
        make(Script(httpx.Response(404, json=body))).show(KEY)
    assert caught.value.code == code


def test_response_iso_start_datetime_and_unknown_fields() -> None:
    body = {"dispatch_id": "d-7", "task_id": "task1", "use_quartz_cron": False,
            "period": "DAY", "dispatch_interval": "2", "start_datetime": "2020-11-14T07:38:25.609Z",
            "cron": "", "something_new": {"x": 1}, "remark": None}
    found = make(Script(ok(body))).show(KEY)
    assert found is not None
    assert found.spec == Spec(period="DAY", dispatch_interval=2, start_datetime=1605339505609)
    assert (found.created_date, found.last_modified_date) == (None, None)


def test_response_fields_of_the_other_form_are_dropped() -> None:
    body = dispatch(period="DAY", dispatch_interval=0, created_date="1605339505609")
    found = make(Script(ok(body))).show(KEY)
    assert found is not None
    assert found.spec == Spec(cron="0 0 2 * * ?")
    assert found.created_date == 1605339505609


@pytest.mark.parametrize("bad", ["../etc", "x" * 65, 42, None])
def test_malformed_dispatch_id_is_refused(bad: object) -> None:
    body = dispatch(dispatch_id=bad)
    if bad is not None:  # an update's answer without the id is about the dispatch of the URL
        with pytest.raises(ApiError, match="dispatch_id"):
            make(Script(ok(body))).update(KEY, "d1", CRON)
    with pytest.raises(OutcomeUnknown, match="dispatch_id"):
        make(Script(ok(body))).create(KEY, CRON)


@pytest.mark.parametrize("response", [
    httpx.Response(200, json={}),
    httpx.Response(200),
    httpx.Response(204),
    httpx.Response(200, text=" \n"),
    httpx.Response(200, json={"dispatch_id": None}),
    httpx.Response(200, json={"dispatch_id": "d1"}),
])
def test_update_answered_without_the_dispatch_is_what_was_sent(response: httpx.Response) -> None:
    updated = make(Script(response)).update(KEY, "d1", CRON)
    assert updated == RemoteDispatch("d1", CRON, None, None)


def test_update_answer_with_some_fields_keeps_them() -> None:
    body = {"use_quartz_cron": True, "cron": "0 0 3 * * ?", "last_modified_date": 7}
    updated = make(Script(ok(body))).update(KEY, "d1", CRON)
    assert updated == RemoteDispatch("d1", Spec(cron="0 0 3 * * ?"), None, 7)


@pytest.mark.parametrize(("response", "problem"), [
    (ok(dispatch(dispatch_id="d2")), "dispatch_id 'd2', not 'd1'"),
    (httpx.Response(200, text="<html>welcome</html>"), "not JSON"),
    (httpx.Response(200, json=[]), "not a JSON object"),
])
def test_update_answer_that_contradicts_is_refused(response: httpx.Response,
                                                   problem: str) -> None:
    with pytest.raises(ApiError, match=f"unexpected response: .*{problem}") as caught:
        make(Script(response)).update(KEY, "d1", CRON)
    assert type(caught.value) is ApiError


def test_wrongly_typed_fields_are_refused() -> None:
    with pytest.raises(ApiError, match="unexpected response: dispatch_interval"):
        make(Script(ok(dispatch(use_quartz_cron=False, cron=None, period="DAY",
                                dispatch_interval=True)))).show(KEY)


# -- secrets ---------------------------------------------------------------------------------------

def test_token_never_appears_in_errors_reprs_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = {"error_code": "APIGW.0301", "error_msg": f"bad token {TOKEN}"}
    errors: list[ApiError] = []
    for step in (httpx.Response(401, json=echo), httpx.Response(500, text=f"token={TOKEN}"),
                 httpx.ReadTimeout(f"read {TOKEN}")):
        client = make(Script(step), max_retries=1)
        with pytest.raises(ApiError) as shown:
            client.show(KEY)
        with pytest.raises(ApiError) as created:
            client.create(KEY, CRON)
        errors += [shown.value, created.value]
        assert TOKEN not in repr(client)
    assert len(errors) == 6
    texts = [str(e) for e in errors] + [repr(e) for e in errors] + [e.message for e in errors]
    assert all(TOKEN not in text for text in texts)
    assert any("***" in text for text in texts)
    assert TOKEN not in repr(TokenAuth(TOKEN))
    assert caplog.records, "retries should have been logged"
    assert all(TOKEN not in record.getMessage() for record in caplog.records)


def test_credentials_echoed_inside_codes_request_ids_and_messages_are_masked() -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        sent = request.headers.get("X-Auth-Token") or request.headers["Authorization"]
        access = sent.partition("Access=")[2].partition(",")[0] or sent
        return httpx.Response(403, json={"error_code": f"E.{access}", "error_msg":
                                         f"key {access} refused", "request_id": f"rid-{access}"},
                              headers={"X-Request-Id": f"x-{access}"})

    ak, sk = "AKIDEXAMPLE1234567", "SK" * 20
    for auth, secret in ((TokenAuth(TOKEN), TOKEN), (AkSkAuth(ak, sk, project_id="p"), ak)):
        client = Blocking(DispatchClient("https://roma.example.com", auth,
                                         transport=httpx.MockTransport(echo)))
        with pytest.raises(ApiError) as caught:
            client.create(KEY, CRON)
        error = caught.value
        for text in (str(error), repr(error), error.message, error.code or "",
                     error.request_id or ""):
            assert secret[:8] not in text, text
        assert "rid-***" in str(error)


@pytest.mark.parametrize(("text", "secret", "shown"), [
    ("The throttling threshold has been reached", "t",
     "The throttling threshold has been reached"),
    ("bad token t (try again)", "t", "bad token *** (try again)"),
    ("token=ab1;", "ab1", "token=***;"),
    ("xab1x ab1", "ab1", "xab1x ***"),
    ("xabc1x abc1", "abc1", "x***x ***"),  # four characters and more: everywhere
    ("prefix-a-long-secret-value-suffix", "a-long-secret-value", "prefix-***-suffix"),
    ("nothing here", "", "nothing here"),
])
def test_redact_masks_short_secrets_only_where_they_stand_alone(text: str, secret: str,
                                                                 shown: str) -> None:
    assert redact(text, secret) == shown


class RenewingAuth:
    """Like a password auth: a new token after the API refused the current one."""

    refused_hint = "check the IAM user"

    def __init__(self, renewals: int) -> None:
        self.token = 1
        self.renewals = renewals

    def ready(self, request: httpx.Request) -> bool:
        return True

    def apply(self, request: httpx.Request) -> None:
        request.headers["X-Auth-Token"] = f"tok{self.token}"

    def invalidate(self, request: httpx.Request) -> bool:
        if self.renewals == 0:
            return False
        self.renewals -= 1
        self.token += 1
        return True


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_401_with_a_renewable_token_is_sent_once_more_with_the_new_one(method: str) -> None:
    script = Script(401, ok())
    client = Blocking(DispatchClient("https://roma.example.com", RenewingAuth(renewals=5),
                                     transport=httpx.MockTransport(script)))
    client.show(KEY) if method == "GET" else client.create(KEY, CRON)
    assert [r.headers["X-Auth-Token"] for r in script.requests] == ["tok1", "tok2"]


def test_401_again_after_renewal_is_the_error_with_the_auths_hint() -> None:
    script = Script(401)
    client = Blocking(DispatchClient("https://roma.example.com", RenewingAuth(renewals=5),
                                     transport=httpx.MockTransport(script)))
    with pytest.raises(ApiError, match="check the IAM user") as raised:
        client.create(KEY, CRON)
    assert raised.value.status == 401
    assert len(script.requests) == 2, "renewed once, not for ever"


# -- concurrency and connections ---------------------------------------------------------------

def test_concurrent_requests_on_one_loop_get_their_own_answers() -> None:
    seen: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        await asyncio.sleep(0.001 * (hash(request.url.path) % 5))  # answers arrive out of order
        return ok(dispatch(dispatch_id=request.url.path.split("/")[7]))

    client = DispatchClient("https://roma.example.com", TokenAuth(TOKEN),
                            transport=httpx.MockTransport(handler))
    keys = [DispatchKey("proj1", "inst1", f"t{n}") for n in range(200)]

    async def read_all() -> list[str]:
        async with client:
            found = await asyncio.gather(*(client.show(k) for k in keys))
        return [f.dispatch_id if f is not None else "" for f in found]

    assert asyncio.run(read_all()) == [k.task_id for k in keys]
    assert len(seen) == 200


def test_connections_live_only_inside_async_with_and_a_closed_client_refuses() -> None:
    from reconciler.emulator import Emulator

    with Emulator() as emulator:
        client = DispatchClient(emulator.url, TokenAuth("t"))

        async def outside() -> None:
            await client.show(KEY)

        with pytest.raises(ReconcilerError, match="outside `async with client`"):
            asyncio.run(outside())
        blocking = Blocking(client)
        assert blocking.show(KEY) is None  # one loop...
        assert blocking.show(KEY) is None  # ...then another: no socket crosses loops
        assert client._transport is None
        with client:
            pass
        with pytest.raises(ReconcilerError, match="closed"):
            blocking.show(KEY)


# -- endpoint and auth -----------------------------------------------------------------------------

@pytest.mark.parametrize(("endpoint", "region", "expected"), [
    (None, "cn-north-4", "https://roma.cn-north-4.myhuaweicloud.com"),
    ("https://roma.example.com/", "cn-north-4", "https://roma.example.com"),
    ("https://gw.example.com:8443/roma", None, "https://gw.example.com:8443/roma"),
    ("http://127.0.0.1:8787", None, "http://127.0.0.1:8787"),
    ("http://localhost:8787/", None, "http://localhost:8787"),
    ("http://[::1]:8787", None, "http://[::1]:8787"),
])
def test_endpoint_for(endpoint: str | None, region: str | None, expected: str) -> None:
    assert endpoint_for(endpoint, region) == expected


@pytest.mark.parametrize(("endpoint", "region", "message"), [
    (None, None, "no API endpoint"),
    ("", "", "no API endpoint"),
    (None, "CN-North-4", "invalid region"),
    (None, "cn-north-4.evil.com/x", "invalid region"),
    ("http://roma.example.com", None, "https is required"),
    ("http://127.0.0.2", None, "https is required"),
    ("ftp://roma.example.com", None, "expected https"),
    ("roma.example.com", None, "invalid endpoint"),
    ("https://roma.example.com/?a=1", None, "no query"),
    ("http://127.0.0.1:99999", None, "port must be 1-65535"),
    ("https://roma.example.com:0", None, "port must be 1-65535"),
])
def test_endpoint_for_refuses(endpoint: str | None, region: str | None, message: str) -> None:
    with pytest.raises(ReconcilerError, match=message):
        endpoint_for(endpoint, region)


def test_endpoint_with_user_information_is_refused_without_echoing_it() -> None:
    with pytest.raises(ReconcilerError) as caught:
        endpoint_for("https://user:hunter2@roma.example.com", None)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("environ", [{}, {"RECONCILER_TOKEN": ""}, {"RECONCILER_TOKEN": "  "}])
def test_auth_from_env_requires_the_token(environ: dict[str, str]) -> None:
    with pytest.raises(CredentialsError, match="RECONCILER_TOKEN"):
        auth_from_env(environ)


def test_auth_from_env_sets_the_header() -> None:
    auth = auth_from_env({"RECONCILER_TOKEN": f" {TOKEN}\n"})
    request = httpx.Request("GET", "https://roma.example.com/")
    auth.apply(request)
    assert request.headers["X-Auth-Token"] == TOKEN
    assert TOKEN not in repr(auth)


def test_token_with_control_characters_is_refused_without_echoing_it() -> None:
    with pytest.raises(CredentialsError, match="RECONCILER_TOKEN") as caught:
        auth_from_env({"RECONCILER_TOKEN": "abc\r\nX-Evil: 1"})
    assert "Evil" not in str(caught.value)


# -- URLs and requests built without httpx's parsing ---------------------------------------------

_ID = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=64)
_ENDPOINT = st.builds(
    lambda scheme, host, port, prefix: f"{scheme}://{host}{port}{prefix}",
    st.sampled_from(["https", "http"]),
    st.sampled_from(["roma.cn-north-4.myhuaweicloud.com", "127.0.0.1", "[::1]", "localhost",
                     "xn--bcher-kva.example", "GW.Example.COM"]),
    st.sampled_from(["", ":443", ":8443", ":80", ":1"]),
    st.sampled_from(["", "/", "/roma", "/a%20b/c", "/r%C3%A9/x/", "/~user/p"]),
)
_PARTS = ("scheme", "userinfo", "host", "port", "netloc", "raw_path", "path", "query",
          "fragment", "raw_host")


@settings(max_examples=200, deadline=None)
@given(_ENDPOINT, st.lists(_ID, min_size=1, max_size=4))
def test_endpoint_urls_are_what_parsing_gives(endpoint: str, ids: list[str]) -> None:
    endpoint = endpoint.rstrip("/")
    urls = EndpointUrls(endpoint)
    for n in range(3):  # the first is parsed and compared; the others are built
        path = "/v2/" + "/".join(ids) + f"/dispatches{n}"
        built, parsed = urls.at(path), httpx.URL(endpoint + path)
        assert [getattr(built, part) for part in _PARTS] == [
            getattr(parsed, part) for part in _PARTS]
        assert str(built) == str(parsed)
        assert built == parsed


def test_endpoint_urls_fall_back_to_parsing_when_httpx_differs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import reconciler.client as client_module

    # A future httpx whose URLs do not extend the way this one's do.
    monkeypatch.setattr(client_module, "_same_url", lambda one, other: False)
    urls = EndpointUrls("https://roma.example.com/roma")
    for n in range(3):
        assert str(urls.at(f"/v2/p/t{n}")) == f"https://roma.example.com/roma/v2/p/t{n}"
    monkeypatch.undo()

    def missing(self: EndpointUrls, path: str) -> httpx.URL:
        raise AttributeError("_uri_reference")  # what a URL without those internals raises

    monkeypatch.setattr(EndpointUrls, "_extended", missing)
    urls = EndpointUrls("https://roma.example.com")
    assert [str(urls.at(f"/x{n}")) for n in range(2)] == [
        "https://roma.example.com/x0", "https://roma.example.com/x1"]


@pytest.mark.parametrize(("method", "spec"), [("POST", CRON), ("PUT", PERIOD), ("GET", None)])
def test_requests_carry_what_httpx_would_have_built(method: str, spec: Spec | None) -> None:
    script = Script(ok())
    client = make(script)
    if method == "POST":
        client.create(KEY, CRON)
    elif method == "PUT":
        client.update(KEY, "d1", PERIOD)
    else:
        client.show(KEY)
    (sent,) = script.requests
    content = None if spec is None else json.dumps(
        spec.body(), ensure_ascii=False, separators=(",", ":")).encode()
    headers = {"Accept": "application/json", "User-Agent": sent.headers["User-Agent"],
               "X-Auth-Token": TOKEN}
    if content is not None:
        headers["Content-Type"] = "application/json;charset=UTF-8"
    expected = httpx.Request(method, str(sent.url), content=content, headers=headers)
    assert sorted(sent.headers.multi_items()) == sorted(expected.headers.multi_items())
    assert sent.content == expected.content
    assert sent.url == expected.url


def test_unusable_ca_settings_are_one_clear_error_before_any_request(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca.pem")
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    client = DispatchClient("https://roma.example.com", TokenAuth(TOKEN))

    async def enter() -> None:
        async with client:
            raise AssertionError("entered without a TLS context")

    with pytest.raises(ReconcilerError, match=r"cannot load the CA certificates.*SSL_CERT_FILE"):
        asyncio.run(enter())
    # Plain http to the emulator needs no certificates at all.
    local = DispatchClient("http://127.0.0.1:9", TokenAuth(TOKEN))

    async def enter_local() -> None:
        async with local:
            pass

    asyncio.run(enter_local())


def test_a_body_nested_beyond_what_json_parses_is_an_unusable_answer() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ApiError, match="nested too deeply"):
        make(Script(httpx.Response(200, content=deep))).show(KEY)
