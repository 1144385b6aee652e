from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest
from hypothesis import given

from reconciler.model import ActionKind, RemoteDispatch, Spec
from reconciler.plan import make_plan
from reconciler.state.base import Intent, Snapshot
from tests.factories import HOURLY, NIGHTLY, key, record, remote, schedule, snapshot
from tests.strategies import SPECS

CHANGED = replace(NIGHTLY, cron="0 0 3 * * ?")


def plan(desired, state, remote_map=None):  # type: ignore[no-untyped-def]
    return make_plan(desired, state, desired_digest="sha256:x", created_at="2026-11-29T00:00:00Z",
                     remote=remote_map)


def kinds(result) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {a.key.task_id: a.kind.value for a in result.actions}


@pytest.mark.parametrize(
    ("desired", "recorded", "expected"),
    [
        ([schedule("t1")], [], {"t1": "create"}),
        ([schedule("t1")], [record("t1")], {"t1": "noop"}),
        ([schedule("t1", CHANGED)], [record("t1")], {"t1": "update"}),
        ([], [record("t1")], {"t1": "orphan"}),
        ([schedule("t1"), schedule("t2", HOURLY)], [record("t2", HOURLY), record("t3")],
         {"t1": "create", "t2": "noop", "t3": "orphan"}),
    ],
)
def test_offline_actions(desired, recorded, expected) -> None:  # type: ignore[no-untyped-def]
    assert kinds(plan(desired, snapshot(*recorded))) == expected


@pytest.mark.parametrize(
    ("desired", "recorded", "live", "expected"),
    [
        # exists remotely, not recorded: adopt, never create a duplicate
        ([schedule("t1")], [], {"t1": remote("t1")}, {"t1": "import"}),
        # nothing anywhere
        ([schedule("t1")], [], {"t1": None}, {"t1": "create"}),
        # recorded but gone remotely: create again
        ([schedule("t1")], [record("t1")], {"t1": None}, {"t1": "create"}),
        # remote changed outside: drift (and back to desired)
        ([schedule("t1")], [record("t1")], {"t1": remote("t1", CHANGED)}, {"t1": "drift"}),
        # all equal
        ([schedule("t1")], [record("t1")], {"t1": remote("t1")}, {"t1": "noop"}),
        # desired changed, remote as recorded: update
        ([schedule("t1", CHANGED)], [record("t1")], {"t1": remote("t1")}, {"t1": "update"}),
        # orphan with live data stays an orphan
        ([], [record("t1")], {"t1": remote("t1")}, {"t1": "orphan"}),
    ],
)
def test_refreshed_actions(desired, recorded, live, expected) -> None:  # type: ignore[no-untyped-def]
    remote_map = {key(t): v for t, v in live.items()}
    assert kinds(plan(desired, snapshot(*recorded), remote_map)) == expected


def test_import_that_also_needs_an_update() -> None:
    result = plan([schedule("t1", CHANGED)], snapshot(), {key("t1"): remote("t1")})
    (action,) = result.actions
    assert action.kind is ActionKind.IMPORT
    assert action.dispatch_id == "d-t1"
    assert action.writes_remote
    assert [(c.field, c.old, c.new) for c in action.changes] == [
        ("cron", "0 0 2 * * ?", "0 0 3 * * ?")
    ]


def test_import_matching_desired_writes_nothing() -> None:
    (action,) = plan([schedule("t1")], snapshot(), {key("t1"): remote("t1")}).actions
    assert action.kind is ActionKind.IMPORT
    assert not action.writes_remote


def test_drift_that_already_matches_desired_only_refreshes() -> None:
    # Someone applied the desired change by hand: the state is behind, the remote is right.
    result = plan([schedule("t1", CHANGED)], snapshot(record("t1")),
                  {key("t1"): remote("t1", CHANGED)})
    (action,) = result.actions
    assert action.kind is ActionKind.DRIFT
    assert action.recorded == NIGHTLY
    assert action.before == CHANGED
    assert not action.writes_remote


def test_a_dispatch_replaced_outside_is_drift_onto_its_new_id() -> None:
    # Deleted and created again by hand, same spec: the recorded id no longer exists.
    replaced = RemoteDispatch("d-new", NIGHTLY, 1, 1)
    (action,) = plan([schedule("t1")], snapshot(record("t1")), {key("t1"): replaced}).actions
    assert action.kind is ActionKind.DRIFT
    assert action.dispatch_id == "d-new"
    assert not action.writes_remote  # only recorded again, with its new id
    (changed,) = plan([schedule("t1", CHANGED)], snapshot(record("t1")),
                      {key("t1"): replaced}).actions
    assert changed.kind is ActionKind.DRIFT
    assert changed.writes_remote
    assert changed.dispatch_id == "d-new"  # the PUT goes to the dispatch that exists


def test_drift_back_to_desired() -> None:
    result = plan([schedule("t1")], snapshot(record("t1")), {key("t1"): remote("t1", CHANGED)})
    (action,) = result.actions
    assert action.writes_remote
    assert [(c.field, c.old, c.new) for c in action.changes] == [
        ("cron", "0 0 3 * * ?", "0 0 2 * * ?")
    ]


def test_update_fields_and_versions() -> None:
    desired = replace(NIGHTLY, remark=None, cron_timezone="Europe/Berlin")
    (action,) = plan([schedule("t1", desired)], snapshot(record("t1", version=7))).actions
    assert action.kind is ActionKind.UPDATE
    assert action.recorded_version == 7
    assert action.dispatch_id == "d-t1"
    assert [(c.field, c.old, c.new) for c in action.changes] == [
        ("cron_timezone", "Asia/Shanghai", "Europe/Berlin"),
        ("remark", "nightly", None),
    ]


def test_form_change_shows_derived_flag() -> None:
    (action,) = plan([schedule("t1", HOURLY)], snapshot(record("t1"))).actions
    fields = [c.field for c in action.changes]
    assert fields[0] == "use_quartz_cron"
    assert {"cron", "period", "dispatch_interval"} <= set(fields)


def test_pending_intent_is_flagged_on_create() -> None:
    intent = Intent(key("t1"), "i-1", "create", "2026-11-29T00:00:00Z", NIGHTLY.fingerprint)
    state = Snapshot("lin", 2, {}, {key("t1"): intent})
    (action,) = plan([schedule("t1")], state).actions
    assert action.kind is ActionKind.CREATE
    assert action.pending_intent


def test_plan_carries_state_identity_and_sorts_by_key() -> None:
    result = plan([schedule("t3"), schedule("t1"), schedule("t2")], snapshot(serial=9))
    assert (result.lineage, result.serial) == ("lin-1", 9)
    assert [a.key.task_id for a in result.actions] == ["t1", "t2", "t3"]
    assert result.has_changes
    assert result.count(ActionKind.CREATE) == 3


def test_no_changes() -> None:
    result = plan([schedule("t1")], snapshot(record("t1")))
    assert not result.has_changes
    assert result.changes == ()


def test_fingerprint_is_stable_and_order_independent() -> None:
    a = Spec(cron="0 0 2 * * ?", remark="x")
    b = Spec(remark="x", cron="0 0 2 * * ?")
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != replace(a, remark="y").fingerprint
    assert a.fingerprint.startswith("sha256:")


@given(SPECS)
def test_the_fingerprint_hashes_the_body_as_compact_sorted_json(spec: Spec) -> None:
    canonical = json.dumps(spec.body(), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    assert spec.canonical == canonical
    assert spec.fingerprint == "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def test_a_remembered_fingerprint_changes_nothing_else_about_a_spec() -> None:
    a = Spec(cron="0 0 2 * * ?", remark="x")
    fresh = Spec(cron="0 0 2 * * ?", remark="x")
    first = a.fingerprint
    assert a.fingerprint == first
    # Computed once, it is still not part of equality, hashing or the repr.
    assert a == fresh
    assert hash(a) == hash(fresh)
    assert repr(a) == repr(fresh)
    changed = replace(a, remark="y")  # a new spec: its own fingerprint, not a's
    assert changed.fingerprint != first
    assert changed.fingerprint == Spec(cron="0 0 2 * * ?", remark="y").fingerprint


def test_key_whose_live_read_failed_is_planned_offline() -> None:
    # t1's GET failed (absent from the map): no "create again", no import guess.
    remote_map = {key("t2"): None}
    result = plan([schedule("t1"), schedule("t2")], snapshot(record("t1"), record("t2")),
                  remote_map)
    assert kinds(result) == {"t1": "noop", "t2": "create"}
    unrecorded = plan([schedule("t3")], snapshot(), {})
    assert kinds(unrecorded) == {"t3": "create"}
