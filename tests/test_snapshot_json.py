"""The state's pretty JSON is exactly json.dumps(sort_keys=True, indent=2, ensure_ascii=False),
and so is a whole snapshot's, its records written from a template."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.model import DispatchKey, Spec
from reconciler.state.base import Intent, Provenance, Record, Snapshot
from reconciler.state.snapshot import (
    _indented,
    _record_text,
    _spec_text,
    pretty_json,
    record_texts,
    snapshot_bytes,
    snapshot_document,
)
from tests.strategies import IDS, RECORDS, SPECS, TEXT

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


@st.composite
def _snapshots(draw: st.DrawFn) -> Snapshot:
    records = draw(st.lists(RECORDS, max_size=6))
    intents = draw(st.lists(st.builds(Intent, key=st.builds(DispatchKey, IDS, IDS, IDS),
                                      intent_id=TEXT, action=TEXT, started_at=TEXT,
                                      fingerprint=TEXT), max_size=3))
    provenance = draw(st.none() | st.builds(Provenance, operation=TEXT, time=TEXT,
                                            actor=TEXT, commit=st.none() | TEXT,
                                            ci_job=st.none() | TEXT, host=st.none() | TEXT))
    return Snapshot(draw(TEXT), draw(st.integers()),
                    {record.key: record for record in records},
                    {intent.key: intent for intent in intents}, provenance, draw(TEXT))


@settings(max_examples=300, deadline=None)
@given(_snapshots())
def test_a_snapshot_is_written_as_json_dumps_writes_its_document(snap: Snapshot) -> None:
    assert snapshot_bytes(snap) == reference(snapshot_document(snap))


@settings(max_examples=300, deadline=None)
@given(RECORDS.filter(lambda record: type(record.created_date) is not float))
def test_a_record_without_floats_is_written_by_its_template(record: Record) -> None:
    # Not left to the general encoder, which would write the same, only slower.
    written: list[str] = []
    _indented(record.to_json(), "\n    ", written.append)
    assert _record_text(record, "\n    ") == "".join(written)


@settings(max_examples=300, deadline=None)
@given(SPECS, st.sampled_from(["\n", "\n      "]))
def test_a_spec_is_written_as_its_body_is(spec: Spec, newline: str) -> None:
    written: list[str] = []
    _indented(spec.body(), newline, written.append)
    assert _spec_text(spec, newline) == "".join(written)


@settings(max_examples=200, deadline=None)
@given(_snapshots(), st.data())
def test_records_written_ahead_give_the_same_snapshot(snap: Snapshot, data: st.DataObject) -> None:
    written: dict[DispatchKey, tuple[Record, str]] = {}
    for key, record in snap.records.items():
        texts = record_texts(record)
        if texts is None:  # a value json writes, not the template
            assert type(record.created_date) not in (int, type(None))
            continue
        if data.draw(st.booleans()):
            written[key] = (record, texts[0])
        elif data.draw(st.booleans()):  # written ahead for a record since replaced
            other = dataclasses.replace(record, name=record.name + "x")
            written[key] = (other, (record_texts(other) or ("", ""))[0])
    assert snapshot_bytes(snap, written) == snapshot_bytes(snap) == reference(
        snapshot_document(snap))


def test_pretty_json_refuses_a_record_as_json_dumps_does() -> None:
    record = Record(DispatchKey("p", "i", "t"), "n", "s", "d", Spec(cron="0 0 2 * * ?"))
    try:
        pretty_json({"record": record})
    except TypeError:
        return
    raise AssertionError("pretty_json wrote what json.dumps refuses")
