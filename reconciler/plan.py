"""The planner: desired × recorded state (× live dispatches) → Plan. Pure: no I/O, no clock.

Rules (SPEC §5), per key:
- desired, not recorded → create; with live data: import if the task already has a dispatch.
- recorded, spec differs from desired → update (PUT).
- with live data: recorded but gone remotely → create again; remote differs from the record (its
  spec, or its id: replaced) → drift, which also updates when the remote differs from what is
  desired.
- recorded, no longer desired → orphan: there is no delete endpoint, so it is only reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from reconciler.model import (
    Action,
    ActionKind,
    DispatchKey,
    Plan,
    RemoteDispatch,
    Schedule,
    Spec,
)
from reconciler.state.base import Record, Snapshot


def make_plan(
    desired: Iterable[Schedule],
    state: Snapshot,
    *,
    desired_digest: str,
    created_at: str,
    remote: Mapping[DispatchKey, RemoteDispatch | None] | None = None,
) -> Plan:
    """Compare; `remote` (key → live dispatch, None when the task has none) means refreshed.

    A key missing from `remote` (its live dispatch could not be read) is planned from the
    recorded state alone, as without a refresh.
    """
    actions: list[Action] = []
    desired_keys: set[DispatchKey] = set()
    records = state.records
    intents = state.intents
    for schedule in desired:
        desired_keys.add(schedule.key)
        record = records.get(schedule.key)
        known = remote is not None and schedule.key in remote
        live = remote.get(schedule.key) if remote is not None else None
        action = _plan_desired(schedule, record, live, refreshed=known)
        if schedule.key in intents and action.kind is ActionKind.CREATE:
            action = _with_intent(action)
        actions.append(action)
    for key in sorted(set(records) - desired_keys):
        record = records[key]
        actions.append(Action(
            kind=ActionKind.ORPHAN,
            key=key,
            name=record.name,
            source=record.source,
            before=record.spec,
            after=None,
            dispatch_id=record.dispatch_id,
            recorded_version=record.version,
            recorded=record.spec,
        ))
    actions.sort(key=lambda action: action.key)
    return Plan(
        lineage=state.lineage,
        serial=state.serial,
        actions=tuple(actions),
        desired_digest=desired_digest,
        created_at=created_at,
        refreshed=remote is not None,
    )


def _plan_desired(
    schedule: Schedule, record: Record | None, live: RemoteDispatch | None, *, refreshed: bool
) -> Action:
    def action(kind: ActionKind, before: Spec | None, dispatch_id: str | None = None) -> Action:
        return Action(
            kind=kind,
            key=schedule.key,
            name=schedule.name,
            source=f"{schedule.location.file}:{schedule.location.line}",
            before=before,
            after=schedule.spec,
            dispatch_id=dispatch_id,
            recorded_version=record.version if record is not None else None,
            recorded=record.spec if record is not None else None,
        )

    if record is None:
        if refreshed and live is not None:
            return action(ActionKind.IMPORT, live.spec, live.dispatch_id)
        return action(ActionKind.CREATE, None)
    if refreshed and live is None:
        # The recorded dispatch is gone: the task needs a schedule again.
        return action(ActionKind.CREATE, None)
    if live is not None and (live.spec != record.spec or live.dispatch_id != record.dispatch_id):
        # Also a dispatch replaced outside (deleted, created again): its new id is recorded,
        # and an update goes to it, not to the id that no longer exists.
        return action(ActionKind.DRIFT, live.spec, live.dispatch_id)
    if record.spec != schedule.spec:
        return action(ActionKind.UPDATE, record.spec, record.dispatch_id)
    return action(ActionKind.NOOP, record.spec, record.dispatch_id)


def _with_intent(action: Action) -> Action:
    return replace(action, pending_intent=True)
