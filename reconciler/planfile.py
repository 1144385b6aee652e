"""The plan as a JSON document: what `plan --format json` prints and `plan --out` saves.

The document is stable and documented (docs/plan-format.md). A saved plan is applied only while it
is fresh: same state lineage, no touched key changed in state since, same desired files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from reconciler import __version__
from reconciler.desired import SourceFile
from reconciler.model import (
    Action,
    ActionKind,
    DispatchKey,
    Plan,
    ReconcilerError,
    Spec,
)
from reconciler.state.base import Snapshot
from reconciler.state.files import atomic_write
from reconciler.userfiles import NotAFile, read_regular_file

FORMAT_VERSION = 1
MAX_PLAN_BYTES = 512 * 1024 * 1024
"""A plan of 100,000 actions is about 100 MiB; anything far larger is not a plan file."""
SUMMARY_ORDER = (
    ActionKind.CREATE,
    ActionKind.UPDATE,
    ActionKind.IMPORT,
    ActionKind.DRIFT,
    ActionKind.NOOP,
    ActionKind.ORPHAN,
)


class PlanFileError(ReconcilerError):
    pass


class StalePlan(ReconcilerError):
    pass


def desired_digest(files: Iterable[SourceFile]) -> str:
    """One digest of every desired file's path and content."""
    digest = hashlib.sha256()
    for source in sorted(files, key=lambda f: f.path):
        digest.update(f"{source.path}\0{source.sha256}\n".encode())
    return "sha256:" + digest.hexdigest()


def summary(plan: Plan) -> dict[str, int]:
    return {kind.value: plan.count(kind) for kind in SUMMARY_ORDER}


def _spec(spec: Spec | None) -> dict[str, Any] | None:
    return spec.body() if spec is not None else None


def action_document(action: Action) -> dict[str, Any]:
    if action.kind is ActionKind.NOOP:
        return {"action": "noop", "key": str(action.key), "name": action.name,
                "source": action.source}
    return {
        "action": action.kind.value,
        "key": str(action.key),
        "name": action.name,
        "source": action.source,
        "dispatch_id": action.dispatch_id,
        "recorded_version": action.recorded_version,
        "pending_intent": action.pending_intent,
        "before": _spec(action.before),
        "after": _spec(action.after),
        "recorded": _spec(action.recorded),
        "changes": [
            {"field": change.field, "old": change.old, "new": change.new}
            for change in action.changes
        ],
    }


def to_document(plan: Plan) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "tool": f"reconciler {__version__}",
        "created_at": plan.created_at,
        "state": {"lineage": plan.lineage, "serial": plan.serial},
        "desired_digest": plan.desired_digest,
        "refreshed": plan.refreshed,
        "has_changes": plan.has_changes,
        "summary": summary(plan),
        "actions": [action_document(action) for action in plan.actions],
    }


def dumps(plan: Plan) -> str:
    return json.dumps(to_document(plan), indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def save(plan: Plan, path: Path) -> None:
    """Write the plan whole or not at all: a CI step that applies it never reads half a plan."""
    try:
        atomic_write(path, dumps(plan).encode("utf-8"))
    except OSError as exc:
        raise PlanFileError(f"{path}: cannot write the plan: {exc.strerror or exc}") from None


def load(path: Path) -> Plan:
    try:
        text = read_regular_file(path, MAX_PLAN_BYTES).decode("utf-8")
    except NotAFile as exc:
        raise PlanFileError(f"{path}: {exc}, not a plan file") from None
    except OSError as exc:
        raise PlanFileError(f"{path}: cannot read plan: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise PlanFileError(f"{path}: not a plan file (not UTF-8 text)") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanFileError(
            f"{path}:{exc.lineno}:{exc.colno}: not a plan file: {exc.msg}"
        ) from None
    except RecursionError:
        raise PlanFileError(f"{path}: not a plan file (nested too deeply)") from None
    try:
        return from_document(document)
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanFileError(
            f"{path}: not a valid plan file ({type(exc).__name__}: {exc})"
        ) from None


def _spec_from(data: Mapping[str, Any] | None) -> Spec | None:
    return Spec.from_body(data) if data is not None else None


def from_document(document: Mapping[str, Any]) -> Plan:
    if not isinstance(document, dict):
        raise ValueError("the plan must be a JSON object")
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"plan format_version {version!r}; this tool reads {FORMAT_VERSION}")
    actions = []
    for item in document["actions"]:
        kind = ActionKind(item["action"])
        version_seen = item.get("recorded_version")
        actions.append(Action(
            kind=kind,
            key=DispatchKey.parse(item["key"]),
            name=str(item["name"]),
            source=str(item.get("source", "")),
            before=_spec_from(item.get("before")),
            after=_spec_from(item.get("after")),
            dispatch_id=item.get("dispatch_id"),
            recorded_version=int(version_seen) if version_seen is not None else None,
            recorded=_spec_from(item.get("recorded")),
            pending_intent=bool(item.get("pending_intent", False)),
        ))
    state = document["state"]
    return Plan(
        lineage=str(state["lineage"]),
        serial=int(state["serial"]),
        actions=tuple(actions),
        desired_digest=str(document["desired_digest"]),
        created_at=str(document["created_at"]),
        refreshed=bool(document.get("refreshed", False)),
    )


def stale_reasons(plan: Plan, state: Snapshot, current_digest: str) -> list[str]:
    """Why a saved plan may no longer be applied; empty when it is fresh.

    Only keys the plan changes count: a change to an unrelated key leaves the plan fresh.
    """
    reasons: list[str] = []
    # A lineage is fixed when a state is first written; a plan made for one state applied to
    # another (a wrong path or workspace, even a new empty one) would split the records. A plan
    # made before any state existed cannot tell the state an apply of it began (one that failed
    # to create anything, say) from another: the versions of its keys decide, below.
    if plan.lineage and plan.lineage != state.lineage:
        if not state.lineage:
            reasons.append(f"the plan was made for state lineage {plan.lineage}, but this state "
                           "is empty (a different state: check the state path or workspace)")
        else:
            reasons.append(f"the state lineage is {state.lineage}, the plan was made for "
                           f"{plan.lineage} (a different state)")
    if plan.desired_digest != current_digest:
        reasons.append("the desired files changed since the plan was made")
    for action in plan.changes:
        record = state.records.get(action.key)
        now = record.version if record is not None else None
        if now != action.recorded_version:
            reasons.append(f"{action.name} ({action.key}) changed in state since the plan "
                           f"(version {action.recorded_version} → {now})")
    return reasons


def check_fresh(plan: Plan, state: Snapshot, current_digest: str) -> None:
    reasons = stale_reasons(plan, state, current_digest)
    if reasons:
        shown = "; ".join(reasons[:5])
        more = f"; and {len(reasons) - 5} more" if len(reasons) > 5 else ""
        raise StalePlan(f"the saved plan is stale: {shown}{more}. Run `reconciler plan` again.")
