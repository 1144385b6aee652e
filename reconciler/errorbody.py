"""Error bodies of Huawei Cloud APIs turned into one line: (code, message, request id).

The dispatch API answers `{"error_code", "error_msg"}`, wrapped in `{"code", "reason": {...}}`
for 400s; IAM (Keystone) answers `{"error": {"code", "message", "title"}}`. Server text is
cleaned of control characters and cut, since it ends up on a terminal.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only its attributes are read: the renderers import this module too
    import httpx

# What must not reach a terminal, a log or a report file as is: C0 and C1 controls and DEL
# (escape sequences, carriage returns), the Unicode bidi controls, which reorder what is shown
# ("Trojan Source"), and the line and paragraph separators, which some terminals and editors
# break lines at.
_UNSAFE = r"\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029"
_CONTROL = re.compile(f"[{_UNSAFE}]+")
_ONE_CONTROL = re.compile(f"[{_UNSAFE}]")


def error_fields(response: httpx.Response) -> tuple[str | None, str, str | None]:
    """(error code, message, request id) from any of the error body shapes."""
    content = response.content
    try:
        # Decoded leniently: one bad byte in a message must not cost the code and the message.
        data = json.loads(content.decode(json.detect_encoding(content), errors="replace"))
    except (ValueError, RecursionError):  # RecursionError: nested beyond what json parses
        data = None
    code = message = request_id = None
    if isinstance(data, dict):
        inner = next((data[k] for k in ("error", "reason") if isinstance(data.get(k), dict)),
                     data)
        raw_code = inner.get("error_code") or inner.get("code")
        if isinstance(raw_code, int) and not isinstance(raw_code, bool):
            raw_code = str(raw_code)
        # Huawei's codes look like IAM.0001, but some APIs send a bare number (3002): kept,
        # unless it merely repeats the HTTP status, as Keystone's `code` does.
        code = clean(raw_code, 64) if raw_code != str(response.status_code) else None
        message = clean(inner.get("error_msg") or inner.get("message"), 512)
        request_id = clean(data.get("request_id") or inner.get("request_id"), 64)
    if not message:
        phrase = response.reason_phrase or "error"
        snippet = "" if isinstance(data, dict) else clean(response.text, 200)
        message = f"{phrase}: {snippet}" if snippet else phrase
    return code, message, request_id or clean(response.headers.get("X-Request-Id"), 64)


def clean(value: object, limit: int) -> str | None:
    """Server text made safe for one terminal line; None when empty or not a string."""
    if not isinstance(value, str):
        return None
    text = _CONTROL.sub(" ", value).strip()[:limit].strip()
    return text or None


def escape_controls(text: str) -> str:
    """`text` with each character `clean` would remove shown as an escape (`\\x1b`,
    `\\u202e`): safe to print, and a reader still sees that something was there."""
    return _ONE_CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    point = ord(match.group())
    return f"\\x{point:02x}" if point < 0x100 else f"\\u{point:04x}"


def short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


SHORT_SECRET = 4
"""Below this length (no real token, key or password is that short) a secret is masked only
where it stands alone: a one-letter test token masked everywhere turned every word with that
letter into `***`, which garbled the message and gave the token away."""


def redact(text: str, secret: str) -> str:
    """`text` with every occurrence of `secret` replaced by `***`."""
    if not secret:
        return text
    if len(secret) >= SHORT_SECRET:
        return text.replace(secret, "***")
    return re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
