"""A state diff for people (`text`) and for programs (`as_json`, documented in docs/gitops.md)."""

from __future__ import annotations

import json
from typing import Any

from reconciler.audit import KeyChange, StateDiff, VersionMeta

FORMAT_VERSION = 1
COMMIT_CHARS = 12
_COLOR = {"+": "32", "~": "33", "-": "31"}


def _value(value: Any) -> str:
    return "(none)" if value is None else json.dumps(value, ensure_ascii=False)


def describe(label: str, meta: VersionMeta) -> str:
    """One side of the diff: `serial 3 (2026-11-29T10:00:00Z, apply by alice, commit 1a2b…)`.

    A label that does not already say the serial (a file, `git:REV`) is followed by it."""
    head = label
    if label != f"serial {meta.serial}" and not label.startswith(f"serial {meta.serial},"):
        head = f"{label}, serial {meta.serial}"
    details: list[str] = []
    who = meta.provenance
    if who is not None:
        if who.time:
            details.append(who.time)
        if who.operation and who.actor:
            details.append(f"{who.operation} by {who.actor}")
        elif who.operation or who.actor:
            details.append(who.operation or f"by {who.actor}")
        if who.commit:
            details.append(f"commit {who.commit[:COMMIT_CHARS]}")
        if who.ci_job:
            details.append(f"CI {who.ci_job}")
    elif meta.serial == 0 and not meta.lineage:
        details.append("no state")
    return f"{head} ({', '.join(details)})" if details else head


def summary_line(diff: StateDiff) -> str:
    """`3 changes: 1 added, 1 changed, 1 removed.`, or `No differences.`"""
    if not diff.has_changes:
        return "No differences."
    noun = "change" if diff.total == 1 else "changes"
    return (f"{diff.total} {noun}: {len(diff.added)} added, {len(diff.changed)} changed, "
            f"{len(diff.removed)} removed.")


def _paint(symbol: str, line: str, color: bool) -> str:
    return f"\033[{_COLOR[symbol]}m{line}\033[0m" if color else line


def _change_lines(symbol: str, change: KeyChange) -> list[str]:
    who = f"{change.name} ({change.key})"
    if symbol == "+":
        return [f"+ {who} recorded dispatch {change.dispatch_id}"]
    if symbol == "-":
        return [f"- {who} forgotten (dispatch {change.dispatch_id})"]
    fields = [f"{f.field} {_value(f.old)} → {_value(f.new)}" for f in change.fields]
    if len(fields) == 1:
        return [f"~ {who}: {fields[0]}"]
    return [f"~ {who}:", *(f"    {line}" for line in fields)]


def text(diff: StateDiff, *, color: bool = False) -> str:
    """The diff for a terminal or a CI log: a header naming both versions, then one line (or
    block) per key: `+` added, `~` changed (every changed field, old → new), `-` removed, each
    group sorted by key; then a summary line, or `No differences.`. Colour only if asked."""
    lines = [f"State diff: {describe(diff.old_label, diff.old_meta)} → "
             f"{describe(diff.new_label, diff.new_meta)}"]
    if diff.lineage_changed:
        lines.append(f"Note: the lineages differ ({diff.old_meta.lineage} → "
                     f"{diff.new_meta.lineage}): these are two different states, not two "
                     "versions of one.")
    for symbol, changes in (("+", diff.added), ("~", diff.changed), ("-", diff.removed)):
        for change in changes:
            lines.extend(_paint(symbol, line, color) for line in _change_lines(symbol, change))
    lines.append(summary_line(diff))
    return "\n".join(lines) + "\n"


def _side(label: str, meta: VersionMeta) -> dict[str, Any]:
    return {
        "label": label,
        "serial": meta.serial,
        "lineage": meta.lineage,
        "provenance": meta.provenance.to_json() if meta.provenance else None,
    }


def _change(change: KeyChange) -> dict[str, Any]:
    return {
        "key": str(change.key),
        "name": change.name,
        "dispatch_id": change.dispatch_id,
        "fields": [{"field": f.field, "old": f.old, "new": f.new} for f in change.fields],
    }


def to_document(diff: StateDiff) -> dict[str, Any]:
    """The JSON document as a dict; see `as_json`."""
    return {
        "format_version": FORMAT_VERSION,
        "old": _side(diff.old_label, diff.old_meta),
        "new": _side(diff.new_label, diff.new_meta),
        "lineage_changed": diff.lineage_changed,
        "has_changes": diff.has_changes,
        "summary": {
            "added": len(diff.added),
            "changed": len(diff.changed),
            "removed": len(diff.removed),
            "total": diff.total,
        },
        "added": [_change(c) for c in diff.added],
        "changed": [_change(c) for c in diff.changed],
        "removed": [_change(c) for c in diff.removed],
    }


def as_json(diff: StateDiff) -> str:
    """A stable document (docs/gitops.md, "Auditing state changes"): fields are only added
    within a `format_version`; 2-space indent, keys in a fixed order, a trailing newline."""
    return json.dumps(to_document(diff), indent=2, ensure_ascii=False) + "\n"
