"""What every state backend stores and promises, independent of where it stores it.

A state is versioned like Terraform's: a `lineage` fixed at creation and a `serial` that grows by
one for every write session (an apply, an import, a `state rm`). Within a session each recorded
action is durable on its own (a journal line or a row), so a killed run loses nothing; the
session's serial is sealed at commit, or by the next writer if the run died.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from reconciler.model import DispatchKey, ReconcilerError, Spec, is_valid_id

FORMAT_VERSION = 1


class StateError(ReconcilerError):
    """The state cannot be read or written as asked."""


@dataclass(frozen=True, slots=True)
class Record:
    """One dispatch this tool created or adopted, as last recorded."""

    key: DispatchKey
    name: str
    source: str
    dispatch_id: str
    spec: Spec
    created_date: int | None = None
    last_modified_date: int | None = None
    applied_at: str = ""
    applied_by: str = ""
    commit: str | None = None
    ci_job: str | None = None
    version: int = 0
    """The serial in which this record last changed; saved plans compare it to spot staleness."""

    @property
    def fingerprint(self) -> str:
        return self.spec.fingerprint

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "dispatch_id": self.dispatch_id,
            "spec": self.spec.body(),
            "fingerprint": self.fingerprint,
            "created_date": self.created_date,
            "last_modified_date": self.last_modified_date,
            "applied_at": self.applied_at,
            "applied_by": self.applied_by,
            "commit": self.commit,
            "ci_job": self.ci_job,
            "version": self.version,
        }

    @classmethod
    def from_json(cls, key: DispatchKey, data: Mapping[str, Any]) -> Record:
        # Types checked, not coerced: a null dispatch_id read as the text "None" was PUT to.
        dispatch_id = text_field(data, "dispatch_id")
        if not is_valid_id(dispatch_id):
            raise ValueError(f"dispatch_id {dispatch_id!r} is not an id")
        return cls(
            key=key,
            name=text_field(data, "name"),
            source=text_field(data, "source", ""),
            dispatch_id=dispatch_id,
            spec=Spec.from_body(data.get("spec", {})),
            created_date=optional_int_field(data, "created_date"),
            last_modified_date=optional_int_field(data, "last_modified_date"),
            applied_at=text_field(data, "applied_at", ""),
            applied_by=text_field(data, "applied_by", ""),
            commit=optional_text_field(data, "commit"),
            ci_job=optional_text_field(data, "ci_job"),
            version=int_field(data, "version", 0),
        )


# The fields of a JSON document read back: checked, not coerced (`str(None)` is "None").

_REQUIRED: Any = object()


def text_field(data: Mapping[str, Any], name: str, default: Any = _REQUIRED) -> str:
    value = data[name] if default is _REQUIRED else data.get(name, default)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {type(value).__name__}")
    return value


def optional_text_field(data: Mapping[str, Any], name: str) -> str | None:
    return None if data.get(name) is None else text_field(data, name)


def int_field(data: Mapping[str, Any], name: str, default: Any = _REQUIRED) -> int:
    value = data[name] if default is _REQUIRED else data.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    return value


def optional_int_field(data: Mapping[str, Any], name: str) -> int | None:
    return None if data.get(name) is None else int_field(data, name)


@dataclass(frozen=True, slots=True)
class Intent:
    """Written durably before a create is sent: if the outcome is never recorded, the next run
    asks the API (GET) instead of creating a second dispatch."""

    key: DispatchKey
    intent_id: str
    action: str
    started_at: str
    fingerprint: str

    def to_json(self) -> dict[str, Any]:
        return {
            "intent_id": self.intent_id,
            "action": self.action,
            "started_at": self.started_at,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_json(cls, key: DispatchKey, data: Mapping[str, Any]) -> Intent:
        return cls(key, str(data["intent_id"]), str(data["action"]), str(data["started_at"]),
                   str(data["fingerprint"]))


@dataclass(frozen=True, slots=True)
class Provenance:
    """Who changed the state, when, why and from which commit."""

    operation: str
    time: str
    actor: str
    commit: str | None = None
    ci_job: str | None = None
    host: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "time": self.time,
            "actor": self.actor,
            "commit": self.commit,
            "ci_job": self.ci_job,
            "host": self.host,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Provenance:
        return cls(
            operation=str(data.get("operation", "")),
            time=str(data.get("time", "")),
            actor=str(data.get("actor", "")),
            commit=data.get("commit"),
            ci_job=data.get("ci_job"),
            host=data.get("host"),
        )


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    serial: int
    provenance: Provenance
    summary: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state at one serial. `serial == 0` and an empty lineage mean "no state yet"."""

    lineage: str
    serial: int
    records: Mapping[DispatchKey, Record] = field(default_factory=dict)
    intents: Mapping[DispatchKey, Intent] = field(default_factory=dict)
    provenance: Provenance | None = None
    summary: str = ""


@dataclass(frozen=True, slots=True)
class LockInfo:
    """Who holds the state lock; shown when another writer is refused."""

    lock_id: str
    operation: str
    who: str
    host: str
    pid: int
    created: str
    heartbeat: str
    ci_job: str | None = None

    def describe(self) -> str:
        job = f", CI job {self.ci_job}" if self.ci_job else ""
        return (f"lock {self.lock_id} held by {self.who} on {self.host} (pid {self.pid}) "
                f"since {self.created} for {self.operation!r}{job}")

    def stale_reason(self, *, lease: float, host: str, now: datetime) -> str | None:
        """Why this lock is stale, seen from `host` at `now`: its process is gone from this
        host, or its heartbeat is older than `lease` seconds. None while it is alive."""
        if self.host == host and self.pid > 0:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return f"process {self.pid} is not running on this host"
            except OverflowError:  # beyond any process id: a damaged or forged lock
                return f"process {self.pid} cannot exist"
            except PermissionError:
                pass  # alive, owned by another user
        try:
            beat = datetime.fromisoformat(self.heartbeat)
        except ValueError:
            return f"its heartbeat {self.heartbeat!r} is not a time"
        if beat.tzinfo is None:
            beat = beat.replace(tzinfo=UTC)
        age = (now - beat).total_seconds()
        if age > lease:
            return f"no heartbeat for {age:.0f}s (lease {lease:g}s)"
        return None


class LockHeld(StateError):
    def __init__(self, info: LockInfo, stale_reason: str | None) -> None:
        if stale_reason:
            message = (f"state is locked by a stale {info.describe()}: {stale_reason}; "
                       f"if no run is in progress, release it with "
                       f"`reconciler force-unlock {info.lock_id}`")
        else:
            message = f"state is locked: {info.describe()}"
        super().__init__(message)
        self.info = info
        self.stale_reason = stale_reason


class LockLost(StateError):
    """A write session's lock was taken from it (`force-unlock`): it may write nothing more,
    so that it can never overwrite what the lock's next holder records."""

    def __init__(self, where: str, doing: str, *, maybe_done: bool = False) -> None:
        outcome = (f"could not make sure to {doing} (it may or may not be kept)" if maybe_done
                   else f"refused to {doing}")
        super().__init__(f"{where}: this write session no longer holds the lock (was it "
                         f"force-unlocked?); {outcome}; what it recorded before is sealed by "
                         "the next writer")


def current_user() -> str:
    """The OS user, named as a lock's holder."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


class Session(Protocol):
    """A write session under the lock: every call is durable when it returns.

    put, remove, intend and clear_intent may be called from several threads at once."""

    serial: int
    quick_puts: bool
    """True when `put`/`put_many` return without waiting on a device or a server (an append to
    a local file, no flush): an event loop may then call them inline rather than from a thread.
    """

    def put(self, record: Record) -> None: ...

    def put_many(self, records: Sequence[Record]) -> None:
        """`put` for several dispatches, written together (a batch of finished actions)."""

    def remove(self, key: DispatchKey) -> None: ...

    def intend(self, intent: Intent) -> None:
        """Durable even across a power loss before it returns: it guards a create."""

    def intend_many(self, intents: Sequence[Intent]) -> None:
        """`intend` for several keys with one durable flush (the creates of one batch)."""

    def clear_intent(self, key: DispatchKey) -> None: ...

    def commit(self, summary: str) -> Snapshot:
        """Seal the session as one new serial (a no-op session leaves the serial alone)."""


class StateBackend(Protocol):
    def describe(self) -> str:
        """Where the state lives, for messages."""

    def read(self) -> Snapshot:
        """The current state, including actions recorded by a run that has not committed."""

    def write_session(
        self, provenance: Provenance, *, lock_timeout: float = 0.0
    ) -> AbstractContextManager[Session]:
        """Take the lock (waiting up to `lock_timeout` s), yield a session, always unlock.

        An interrupted earlier session is sealed first, as its own serial."""

    def current_lock(self) -> tuple[LockInfo, str | None] | None:
        """The lock holder and, if the lock is stale, why."""

    def force_unlock(self, lock_id: str) -> LockInfo: ...

    def history(self) -> list[HistoryEntry]: ...

    def read_serial(self, serial: int) -> Snapshot: ...

    def import_snapshots(self, snapshots: Iterable[Snapshot], provenance: Provenance, *,
                         lock_timeout: float = 0.0) -> None:
        """Under the lock, store the sealed serials given (ascending, one lineage) as the
        history and the last one as the state; refused unless there is no state yet.

        For `reconciler.state.migrate`; nothing else writes a history wholesale."""


def iter_changed_keys(old: Snapshot, new: Snapshot) -> Iterator[DispatchKey]:
    """Keys whose record differs between two snapshots (added, removed or changed)."""
    for key in sorted(set(old.records) | set(new.records)):
        if old.records.get(key) != new.records.get(key):
            yield key
