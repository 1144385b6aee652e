"""Small immutable records shared by every layer: keys, specs, desired schedules, problems.

Nothing here does I/O; everything is hashable and cheap to compare, so the planner can work on
hundreds of thousands of them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from reconciler import compact_json

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""Project, instance, task and dispatch ids: they go into URL paths, so nothing else is let in."""


class ReconcilerError(Exception):
    """An error a user can cause or fix; its message is fit to print as one line."""


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


@dataclass(frozen=True, slots=True, order=True)
class DispatchKey:
    """The identity of a dispatch: the API keeps one schedule per task."""

    project_id: str
    instance_id: str
    task_id: str

    def __str__(self) -> str:
        return f"{self.project_id}/{self.instance_id}/{self.task_id}"

    @classmethod
    def parse(cls, text: str) -> DispatchKey:
        parts = text.split("/")
        if len(parts) != 3 or not all(is_valid_id(p) for p in parts):
            raise ReconcilerError(
                f"invalid key {text!r}: expected PROJECT_ID/INSTANCE_ID/TASK_ID, "
                "each 1-64 of [A-Za-z0-9_-]"
            )
        return cls(parts[0], parts[1], parts[2])


@dataclass(frozen=True, slots=True)
class Location:
    """Where something was written: 1-based line and column in a file."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """One located error in the desired files; all of them are collected, not only the first."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        if self.line <= 0:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}:{self.col}: {self.message}"

    @classmethod
    def at(cls, location: Location, message: str) -> Problem:
        return cls(location.file, location.line, location.col, message)


@dataclass(frozen=True, slots=True)
class Spec:
    """A normalised schedule: exactly the fields of the API's TaskDispatch request body.

    `None` means "not sent". `use_quartz_cron` is derived from the form, never stored.
    """

    cron: str | None = None
    cron_timezone: str | None = None
    period: str | None = None
    dispatch_interval: int | None = None
    start_datetime: int | None = None
    remark: str | None = None
    # Computed on first use: a create's intent and its record both carry the fingerprint, and
    # the record's journal line the canonical text.
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)
    _canonical: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def use_quartz_cron(self) -> bool:
        return self.cron is not None

    def body(self) -> dict[str, Any]:
        """The request body sent to create or update the dispatch."""
        body: dict[str, Any] = {"use_quartz_cron": self.use_quartz_cron}
        for name in SPEC_FIELDS:
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        return body

    @property
    def canonical(self) -> str:
        """The body as compact JSON with sorted keys: what the fingerprint is a hash of."""
        known = self._canonical
        if known is None:
            known = compact_json.dumps(self.body(), sort_keys=True)
            object.__setattr__(self, "_canonical", known)  # frozen, but only a cache
        return known

    @property
    def fingerprint(self) -> str:
        """sha256 of the canonical text: equal bodies, equal fingerprints."""
        known = self._fingerprint
        if known is None:
            known = "sha256:" + hashlib.sha256(self.canonical.encode()).hexdigest()
            object.__setattr__(self, "_fingerprint", known)  # frozen, but only a cache
        return known

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Spec:
        """Read the spec fields of a request body or an API response, ignoring the rest."""
        values: dict[str, Any] = {}
        for name in SPEC_FIELDS:
            value = body.get(name)
            if value is None or value == "":
                continue
            values[name] = value
        return cls(**values)


SPEC_FIELDS: tuple[str, ...] = (
    "cron",
    "cron_timezone",
    "period",
    "dispatch_interval",
    "start_datetime",
    "remark",
)


@dataclass(frozen=True, slots=True)
class Schedule:
    """One desired schedule, normalised, with where it was written."""

    name: str
    key: DispatchKey
    spec: Spec
    location: Location = field(compare=False)


@dataclass(frozen=True, slots=True)
class RemoteDispatch:
    """A dispatch as the API returned it (GET), reduced to what the planner compares."""

    dispatch_id: str
    spec: Spec
    created_date: int | None = None
    last_modified_date: int | None = None


class ActionKind(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    IMPORT = "import"
    DRIFT = "drift"
    NOOP = "noop"
    ORPHAN = "orphan"


@dataclass(frozen=True, slots=True)
class FieldChange:
    field: str
    old: Any
    new: Any


@dataclass(frozen=True, slots=True)
class Action:
    """What the plan will do for one key, and why.

    `before` is what the change starts from (the recorded spec, or the remote one for import and
    drift); `after` the desired spec (None for orphans). `recorded_version` is the state version
    of the key the plan saw (None: not recorded), so a saved plan can tell when it went stale.
    """

    kind: ActionKind
    key: DispatchKey
    name: str
    source: str
    before: Spec | None
    after: Spec | None
    dispatch_id: str | None = None
    recorded_version: int | None = None
    recorded: Spec | None = None
    pending_intent: bool = False

    @property
    def changes(self) -> tuple[FieldChange, ...]:
        return diff_specs(self.before, self.after)

    @property
    def writes_remote(self) -> bool:
        """Whether applying it calls POST or PUT."""
        if self.kind in (ActionKind.CREATE, ActionKind.UPDATE):
            return True
        if self.kind in (ActionKind.IMPORT, ActionKind.DRIFT):
            return self.after is not None and self.before != self.after
        return False

    @property
    def is_change(self) -> bool:
        return self.kind not in (ActionKind.NOOP, ActionKind.ORPHAN)


def diff_specs(before: Spec | None, after: Spec | None) -> tuple[FieldChange, ...]:
    if before is None or after is None or before == after:
        return ()
    old, new = before.body(), after.body()
    return tuple(
        FieldChange(name, old.get(name), new.get(name))
        for name in ("use_quartz_cron", *SPEC_FIELDS)
        if old.get(name) != new.get(name)
    )


@dataclass(frozen=True, slots=True)
class Plan:
    """A first-class plan: rendered, saved to a file, applied later if still fresh."""

    lineage: str
    serial: int
    actions: tuple[Action, ...]
    desired_digest: str
    created_at: str
    refreshed: bool = False

    def count(self, kind: ActionKind) -> int:
        return sum(1 for action in self.actions if action.kind is kind)

    @property
    def changes(self) -> tuple[Action, ...]:
        return tuple(action for action in self.actions if action.is_change)

    @property
    def has_changes(self) -> bool:
        return any(action.is_change for action in self.actions)
