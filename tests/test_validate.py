from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.model import DispatchKey
from reconciler.validate import check_file, load_desired
from tests.conftest import HEADER, dedent


def check(body: str, header: str = HEADER) -> list[str]:
    return [str(p) for p in check_file("f.yaml", (header + body).encode())[1]]


def one(body: str, header: str = HEADER) -> str:
    found = check(body, header)
    assert len(found) == 1, found
    return found[0]


GOOD = """\
  - name: a
    task_id: t1
    cron: "0 0 2 * * ?"
"""


def test_good_file_normalises() -> None:
    body = dedent("""
      - name: nightly
        task_id: t1
        cron: "0  0 2 * * ?"
        cron_timezone: Asia/Shanghai
        remark: hi
      - name: hourly
        task_id: t2
        period: HOUR
        dispatch_interval: 6
        start_datetime: 2026-12-01T00:00:00+08:00
    """)
    schedules, found = check_file("f.yaml", (HEADER + body).encode())
    assert found == []
    first, second = schedules
    assert first.key == DispatchKey("proj1", "inst1", "t1")
    assert first.spec.body() == {
        "use_quartz_cron": True, "cron": "0 0 2 * * ?",
        "cron_timezone": "Asia/Shanghai", "remark": "hi",
    }
    assert str(first.location) == "f.yaml:6:3"
    assert second.spec.body() == {
        "use_quartz_cron": False, "period": "HOUR", "dispatch_interval": 6,
        "start_datetime": 1796054400000,
    }


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # unknown key with a hint, located at the key
        ("  - name: a\n    task_id: t1\n    crn: '0 0 2 * * ?'\n    cron: '0 0 2 * * ?'\n",
         "f.yaml:8:5: unknown key 'crn'; did you mean 'cron'?"),
        # both forms
        ("  - name: a\n    task_id: t1\n    cron: '0 0 2 * * ?'\n    period: DAY\n"
         "    dispatch_interval: 1\n",
         "f.yaml:6:5: use either cron, or period with dispatch_interval, not both"),
        # no form
        ("  - name: a\n    task_id: t1\n",
         "f.yaml:6:5: a schedule needs either cron, or period with dispatch_interval"),
        ("  - name: a\n    task_id: t1\n    period: DAY\n",
         "f.yaml:6:5: period needs dispatch_interval"),
        ("  - name: a\n    task_id: t1\n    dispatch_interval: 3\n",
         "f.yaml:6:5: dispatch_interval needs period"),
        ("  - name: a\n    task_id: t1\n    period: DAY\n    dispatch_interval: 1\n"
         "    cron_timezone: UTC\n",
         "f.yaml:6:5: cron_timezone is only for cron schedules"),
        ("  - name: a\n    task_id: t1\n    period: HOURS\n    dispatch_interval: 1\n",
         "f.yaml:8:13: period must be one of MIN, HOUR, DAY, WEEK, MON, got 'HOURS'; "
         "did you mean 'HOUR'?"),
        ("  - name: a\n    task_id: t1\n    period: DAY\n    dispatch_interval: 60\n",
         "f.yaml:9:24: dispatch_interval must be between 1 and 59, got 60"),
        ("  - name: a\n    task_id: t1\n    period: DAY\n    dispatch_interval: 0\n",
         "f.yaml:9:24: dispatch_interval must be between 1 and 59, got 0"),
        ("  - name: a\n    task_id: 'bad/../id'\n    cron: '0 0 2 * * ?'\n",
         "f.yaml:7:14: task_id 'bad/../id' is not valid: ids are 1-64 characters of "
         "A-Z a-z 0-9 _ -"),
        ("  - name: a\n    task_id: " + "x" * 65 + "\n    cron: '0 0 2 * * ?'\n",
         "f.yaml:7:14: task_id '" + "x" * 65 + "' is not valid"),
        ("  - name: a\n    task_id: t1\n    cron: '0 0 2 * * ?'\n    remark: " + "r" * 37 + "\n",
         "f.yaml:9:13: remark is 37 characters; at most 36 allowed"),
        ("  - name: a\n    task_id: t1\n    cron: '0 0 2 * * ?'\n    remark: 12:30\n",
         "f.yaml:9:13: remark must be a string, got integer 750; YAML read the unquoted "
         "value as an integer, quote it"),
        ("  - name: a\n    task_id: t1\n    cron: '0 0 2 * * ?'\n    cron_timezone: Mars/Base\n",
         "f.yaml:9:20: unknown time zone 'Mars/Base'"),
        ("  - name: a\n    task_id: t1\n    cron: '0 0 2 * * ?'\n    cron_timezone: Europe/Berln\n",
         "f.yaml:9:20: unknown time zone 'Europe/Berln'; did you mean 'Europe/Berlin'?"),
        ("  - name: a\n    task_id: t1\n    period: DAY\n    dispatch_interval: 1\n"
         "    start_datetime: 2026-12-01T00:00:00\n",
         "f.yaml:10:21: start_datetime '2026-12-01T00:00:00' has no UTC offset"),
        ("  - name: a\n    task_id: t1\n    period: DAY\n    dispatch_interval: 1\n"
         "    start_datetime: 2026-12-01\n",
         "f.yaml:10:21: start_datetime '2026-12-01' has no UTC offset"),
        ("  - name: a\n    task_id: t1\n    period: DAY\n    dispatch_interval: 1\n"
         "    start_datetime: 1999-12-31T23:59:59Z\n",
         "f.yaml:10:21: start_datetime '1999-12-31T23:59:59Z' is outside the API's range"),
        ("  - name: a\n    task_id: t1\n    period: DAY\n    dispatch_interval: 1\n"
         "    start_datetime: 2147512447001\n",
         "f.yaml:10:21: start_datetime 2147512447001 must be an ISO-8601 time with an offset"),
        ("  - name: a\n    task_id: t1\n    period: DAY\n    dispatch_interval: 1\n"
         "    start_datetime: next tuesday\n",
         "f.yaml:10:21: start_datetime 'next tuesday' is not an ISO-8601 time"),
        ("  - name: a\n    task_id: t1\n    cron: '0 0 2 * * ?'\n    use_quartz_cron: false\n",
         "f.yaml:9:22: use_quartz_cron: false contradicts the cron form"),
        ("  - name: a\n    task_id: t1\n    cron: '0 0 2 * *'\n",
         "f.yaml:8:12: cron: expected 6 or 7 fields"),
        ("  - name: a\n    task_id: t1\n    cron: '0 0 25 * * ?'\n",
         "f.yaml:8:16: cron: hour field: 25 is out of range 0-23"),
        ("  - name: a\n    task_id: t1\n    cron: 0 0 2 * * ?\n",
         None),
        ("  - name: a\n    task_id: t1\n    cron: '0 0 0 30 2 ?'\n",
         "f.yaml:8:11: cron '0 0 0 30 2 ?' never fires"),
        ("  - name: 'a b'\n    task_id: t1\n    cron: '0 0 2 * * ?'\n",
         "f.yaml:6:11: name 'a b' is not valid"),
        ("  - task_id: t1\n    cron: '0 0 2 * * ?'\n",
         "f.yaml:6:5: missing required key 'name' in schedule"),
        ("  - name: a\n    task_id: t1\n    cron: ''\n",
         "f.yaml:8:11: cron must be at least 8 characters"),
    ],
)
def test_rules(body: str, expected: str | None) -> None:
    found = check(body)
    if expected is None:
        assert found == []
        return
    assert any(p.startswith(expected) for p in found), found


def test_cron_error_column_points_into_the_expression() -> None:
    # The value starts at column 11; the hour field is at offset 4 of the expression, and a
    # quoted scalar's text starts one column after its quote.
    message = one("  - name: a\n    task_id: t1\n    cron: '0 0 99 * * ?'\n")
    assert message.startswith("f.yaml:8:16: cron: hour field")
    message = one("  - name: a\n    task_id: t1\n    cron: 0 0 99 * * ?\n")
    assert message.startswith("f.yaml:8:15: cron: hour field")


def test_missing_ids_without_defaults() -> None:
    header = "version: 1\nschedules:\n"
    found = check("  - name: a\n    task_id: t1\n    cron: '0 0 2 * * ?'\n", header)
    assert sorted(found) == [
        "f.yaml:3:5: instance_id is required (on the schedule or in the file's defaults)",
        "f.yaml:3:5: project_id is required (on the schedule or in the file's defaults)",
    ]


def test_bad_default_is_located_in_defaults() -> None:
    header = "version: 1\ndefaults:\n  project_id: 'no spaces'\n  instance_id: i\nschedules:\n"
    found = check(GOOD, header)
    assert len(found) == 1
    assert found[0].startswith("f.yaml:3:15: project_id 'no spaces' is not valid")


def test_default_timezone_applies_to_cron_only() -> None:
    header = HEADER.replace("schedules:", "  cron_timezone: Europe/Berlin\nschedules:")
    body = dedent("""
      - name: a
        task_id: t1
        cron: "0 0 2 * * ?"
      - name: b
        task_id: t2
        period: DAY
        dispatch_interval: 1
    """)
    schedules, found = check_file("f.yaml", (header + body).encode())
    assert found == []
    assert schedules[0].spec.cron_timezone == "Europe/Berlin"
    assert schedules[1].spec.cron_timezone is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "f.yaml:1:1: the document is empty; expected a mapping"),
        ("- a\n- b\n", "f.yaml:1:1: the document is a list; expected a mapping"),
        ("just text\n", "f.yaml:1:1: the document is a string; expected a mapping"),
        ("version: 2\nschedules: []\n", "f.yaml:1:10: version must be 1, got 2"),
        ("version: 1\n", "f.yaml:1:1: missing required key 'schedules' in file"),
        ("version: 1\nschedules: {}\n", "f.yaml:2:12: schedules must be a list, got mapping"),
        ("version: 1\nschedule: []\n",
         "f.yaml:2:1: unknown key 'schedule'; did you mean 'schedules'?"),
        ("version: 1\nschedules:\n  - just a string\n",
         "f.yaml:3:5: schedule must be a mapping, got string"),
    ],
)
def test_file_shapes(text: str, expected: str) -> None:
    found = [str(p) for p in check_file("f.yaml", text.encode())[1]]
    assert any(p.startswith(expected) for p in found), found


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_duplicates_across_files_name_both_places(tmp_path: Path) -> None:
    write(tmp_path / "schedules/a.yaml", HEADER + GOOD)
    write(tmp_path / "schedules/b.yaml", HEADER + GOOD.replace("name: a", "name: z"))
    write(tmp_path / "schedules/c.yml", HEADER + GOOD.replace("task_id: t1", "task_id: t9"))
    state = load_desired(["schedules"], tmp_path)
    messages = [str(p) for p in state.problems]
    assert messages == [
        "schedules/b.yaml:6:5: task proj1/inst1/t1 already has a schedule ('a' at "
        "schedules/a.yaml:6:5); the API keeps one schedule per task",
        "schedules/c.yml:6:5: duplicate name 'a': also at schedules/a.yaml:6:5",
    ]
    assert [s.name for s in state.schedules] == ["a"]


def test_all_problems_of_all_files_sorted(tmp_path: Path) -> None:
    write(tmp_path / "s/b.yaml", HEADER + "  - name: b\n    task_id: t2\n    cron: '0 0 2 * *'\n")
    write(tmp_path / "s/a.yaml", "version: 1\nschedules: [\n")
    write(tmp_path / "s/ignored.txt", "not yaml")
    state = load_desired(["s"], tmp_path)
    assert [p.file for p in state.problems] == ["s/a.yaml", "s/b.yaml"]
    assert len(state.files) == 2


def test_missing_path_and_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert [str(p) for p in load_desired(["nope"], tmp_path).problems] == [
        "nope: no such file or directory"
    ]
    assert [str(p) for p in load_desired(["empty"], tmp_path).problems] == [
        "empty: no *.yaml or *.yml files found"
    ]


def test_bundled_examples_are_valid(repo: Path) -> None:
    state = load_desired(["schedules"], repo)
    assert state.problems == ()
    assert len(state.schedules) >= 10
    forms = {s.spec.use_quartz_cron for s in state.schedules}
    assert forms == {True, False}
    assert len({s.key.instance_id for s in state.schedules}) == 2


def test_both_forms_at_once_is_one_message() -> None:
    # The rule fails on period and on dispatch_interval alike: said once, at the schedule.
    assert one("  - name: a\n    task_id: t1\n    cron: '0 0 2 * * ?'\n    period: DAY\n"
               "    dispatch_interval: 1\n").startswith(
        "f.yaml:6:5: use either cron, or period with dispatch_interval, not both "
        "(schedule 'a')")


def test_a_refused_mapping_does_not_lend_its_yaml_types_to_another() -> None:
    # The value of the refused key 1.5 is dropped; its "task_id read as an integer" must not
    # be attached to a later mapping that happens to reuse its memory.
    found = check("  - name: a\n    task_id: [x]\n    cron: '0 0 2 * * ?'\n",
                  "version: 1\n1.5: {task_id: 5}\nschedules:\n")
    [message] = [p for p in found if "task_id must be" in p]
    assert message.endswith("task_id must be a string, got list ['x']"), message


PERIOD_A = "  - name: a\n    task_id: t1\n    period: DAY\n    dispatch_interval: 1\n"


def test_whole_number_float_start_is_a_located_problem_and_others_still_reported() -> None:
    # JSON Schema counts 1796054400000.0 as an integer; it used to crash normalise.
    found = sorted(check(PERIOD_A + "    start_datetime: 1796054400000.0\n"
                         "  - name: b\n    task_id: t2\n    period: DAY\n"
                         "    dispatch_interval: 99\n"))
    assert found[0].startswith("f.yaml:10:21: start_datetime 1796054400000.0 is a decimal "
                               "number"), found
    assert found[1].startswith("f.yaml:14:24: dispatch_interval must be between 1 and 59")
    assert len(found) == 2


def test_whole_number_float_start_in_defaults_is_located_there() -> None:
    header = HEADER.replace("schedules:", "  start_datetime: 1796054400000.0\nschedules:")
    assert one(PERIOD_A, header).startswith("f.yaml:5:19: start_datetime 1796054400000.0 is a "
                                            "decimal number")


def test_non_ascii_digits_get_the_iso_message_not_int_s() -> None:
    assert one(PERIOD_A + "    start_datetime: '²'\n").startswith(
        "f.yaml:10:21: start_datetime '²' is not an ISO-8601 time")


def test_duplicates_are_reported_also_for_entries_with_other_problems(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", HEADER + PERIOD_A + PERIOD_A.replace(": 1\n", ": 99\n"))
    messages = [str(p) for p in load_desired(["a.yaml"], tmp_path).problems]
    assert messages == [
        "a.yaml:10:5: duplicate name 'a': also at a.yaml:6:5",
        "a.yaml:10:5: task proj1/inst1/t1 already has a schedule ('a' at a.yaml:6:5); the API "
        "keeps one schedule per task",
        "a.yaml:13:24: dispatch_interval must be between 1 and 59, got 99",
    ]


def test_an_invalid_name_or_key_takes_no_part_in_duplicate_checks(tmp_path: Path) -> None:
    # The second entry's name and task_id are wrong themselves: nothing to compare.
    write(tmp_path / "a.yaml", HEADER + PERIOD_A + PERIOD_A.replace("name: a", "name: 'a '")
          .replace("task_id: t1", "task_id: 't1/'"))
    messages = [str(p) for p in load_desired(["a.yaml"], tmp_path).problems]
    assert len(messages) == 2
    assert not any("duplicate" in m or "already has" in m for m in messages), messages


def test_a_key_from_an_invalid_default_takes_no_part_in_duplicate_checks(tmp_path: Path) -> None:
    header = HEADER.replace("proj1", "'p 1'")
    write(tmp_path / "a.yaml", header + PERIOD_A + PERIOD_A.replace("name: a", "name: b"))
    messages = [str(p) for p in load_desired(["a.yaml"], tmp_path).problems]
    assert len(messages) == 1
    assert messages[0].startswith("a.yaml:3:15: project_id 'p 1' is not valid")


def test_a_name_duplicate_still_claims_its_key(tmp_path: Path) -> None:
    # b repeats a's name with a new task; c then repeats b's task: both found in one run.
    write(tmp_path / "a.yaml", HEADER + PERIOD_A + PERIOD_A.replace("t1", "t2")
          + PERIOD_A.replace("name: a", "name: c").replace("t1", "t2"))
    messages = [str(p) for p in load_desired(["a.yaml"], tmp_path).problems]
    assert messages == [
        "a.yaml:10:5: duplicate name 'a': also at a.yaml:6:5",
        "a.yaml:14:5: task proj1/inst1/t2 already has a schedule ('a' at a.yaml:10:5); the API "
        "keeps one schedule per task",
    ]


@pytest.mark.parametrize("cron", ["0 0 2 * * ? 2020", "0 0 2 1 1 ? 1970", "0 0 0 29 2 ? 2096"])
def test_a_cron_whose_years_have_passed_is_valid(cron: str) -> None:
    # Validity does not depend on the day it is checked: a commit that passed CI passes it
    # later too. (`plan` shows such a schedule as never firing again.)
    body = f"  - name: a\n    task_id: t1\n    cron: '{cron}'\n"
    assert check_file("f.yaml", (HEADER + body).encode())[1] == []


def test_entries_count_every_schedule_written(tmp_path: Path) -> None:
    body = "".join(f"  - name: n{i}\n    task_id: t{i}\n    cron: '0 0 99 * * ?'\n"
                   for i in range(9))
    write(tmp_path / "a.yaml", HEADER + body + "  - just text\n")
    write(tmp_path / "b.yaml", HEADER + GOOD.replace("name: a", "name: z").replace("t1", "t9"))
    state = load_desired(["."], tmp_path)
    assert len(state.problems) == 10
    assert state.entries == 11
    assert len(state.schedules) == 1


@pytest.mark.parametrize(
    ("default", "expected"),
    [
        ("start_datetime: 2026-12-01T00:00:00",
         "f.yaml:5:19: start_datetime '2026-12-01T00:00:00' has no UTC offset"),
        ("cron_timezone: Mars/Base", "f.yaml:5:18: unknown time zone 'Mars/Base'"),
        ("remark: " + "r" * 37, "f.yaml:5:11: remark is 37 characters"),
    ],
)
def test_every_default_is_checked_even_if_no_schedule_uses_it(default: str,
                                                              expected: str) -> None:
    # Period schedules only (no cron: the zone reaches none), each with its own start and remark.
    header = HEADER.replace("schedules:", f"  {default}\nschedules:")
    body = PERIOD_A + "    start_datetime: 1796054400000\n    remark: own\n"
    assert one(body, header).startswith(expected)


def test_a_bad_default_zone_is_reported_once_not_per_schedule() -> None:
    header = HEADER.replace("schedules:", "  cron_timezone: Mars/Base\nschedules:")
    body = GOOD + GOOD.replace("name: a", "name: b").replace("t1", "t2")
    assert one(body, header).startswith("f.yaml:5:18: unknown time zone 'Mars/Base'")


def test_a_schedule_s_own_zone_is_checked_when_the_default_one_is_invalid() -> None:
    header = HEADER.replace("schedules:", f"  cron_timezone: {'x' * 65}\nschedules:")
    found = check(GOOD + "    cron_timezone: Mars/Base\n", header)
    assert len(found) == 2
    assert found[1].startswith("f.yaml:10:20: unknown time zone 'Mars/Base'"), found
