"""A plan for people at a terminal: the summary line first, then one block per change."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from reconciler import cron
from reconciler.errorbody import escape_controls
from reconciler.model import Action, ActionKind, Plan, Spec, diff_specs

_SYMBOL = {
    ActionKind.CREATE: "+",
    ActionKind.UPDATE: "~",
    ActionKind.IMPORT: "<",
    ActionKind.DRIFT: "!",
    ActionKind.ORPHAN: "?",
    ActionKind.NOOP: " ",
}
_COLOR = {
    ActionKind.CREATE: "32",
    ActionKind.UPDATE: "33",
    ActionKind.IMPORT: "36",
    ActionKind.DRIFT: "35",
    ActionKind.ORPHAN: "31",
    ActionKind.NOOP: "0",
}
FIRE_TIMES = 3


def summary_line(plan: Plan) -> str:
    parts = [
        f"{plan.count(ActionKind.CREATE)} to create",
        f"{plan.count(ActionKind.UPDATE)} to update",
        f"{plan.count(ActionKind.IMPORT)} to import",
    ]
    if plan.refreshed:
        parts.append(f"{plan.count(ActionKind.DRIFT)} drifted")
    parts.append(f"{plan.count(ActionKind.NOOP)} unchanged")
    parts.append(f"{plan.count(ActionKind.ORPHAN)} orphaned")
    return "Plan: " + ", ".join(parts) + "."


def value(text: Any) -> str:
    # json.dumps escapes C0 controls; DEL, C1 and the bidi controls a live value may carry to
    # a terminal are escaped as well.
    return escape_controls(json.dumps(text, ensure_ascii=False)) if text is not None \
        else "(none)"


def render(plan: Plan, now: datetime, *, color: bool = False) -> str:
    """The whole plan; `now` anchors the next fire times, so output is exact in tests."""
    lines = [summary_line(plan)]
    if not plan.has_changes and not plan.count(ActionKind.ORPHAN):
        lines.append("No changes. The recorded state matches the desired schedules.")
    for action in plan.actions:
        if action.kind is ActionKind.NOOP:
            continue
        lines.append("")
        lines.extend(render_action(action, now, color=color))
    return "\n".join(lines) + "\n"


def _paint(text: str, code: str, color: bool) -> str:
    return f"\033[{code}m{text}\033[0m" if color else text


def render_action(action: Action, now: datetime, *, color: bool) -> list[str]:
    head = f"{_SYMBOL[action.kind]} {action.kind.value} {action.name}"
    where = f"  ({action.source})" if action.source else ""
    dispatch = f"  dispatch {action.dispatch_id}" if action.dispatch_id else ""
    lines = [_paint(head, _COLOR[action.kind], color) + where + dispatch,
             f"    key: {action.key}"]
    if action.pending_intent:
        lines.append("    an earlier create was interrupted; apply asks the API before creating")
    kind = action.kind
    if kind is ActionKind.CREATE and action.recorded is not None:
        lines.append("    the recorded dispatch no longer exists remotely; it is created again")
    if kind is ActionKind.CREATE and action.after is not None:
        lines.extend(_spec_lines(action.after, now))
    elif kind is ActionKind.ORPHAN:
        lines.append("    no longer desired; there is no delete endpoint, so it is left running.")
        lines.append("    Disable the task in ROMA Connect if it should stop; forget it with:")
        lines.append(f"    reconciler state rm {action.key}")
    else:
        indent = "    "
        if kind is ActionKind.DRIFT and action.recorded is not None and action.before is not None:
            indent = "      "
            lines.append("    changed outside reconciler (recorded → live):")
            lines.extend(f"      {line}" for line in _diff(action.recorded, action.before))
            if action.recorded == action.before:
                lines.append(f"      replaced: the task's dispatch is now {action.dispatch_id}")
            lines.append("    back to desired (live → desired):" if action.writes_remote
                         else "    the live dispatch already matches the desired spec")
        elif kind is ActionKind.IMPORT:
            lines.append("    exists remotely but is not recorded: adopted, not created again")
        for change in action.changes:
            lines.append(f"{indent}{change.field}: {value(change.old)} → {value(change.new)}")
        if action.after is not None and action.writes_remote and action.after.cron:
            lines.extend(_cron_lines(action.after, now))
    return lines


def _diff(old: Spec, new: Spec) -> list[str]:
    return [f"{c.field}: {value(c.old)} → {value(c.new)}" for c in diff_specs(old, new)]


def _spec_lines(spec: Spec, now: datetime) -> list[str]:
    lines = []
    for name, field_value in spec.body().items():
        if name == "use_quartz_cron":
            continue
        lines.append(f"    {name}: {value(field_value)}")
    if spec.cron:
        lines.extend(_cron_lines(spec, now))
    return lines


def _cron_lines(spec: Spec, now: datetime) -> list[str]:
    assert spec.cron is not None
    try:
        expression = cron.parse(spec.cron)
    except cron.CronError:
        return []
    zone_name = spec.cron_timezone or "UTC"
    zone = ZoneInfo(zone_name)
    times = expression.next_fire_times(now, zone, FIRE_TIMES)
    shown = ", ".join(t.strftime("%Y-%m-%d %H:%M %Z") for t in times) or "never"
    label = zone_name if spec.cron_timezone else "UTC, no cron_timezone set"
    return [f"      {expression.describe()} ({label})", f"      next: {shown}"]
