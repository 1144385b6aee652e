"""The state's pretty JSON is exactly json.dumps(sort_keys=True, indent=2, ensure_ascii=False)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.state.snapshot import pretty_json

_SCALARS = (st.none() | st.booleans() | st.integers() | st.text()
            | st.floats(allow_nan=True, allow_infinity=True))
_KEYS = st.text() | st.integers() | st.booleans() | st.none()
_DATA = st.recursive(
    _SCALARS,
    lambda inner: (st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5)
                   | st.dictionaries(_KEYS, inner, max_size=3)
                   | st.tuples(inner, inner)),
    max_leaves=40)


def reference(data: Any) -> bytes:
    return (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


@settings(max_examples=500, deadline=None)
@given(_DATA)
def test_the_same_text_as_json_dumps_or_the_same_error(data: Any) -> None:
    try:
        expected = reference(data)
    except (TypeError, ValueError) as error:
        try:
            pretty_json(data)
        except type(error):
            return
        raise AssertionError("json.dumps refused this, pretty_json did not") from None
    assert pretty_json(data) == expected


def test_a_state_like_document() -> None:
    document = {"format_version": 1, "lineage": "l", "serial": 3, "provenance": None,
                "dispatches": {"p/i/t": {"name": "ünïcode \"quoted\"\n", "spec": {
                    "cron": "0 0 2 * * ?", "use_quartz_cron": True}, "created_date": None,
                    "version": 3}}, "intents": {}, "summary": "apply: 1 created"}
    assert pretty_json(document) == reference(document)


def test_deep_nesting_is_left_to_json() -> None:
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    try:
        expected: bytes | type[BaseException] = reference(deep)
    except RecursionError:
        expected = RecursionError
    if expected is RecursionError:
        try:
            pretty_json(deep)
        except RecursionError:
            return
        raise AssertionError("expected RecursionError")
    assert pretty_json(deep) == expected
