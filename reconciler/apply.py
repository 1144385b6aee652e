"""Runs a Plan against the API: concurrently, recording each result the moment it is known.

Exactly once: the create endpoint is called only for `create` actions, and never twice for a key.
Before each POST an intent is written durably; a POST whose outcome is unknown (timeout, dropped
connection, 5xx), or an intent left by a crashed run, is resolved with a GET of the task: what
exists is adopted, and a create is sent only when nothing does. A create refused with 400/409 is
checked the same way (the task may already have the dispatch of a create whose answer was lost).
The normal path makes no extra GET. Failed actions are reported and the others go on.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Protocol

from reconciler.client import ApiError, OutcomeUnknown
from reconciler.model import Action, ActionKind, DispatchKey, ReconcilerError, RemoteDispatch, Spec
from reconciler.state.base import Intent, Provenance, Record, Session

REFUSED_AS_EXISTING = (400, 409)
"""Statuses with which the create endpoint may refuse a task that already has a dispatch."""

MAX_RESOLVE_ROUNDS = 3
"""How many times an unknown create outcome is resolved (GET, then POST if nothing) in one run."""


class DispatchApi(Protocol):
    def show(self, key: DispatchKey) -> RemoteDispatch | None: ...

    def create(self, key: DispatchKey, spec: Spec) -> RemoteDispatch: ...

    def update(self, key: DispatchKey, dispatch_id: str, spec: Spec) -> RemoteDispatch: ...


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What happened to one action; `outcome` is a past-tense verb for people and reports."""

    action: Action
    ok: bool
    outcome: str
    dispatch_id: str | None = None
    error: str | None = None
    status: int | None = None
    duration: float = 0.0
    calls: tuple[str, ...] = ()


@dataclass
class Progress:
    total: int
    done: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0


class Applier:
    """Applies the actions of a plan through `api`, recording into `session`."""

    def __init__(
        self,
        api: DispatchApi,
        session: Session,
        provenance: Provenance,
        *,
        parallelism: int = 10,
        on_result: Callable[[ActionResult, Progress], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.session = session
        self.provenance = provenance
        self.parallelism = max(1, parallelism)
        self.on_result = on_result
        self.clock = clock
        self._lock = threading.Lock()  # guards the progress counters and the callback

    def run(
        self, actions: Sequence[Action], pending_intents: set[DispatchKey]
    ) -> list[ActionResult]:
        """Apply every action that changes something; results in the order of `actions`."""
        work = [a for a in actions if a.is_change]
        progress = Progress(total=len(work))
        if not work:
            return []

        def one(action: Action) -> ActionResult:
            started = self.clock()
            calls: list[str] = []
            try:
                result = self._apply(action, action.key in pending_intents, calls)
            except OutcomeUnknown as exc:
                result = ActionResult(action, False, "unknown", error=f"{exc}; the next apply "
                                      "checks the API before creating", status=exc.status)
            except ApiError as exc:
                result = ActionResult(action, False, "failed", error=str(exc), status=exc.status)
            except ReconcilerError as exc:
                result = ActionResult(action, False, "failed", error=str(exc))
            result = replace(result, duration=self.clock() - started, calls=tuple(calls))
            with self._lock:
                progress.done += 1
                progress.failed += 0 if result.ok else 1
                if self.on_result is not None:
                    self.on_result(result, progress)
            return result

        if self.parallelism == 1 or len(work) == 1:
            return [one(action) for action in work]
        with ThreadPoolExecutor(max_workers=min(self.parallelism, len(work)),
                                thread_name_prefix="apply") as pool:
            return list(pool.map(one, work))

    # -- one action --------------------------------------------------------------------------

    def _apply(self, action: Action, pending_intent: bool, calls: list[str]) -> ActionResult:
        kind = action.kind
        desired = action.after
        if desired is None:
            raise ReconcilerError(f"the plan's {kind.value} action has no desired spec")
        if kind is ActionKind.CREATE:
            return self._create(action, desired, pending_intent or action.pending_intent, calls)
        if kind is ActionKind.IMPORT:
            return self._import(action, calls)
        dispatch_id = action.dispatch_id
        if dispatch_id is None:
            raise ReconcilerError(f"the plan's {kind.value} action has no dispatch id")
        if kind is ActionKind.UPDATE:
            return self._update(action, dispatch_id, desired, "updated", calls)
        if kind is ActionKind.DRIFT:
            if action.writes_remote:
                return self._update(action, dispatch_id, desired, "reverted drift", calls)
            live = self._show(action.key, calls)
            if live is None:
                raise ReconcilerError("the dispatch no longer exists remotely; plan again")
            self._record(action, live)
            return ActionResult(action, True, "refreshed", live.dispatch_id)
        raise ReconcilerError(f"cannot apply a {kind.value} action")

    def _create(self, action: Action, desired: Spec, resolve_first: bool,
                calls: list[str]) -> ActionResult:
        key = action.key
        if resolve_first:
            live = self._show(key, calls)
            if live is not None:
                return self._adopt(action, live, desired, calls)
        for _ in range(MAX_RESOLVE_ROUNDS):
            self.session.intend(Intent(key, uuid.uuid4().hex, "create",
                                       self.provenance.time, desired.fingerprint))
            try:
                calls.append("POST")
                created = self.api.create(key, desired)
            except OutcomeUnknown:
                live = self._show(key, calls)
                if live is not None:
                    return self._adopt(action, live, desired, calls)
                continue  # nothing was created: the POST is sent again, under a new intent
            except ApiError as exc:
                if exc.status in REFUSED_AS_EXISTING:
                    # The API keeps one schedule per task, and refuses a second: one may have
                    # been created by a POST of ours whose answer was lost (a killed run) and
                    # processed late. Adopting it is what the intent asked for.
                    live = self._show(key, calls)
                    if live is not None:
                        return self._adopt(action, live, desired, calls)
                self.session.clear_intent(key)
                raise
            self._record(action, created, desired)
            return ActionResult(action, True, "created", created.dispatch_id)
        raise OutcomeUnknown(
            f"the create's outcome stayed unknown after {MAX_RESOLVE_ROUNDS} attempts",
            method="POST", key=key,
        )

    def _adopt(self, action: Action, live: RemoteDispatch, desired: Spec,
               calls: list[str]) -> ActionResult:
        """A dispatch exists although our create's outcome was unknown: take it as ours."""
        if live.spec != desired:
            return self._update(action, live.dispatch_id, desired, "adopted and updated", calls)
        self._record(action, live)
        return ActionResult(action, True, "adopted", live.dispatch_id)

    def _import(self, action: Action, calls: list[str]) -> ActionResult:
        live = self._show(action.key, calls)
        if live is None:
            raise ReconcilerError("the dispatch to import no longer exists; plan again")
        desired = action.after
        if desired is not None and live.spec != desired:
            return self._update(action, live.dispatch_id, desired, "imported and updated", calls)
        self._record(action, live)
        return ActionResult(action, True, "imported", live.dispatch_id)

    def _update(self, action: Action, dispatch_id: str, desired: Spec, outcome: str,
                calls: list[str]) -> ActionResult:
        calls.append("PUT")
        updated = self.api.update(action.key, dispatch_id, desired)
        self._record(action, updated, desired)
        return ActionResult(action, True, outcome, updated.dispatch_id)

    def _show(self, key: DispatchKey, calls: list[str]) -> RemoteDispatch | None:
        calls.append("GET")
        return self.api.show(key)

    def _record(self, action: Action, dispatch: RemoteDispatch, sent: Spec | None = None) -> None:
        """Record what the API returned; the spec is what we sent when it echoes less."""
        self.session.put(record_of(action.key, action.name, action.source, dispatch,
                                   provenance=self.provenance, sent=sent))


def record_of(key: DispatchKey, name: str, source: str, dispatch: RemoteDispatch, *,
              provenance: Provenance, sent: Spec | None = None) -> Record:
    """The state record of a dispatch the API returned, with who recorded it and when."""
    return Record(
        key=key,
        name=name,
        source=source,
        dispatch_id=dispatch.dispatch_id,
        spec=sent if sent is not None else dispatch.spec,
        created_date=dispatch.created_date,
        last_modified_date=dispatch.last_modified_date,
        applied_at=provenance.time,
        applied_by=provenance.actor,
        commit=provenance.commit,
        ci_job=provenance.ci_job,
    )


def summarise(results: Sequence[ActionResult]) -> str:
    counts: dict[str, int] = {}
    for result in results:
        counts[result.outcome] = counts.get(result.outcome, 0) + 1
    failed = sum(1 for r in results if not r.ok)
    parts = [f"{n} {outcome}" for outcome, n in sorted(counts.items()) if outcome
             not in ("failed", "unknown")]
    parts.append(f"{failed} failed")
    return ", ".join(parts)
