"""A plan as a pull-request comment: summary table, each kind of change collapsed, < 65,000 chars.

GitHub rejects comments over 65,536 characters; we stop adding rows well before and say how many
were left out, pointing to the full text plan in the CI log.
"""

from __future__ import annotations

from reconciler.errorbody import escape_controls
from reconciler.model import Action, ActionKind, Plan
from reconciler.render.text import summary_line

LIMIT = 65_000
_RESERVE = 600  # room for the closing tags and the "left out" note
_SECTIONS = (
    (ActionKind.CREATE, "to create"),
    (ActionKind.UPDATE, "to update"),
    (ActionKind.IMPORT, "to import"),
    (ActionKind.DRIFT, "drifted"),
    (ActionKind.ORPHAN, "orphaned (left running, no delete endpoint)"),
)
MARKER = "<!-- reconciler-plan -->"


def _cell(text: object) -> str:
    """A value as table cell text. Live values (remark, cron) are anyone's text: controls are
    shown escaped, or they would reach the terminal or CI log that prints the comment."""
    shown = "" if text is None else str(text)
    return escape_controls(shown.replace("|", "\\|").replace("\n", " ").replace("`", "'"))


def _changes(action: Action) -> str:
    if action.kind is ActionKind.CREATE and action.after is not None:
        body = action.after.body()
        body.pop("use_quartz_cron", None)
        return "<br>".join(f"`{name}`: `{_cell(v)}`" for name, v in body.items())
    if action.kind is ActionKind.ORPHAN:
        return f"`reconciler state rm {_cell(action.key)}` to forget"
    return "<br>".join(
        f"`{c.field}`: `{_cell(c.old)}` → `{_cell(c.new)}`" for c in action.changes
    ) or "record refreshed"


def render(plan: Plan, *, title: str = "reconciler plan") -> str:
    head = [MARKER, f"### {escape_controls(title)}", "", f"**{summary_line(plan)}**", ""]
    counts = {kind: plan.count(kind) for kind, _ in _SECTIONS}
    head += ["| action | count |", "|---|---:|"]
    for kind, label in _SECTIONS:
        head.append(f"| {label} | {counts[kind]} |")
    head.append(f"| unchanged | {plan.count(ActionKind.NOOP)} |")
    head.append("")
    if not plan.has_changes and not counts[ActionKind.ORPHAN]:
        head.append("No changes. The recorded state matches the desired schedules.")
        return "\n".join(head) + "\n"
    parts = ["\n".join(head)]
    size = len(parts[0])
    left_out = 0
    for kind, label in _SECTIONS:
        actions = [a for a in plan.actions if a.kind is kind]
        if not actions:
            continue
        section = [f"<details><summary>{len(actions)} {label}</summary>", "",
                   "| name | source | key | changes |", "|---|---|---|---|"]
        section_size = sum(len(line) + 1 for line in section) + 20
        if size + section_size > LIMIT - _RESERVE:
            left_out += len(actions)
            continue
        size += section_size
        for index, action in enumerate(actions):
            row = (f"| {_cell(action.name)} | {_cell(action.source)} | `{_cell(action.key)}` | "
                   f"{_changes(action)} |")
            if size + len(row) + 1 > LIMIT - _RESERVE:
                left_out += len(actions) - index
                break
            section.append(row)
            size += len(row) + 1
        section += ["", "</details>", ""]
        parts.append("\n".join(section))
    if left_out:
        parts.append(f"> {left_out} changes were left out to keep this comment under "
                     f"{LIMIT:,} characters; the full plan is in the job log "
                     "(`reconciler plan`).\n")
    return "\n".join(parts)
