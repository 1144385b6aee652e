"""Runs a Plan against the API: concurrently, recording each result the moment it is known.

Concurrency is coroutines on one event loop (`--parallelism` of them), not threads: with 50
requests in flight, threads spent more CPU contending for the GIL than on HTTP, and the client's
CPU, not the network, bounded the run. State writes go through a `Recorder` (a thread for durable
intents and database round trips, the loop itself for the local journal's records) so that none
stalls the requests in flight; a worker takes its next action as soon as the API has answered,
and the action's result is final once its record is durable.

Exactly once: the create endpoint is called only for `create` actions, and never twice for a key.
Before each POST an intent is written durably; a POST whose outcome is unknown (timeout, dropped
connection, 5xx), or an intent left by a crashed run, is resolved with a GET of the task: what
exists is adopted, and a create is sent only when nothing does. A create refused with 400/409 is
checked the same way (the task may already have the dispatch of a create whose answer was lost).
The normal path makes no extra GET. Failed actions are reported and the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from reconciler.client import ApiError, OutcomeUnknown
from reconciler.concurrency import bounded_map
from reconciler.model import Action, ActionKind, DispatchKey, ReconcilerError, RemoteDispatch, Spec
from reconciler.recorder import Recorder
from reconciler.state.base import Intent, Provenance, Record, Session

REFUSED_AS_EXISTING = (400, 409)
"""Statuses with which the create endpoint may refuse a task that already has a dispatch."""

MAX_RESOLVE_ROUNDS = 3
"""How many times an unknown create outcome is resolved (GET, then POST if nothing) in one run."""

RESEND_BACKOFF = 0.5
"""Seconds before the first re-sent create, doubled for each next one (times a jitter of
0.5-1), unless the API's Retry-After asks for longer."""
MAX_RESEND_DELAY = 60.0


def resend_delay(attempt: int, retry_after: float | None, jitter: float) -> float:
    """Seconds to wait before the `attempt`-th sending (1: the first re-sent) of a create."""
    backoff: float = RESEND_BACKOFF * 2 ** (attempt - 1) * (0.5 + jitter / 2)
    return min(MAX_RESEND_DELAY, max(backoff, retry_after or 0.0))


class DispatchApi(AbstractAsyncContextManager["DispatchApi"], Protocol):
    """The dispatch API as the client offers it; `async with api:` scopes its connections."""

    async def show(self, key: DispatchKey) -> RemoteDispatch | None: ...

    async def create(self, key: DispatchKey, spec: Spec) -> RemoteDispatch: ...

    async def update(self, key: DispatchKey, dispatch_id: str, spec: Spec) -> RemoteDispatch: ...


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

    def finished(self, duration: float, calls: tuple[str, ...]) -> ActionResult:
        # Spelled out: dataclasses.replace inspects the fields on every call, at ~10 µs.
        return ActionResult(self.action, self.ok, self.outcome, self.dispatch_id, self.error,
                            self.status, duration, calls)


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
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.api = api
        self.session = session
        self.provenance = provenance
        self.parallelism = max(1, parallelism)
        self.on_result = on_result
        self.clock = clock
        self.sleep = sleep
        self.rand = rand
        self._recorder: Recorder  # the running apply's, set by _run
        # Intent ids: unique per run, then a sequence (one random draw, not one per intent).
        self._run_id = secrets.token_hex(8)
        self._intents_made = 0
        self._intents: IntentsAhead  # likewise

    def run(
        self, actions: Sequence[Action], pending_intents: set[DispatchKey]
    ) -> list[ActionResult]:
        """Apply every action that changes something; results in the order of `actions`."""
        work = [a for a in actions if a.is_change]
        if not work:
            return []
        return asyncio.run(self._run(work, pending_intents))

    async def _run(self, work: list[Action],
                   pending_intents: set[DispatchKey]) -> list[ActionResult]:
        progress = Progress(total=len(work))
        settling: list[asyncio.Future[ActionResult]] = []
        broken: list[BaseException] = []  # raised while reporting a result: stops the workers

        def finished(result: ActionResult, started: float, trace: _Trace) -> ActionResult:
            result = result.finished(self.clock() - started, tuple(trace.calls))
            progress.done += 1
            progress.failed += 0 if result.ok else 1
            if self.on_result is not None:
                self.on_result(result, progress)
            return result

        def once_recorded(result: ActionResult, started: float,
                          trace: _Trace) -> asyncio.Future[ActionResult]:
            """The result, final when the record is durable (or failed to be)."""
            final: asyncio.Future[ActionResult] = asyncio.get_running_loop().create_future()

            def settle(recorded: asyncio.Future[None]) -> None:
                # A done-callback: whatever happens here must settle `final`, or the run would
                # wait for it forever, holding the lock. An error of the reporting (a closed
                # pipe, a full disk under --report) ends the run as it would in a worker.
                if final.done():  # cancelled: the run was interrupted
                    return
                try:
                    if recorded.cancelled():
                        final.cancel()
                        return
                    error = recorded.exception()
                    if error is not None and not isinstance(error, ReconcilerError):
                        final.set_exception(error)
                        return
                    outcome = result if error is None else ActionResult(
                        result.action, False, "failed", error=str(error))
                    final.set_result(finished(outcome, started, trace))
                except BaseException as exc:  # handed on to the awaiting run
                    broken.append(exc)
                    if not final.done():
                        final.set_exception(exc)

            if trace.recorded is None:
                final.set_result(finished(result, started, trace))
            else:
                trace.recorded.add_done_callback(settle)
                settling.append(final)
            return final

        async def one(action: Action) -> asyncio.Future[ActionResult]:
            """The action's API calls; its result is final once its record is durable, which
            this worker does not wait for (see `_record`)."""
            if broken:
                raise broken[0]
            started = self.clock()
            trace = _Trace()
            try:
                result = await self._apply(action, action.key in pending_intents, trace)
            except OutcomeUnknown as exc:
                result = ActionResult(action, False, "unknown", error=f"{exc}; the next apply "
                                      "checks the API before creating", status=exc.status)
            except ApiError as exc:
                result = ActionResult(action, False, "failed", error=str(exc), status=exc.status)
            except ReconcilerError as exc:
                result = ActionResult(action, False, "failed", error=str(exc))
            return once_recorded(result, started, trace)

        creates = [a for a in work if a.kind is ActionKind.CREATE and a.after is not None]
        async with self.api, Recorder(self.session) as recorder:
            self._recorder = recorder
            self._intents = IntentsAhead(recorder, creates, self._intent, self.parallelism)
            try:
                results = await bounded_map(one, work, self.parallelism)
                recorder.write_queued()  # the last answers' records: none will join them now
                return [await result for result in results]
            finally:
                await self._intents.release_unused()
                # After an unexpected error: the records queued still settle, and are awaited;
                # failures already settled are marked seen, or asyncio would log each one.
                # (Gathering 1,000 settled futures took 5 ms, hence only the others.)
                unsettled = []
                for final in settling:
                    if not final.done():
                        unsettled.append(final)
                    elif not final.cancelled():
                        final.exception()
                if unsettled:
                    await asyncio.gather(*unsettled, return_exceptions=True)

    def _intent(self, action: Action) -> Intent:
        assert action.after is not None
        self._intents_made += 1
        return Intent(action.key, f"{self._run_id}-{self._intents_made}", "create",
                      self.provenance.time, action.after.fingerprint)

    # -- one action --------------------------------------------------------------------------

    async def _apply(self, action: Action, pending_intent: bool,
                     trace: _Trace) -> ActionResult:
        kind = action.kind
        desired = action.after
        if desired is None:
            raise ReconcilerError(f"the plan's {kind.value} action has no desired spec")
        if kind is ActionKind.CREATE:
            return await self._create(action, desired, pending_intent or action.pending_intent,
                                      trace)
        if kind is ActionKind.IMPORT:
            return await self._import(action, trace)
        dispatch_id = action.dispatch_id
        if dispatch_id is None:
            raise ReconcilerError(f"the plan's {kind.value} action has no dispatch id")
        if kind is ActionKind.UPDATE:
            return await self._update(action, dispatch_id, desired, "updated", trace)
        if kind is ActionKind.DRIFT:
            if action.writes_remote:
                return await self._update(action, dispatch_id, desired, "reverted drift", trace)
            live = await self._show(action.key, trace)
            if live is None:
                raise ReconcilerError("the dispatch no longer exists remotely; plan again")
            self._record(action, live, trace)
            return ActionResult(action, True, "refreshed", live.dispatch_id)
        raise ReconcilerError(f"cannot apply a {kind.value} action")

    async def _create(self, action: Action, desired: Spec, resolve_first: bool,
                      trace: _Trace) -> ActionResult:
        key = action.key
        if resolve_first:
            live = await self._show(key, trace)
            if live is not None:
                return await self._adopt(action, live, desired, trace)
        unknown: OutcomeUnknown | None = None
        for attempt in range(MAX_RESOLVE_ROUNDS):
            if unknown is None:
                await self._intents.ready(action)
            else:
                # As for any retry: not at once, and not before the API said it could take one.
                await self.sleep(resend_delay(attempt, unknown.retry_after, self.rand()))
                await self._recorder.intend(self._intent(action))
            try:
                trace.calls.append("POST")
                created = await self.api.create(key, desired)
            except OutcomeUnknown as exc:
                unknown = exc
                live = await self._resolve(key, exc, trace)
                if live is not None:
                    return await self._adopt(action, live, desired, trace)
                if exc.created:  # it exists, though a GET does not show it yet: never again
                    raise exc.restated(f"{exc.message}; a GET of the task then found no "
                                       "dispatch") from None
                continue  # nothing was created: the POST is sent again, under a new intent
            except ReconcilerError as exc:
                if isinstance(exc, ApiError) and exc.status in REFUSED_AS_EXISTING:
                    # The API keeps one schedule per task, and refuses a second: one may have
                    # been created by a POST of ours whose answer was lost (a killed run) and
                    # processed late. Adopting it is what the intent asked for.
                    live = await self._show(key, trace)
                    if live is not None:
                        return await self._adopt(action, live, desired, trace)
                # Refused, or failed before anything was sent (credentials IAM refused, a
                # closed client): no create is pending, and none may be reported as one.
                await self._recorder.clear_intent(key)
                raise
            self._record(action, created, trace, desired)
            return ActionResult(action, True, "created", created.dispatch_id)
        assert unknown is not None
        # With the API's last answer: its status, code, message and request id.
        raise unknown.restated(f"the create's outcome stayed unknown after "
                               f"{MAX_RESOLVE_ROUNDS} attempts; the last: {unknown.message}")

    async def _resolve(self, key: DispatchKey, unknown: OutcomeUnknown,
                       trace: _Trace) -> RemoteDispatch | None:
        """The dispatch a POST of unknown outcome may have created, read with a GET. If the
        GET fails too, the outcome stays unknown: said with both answers."""
        try:
            return await self._show(key, trace)
        except ApiError as failed:
            raise unknown.restated(f"{unknown.message}; checking with a GET failed too: "
                                   f"{failed}") from None

    async def _adopt(self, action: Action, live: RemoteDispatch, desired: Spec,
                     trace: _Trace) -> ActionResult:
        """A dispatch exists although our create's outcome was unknown: take it as ours."""
        if live.spec != desired:
            return await self._update(action, live.dispatch_id, desired, "adopted and updated",
                                      trace)
        self._record(action, live, trace)
        return ActionResult(action, True, "adopted", live.dispatch_id)

    async def _import(self, action: Action, trace: _Trace) -> ActionResult:
        live = await self._show(action.key, trace)
        if live is None:
            raise ReconcilerError("the dispatch to import no longer exists; plan again")
        desired = action.after
        if desired is not None and live.spec != desired:
            return await self._update(action, live.dispatch_id, desired,
                                      "imported and updated", trace)
        self._record(action, live, trace)
        return ActionResult(action, True, "imported", live.dispatch_id)

    async def _update(self, action: Action, dispatch_id: str, desired: Spec, outcome: str,
                      trace: _Trace) -> ActionResult:
        trace.calls.append("PUT")
        updated = await self.api.update(action.key, dispatch_id, desired)
        self._record(action, updated, trace, desired)
        return ActionResult(action, True, outcome, updated.dispatch_id)

    async def _show(self, key: DispatchKey, trace: _Trace) -> RemoteDispatch | None:
        trace.calls.append("GET")
        return await self.api.show(key)

    def _record(self, action: Action, dispatch: RemoteDispatch, trace: _Trace,
                sent: Spec | None = None) -> None:
        """Queue the record of what the API returned (the spec is what we sent when it echoes
        less); the action's result waits for it to be durable, its worker does not.

        Waiting would hold a worker slot for a round trip through the recorder thread and the
        loop, about a quarter of each create's time with 50 in flight, for nothing: the key's
        intent is durable, so if the record never lands (a kill), the next apply resolves the
        key with a GET, and no later write of this run concerns the key.
        """
        trace.recorded = self._recorder.put(record_of(
            action.key, action.name, action.source, dispatch, provenance=self.provenance,
            sent=sent, version=self.session.serial))


@dataclass(slots=True)
class _Trace:
    """What one action did: the API calls made, and the write of its record once queued."""

    calls: list[str] = field(default_factory=list)
    recorded: asyncio.Future[None] | None = None


class IntentsAhead:
    """The intents of the creates ahead of the workers, written before their turn comes.

    An intent must be durable before its POST, and a durable write takes a flush (about 1 ms
    here, one database commit with PostgreSQL). Waited for by each create, that flush would sit
    on every create's critical path; so the intents of the next creates, in the order the
    workers take them, are written in batches while the current requests are in flight: when a
    worker reaches a create, its intent is usually durable already. The cost is bounded: after a
    crash, at most about 2 x `window` intents were never followed by a POST, and the next apply
    resolves each with one GET. A run that ends normally (or with an error) clears the intents
    of the creates it never started.
    """

    def __init__(self, recorder: Recorder, creates: Sequence[Action],
                 intent: Callable[[Action], Intent], window: int) -> None:
        self._recorder = recorder
        self._creates = list(creates)
        self._position = {action.key: n for n, action in enumerate(self._creates)}
        self._intent = intent
        self._window = max(1, window)
        self._written = 0  # creates[:_written] have their intent written or being written
        self._flushes: dict[DispatchKey, asyncio.Future[None]] = {}
        self._started: set[DispatchKey] = set()

    async def ready(self, action: Action) -> None:
        """Return once the intent of `action`, a create, is durable."""
        position = self._position[action.key]
        if position + self._window >= self._written < len(self._creates):  # top the window up
            end = min(len(self._creates), position + 2 * self._window)
            batch = self._creates[self._written:end]
            self._written = end
            written = asyncio.ensure_future(
                self._recorder.intend_many([self._intent(a) for a in batch]))
            for ahead in batch:
                self._flushes[ahead.key] = written
        self._started.add(action.key)
        flush = self._flushes[action.key]
        if flush.done():  # the usual case: written ahead while earlier requests were in flight
            flush.result()  # raises as the flush did
            return
        # Shielded: a waiter that is cancelled must not cancel the flush the others wait for.
        await asyncio.shield(flush)

    async def release_unused(self) -> None:
        """Clear the intents written for creates that were never started."""
        unused = [key for key in self._flushes if key not in self._started]
        for key in unused:
            with contextlib.suppress(Exception):  # a failed flush left nothing to clear
                await self._flushes[key]
                await self._recorder.clear_intent(key)


def record_of(key: DispatchKey, name: str, source: str, dispatch: RemoteDispatch, *,
              provenance: Provenance, sent: Spec | None = None, version: int = 0) -> Record:
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
        version=version,
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
