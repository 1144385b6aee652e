from __future__ import annotations

import json

import httpx
import pytest

from reconciler.errorbody import clean, error_fields, escape_controls

BIDI_AND_SEPARATORS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c" \
    "\u2028\u2029"


def test_a_json_body_with_an_invalid_utf8_byte_still_gives_code_and_message() -> None:
    content = b'{"error_code": "FDI.3002", "error_msg": "bad remark \xff here"}'
    code, message, _ = error_fields(httpx.Response(400, content=content))
    assert code == "FDI.3002"
    assert message == "bad remark \ufffd here"


def test_a_json_body_with_a_byte_order_mark_is_read() -> None:
    content = b"\xef\xbb\xbf" + json.dumps({"error_code": "FDI.3002", "error_msg": "m"}).encode()
    assert error_fields(httpx.Response(400, content=content))[:2] == ("FDI.3002", "m")


@pytest.mark.parametrize(("body", "code"), [
    ({"error_code": 3002, "error_msg": "m"}, "3002"),
    ({"error_code": "3002", "error_msg": "m"}, "3002"),
    ({"code": 400, "reason": {"error_code": 3002, "error_msg": "m"}}, "3002"),
    # Keystone's `code` is the HTTP status again: no code of its own.
    ({"error": {"code": 400, "message": "m", "title": "Bad Request"}}, None),
    ({"error": {"code": "400", "message": "m"}}, None),
    ({"error_code": True, "error_msg": "m"}, None),
])
def test_numeric_codes_are_kept_unless_they_repeat_the_status(body: dict[str, object],
                                                               code: str | None) -> None:
    assert error_fields(httpx.Response(400, json=body))[:2] == (code, "m")


def test_clean_removes_bidi_controls_and_line_separators() -> None:
    text = f"a{BIDI_AND_SEPARATORS}b\x1b[31mc\x9bd"
    assert clean(text, 100) == "a b [31mc d"


def test_error_messages_are_cleaned_of_bidi_controls() -> None:
    body = {"error_code": "FDI.3002\u202e", "error_msg": "evil\u2028\u2067txt.exe"}
    code, message, _ = error_fields(httpx.Response(400, json=body))
    assert (code, message) == ("FDI.3002", "evil txt.exe")


def test_escape_controls_shows_each_one_and_keeps_the_rest() -> None:
    assert escape_controls("a\x1b[31m\x07\r\x7f\x9b\u202e\u2028é漢 ok") == (
        "a\\x1b[31m\\x07\\x0d\\x7f\\x9b\\u202e\\u2028é漢 ok")
    assert all(ch not in escape_controls(BIDI_AND_SEPARATORS) for ch in BIDI_AND_SEPARATORS)


def test_a_body_nested_beyond_what_json_parses_is_no_error_body() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    code, message, request_id = error_fields(httpx.Response(500, content=deep))
    assert code is None
    assert request_id is None
    assert message  # the status's text or the cleaned body, but an answer
