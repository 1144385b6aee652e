"""validate never escapes with a traceback, whatever the bytes, text or YAML-shaped data."""

from __future__ import annotations

import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
