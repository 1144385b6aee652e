"""Golden tests of the plan renderers. Regenerate on purpose: UPDATE_GOLDEN=1 pytest ..."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from reconciler import planfile
from reconciler.model import Plan, Spec
from reconciler.plan import make_plan
from reconciler.render import markdown, text
from tests.factories import HOURLY, NIGHTLY, key, record, remote, schedule, snapshot

GOLDEN = Path(__file__).parent / "golden"
NOW = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)  # the day before Berlin's spring-forward


def golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(actual, encoding="utf-8")
    assert actual == path.read_text(encoding="utf-8")


def sample() -> Plan:
    berlin = Spec(cron="0 30 2 * * ?", cron_timezone="Europe/Berlin", remark="daily at 02:30")
    state = snapshot(
        record("t2", NIGHTLY, version=4),
        record("t3", HOURLY, version=2),
        record("t4", NIGHTLY, version=1),
        record("t6", NIGHTLY, version=2),
    )
    desired = [
        schedule("t1", berlin, name="berlin-nightly", line=6),
        schedule("t2", replace(NIGHTLY, cron="0 0/15 1-4 * * ?"), name="orders", line=10),
        schedule("t4", NIGHTLY, line=14),
        schedule("t5", HOURLY, name="stock", line=18),
        schedule("t6", NIGHTLY, line=22),
        schedule("t7", Spec(cron="0 0 8 ? * 6#3"), name="third-friday", line=26),
    ]
    remote_map = {
        key("t1"): None,
        key("t2"): remote("t2"),
        key("t4"): remote("t4"),
        key("t5"): remote("t5", HOURLY),
        key("t6"): remote("t6", replace(NIGHTLY, remark="edited in console")),
        key("t7"): None,
    }
    return make_plan(desired, state, desired_digest="sha256:abc",
                     created_at="2026-03-28T12:00:00Z", remote=remote_map)


def test_text() -> None:
    golden("plan.txt", text.render(sample(), NOW))


def test_text_colour_only_when_asked() -> None:
    plain = text.render(sample(), NOW)
    coloured = text.render(sample(), NOW, color=True)
    assert "\033[" not in plain
    assert "\033[32m+ create berlin-nightly\033[0m" in coloured


def test_summary_line() -> None:
    assert text.summary_line(sample()) == (
        "Plan: 2 to create, 1 to update, 1 to import, 1 drifted, 1 unchanged, 1 orphaned."
    )


def test_no_changes_text() -> None:
    plan = make_plan([schedule("t1")], snapshot(record("t1")), desired_digest="d",
                     created_at="x")
    assert text.render(plan, NOW) == (
        "Plan: 0 to create, 0 to update, 0 to import, 1 unchanged, 0 orphaned.\n"
        "No changes. The recorded state matches the desired schedules.\n"
    )


def test_json() -> None:
    golden("plan.json", planfile.dumps(sample()))
    json.loads(planfile.dumps(sample()))


def test_markdown() -> None:
    golden("plan.md", markdown.render(sample()))


def test_markdown_is_cut_below_the_limit() -> None:
    desired = [schedule(f"t{n:05d}", name=f"schedule-with-a-long-name-{n:05d}")
               for n in range(3000)]
    plan = make_plan(desired, snapshot(), desired_digest="d", created_at="x")
    rendered = markdown.render(plan)
    assert len(rendered) < 65_000
    assert "changes were left out" in rendered
    shown = rendered.count("| schedule-with-a-long-name-")
    left = int(rendered.split("> ")[-1].split(" changes")[0])
    assert shown + left == 3000
    assert rendered.count("<details>") == rendered.count("</details>")


def test_text_escapes_control_characters_of_live_values() -> None:
    evil = "x\x7f\x9b2J\u202etxt.exe\u2028\x1b[31m"
    live = replace(NIGHTLY, remark=evil)
    plan = make_plan([schedule("t1")], snapshot(record("t1")), desired_digest="d",
                     created_at="x", remote={key("t1"): remote("t1", live)})
    rendered = text.render(plan, NOW)
    assert [ch for ch in rendered if ch != "\n" and (
        ord(ch) < 0x20 or 0x7f <= ord(ch) <= 0x9f or ch in "\u202e\u2028")] == []
    assert '"x\\x7f\\x9b2J\\u202etxt.exe\\u2028\\u001b[31m"' in rendered


def test_markdown_escapes_control_characters_of_live_values() -> None:
    # What a refresh reads is written by anyone with console access: a terminal escape, a bell,
    # a carriage return or a bidi override must not reach the PR comment or the CI log as is.
    evil = "\x1b]0;owned\x07\r\x9b2J\u202etxt.exe\u2028x"
    live = replace(NIGHTLY, remark=evil, cron="0 0 2 * * ?\x1b[2J")
    plan = make_plan([schedule("t1"), schedule("t2", name="imported")],
                     snapshot(record("t1"), record("t3", name="gone\x1b[31m")),
                     desired_digest="d", created_at="x",
                     remote={key("t1"): remote("t1", live), key("t2"): remote("t2", live),
                             key("t3"): None})
    rendered = markdown.render(plan, title="plan\x1b[5m")
    controls = [ch for ch in rendered if ch != "\n" and (
        ord(ch) < 0x20 or 0x7f <= ord(ch) <= 0x9f or ch in "\u202e\u2028")]
    assert controls == []
    assert "\\x1b]0;owned\\x07\\x0d\\x9b2J\\u202etxt.exe\\u2028x" in rendered
    assert "0 0 2 * * ?\\x1b[2J" in rendered
    assert "gone\\x1b[31m" in rendered
