"""validate never escapes with a traceback, whatever the bytes, text or YAML-shaped data."""

from __future__ import annotations

import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.desired import MAX_START_MS, MIN_START_MS
from reconciler.model import Problem
from reconciler.validate import check_file

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_clean(raw: bytes) -> None:
    schedules, problems = check_file("f.yaml", raw)
    for problem in problems:
        assert isinstance(problem, Problem)
        assert problem.file == "f.yaml"
        assert problem.line >= 0
        assert problem.message
    if problems:
        return
    for schedule in schedules:
        assert schedule.spec.body()["use_quartz_cron"] in (True, False)


@FAST
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(raw: bytes) -> None:
    assert_clean(raw)


@FAST
@given(st.text(max_size=2000))
def test_arbitrary_text(text: str) -> None:
    assert_clean(text.encode("utf-8", "surrogatepass"))


yaml_ish = st.text(alphabet=string.printable + "ü→&*!|>-?:[]{}#%@`'\"", max_size=400)


@FAST
@given(yaml_ish)
def test_yaml_punctuation_soup(text: str) -> None:
    assert_clean(text.encode())


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
    st.text(max_size=40),
    st.sampled_from(["0 0 2 * * ?", "0 0/15 1-4 * * ?", "HOUR", "Asia/Shanghai", "2026-12-01",
                     "2026-12-01T00:00:00+08:00", "t1", "L", "6#3", "? * ?"]),
)
keys = st.sampled_from(["name", "task_id", "project_id", "instance_id", "cron", "cron_timezone",
                        "period", "dispatch_interval", "start_datetime", "remark",
                        "use_quartz_cron", "version", "schedules", "defaults", "other"])
data = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(keys, children, max_size=6)),
    max_leaves=30,
)


@FAST
@given(st.fixed_dictionaries(
    {"version": st.one_of(st.just(1), scalars)},
    optional={"defaults": data, "schedules": st.lists(data, max_size=5)},
))
def test_yaml_shaped_documents(document: object) -> None:
    assert_clean(yaml.safe_dump(document, allow_unicode=True).encode())


@FAST
@given(st.lists(st.fixed_dictionaries(
    {"name": st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
     "task_id": st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)},
    optional={"cron": scalars, "period": scalars, "dispatch_interval": scalars,
              "cron_timezone": scalars, "start_datetime": scalars, "remark": scalars},
), max_size=5))
def test_schedule_shaped_documents(entries: list[dict[str, object]]) -> None:
    document = {"version": 1, "defaults": {"project_id": "p", "instance_id": "i"},
                "schedules": entries}
    assert_clean(yaml.safe_dump(document, allow_unicode=True).encode())


@FAST
@given(st.fixed_dictionaries(
    {"version": st.one_of(st.just(1), scalars)},
    optional={"defaults": data, "schedules": st.lists(data, max_size=5)},
))
def test_fast_path_agrees_with_jsonschema(document: object) -> None:
    from reconciler import schema

    assert schema.is_valid(document) == schema.validator().is_valid(document)


@FAST
@given(st.lists(st.fixed_dictionaries(
    {"name": st.from_regex(r"[a-z][a-z0-9 -]{0,10}", fullmatch=True),
     "task_id": st.one_of(st.from_regex(r"[A-Za-z0-9_/-]{0,66}", fullmatch=True), scalars)},
    optional={"cron": scalars, "period": scalars, "dispatch_interval": scalars,
              "cron_timezone": scalars, "start_datetime": scalars, "remark": scalars,
              "use_quartz_cron": scalars, "project_id": scalars},
), max_size=4))
def test_fast_path_agrees_on_schedules(entries: list[dict[str, object]]) -> None:
    from reconciler import schema

    document = {"version": 1, "schedules": entries}
    assert schema.is_valid(document) == schema.validator().is_valid(document)


# Every shape YAML can give a number, at and around the API's ranges: whole-number floats pass
# JSON Schema's "integer", so only the semantic checks stand between them and `normalise`.
numberish = st.one_of(
    st.booleans(), st.integers(), st.floats(),
    st.integers(MIN_START_MS - 2, MAX_START_MS + 2),
    st.integers(MIN_START_MS, MAX_START_MS).map(float),
    st.integers(-1, 61), st.integers(-1, 61).map(float),
    st.integers(MIN_START_MS, MAX_START_MS).map(str),
    st.text(alphabet="0123456789²٣.+-:TZ ", max_size=30),
)


def check_numbers(field: str, value: object, in_defaults: bool) -> None:
    """One period schedule, valid but for `field`: reported at a line, or normalised right."""
    entry: dict[str, object] = {"name": "a", "task_id": "t", "period": "DAY",
                                "dispatch_interval": 1}
    defaults: dict[str, object] = {"project_id": "p", "instance_id": "i"}
    (defaults if in_defaults else entry)[field] = value
    document = {"version": 1, "defaults": defaults, "schedules": [entry]}
    found, problems = check_file("f.yaml", yaml.safe_dump(document).encode())
    assert all(problem.line > 0 for problem in problems)
    if problems:
        return
    [schedule] = found
    body = schedule.spec.body()
    assert type(body["dispatch_interval"]) is int
    assert 1 <= body["dispatch_interval"] <= 59
    start = body.get("start_datetime")
    assert start is None or (type(start) is int and MIN_START_MS <= start <= MAX_START_MS)


@FAST
@given(numberish, st.booleans())
def test_start_datetime_numbers_are_reported_or_normalised(value: object,
                                                            in_defaults: bool) -> None:
    check_numbers("start_datetime", value, in_defaults)


@FAST
@given(numberish)
def test_dispatch_interval_numbers_are_reported_or_normalised(value: object) -> None:
    check_numbers("dispatch_interval", value, in_defaults=False)


@pytest.mark.parametrize("number", ["9" * 5000, "0x" + "f" * 5000, "-" + "1" * 65])
def test_huge_integers_are_reported(number: str) -> None:
    # Python refuses to turn an integer of over 4,300 digits into text (jsonschema's messages
    # do), and to read one from decimal digits.
    raw = (f"version: 1\nschedules:\n  - {{name: a, project_id: p, instance_id: i, task_id: t, "
           f"period: DAY, dispatch_interval: {number}}}\n").encode()
    problems = check_file("f.yaml", raw)[1]
    # Said once: not again by the schema, about the null it was read as.
    assert [(p.line, p.col, "too large" in p.message) for p in problems] == [(3, 90, True)]


@pytest.mark.parametrize("key", ["9" * 70, "!!binary aGVsbG8=", "!!python/none x"])
def test_a_refused_mapping_key_is_reported_once_and_left_out(key: str) -> None:
    raw = ("version: 1\nschedules:\n  - name: a\n    project_id: p\n    instance_id: i\n"
           f"    task_id: t\n    period: DAY\n    dispatch_interval: 1\n    {key}: 1\n").encode()
    problems = check_file("f.yaml", raw)[1]
    assert [(p.line, p.col) for p in problems] == [(9, 5)]
