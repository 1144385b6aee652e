"""compact_json writes exactly what json.dumps writes with the same options."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler import compact_json

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=25,
)


@given(values, st.booleans())
def test_same_text_as_json_dumps(value: Any, sort_keys: bool) -> None:
    assert compact_json.dumps(value, sort_keys=sort_keys) == json.dumps(
        value, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False)


def test_what_json_cannot_encode_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        compact_json.dumps({"when": object()})
    with pytest.raises(TypeError):
        compact_json.dumps({1: "a", "b": 2}, sort_keys=True)  # keys of mixed types


def test_without_the_c_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compact_json, "_SORTED", None)
    assert compact_json.dumps({"b": "ü", "a": [1]}, sort_keys=True) == '{"a":[1],"b":"ü"}'
