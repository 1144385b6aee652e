"""AK/SK signing: compared with huaweicloudsdkcore's own Signer, which is the reference."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit

import httpx
import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials  # type: ignore[import-untyped]
from huaweicloudsdkcore.sdk_request import SdkRequest  # type: ignore[import-untyped]
from huaweicloudsdkcore.signer.signer import Signer  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.auth import CredentialsError
from reconciler.client import DispatchClient
from reconciler.model import DispatchKey, Spec
from reconciler.signer import (
    AK_ENV,
    PROJECT_ID_ENV,
    SK_ENV,
    AkSkAuth,
    aksk_from_env,
    canonical_query_string,
    canonical_uri,
    format_sdk_date,
    headers_to_add,
    sign,
    verify,
)
from tests.factories import Blocking

AK = "HPUAEXAMPLEAK0000001"
SK = "sEcReT+sk/VALUE0123456789abcdefghijKLMN"
DATE = "20240102T030405Z"
MOMENT = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
HOST = "roma.cn-north-4.myhuaweicloud.com"
PATH = "/v2/0123456789abcdef0123456789abcdef/fdi/instances/inst1/tasks/task1/dispatches"


def oracle(method: str, resource_path: str, query: list[tuple[str, Any]],
           headers: Mapping[str, str], body: bytes | None, *, host: str = HOST, ak: str = AK,
           sk: str = SK, project_id: str | None = None) -> tuple[str, str]:
    """The SDK's Authorization and the URL it sends, for this request (inputs not mutated)."""
    request = SdkRequest(method=method, schema="https", host=host, resource_path=resource_path,
                         query_params=copy.deepcopy(query), header_params=dict(headers),
                         body=body)
    if project_id is None:
        Signer(BasicCredentials(ak, sk)).sign(request)
    else:
        # The credentials' own path: adds X-Project-Id, then signs.
        BasicCredentials(ak, sk, project_id).sign_request(request)
    return request.header_params["Authorization"], request.url


def ours(method: str, url: str, headers: Mapping[str, str], body: bytes | None, *,
         ak: str = AK, sk: str = SK, date: str = DATE) -> str:
    return sign(method, url, headers, body or b"", ak=ak, sk=sk, sdk_date=date)


# -- fixed vectors ------------------------------------------------------------------------------

def test_known_answer_independent_of_the_sdk() -> None:
    """Pinned output, so a change on either side shows even if both changed together."""
    headers = {"Content-Type": "text/plain", "X-Sdk-Date": DATE, "a_b": "x", "X-A": " v "}
    url = "https://h.com:8443/v2/a%20b/%2Fc~?a=%2B&a=x%20y&b=1"
    expected = ("SDK-HMAC-SHA256 Access=AK1, SignedHeaders=content-type;host;x-a;"
                "x-sdk-content-sha256;x-sdk-date, Signature="
                "9de5e7b41b81e8d2e60f13ff80028a51e05fa47f3d6c423a4187b7e9bba1f47a")
    assert ours("post", url, headers, b"hi", ak="AK1", sk="SK1") == expected
    assert oracle("post", "/v2/a%20b/%2Fc~", [("b", "1"), ("a", "x y"), ("a", "+")],
                  headers, b"hi", host="h.com:8443", ak="AK1", sk="SK1") == (expected, url)


JSON_HEADERS = {"Content-Type": "application/json;charset=UTF-8", "User-Agent": "reconciler/1",
                "X-Sdk-Date": DATE}

VECTORS: list[tuple[str, str, list[tuple[str, Any]], dict[str, str], bytes | None]] = [
    ("GET", PATH, [], {"X-Sdk-Date": DATE}, None),
    ("GET", PATH, [("limit", "10"), ("offset", "0")], {"X-Sdk-Date": DATE,
                                                     "Accept": "application/json"}, None),
    ("POST", PATH, [], JSON_HEADERS, b'{"cron":"0 0 2 * * ?","remark":"n\xc3\xa4chtlich"}'),
    ("PUT", PATH + "/d1", [], JSON_HEADERS, b'{"period":"HOUR","dispatch_interval":6}'),
    ("DELETE", PATH + "/d1", [], {"X-Sdk-Date": DATE}, b""),
    ("GET", "/v2/p/list", [("tag", "b"), ("tag", "a"), ("ключ", "значение"), ("q", "a b+c&d=e"),
                           ("empty", ""), ("tag", "ä")], {"X-Sdk-Date": DATE}, None),
    ("GET", "/v2/p/" + quote("with space", safe="") + "/" + quote("ü/ñ", safe="") + "/~tilde",
     [], {"X-Sdk-Date": DATE}, None),
    ("GET", "/v2/p/a:b@c!$&'()*+,;=/x%7Ey/", [], {"X-Sdk-Date": DATE}, None),
    ("POST", "/v2/p/upload", [], {"Content-Type": "application/octet-stream",
                                  "X-Sdk-Date": DATE}, b"\x00\x01binary"),
    ("POST", "/v2/p/form", [("a", "1")], {"Content-Type": "application/x-www-form-urlencoded",
                                          "X-Sdk-Date": DATE}, b"a=1"),
    ("GET", "/v2/p/%zz/%C3/%2f/%252F", [], {"x-sdk-date": DATE, "HOST": "other.example"}, None),
    ("PATCH", "//double//slash", [], {"X-Sdk-Date": DATE, "X-Dup": "1", "x-dup": " 2 ",
                                      "X_Hidden": "not signed"}, b"{}"),
]


@pytest.mark.parametrize(("method", "path", "query", "headers", "body"), VECTORS)
def test_fixed_vectors_match_the_sdk(method: str, path: str, query: list[tuple[str, Any]],
                                     headers: dict[str, str], body: bytes | None) -> None:
    expected, url = oracle(method, path, query, headers, body)
    assert ours(method, url, headers, body) == expected
    # The same request with the query as httpx would encode it, in the original order.
    if query:
        for quote_via in (quote, quote_plus):
            other = f"https://{HOST}{path}?{urlencode(query, quote_via=quote_via)}"
            assert ours(method, other, headers, body) == expected


def test_the_date_may_be_left_to_sign() -> None:
    expected, url = oracle("GET", PATH, [], {"X-Sdk-Date": DATE}, None)
    assert ours("GET", url, {}, None) == expected
    assert headers_to_add(url, {}, DATE) == {"X-Sdk-Date": DATE, "Host": HOST}


def test_a_different_date_header_is_refused() -> None:
    with pytest.raises(ValueError, match="X-Sdk-Date"):
        ours("GET", f"https://{HOST}/", {"x-sdk-date": "20240102T030406Z"}, None)


def test_a_bad_date_is_refused() -> None:
    with pytest.raises(ValueError, match="YYYYMMDD"):
        ours("GET", f"https://{HOST}/", {}, None, date="2024-01-02T03:04:05Z")


@pytest.mark.parametrize(("content_type", "unsigned"), [
    ("application/json", False),
    ("application/json;charset=UTF-8", False),
    ("application/jsonl", False),            # a prefix test, as the SDK does
    ("application/bson", False),
    ("Application/JSON", True),              # case-sensitive, as the SDK does
    (" application/json", True),             # not stripped first, as the SDK does
    ("text/plain", True),
    ("application/merge-patch+json", True),
    ("", False),
])
def test_unsigned_payload_header_is_added_and_signed_as_the_sdk_does(
        content_type: str, unsigned: bool) -> None:
    headers = {"Content-Type": content_type, "X-Sdk-Date": DATE}
    added = headers_to_add(f"https://{HOST}/x", headers, DATE)
    assert ("X-Sdk-Content-Sha256" in added) is unsigned
    expected, url = oracle("POST", "/x", [], headers, b"body")
    result = ours("POST", url, headers, b"body")
    assert result == expected
    assert ("x-sdk-content-sha256;" in result) is unsigned
    # Even without a body the header is added (and signed); the payload hash is the empty one.
    expected, url = oracle("POST", "/x", [], headers, None)
    assert ours("POST", url, headers, None) == expected


def test_content_type_is_only_looked_up_as_spelled_by_the_sdk() -> None:
    """The SDK reads `Content-Type` with a case-sensitive key: `content-type` adds nothing."""
    headers = {"content-type": "text/plain", "X-Sdk-Date": DATE}
    assert "X-Sdk-Content-Sha256" not in headers_to_add(f"https://{HOST}/", headers, DATE)
    expected, url = oracle("POST", "/", [], headers, b"b")
    assert ours("POST", url, headers, b"b") == expected
    assert "x-sdk-content-sha256" not in expected


@pytest.mark.parametrize("declared", [" whatever ", "UNSIGNED-PAYLOAD", "ünïcode", "   "])
def test_a_declared_content_hash_replaces_the_payload_hash_as_the_sdk_does(declared: str) -> None:
    """The SDK reads it stripped (and, if non-ASCII, re-decoded as Latin-1): mirrored."""
    headers = {"X-Sdk-Date": DATE, "x-sdk-content-sha256": declared}
    expected, url = oracle("PUT", "/a", [], headers, b"payload")
    assert ours("PUT", url, headers, b"payload") == expected
    # A blank declaration does not count: the body is hashed.
    assert (ours("PUT", url, headers, b"other payload") == expected) is bool(declared.strip())


def test_canonical_uri() -> None:
    assert canonical_uri("") == "/"     # the SDK raises here: see the test below
    assert canonical_uri("/") == "/"
    assert canonical_uri("/a") == canonical_uri("/a/") == "/a/"
    assert canonical_uri("/a%2Fb") == "/a/b/"
    assert canonical_uri("/a b/ü/~x/%7e") == "/a%20b/%C3%BC/~x/~/"
    assert canonical_uri("/%zz/%C3") == "/%25zz/%EF%BF%BD/"


def test_sdk_fails_on_an_empty_resource_path() -> None:
    """Excluded from the comparison: the SDK indexes `url_path[-1]` of an empty path.

    An HTTP client sends `/` for an empty path, so the empty path signs as `/` here.
    """
    with pytest.raises(IndexError):
        oracle("GET", "", [], {"X-Sdk-Date": DATE}, None)
    expected, _ = oracle("GET", "/", [], {"X-Sdk-Date": DATE}, None)
    assert ours("GET", f"https://{HOST}", {}, None) == expected
    assert ours("GET", f"https://{HOST}?", {}, None) == expected


def sdk_query(params: list[tuple[str, Any]]) -> str:
    request = SdkRequest(query_params=copy.deepcopy(params))
    result: str = Signer.process_canonical_query_string(request)
    return result


@pytest.mark.parametrize("params", [
    [("b", True), ("a", False)],
    [("a", ["z", "b"]), ("c", 3)],
    [("a", [10, 9, 100])],                   # sorted as numbers, then written
    [("a", 10), ("a", 9)],
    [("a", ["b", "z"]), ("a", ["c"])],       # lists compared as given: not globally sorted
    [("a", [True, False])],                  # booleans inside a list: `True`/`False`
    [("k y", "v+w"), ("ü", "ß")],
])
def test_typed_query_parameters_as_the_sdk(params: list[tuple[str, Any]]) -> None:
    assert canonical_query_string(params) == sdk_query(params)


def test_typed_query_parameters_mixing_types_under_one_key_fail_like_the_sdk() -> None:
    params: list[tuple[str, Any]] = [("a", ["x"]), ("a", "y")]
    with pytest.raises(TypeError):
        sdk_query(params)
    with pytest.raises(TypeError):
        canonical_query_string(params)


# -- generated requests -------------------------------------------------------------------------

TEXT = st.text(
    st.one_of(
        st.sampled_from("abcXYZ019-._~ !\"#$%&'()*+,/:;<=>?@[\\]^`{|}"),
        st.characters(codec="utf-8", exclude_categories=["Cs"]),
    ),
    max_size=8,
)
RAW_ESCAPES = st.sampled_from(["%2F", "%2f", "%20", "%7E", "%25", "%zz", "%C3", "%C3%BC", "%"])
LITERAL_SAFE = "!$&'()*+,;=:@"


@st.composite
def segments(draw: st.DrawFn) -> str:
    """One path segment as it appears in a request path (percent-encoded or literal)."""
    pieces = draw(st.lists(st.one_of(
        TEXT.map(lambda t: quote(t, safe="")),          # a path parameter, as the SDK quotes it
        TEXT.map(lambda t: quote(t, safe=LITERAL_SAFE)),  # literal text of a path template
        RAW_ESCAPES,
    ), max_size=3))
    return "".join(pieces)


@st.composite
def resource_paths(draw: st.DrawFn) -> str:
    parts = draw(st.lists(segments(), min_size=1, max_size=4))
    path = "/" + "/".join(parts)
    return path + "/" if draw(st.booleans()) else path


QUERY_KEYS = st.one_of(st.sampled_from(["a", "A", "limit", "ключ", "k y", "x+y", ""]), TEXT)
QUERY = st.lists(st.tuples(QUERY_KEYS, TEXT), max_size=6)

HEADER_NAMES = st.one_of(
    st.sampled_from(["X-Custom", "x-custom", "X-CUSTOM", "Accept", "User-Agent", "X-Project-Id",
                     "X_Under", "x_under_score", "Content-Type", "content-type", "Host", "host",
                     "X-Sdk-Content-Sha256", "x-sdk-content-sha256", "X-Request-Id"]),
    st.text(st.sampled_from("abcXYZ-_019"), min_size=1, max_size=10),
)
HEADER_VALUES = st.one_of(
    st.sampled_from(["application/json", "application/json;charset=UTF-8", "text/plain",
                     "application/bson", "Application/Json", "", " UNSIGNED-PAYLOAD "]),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12),
)
HEADERS = st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=6)
HOSTS = st.sampled_from([HOST, "127.0.0.1:8443", "[::1]:9000", "example.com:443"])
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "get", "Post"])
BODIES = st.one_of(st.none(), st.binary(max_size=64),
                   st.text(max_size=32).map(lambda t: t.encode("utf-8", "surrogatepass")))
DATES = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(
    lambda d: d.strftime("%Y%m%dT%H%M%SZ"))
KEYS = st.text(st.characters(codec="ascii", min_codepoint=33, max_codepoint=126), min_size=1,
               max_size=24)
SECRETS = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1,
                  max_size=40)
MANY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Case:
    method: str
    host: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    date_header: str | None     # how the date header is spelled; None: left for `sign` to add
    body: bytes | None
    date: str
    ak: str
    sk: str
    quote_via: Any              # how another client encodes the query (None: the SDK's URL)


CASES = st.builds(
    Case, method=METHODS, host=HOSTS, path=resource_paths(), query=QUERY, headers=HEADERS,
    date_header=st.sampled_from([None, "X-Sdk-Date", "x-sdk-date", "X-SDK-DATE"]), body=BODIES,
    date=DATES, ak=KEYS, sk=SECRETS, quote_via=st.sampled_from([None, quote, quote_plus]))


@MANY
@given(CASES)
def test_generated_requests_sign_as_the_sdk(case: Case) -> None:
    sdk_headers = {**case.headers, case.date_header or "X-Sdk-Date": case.date}
    expected, sdk_url = oracle(case.method, case.path, case.query, sdk_headers, case.body,
                               host=case.host, ak=case.ak, sk=case.sk)
    headers = {**case.headers, case.date_header: case.date} if case.date_header else case.headers
    assert ours(case.method, sdk_url, headers, case.body, ak=case.ak, sk=case.sk,
                date=case.date) == expected
    if case.quote_via is not None and case.query:
        # The URL as another client encodes it, parameters in their original order.
        url = f"https://{case.host}{case.path}?{urlencode(case.query, quote_via=case.quote_via)}"
        assert ours(case.method, url, headers, case.body, ak=case.ak, sk=case.sk,
                    date=case.date) == expected


TYPED_VALUES = st.one_of(
    TEXT, st.booleans(), st.integers(-1000, 1000),
    st.lists(st.integers(-1000, 1000), max_size=4), st.lists(TEXT, max_size=4),
    st.lists(st.booleans(), max_size=3),
)


@MANY
@given(params=st.lists(st.tuples(st.sampled_from(["a", "b", "ü"]), TYPED_VALUES), max_size=5))
def test_generated_typed_query_parameters_as_the_sdk(params: list[tuple[str, Any]]) -> None:
    try:
        expected = sdk_query(params)
    except TypeError:   # mixed types under one key: the SDK cannot sort them, nor can we
        with pytest.raises(TypeError):
            canonical_query_string(params)
        return
    assert canonical_query_string(params) == expected


# -- AkSkAuth on httpx requests -----------------------------------------------------------------

def clock() -> datetime:
    return MOMENT


def signed(method: str = "POST", url: str = f"https://{HOST}{PATH}",
           content: bytes | None = b'{"cron":"0 0 2 * * ?"}',
           headers: dict[str, str] | None = None, auth: AkSkAuth | None = None) -> httpx.Request:
    if headers is None:
        headers = {"Accept": "application/json", "User-Agent": "reconciler/1"}
        if content:
            headers["Content-Type"] = "application/json;charset=UTF-8"
    request = httpx.Request(method, url, content=content, headers=headers)
    (auth or AkSkAuth(AK, SK, clock=clock)).apply(request)
    return request


def check(request: httpx.Request, **kw: Any) -> bool:
    return verify(request.method, str(request.url), request.headers, request.content,
                  ak=kw.pop("ak", AK), sk=kw.pop("sk", SK), now=kw.pop("now", MOMENT), **kw)


def sdk_for(request: httpx.Request) -> str:
    """The SDK's Authorization for this httpx request, X-Project-Id added by its credentials."""
    headers = {name.decode(): value.decode() for name, value in request.headers.raw
               if name.lower() not in (b"authorization", b"x-project-id")}
    url = request.url
    expected, sdk_url = oracle(request.method, url.raw_path.decode().split("?")[0],
                               parse_qsl(url.query.decode(), keep_blank_values=True),
                               headers, request.content or None, host=url.netloc.decode(),
                               project_id=request.headers.get("X-Project-Id"))
    assert urlsplit(sdk_url).path == urlsplit(str(url)).path
    return expected


def test_apply_sets_the_headers_and_matches_the_sdk() -> None:
    request = signed()
    assert request.headers["X-Sdk-Date"] == DATE
    assert request.headers["X-Project-Id"] == "0123456789abcdef0123456789abcdef"
    assert request.headers["Authorization"].startswith(
        f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=accept;content-length;content-type;host;"
        "user-agent;x-project-id;x-sdk-date, Signature=")
    assert "X-Sdk-Content-Sha256" not in request.headers
    assert check(request)
    assert request.headers["Authorization"] == sdk_for(request)


@pytest.mark.parametrize("url", [
    f"https://{HOST}{PATH}",
    f"https://{HOST}:8443/prefix{PATH}/d1?b=2&a=x+y&a=%C3%BC&flag",
    "http://127.0.0.1:8080/v2/p 1/ü~/%2F/x",
    f"https://{HOST}/no-project/here",
])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_apply_on_varied_urls_verifies_and_matches_the_sdk(url: str, method: str) -> None:
    request = signed(method, url, content=None if method == "GET" else b'{"x":1}')
    assert check(request)
    assert request.headers["Authorization"] == sdk_for(request)


def test_no_project_id_header_without_one() -> None:
    request = signed("GET", f"https://{HOST}/v3/projects", content=None)
    assert "X-Project-Id" not in request.headers
    assert check(request)


def test_configured_project_id_wins_over_the_path() -> None:
    auth = AkSkAuth(AK, SK, "configured", clock=clock)
    request = signed(auth=auth)
    assert request.headers["X-Project-Id"] == "configured"
    assert check(request)


def test_non_json_body_is_sent_unsigned_as_the_sdk_does() -> None:
    request = signed(headers={"Content-Type": "text/plain"}, content=b"text")
    assert request.headers["X-Sdk-Content-Sha256"] == "UNSIGNED-PAYLOAD"
    assert "x-sdk-content-sha256;" in request.headers["Authorization"]
    assert request.headers["Authorization"] == sdk_for(request)
    assert check(request)
    # The body is not covered: that is what UNSIGNED-PAYLOAD means.
    assert verify(request.method, str(request.url), request.headers, b"other", ak=AK, sk=SK,
                  now=MOMENT)


def test_tampering_fails_verification() -> None:
    request = signed()
    url, headers, body = str(request.url), dict(request.headers), request.content
    assert verify("POST", url, headers, body, ak=AK, sk=SK, now=MOMENT)
    assert not verify("POST", url, headers, body + b" ", ak=AK, sk=SK, now=MOMENT)
    assert not verify("POST", url.replace("task1", "task2"), headers, body, ak=AK, sk=SK,
                      now=MOMENT)
    assert not verify("POST", url + "?extra=1", headers, body, ak=AK, sk=SK, now=MOMENT)
    assert not verify("PUT", url, headers, body, ak=AK, sk=SK, now=MOMENT)
    assert not verify("POST", url, {**headers, "user-agent": "evil"}, body, ak=AK, sk=SK,
                      now=MOMENT)
    assert not verify("POST", url, headers, body, ak=AK, sk=SK + "x", now=MOMENT)
    assert not verify("POST", url, headers, body, ak="OTHERAK", sk=SK, now=MOMENT)
    without = {k: v for k, v in headers.items() if k != "authorization"}
    assert not verify("POST", url, without, body, ak=AK, sk=SK, now=MOMENT)
    # A header a proxy adds (not signed) does not matter; one removed does.
    assert verify("POST", url, {**headers, "Via": "1.1 proxy"}, body, ak=AK, sk=SK, now=MOMENT)
    assert not verify("POST", url, {k: v for k, v in headers.items() if k != "accept"}, body,
                      ak=AK, sk=SK, now=MOMENT)


@pytest.mark.parametrize(("offset", "valid"), [
    (0, True), (899, True), (-899, True), (900, True), (901, False), (-901, False),
    (86_400, False),
])
def test_the_date_must_be_within_the_skew(offset: int, valid: bool) -> None:
    request = signed()
    assert check(request, now=MOMENT + timedelta(seconds=offset)) is valid
    assert check(request, now=MOMENT + timedelta(seconds=offset), max_skew_seconds=10) is (
        abs(offset) <= 10)


def test_naive_now_is_utc() -> None:
    assert check(signed(), now=MOMENT.replace(tzinfo=None))


@pytest.mark.parametrize("change", [
    lambda a: a.replace("SignedHeaders=accept;", "SignedHeaders="),            # fewer headers
    lambda a: a.replace("content-type;host;", "content-type;"),                # host unsigned
    lambda a: a.replace(";x-sdk-date,", ","),                                  # date unsigned
    lambda a: a.replace("accept;content-length", "content-length;accept"),     # not sorted
    lambda a: a.replace("accept;", "accept;authorization;"),
    lambda a: a.replace("Access=", "Access= "),
    lambda a: a.replace("SDK-HMAC-SHA256", "SDK-HMAC-SM3"),
    lambda a: a[:-1],
    lambda a: a.upper(),
    lambda a: "",
])
def test_malformed_authorization_is_refused(change: Any) -> None:
    request = signed()
    headers = dict(request.headers)
    headers["authorization"] = change(headers["authorization"])
    assert not verify("POST", str(request.url), headers, request.content, ak=AK, sk=SK,
                      now=MOMENT)


def test_a_non_canonical_date_is_refused() -> None:
    request = signed()
    headers = dict(request.headers)
    headers["x-sdk-date"] = "2024-01-02T03:04:05Z"
    assert not verify("POST", str(request.url), headers, request.content, ak=AK, sk=SK,
                      now=MOMENT)


def test_a_declared_hash_must_be_unsigned_payload_or_the_real_one() -> None:
    request = signed(headers={"Content-Type": "application/json",
                              "X-Sdk-Content-Sha256": "0" * 64})
    assert not check(request)


@given(method=st.text(max_size=5), url=st.text(max_size=30),
       headers=st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=4),
       body=st.binary(max_size=8))
@settings(max_examples=100, deadline=None)
def test_verify_never_raises(method: str, url: str, headers: dict[str, str], body: bytes) -> None:
    assert verify(method, url, headers, body, ak=AK, sk=SK) is False


def test_each_apply_has_a_fresh_date_and_a_single_authorization() -> None:
    moments = iter([MOMENT, MOMENT + timedelta(seconds=30)])
    auth = AkSkAuth(AK, SK, clock=lambda: next(moments))
    request = httpx.Request("GET", f"https://{HOST}{PATH}", headers={"Accept": "*/*"})
    auth.apply(request)
    first = request.headers["Authorization"]
    auth.apply(request)
    assert request.headers.get_list("Authorization") == [request.headers["Authorization"]]
    assert request.headers["Authorization"] != first
    assert request.headers["X-Sdk-Date"] == "20240102T030435Z"
    assert check(request, now=MOMENT + timedelta(seconds=30))


def test_clock_in_another_zone_is_converted_to_utc() -> None:
    assert format_sdk_date(datetime(2024, 1, 2, 11, 4, 5, tzinfo=timezone(timedelta(hours=8)))) \
        == DATE
    assert format_sdk_date(MOMENT.replace(tzinfo=None)) == DATE


def test_hop_by_hop_headers_are_sent_unsigned() -> None:
    request = signed(headers={"Connection": "keep-alive", "Accept": "*/*",
                              "Transfer-Encoding": "chunked"})
    assert "connection" not in request.headers["Authorization"]
    assert "transfer-encoding" not in request.headers["Authorization"]
    assert request.headers["Connection"] == "keep-alive"
    headers = {k: v for k, v in request.headers.items() if k != "connection"}
    assert verify("POST", str(request.url), headers, request.content, ak=AK, sk=SK, now=MOMENT)


def test_a_repeated_header_cannot_be_signed() -> None:
    request = httpx.Request("GET", f"https://{HOST}{PATH}",
                            headers=[("X-A", "1"), ("x-a", "2")])
    with pytest.raises(ValueError, match="repeated"):
        AkSkAuth(AK, SK, clock=clock).apply(request)


def test_a_streaming_body_cannot_be_signed() -> None:
    def chunks() -> Iterator[bytes]:
        yield b"x"

    request = httpx.Request("POST", f"https://{HOST}{PATH}", content=chunks())
    with pytest.raises(httpx.RequestNotRead):
        AkSkAuth(AK, SK, clock=clock).apply(request)


def test_the_dispatch_client_sends_requests_that_verify() -> None:
    """Every attempt, retries included, is signed afresh and verifies on arrival."""
    seen: list[bool] = []
    answers = iter([httpx.Response(503), httpx.Response(200, json={
        "dispatch_id": "d1", "task_id": "task1", "use_quartz_cron": True,
        "cron": "0 0 2 * * ?", "created_date": 1, "last_modified_date": 2})])

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(check(request))
        return next(answers)

    async def no_wait(seconds: float) -> None:
        pass

    client = DispatchClient("https://roma.example.com", AkSkAuth(AK, SK, clock=clock),
                            transport=httpx.MockTransport(handler), sleep=no_wait)
    Blocking(client).update(DispatchKey("proj1", "inst1", "task1"), "d1",
                            Spec(cron="0 0 2 * * ?"))
    assert seen == [True, True]


class _Verifying(BaseHTTPRequestHandler):
    results: list[bool]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = f"http://{self.headers['Host']}{self.path}"
        self.results.append(verify(self.command, url, dict(self.headers.items()), body,
                                   ak=AK, sk=SK, now=MOMENT))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_request_sent_over_the_wire_verifies_on_the_server() -> None:
    """What httpx writes on the socket (header case, order, extra headers) still verifies."""
    results: list[bool] = []
    handler = type("Handler", (_Verifying,), {"results": results})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        with httpx.Client(auth=None) as client:
            for path in (PATH, "/v2/p/ü%20x/~a/?q=a+b&q=%2B"):
                request = client.build_request(
                    "POST", f"http://127.0.0.1:{port}{path}", json={"a": "ä"},
                    headers={"X-Extra": "inner  spaces"})
                AkSkAuth(AK, SK, clock=clock).apply(request)
                assert client.send(request).status_code == 204
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert results == [True, True]


# -- secrets ------------------------------------------------------------------------------------

def test_repr_hides_the_secret_and_most_of_the_ak() -> None:
    auth = AkSkAuth(AK, SK, "proj")
    for text in (repr(auth), str(auth), f"{auth}", repr([auth])):
        assert SK not in text
        assert AK not in text
        assert "HPUA***" in text
    assert "SHOR" not in repr(AkSkAuth("SHORTAK", SK))


def test_repr_of_a_client_using_it_hides_the_secret() -> None:
    client = DispatchClient("https://roma.example.com", AkSkAuth(AK, SK),
                            transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    assert SK not in repr(client)
    assert AK not in repr(client)


BAD_SECRETS = ["", "   ", "has space", "tab\there", "new\nline", "nön-ascii", "ctrl\x01x",
               "del\x7f"]


@pytest.mark.parametrize("bad", BAD_SECRETS)
def test_bad_credentials_are_refused_without_quoting_them(bad: str) -> None:
    with pytest.raises(CredentialsError) as sk_error:
        AkSkAuth(AK, bad)
    assert "SK" in str(sk_error.value)
    with pytest.raises(CredentialsError) as ak_error:
        AkSkAuth(bad, SK)
    assert "AK" in str(ak_error.value)
    for exc in (sk_error.value, ak_error.value):
        assert SK not in str(exc)
        assert (bad.strip() not in str(exc)) or not bad.strip()


def test_surrounding_whitespace_is_stripped() -> None:
    request = signed(auth=AkSkAuth(f" {AK}\n", f"{SK}\n", clock=clock))
    assert check(request)


def test_bad_project_id_is_refused() -> None:
    with pytest.raises(CredentialsError, match="project id"):
        AkSkAuth(AK, SK, "a/b")


def test_sign_refuses_empty_keys_without_quoting_the_other() -> None:
    with pytest.raises(ValueError, match="SK is empty") as error:
        sign("GET", f"https://{HOST}/", {}, b"", ak=AK, sk="", sdk_date=DATE)
    assert AK not in str(error.value)
    with pytest.raises(ValueError, match="AK is empty") as error:
        sign("GET", f"https://{HOST}/", {}, b"", ak="", sk=SK, sdk_date=DATE)
    assert SK not in str(error.value)


def test_aksk_from_env_absent_is_none() -> None:
    assert aksk_from_env({}) is None
    assert aksk_from_env({AK_ENV: "", SK_ENV: "  "}) is None


@pytest.mark.parametrize(("environ", "missing"), [
    ({AK_ENV: AK}, SK_ENV),
    ({AK_ENV: AK, SK_ENV: ""}, SK_ENV),
    ({SK_ENV: SK}, AK_ENV),
])
def test_aksk_from_env_names_the_missing_variable(environ: dict[str, str], missing: str) -> None:
    with pytest.raises(CredentialsError) as error:
        aksk_from_env(environ)
    assert f"{missing} is not" in str(error.value)
    assert SK not in str(error.value)


def test_aksk_from_env_names_a_bad_variable_without_its_value() -> None:
    bad_sk = "secret with spaces"
    with pytest.raises(CredentialsError, match=SK_ENV) as error:
        aksk_from_env({AK_ENV: AK, SK_ENV: bad_sk})
    assert bad_sk not in str(error.value)
    with pytest.raises(CredentialsError, match=AK_ENV):
        aksk_from_env({AK_ENV: "bad ak", SK_ENV: SK})
    with pytest.raises(CredentialsError, match=PROJECT_ID_ENV):
        aksk_from_env({AK_ENV: AK, SK_ENV: SK, PROJECT_ID_ENV: "bad/id"})


def test_aksk_from_env_project_id() -> None:
    environ = {AK_ENV: AK, SK_ENV: SK, PROJECT_ID_ENV: "fromenv"}
    auth = aksk_from_env(environ)
    assert auth is not None
    assert auth.project_id == "fromenv"
    auth = aksk_from_env(environ, project_id="given")
    assert auth is not None
    assert auth.project_id == "given"
    auth = aksk_from_env({AK_ENV: AK, SK_ENV: SK})
    assert auth is not None
    assert auth.project_id is None
    assert SK not in repr(auth)
