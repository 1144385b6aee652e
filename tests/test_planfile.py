from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler import planfile
from reconciler.desired import SourceFile
from reconciler.plan import make_plan
from reconciler.planfile import PlanFileError, StalePlan
from tests.factories import HOURLY, NIGHTLY, record, schedule, snapshot

CHANGED = replace(NIGHTLY, cron="0 0 3 * * ?")


def sample_plan():  # type: ignore[no-untyped-def]
    state = snapshot(record("t2", version=4), record("t3", version=2), record("t4", version=1))
    desired = [schedule("t1"), schedule("t2", CHANGED), schedule("t4", HOURLY),
               schedule("t5")]
    return make_plan(desired, state, desired_digest="sha256:abc",
                     created_at="2026-11-29T00:00:00Z"), state


def test_round_trip(tmp_path: Path) -> None:
    plan, _ = sample_plan()
    path = tmp_path / "plan.json"
    planfile.save(plan, path)
    loaded = planfile.load(path)
    assert loaded.lineage == plan.lineage
    assert loaded.serial == plan.serial
    assert loaded.desired_digest == plan.desired_digest
    assert [(a.kind, a.key, a.recorded_version) for a in loaded.actions] == [
        (a.kind, a.key, a.recorded_version) for a in plan.actions
    ]
    for before, after in zip(plan.changes, loaded.changes, strict=True):
        assert after == before
    # Rendering the loaded plan gives the same document as the original.
    assert planfile.dumps(loaded) == planfile.dumps(plan)


def test_document_shape() -> None:
    plan, _ = sample_plan()
    document = json.loads(planfile.dumps(plan))
    assert document["format_version"] == 1
    assert document["state"] == {"lineage": "lin-1", "serial": 3}
    assert document["summary"] == {"create": 2, "update": 2, "import": 0, "drift": 0,
                                   "noop": 0, "orphan": 1}
    update = next(a for a in document["actions"] if a["key"].endswith("/t2"))
    assert update["changes"] == [{"field": "cron", "old": "0 0 2 * * ?", "new": "0 0 3 * * ?"}]
    assert update["recorded_version"] == 4
    assert update["after"]["cron"] == "0 0 3 * * ?"


def test_fresh_plan_has_no_reasons() -> None:
    plan, state = sample_plan()
    assert planfile.stale_reasons(plan, state, "sha256:abc") == []


def test_change_to_touched_key_makes_it_stale() -> None:
    plan, _state = sample_plan()
    bumped = snapshot(record("t2", version=5), record("t3", version=2), record("t4", version=1))
    reasons = planfile.stale_reasons(plan, bumped, "sha256:abc")
    assert len(reasons) == 1
    assert "s-t2" in reasons[0]
    assert "version 4 → 5" in reasons[0]
    with pytest.raises(StalePlan, match="stale"):
        planfile.check_fresh(plan, bumped, "sha256:abc")


def test_key_created_since_plan_makes_create_stale() -> None:
    plan, _state = sample_plan()
    moved = snapshot(record("t1", version=6), record("t2", version=4), record("t3", version=2),
                     record("t4", version=1))
    reasons = planfile.stale_reasons(plan, moved, "sha256:abc")
    assert reasons == ["s-t1 (proj1/inst1/t1) changed in state since the plan (version None → 6)"]


def test_change_to_unrelated_key_does_not() -> None:
    plan, _state = sample_plan()
    # t3 is an orphan (not touched) and t9 is new: neither is changed by the plan.
    other = snapshot(record("t2", version=4), record("t3", version=8), record("t4", version=1),
                     record("t9", version=8), serial=8)
    assert planfile.stale_reasons(plan, other, "sha256:abc") == []


def test_lineage_and_desired_files() -> None:
    plan, state = sample_plan()
    foreign = replace(state, lineage="lin-2")
    assert "lineage" in planfile.stale_reasons(plan, foreign, "sha256:abc")[0]
    assert planfile.stale_reasons(plan, state, "sha256:other") == [
        "the desired files changed since the plan was made"
    ]


def test_a_plan_for_a_state_is_stale_on_an_empty_one() -> None:
    # Only creates: no key's version tells the states apart, the lineage must.
    creates_only = make_plan([schedule("t1")], snapshot(), desired_digest="sha256:abc",
                             created_at="2026-11-29T00:00:00Z")
    made_on_state = replace(creates_only, lineage="lin-1")
    empty = snapshot(lineage="", serial=0)
    assert "this state is empty" in planfile.stale_reasons(made_on_state, empty, "sha256:abc")[0]


def test_a_plan_made_before_any_state_is_judged_by_its_keys() -> None:
    # An apply of it that created nothing (the API unreachable) still began a state: the plan
    # may be applied again; not once one of its keys was recorded.
    made_on_nothing = make_plan([schedule("t1")], snapshot(lineage="", serial=0),
                                desired_digest="sha256:abc", created_at="2026-11-29T00:00:00Z")
    assert made_on_nothing.lineage == ""
    begun = snapshot(lineage="lin-9", serial=1)
    assert planfile.stale_reasons(made_on_nothing, begun, "sha256:abc") == []
    recorded = snapshot(record("t1"), lineage="lin-9", serial=2)
    assert "t1" in planfile.stale_reasons(made_on_nothing, recorded, "sha256:abc")[0]


def test_desired_digest_depends_on_paths_and_content() -> None:
    a = planfile.desired_digest([SourceFile("a.yaml", "1"), SourceFile("b.yaml", "2")])
    b = planfile.desired_digest([SourceFile("b.yaml", "2"), SourceFile("a.yaml", "1")])
    c = planfile.desired_digest([SourceFile("a.yaml", "1"), SourceFile("b.yaml", "3")])
    d = planfile.desired_digest([SourceFile("a.yaml", "1"), SourceFile("c.yaml", "2")])
    assert a == b
    assert len({a, c, d}) == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not json", "plan.json:1:1: not a plan file"),
        (b"\xff\xfe", "not a plan file (not UTF-8 text)"),
        (b"[]", "not a valid plan file"),
        (b'{"format_version": 99}', "format_version 99"),
        (b'{"format_version": 1, "actions": [{"action": "explode"}]}', "not a valid plan file"),
    ],
)
def test_bad_plan_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "plan.json"
    path.write_bytes(content)
    with pytest.raises(PlanFileError) as caught:
        planfile.load(path)
    assert message in str(caught.value)


def test_missing_plan_file(tmp_path: Path) -> None:
    with pytest.raises(PlanFileError, match="cannot read plan"):
        planfile.load(tmp_path / "nope.json")
