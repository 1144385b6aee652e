"""AK/SK request signing (`SDK-HMAC-SHA256`), byte-for-byte as `huaweicloudsdkcore` signs.

The Huawei Cloud API gateway accepts a request signed with an access key (AK) and secret key (SK)
instead of an IAM token. The signature is an HMAC-SHA256, keyed by the SK, over a canonical form
of the request; the gateway recomputes it from what it received. This module reproduces the
canonical form of `huaweicloudsdkcore` 3.1.219 (`signer/signer.py`, class `Signer`) exactly,
quirks included, so that a request signed here is indistinguishable from one the SDK signs:

- Before signing, the SDK adds `X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD` when the header named
  exactly `Content-Type` is non-empty and starts with neither `application/json` nor
  `application/bson` (both comparisons case-sensitive), then `X-Sdk-Date` and `Host` unless a
  header of that name (in any case) exists. All three are ordinary headers from then on: they
  are signed and must be sent.
- Signed headers: every header whose name contains no `_`, lower-cased and sorted (a name given
  twice in different cases is listed twice). Canonical headers: `name:value` per signed header,
  each followed by a newline, the value stripped of surrounding whitespace; for names given
  twice, the value of the last one, for both lines.
- Canonical URI: the path percent-decoded, split on `/`, each segment percent-encoded keeping
  only unreserved characters (`A-Z a-z 0-9 - . _ ~`), re-joined; a `/` is appended unless it
  already ends in one (so `/a` and `/a/` sign the same).
- Canonical query: `(key, value)` pairs sorted, keys and values encoded like path segments,
  joined by `&`; list values sorted and repeated, booleans as `true`/`false`.
- Payload hash: hex SHA-256 of the body; the empty-string hash when there is no body; when there
  is a body and an `X-Sdk-Content-Sha256` header (the first one, in any case) with a value that
  is not blank, that value, stripped.
- String to sign: `SDK-HMAC-SHA256`, the date, hex SHA-256 of the canonical request, on three
  lines. `Authorization: SDK-HMAC-SHA256 Access=<AK>, SignedHeaders=<a;b>, Signature=<hex>`.

`sign` is the algorithm over a URL; `AkSkAuth` applies it to an `httpx.Request` (the `Auth`
protocol of `reconciler.auth`); `verify` checks a received request the way a gateway does.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from reconciler.auth import CredentialsError, project_in

if TYPE_CHECKING:  # annotations only: the emulator verifies signatures without httpx
    import httpx

ALGORITHM = "SDK-HMAC-SHA256"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
AK_ENV = "HUAWEICLOUD_SDK_AK"
SK_ENV = "HUAWEICLOUD_SDK_SK"
PROJECT_ID_ENV = "HUAWEICLOUD_SDK_PROJECT_ID"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

_HEADER_DATE = "X-Sdk-Date"
_HEADER_HOST = "Host"
_HEADER_CONTENT_SHA256 = "X-Sdk-Content-Sha256"
_HEADER_PROJECT_ID = "X-Project-Id"
_HEADER_AUTHORIZATION = "Authorization"
_EMPTY_HASH = hashlib.sha256(b"").hexdigest()
# Connection-level headers (RFC 9110 section 7.6.1): any proxy may drop or rewrite them, so
# `AkSkAuth` sends them unsigned. The SDK never signs them either: its HTTP library adds them
# after signing.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                         "transfer-encoding", "upgrade"})
_AUTHORIZATION = re.compile(
    r"SDK-HMAC-SHA256 Access=(?P<ak>[^,\s]+), SignedHeaders=(?P<signed>[^,\s]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})")


# --- the algorithm -----------------------------------------------------------------------------

def sign(method: str, url: str, headers: Mapping[str, str], body: bytes, *, ak: str, sk: str,
         sdk_date: str) -> str:
    """The `Authorization` header value for this request, as the SDK computes it.

    `url` is the absolute URL as sent: its path is the raw (percent-encoded) request path; its
    query is form-decoded (`+` is a space, as `httpx` encodes `params=`) into the `(key, value)`
    pairs the SDK would have been given. `headers` are the request's headers; `sdk_date` is
    the `X-Sdk-Date` value (`%Y%m%dT%H%M%SZ`, UTC).

    The headers the SDK adds before signing are signed as if present when `headers` lacks them
    (see `headers_to_add`): a caller must send those too (`AkSkAuth` does). An `Authorization`
    header in `headers` is signed like any other header, as the SDK does: leave it out.

    Raises ValueError when `ak` or `sk` is empty, `sdk_date` does not parse, or `headers`
    carries an `X-Sdk-Date` other than `sdk_date`. Messages never include the SK.
    """
    if not ak:
        raise ValueError("the AK is empty")
    if not sk:
        raise ValueError("the SK is empty")
    parts = urlsplit(url)
    all_headers = dict(headers)
    given_date = _get_ignore_case(all_headers, _HEADER_DATE)
    if given_date is not None and given_date != sdk_date:
        raise ValueError(f"the {_HEADER_DATE} header ({given_date!r}) is not sdk_date "
                         f"({sdk_date!r})")
    # The SDK's order (content header, date, host) decides which of two names differing only
    # in case comes last, and so whose value is signed.
    all_headers.update(headers_to_add(url, headers, sdk_date))
    signed_headers = _signed_header_names(all_headers)
    date = _parse_date(sdk_date)
    canonical = _canonical_request(method, parts.path,
                                   parse_qsl(parts.query, keep_blank_values=True), all_headers,
                                   signed_headers=signed_headers,
                                   payload_hash=_payload_hash(all_headers, body))
    return _authorization(ak, sk, signed_headers, canonical, date)


def headers_to_add(url: str, headers: Mapping[str, str], sdk_date: str) -> dict[str, str]:
    """The headers the SDK adds before signing and that `headers` lacks, in the SDK's order.

    `X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD` when the header named exactly `Content-Type` is
    non-empty and starts with neither `application/json` nor `application/bson` (it replaces a
    header of exactly that name, adds one beside a header of that name in another case);
    `X-Sdk-Date: sdk_date` and `Host: <the URL's netloc>` unless a header of that name exists in
    any case. `sign` signs them; they must be sent with the request.
    """
    added: dict[str, str] = {}
    if _wants_unsigned_payload(headers):
        added[_HEADER_CONTENT_SHA256] = UNSIGNED_PAYLOAD
    if _get_ignore_case(headers, _HEADER_DATE) is None:
        added[_HEADER_DATE] = sdk_date
    if _get_ignore_case(headers, _HEADER_HOST) is None:
        added[_HEADER_HOST] = urlsplit(url).netloc
    return added


def canonical_query_string(params: Iterable[tuple[str, object]]) -> str:
    """The canonical query of typed query parameters, as the SDK builds it from its own.

    `sign` only ever passes strings (a URL has no types). With typed values the SDK's quirks
    show and are kept: pairs are sorted as Python tuples, so equal keys order by their values'
    own ordering (`9` before `10`; a list against a list compares the lists as given, before
    their items are sorted) and mixing types under one key raises TypeError; a list's items
    are sorted, then each is written with `str()` (a boolean inside a list is `True`, outside
    one `true`).
    """
    pairs: list[Any] = list(params)
    pairs.sort()
    out: list[str] = []
    for key, value in pairs:
        name = _url_encode(key)
        if isinstance(value, list):
            out.extend(f"{name}={_url_encode(str(item))}" for item in sorted(value))
        elif isinstance(value, bool):
            out.append(f"{name}={_url_encode(str(value).lower())}")
        else:
            out.append(f"{name}={_url_encode(str(value))}")
    return "&".join(out)


def canonical_uri(path: str) -> str:
    """The canonical form of a raw (percent-encoded) request path.

    Decoding first means `%2F` splits a segment, invalid UTF-8 escapes become U+FFFD and a
    literal `%` not followed by two hex digits is encoded as `%25`. The SDK fails on an empty
    path (`IndexError`); it is taken as `/` here, which is what an HTTP client sends for it.
    """
    encoded = "/".join(_url_encode(segment) for segment in unquote(path).split("/"))
    return encoded if encoded.endswith("/") else encoded + "/"


def _canonical_request(method: str, path: str, query: Iterable[tuple[str, object]],
                       headers: Mapping[str, str], *, signed_headers: list[str],
                       payload_hash: str) -> str:
    return "\n".join((method.upper(), canonical_uri(path), canonical_query_string(query),
                      _canonical_headers(headers, signed_headers), ";".join(signed_headers),
                      payload_hash))


def _canonical_headers(headers: Mapping[str, str], signed_headers: list[str]) -> str:
    # Lower-cased names, later ones winning: two names differing only in case both appear in
    # the signed list, each line with the last one's value.
    values = {name.lower(): str(value).strip() for name, value in headers.items()}
    return "".join(f"{name}:{values[name]}\n" for name in signed_headers)


def _signed_header_names(headers: Mapping[str, str]) -> list[str]:
    return sorted(name.lower() for name in headers if "_" not in name)


def _payload_hash(headers: Mapping[str, str], body: bytes) -> str:
    if not body:
        return _EMPTY_HASH
    declared = _get_ignore_case(headers, _HEADER_CONTENT_SHA256)
    if declared is not None:
        # The SDK reads the value after building the canonical headers, which rewrote every
        # header value in place: stripped, then its UTF-8 bytes taken as Latin-1 text (which
        # the canonical request encodes as UTF-8 again). Mirrored, though only ASCII makes sense.
        declared = str(declared).strip().encode("utf-8").decode("iso-8859-1")
        if declared:
            return declared
    return hashlib.sha256(body).hexdigest()


def _wants_unsigned_payload(headers: Mapping[str, str]) -> bool:
    # Exactly the SDK's test: the key must be spelled `Content-Type`, and the prefixes are
    # compared case-sensitively on the unstripped value.
    content_type = headers.get("Content-Type")
    return content_type is not None and content_type != "" and not (
        content_type.startswith("application/json") or content_type.startswith("application/bson"))


def _authorization(ak: str, sk: str, signed_headers: list[str], canonical_request: str,
                   date: datetime) -> str:
    string_to_sign = "\n".join((ALGORITHM, date.strftime(DATE_FORMAT),
                                hashlib.sha256(canonical_request.encode()).hexdigest()))
    try:
        key = sk.encode()
    except UnicodeEncodeError:
        raise ValueError("the SK is not encodable as UTF-8") from None
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    return (f"{ALGORITHM} Access={ak}, SignedHeaders={';'.join(signed_headers)}, "
            f"Signature={signature}")


def _parse_date(text: str) -> datetime:
    # strptime accepts a few non-canonical spellings (e.g. single-digit fields); the SDK signs
    # the date re-formatted from the parsed value, and so does this.
    try:
        return datetime.strptime(text, DATE_FORMAT)
    except ValueError:
        raise ValueError(f"{_HEADER_DATE} {text!r} is not of the form YYYYMMDDTHHMMSSZ") from None


def _get_ignore_case(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def _url_encode(text: str) -> str:
    return quote(text, safe="~")


def format_sdk_date(moment: datetime) -> str:
    """`moment` as an `X-Sdk-Date` value (`%Y%m%dT%H%M%SZ` in UTC; naive means UTC)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime(DATE_FORMAT)


# --- verification ------------------------------------------------------------------------------

def verify(method: str, url: str, headers: Mapping[str, str], body: bytes, *, ak: str, sk: str,
           max_skew_seconds: float = 900, now: datetime | None = None) -> bool:
    """Whether the request's `Authorization` is a valid signature by `ak`/`sk`, as sent.

    Recomputes the signature over the headers the request says it signed (`SignedHeaders`),
    so unsigned headers a proxy added do not matter, and compares in constant time. Refuses
    (False) unless: the `Authorization` header has the SDK's exact shape with `Access` equal to
    `ak`; the signed names are lower-case, contain no `_` and include `host` and `x-sdk-date`,
    and every one is present; `x-sdk-content-sha256`, when sent, is signed and, with a body,
    is either `UNSIGNED-PAYLOAD` (the body is then not covered: the SDK sends this for bodies
    that are not JSON) or the body's hash; `X-Sdk-Date` is in the canonical format and within
    `max_skew_seconds` of `now` (default: the current time; naive means UTC). The URL's query
    is read as `sign` reads it. Never raises on malformed input.
    """
    try:
        return _verify(method, url, headers, body, ak=ak, sk=sk,
                       max_skew_seconds=max_skew_seconds, now=now)
    except (ValueError, TypeError):
        return False


def _verify(method: str, url: str, headers: Mapping[str, str], body: bytes, *, ak: str, sk: str,
            max_skew_seconds: float, now: datetime | None) -> bool:
    if not ak or not sk:
        return False
    received = {name.lower(): value for name, value in headers.items()}
    match = _AUTHORIZATION.fullmatch(received.get("authorization", "").strip())
    if match is None or not hmac.compare_digest(match["ak"].encode(), ak.encode()):
        return False
    signed = match["signed"].split(";")
    if any(not name or name != name.lower() or "_" in name or name not in received
           or name == "authorization" for name in signed):
        return False
    if signed != sorted(signed) or "host" not in signed or "x-sdk-date" not in signed:
        return False
    declared = received.get("x-sdk-content-sha256")
    if declared is not None:
        if "x-sdk-content-sha256" not in signed:
            return False
        if body and declared.strip() not in (UNSIGNED_PAYLOAD, hashlib.sha256(body).hexdigest()):
            return False
    sent_date = received["x-sdk-date"].strip()
    date = _parse_date(sent_date)
    if date.strftime(DATE_FORMAT) != sent_date:
        return False
    moment = datetime.now(UTC) if now is None else now
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if abs((moment - date.replace(tzinfo=UTC)).total_seconds()) > max_skew_seconds:
        return False
    parts = urlsplit(url)
    canonical = _canonical_request(method, parts.path,
                                   parse_qsl(parts.query, keep_blank_values=True),
                                   received, signed_headers=signed,
                                   payload_hash=_payload_hash(received, body))
    expected = _authorization(ak, sk, signed, canonical, date)
    return hmac.compare_digest(expected.encode(), match.group(0).encode())


# --- httpx -------------------------------------------------------------------------------------

def _utc_now() -> datetime:
    return datetime.now(UTC)


def _check_secret(what: str, value: str) -> str:
    value = value.strip()
    if not value:
        raise CredentialsError(f"the {what} is empty")
    if not value.isascii() or not value.isprintable() or " " in value:
        raise CredentialsError(f"the {what} contains spaces, control or non-ASCII characters")
    return value


class AkSkAuth:
    """Signs every request with an AK/SK pair (the `Auth` protocol of `reconciler.auth`).

    `apply` sets `X-Sdk-Date` (from `clock`, default the current UTC time), `X-Project-Id`,
    `Host` when missing, `X-Sdk-Content-Sha256` when the SDK would, and finally
    `Authorization`, computed by `sign` over the request's method, URL as sent, body and
    headers. Hop-by-hop headers (`Connection`, `Keep-Alive`, `TE`, `Trailer`,
    `Transfer-Encoding`, `Upgrade`, `Proxy-Connection`) are sent but not signed, since
    intermediaries may rewrite them; every other header is signed.

    `X-Project-Id`: the SDK sends the project id in this header; `project_id` when given, else
    the segment after the first `/v2/` of the path, as in `[prefix]/v2/{project_id}/...` (all our
    API paths), when it is 1-64 of `[A-Za-z0-9_-]`; else the header is not sent.

    Surrounding whitespace is stripped from `ak` and `sk`; CredentialsError, which never quotes
    the value, when either is then empty or holds spaces, control or non-ASCII characters.
    The repr shows at most the first 4 characters of the AK and never the SK.
    """

    __slots__ = ("_ak", "_clock", "_project_id", "_sk")
    refused_hint = (f"check {AK_ENV} and {SK_ENV}, and this machine's clock: the gateway refuses "
                    "a signature dated more than 15 minutes away from its own")

    def __init__(self, ak: str, sk: str, project_id: str | None = None, *,
                 clock: Callable[[], datetime] = _utc_now) -> None:
        self._ak = _check_secret("AK", ak)
        self._sk = _check_secret("SK", sk)
        if project_id is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", project_id):
            raise CredentialsError("the project id must be 1-64 of [A-Za-z0-9_-]")
        self._project_id = project_id
        self._clock = clock

    @property
    def project_id(self) -> str | None:
        """The configured project id (None: taken from each request's path)."""
        return self._project_id

    def invalidate(self, request: httpx.Request) -> bool:
        return False  # a key pair is not renewed: signing again would be refused again

    def ready(self, request: httpx.Request) -> bool:
        return True  # signing is local

    def apply(self, request: httpx.Request) -> None:
        """Sign `request` in place for this attempt (fresh date, replaces any Authorization).

        Raises httpx.RequestNotRead for a streaming body (it must be hashed), ValueError when a
        header is repeated (one signed value could not describe two lines).
        """
        headers = request.headers
        headers.pop(_HEADER_AUTHORIZATION, None)
        sdk_date = format_sdk_date(self._clock())
        headers[_HEADER_DATE] = sdk_date
        project_id = self._project_id or project_in(request)
        if project_id:
            headers[_HEADER_PROJECT_ID] = project_id
        url = request.url
        target = f"{url.scheme}://{url.netloc.decode('ascii')}{url.raw_path.decode('ascii')}"
        for name, value in headers_to_add(target, _signable_headers(request), sdk_date).items():
            headers[name] = value
        headers[_HEADER_AUTHORIZATION] = sign(request.method, target, _signable_headers(request),
                                              request.content, ak=self._ak, sk=self._sk,
                                              sdk_date=sdk_date)

    def __repr__(self) -> str:
        shown = self._ak[:4] if len(self._ak) > 8 else ""
        return f"AkSkAuth(ak={shown + '***'!r}, sk=***, project_id={self._project_id!r})"


def _signable_headers(request: httpx.Request) -> dict[str, str]:
    """The request's headers as sent (original case), less the hop-by-hop ones."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    for raw_name, raw_value in request.headers.raw:
        name = raw_name.decode("latin-1")
        lower = name.lower()
        if lower in seen:
            raise ValueError(f"the header {name} is repeated; a signed request needs one line")
        seen.add(lower)
        if lower not in _HOP_BY_HOP:
            out[name] = raw_value.decode("utf-8")
    return out


def aksk_from_env(environ: Mapping[str, str], project_id: str | None = None) -> AkSkAuth | None:
    """AK/SK credentials from `HUAWEICLOUD_SDK_AK` and `HUAWEICLOUD_SDK_SK`, as the SDK reads them.

    None when neither is set (or both are empty); CredentialsError naming the missing variable
    when only one is, or naming the variable whose value is unusable (never quoting it).
    The project id is `project_id`, else `HUAWEICLOUD_SDK_PROJECT_ID`, else taken from paths.
    """
    ak = environ.get(AK_ENV, "").strip()
    sk = environ.get(SK_ENV, "").strip()
    if not ak and not sk:
        return None
    if not ak:
        raise CredentialsError(f"{SK_ENV} is set but {AK_ENV} is not: set both or neither")
    if not sk:
        raise CredentialsError(f"{AK_ENV} is set but {SK_ENV} is not: set both or neither")
    for variable, what, value in ((AK_ENV, "AK", ak), (SK_ENV, "SK", sk)):
        try:
            _check_secret(what, value)
        except CredentialsError as exc:
            raise CredentialsError(f"{variable}: {exc}") from None
    if project_id is None and environ.get(PROJECT_ID_ENV, "").strip():
        try:
            return AkSkAuth(ak, sk, environ[PROJECT_ID_ENV].strip())
        except CredentialsError as exc:
            raise CredentialsError(f"{PROJECT_ID_ENV}: {exc}") from None
    return AkSkAuth(ak, sk, project_id)
