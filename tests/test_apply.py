"""The applier against a scripted fake API and a real local state session."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from reconciler.apply import MAX_RESEND_DELAY, RESEND_BACKOFF, Applier, resend_delay
from reconciler.auth import CredentialsError
from reconciler.client import ApiError, OutcomeUnknown
from reconciler.model import DispatchKey, RemoteDispatch, Spec
from reconciler.plan import make_plan
from reconciler.state.base import Intent, Provenance
from reconciler.state.local import LocalBackend
from tests.factories import NIGHTLY, key, record, schedule

WHO = Provenance("apply", "2026-11-29T00:00:00Z", "tester", commit="abc", ci_job="job-1")


class FakeApi:
    """Keeps dispatches like the API; `script` makes the next calls for a task misbehave."""

    def __init__(self) -> None:
        self.dispatches: dict[DispatchKey, RemoteDispatch] = {}
        self.calls: Counter[tuple[str, str]] = Counter()
        self.script: dict[tuple[str, str], list[str]] = {}
        self.lock = threading.Lock()
        self.counter = 0

    def _fault(self, method: str, key: DispatchKey) -> str | None:
        with self.lock:
            self.calls[(method, key.task_id)] += 1
            queue = self.script.get((method, key.task_id))
            return queue.pop(0) if queue else None

    async def __aenter__(self) -> FakeApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def show(self, key: DispatchKey) -> RemoteDispatch | None:
        fault = self._fault("GET", key)
        if fault == "error":
            raise ApiError("boom", method="GET", key=key, status=503)
        if fault == "hidden":
            return None
        return self.dispatches.get(key)

    async def create(self, key: DispatchKey, spec: Spec) -> RemoteDispatch:
        fault = self._fault("POST", key)
        if fault == "error-before":
            raise OutcomeUnknown("HTTP 500", method="POST", key=key, status=500)
        if fault == "error-before-retry-after-7":
            raise OutcomeUnknown("HTTP 503", method="POST", key=key, status=503,
                                 retry_after=7.0)
        if key in self.dispatches:
            raise ApiError("The task already has a schedule.", method="POST", key=key,
                           status=400, code="FDI.3002")
        if fault == "reject":
            raise ApiError("invalid parameters", method="POST", key=key, status=400,
                           code="FDI.3002")
        if fault == "credentials":  # as the auth raises it, before anything is sent
            raise CredentialsError("IAM refused the password of user u")
        with self.lock:
            self.counter += 1
            created = RemoteDispatch(f"d{self.counter}", spec, 1, 1)
            self.dispatches[key] = created
        if fault == "drop-after":
            raise OutcomeUnknown("connection dropped", method="POST", key=key)
        if fault == "created-unreadable":
            raise OutcomeUnknown("the dispatch was created, but the answer is unusable",
                                 created=True, method="POST", key=key, status=200)
        return created

    async def update(self, key: DispatchKey, dispatch_id: str, spec: Spec) -> RemoteDispatch:
        self._fault("PUT", key)
        updated = RemoteDispatch(dispatch_id, spec, 1, 2)
        self.dispatches[key] = updated
        return updated


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(tmp_path / "state.json")


def apply(backend: LocalBackend, api: FakeApi, desired, parallelism: int = 4,  # type: ignore[no-untyped-def]
          slept: list[float] | None = None):
    async def sleep(seconds: float) -> None:  # the waits before a create is sent again
        if slept is not None:
            slept.append(seconds)

    with backend.write_session(WHO) as session:
        snapshot = backend.read()
        plan = make_plan(desired, snapshot, desired_digest="d", created_at="now")
        results = Applier(api, session, WHO, parallelism=parallelism, sleep=sleep,
                          rand=lambda: 1.0).run(plan.actions, set(snapshot.intents))
        session.commit("test")
    return results


def test_creates_only_what_is_missing(backend: LocalBackend) -> None:
    api = FakeApi()
    desired = [schedule(f"t{n}") for n in range(20)]
    results = apply(backend, api, desired)
    assert [r.outcome for r in results] == ["created"] * 20
    assert all(calls == 1 for calls in api.calls.values())
    assert set(api.calls) == {("POST", f"t{n}") for n in range(20)}
    state = backend.read()
    assert len(state.records) == 20
    stored = state.records[key("t3")]
    assert stored.dispatch_id == api.dispatches[key("t3")].dispatch_id
    assert (stored.applied_by, stored.commit, stored.ci_job) == ("tester", "abc", "job-1")
    assert state.intents == {}
    api.calls.clear()
    assert apply(backend, api, desired) == []
    assert not api.calls


def test_update_is_one_put(backend: LocalBackend) -> None:
    api = FakeApi()
    apply(backend, api, [schedule("t1")])
    api.calls.clear()
    changed = replace(NIGHTLY, cron="0 0 3 * * ?")
    (result,) = apply(backend, api, [schedule("t1", changed)])
    assert result.outcome == "updated"
    assert api.calls == Counter({("PUT", "t1"): 1})
    assert backend.read().records[key("t1")].spec == changed


def test_dropped_response_is_resolved_with_get_not_a_second_post(backend: LocalBackend) -> None:
    api = FakeApi()
    api.script[("POST", "t1")] = ["drop-after"]
    (result,) = apply(backend, api, [schedule("t1")])
    assert result.ok
    assert result.outcome == "adopted"
    assert result.calls == ("POST", "GET")
    assert api.calls[("POST", "t1")] == 1
    assert backend.read().records[key("t1")].dispatch_id == api.dispatches[key("t1")].dispatch_id


def test_error_before_create_posts_again_after_get(backend: LocalBackend) -> None:
    api = FakeApi()
    api.script[("POST", "t1")] = ["error-before"]
    slept: list[float] = []
    (result,) = apply(backend, api, [schedule("t1")], slept=slept)
    assert result.outcome == "created"
    assert result.calls == ("POST", "GET", "POST")
    assert slept == [RESEND_BACKOFF]  # not sent again at once


def test_a_re_sent_create_waits_as_long_as_the_api_asked(backend: LocalBackend) -> None:
    api = FakeApi()
    api.script[("POST", "t1")] = ["error-before-retry-after-7"] * 2
    slept: list[float] = []
    (result,) = apply(backend, api, [schedule("t1")], slept=slept)
    assert result.outcome == "created"
    assert slept == [7.0, 7.0]
    assert resend_delay(1, None, 0.0) == RESEND_BACKOFF / 2  # jitter halves at most
    assert resend_delay(2, None, 1.0) == RESEND_BACKOFF * 2
    assert resend_delay(9, 1e9, 1.0) == MAX_RESEND_DELAY


def test_a_create_answered_2xx_unreadably_is_never_sent_again(backend: LocalBackend) -> None:
    api = FakeApi()
    api.script[("POST", "t1")] = ["created-unreadable"]
    api.script[("GET", "t1")] = ["hidden"]  # not (yet) visible to a GET
    (result,) = apply(backend, api, [schedule("t1")])
    assert result.outcome == "unknown"
    assert result.calls == ("POST", "GET")
    assert "a GET of the task then found no dispatch" in (result.error or "")
    assert key("t1") in backend.read().intents  # the next run checks again before creating
    (again,) = apply(backend, api, [schedule("t1")])
    assert again.outcome == "adopted"
    assert sum(n for (method, _), n in api.calls.items() if method == "POST") == 1


def test_a_failed_check_of_an_unknown_create_keeps_both_answers(backend: LocalBackend) -> None:
    api = FakeApi()
    api.script[("POST", "t1")] = ["error-before"]
    api.script[("GET", "t1")] = ["error"]
    (result,) = apply(backend, api, [schedule("t1")])
    assert result.outcome == "unknown"
    assert result.status == 500  # the POST's, not the GET's
    assert "checking with a GET failed too: HTTP 503: boom" in (result.error or "")
    assert key("t1") in backend.read().intents


def test_outcome_unknown_for_ever_is_reported_and_kept_for_next_run(
    backend: LocalBackend,
) -> None:
    api = FakeApi()
    api.script[("POST", "t1")] = ["error-before"] * 3
    (result,) = apply(backend, api, [schedule("t1")])
    assert not result.ok
    assert result.outcome == "unknown"
    # With the API's last answer, as any failure is reported.
    assert result.status == 500
    assert "after 3 attempts; the last: HTTP 500" in (result.error or "")
    assert key("t1") in backend.read().intents
    api.calls.clear()
    (result,) = apply(backend, api, [schedule("t1")])
    assert result.outcome == "created"
    assert result.calls == ("GET", "POST")  # the intent is resolved first


def test_intent_left_by_a_crash_is_resolved_by_get(backend: LocalBackend) -> None:
    api = FakeApi()
    # A crashed run wrote its intent and its POST was processed, but nothing was recorded.
    with backend.write_session(WHO) as session:
        session.intend(Intent(key("t1"), "i1", "create", "x", NIGHTLY.fingerprint))
    api.dispatches[key("t1")] = RemoteDispatch("d-early", NIGHTLY, 1, 1)
    (result,) = apply(backend, api, [schedule("t1")])
    assert result.outcome == "adopted"
    assert api.calls[("POST", "t1")] == 0
    assert backend.read().records[key("t1")].dispatch_id == "d-early"


def test_refused_create_of_an_existing_dispatch_adopts_it(backend: LocalBackend) -> None:
    api = FakeApi()
    other = replace(NIGHTLY, remark="made by hand")
    api.dispatches[key("t1")] = RemoteDispatch("d-hand", other, 1, 1)
    (result,) = apply(backend, api, [schedule("t1")])
    assert result.outcome == "adopted and updated"
    assert result.calls == ("POST", "GET", "PUT")
    assert api.dispatches[key("t1")].spec == NIGHTLY


def test_rejected_create_fails_alone_and_clears_its_intent(backend: LocalBackend) -> None:
    api = FakeApi()
    api.script[("POST", "t2")] = ["reject"]
    results = apply(backend, api, [schedule("t1"), schedule("t2"), schedule("t3")])
    assert [(r.action.key.task_id, r.ok) for r in results] == [
        ("t1", True), ("t2", False), ("t3", True)]
    failed = results[1]
    assert failed.status == 400
    assert "FDI.3002" in (failed.error or "")
    state = backend.read()
    assert set(state.records) == {key("t1"), key("t3")}
    assert state.intents == {}


def test_credentials_refused_before_sending_fail_without_leaving_an_intent(
        backend: LocalBackend) -> None:
    api = FakeApi()
    api.script[("POST", "t1")] = ["credentials"]
    results = apply(backend, api, [schedule("t1"), schedule("t2")])
    assert [(r.ok, r.outcome) for r in results] == [(False, "failed"), (True, "created")]
    assert "IAM refused" in (results[0].error or "")
    state = backend.read()
    assert set(state.records) == {key("t2")}
    assert state.intents == {}, "nothing was sent: the next plan must not see an interrupted create"


def test_orphans_and_noops_are_not_touched(backend: LocalBackend) -> None:
    api = FakeApi()
    apply(backend, api, [schedule("t1"), schedule("t2")])
    api.calls.clear()
    assert apply(backend, api, [schedule("t1")]) == []
    assert not api.calls
    assert key("t2") in backend.read().records


def test_import_and_drift(backend: LocalBackend) -> None:
    api = FakeApi()
    changed = replace(NIGHTLY, remark="edited")
    api.dispatches[key("t1")] = RemoteDispatch("d-out", NIGHTLY, 5, 6)
    with backend.write_session(WHO) as session:
        session.put(record("t2", NIGHTLY, dispatch_id="d-t2"))
        session.commit("seed")
    api.dispatches[key("t2")] = RemoteDispatch("d-t2", changed, 5, 6)
    desired = [schedule("t1"), schedule("t2")]
    with backend.write_session(WHO) as session:
        snapshot = backend.read()
        live = {k: api.dispatches.get(k) for k in (key("t1"), key("t2"))}
        plan = make_plan(desired, snapshot, desired_digest="d", created_at="x", remote=live)
        results = Applier(api, session, WHO).run(plan.actions, set())
        session.commit("refresh")
    assert [r.outcome for r in results] == ["imported", "reverted drift"]
    assert api.calls[("POST", "t1")] == 0
    state = backend.read()
    assert state.records[key("t1")].dispatch_id == "d-out"
    assert state.records[key("t1")].created_date == 5
    assert api.dispatches[key("t2")].spec == NIGHTLY


def test_a_replaced_dispatch_is_recorded_with_its_new_id(backend: LocalBackend) -> None:
    api = FakeApi()
    with backend.write_session(WHO) as session:
        session.put(record("t1", NIGHTLY, dispatch_id="d-old"))
        session.commit("seed")
    api.dispatches[key("t1")] = RemoteDispatch("d-new", NIGHTLY, 5, 6)
    with backend.write_session(WHO) as session:
        snapshot = backend.read()
        plan = make_plan([schedule("t1")], snapshot, desired_digest="d", created_at="x",
                         remote={key("t1"): api.dispatches[key("t1")]})
        results = Applier(api, session, WHO).run(plan.actions, set())
        session.commit("refresh")
    assert [r.outcome for r in results] == ["refreshed"]
    assert backend.read().records[key("t1")].dispatch_id == "d-new"
    assert api.calls[("PUT", "t1")] == 0


class DurableIntents:
    """Wraps a session: remembers which intents were durable (intend_many had returned)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.durable: set[DispatchKey] = set()
        self.flushes = 0

    def intend_many(self, intents: Any) -> None:
        self.session.intend_many(intents)
        self.flushes += 1
        self.durable |= {i.key for i in intents}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def test_intents_are_written_ahead_in_batches_and_durable_before_each_post(
        backend: LocalBackend) -> None:
    api = FakeApi()
    desired = [schedule(f"t{n:03d}") for n in range(100)]
    with backend.write_session(WHO) as session:
        durable = DurableIntents(session)
        posted_unguarded: list[str] = []
        create = api.create

        async def checked_create(key: DispatchKey, spec: Spec) -> RemoteDispatch:
            if key not in durable.durable:
                posted_unguarded.append(key.task_id)
            return await create(key, spec)

        api.create = checked_create  # type: ignore[method-assign]
        plan = make_plan(desired, backend.read(), desired_digest="d", created_at="now")
        results = Applier(api, durable, WHO, parallelism=5).run(plan.actions, set())
        session.commit("test")
    assert all(r.ok for r in results)
    assert posted_unguarded == []
    assert durable.flushes <= 100 // 5 + 1, f"{durable.flushes} flushes for 100 creates"
    assert backend.read().intents == {}


def test_a_run_that_stops_clears_the_intents_of_creates_it_never_started(
        backend: LocalBackend) -> None:
    api = FakeApi()
    desired = [schedule(f"t{n:03d}") for n in range(40)]
    create = api.create

    async def failing_create(key: DispatchKey, spec: Spec) -> RemoteDispatch:
        if key.task_id == "t005":
            raise RuntimeError("a bug, not an API error")
        return await create(key, spec)

    api.create = failing_create  # type: ignore[method-assign]
    plan = make_plan(desired, backend.read(), desired_digest="d", created_at="now")
    with backend.write_session(WHO) as session:
        applier = Applier(api, session, WHO, parallelism=2)
        with pytest.raises(RuntimeError, match="a bug"):
            applier.run(plan.actions, set())
    state = backend.read()
    # Only the creates under way when the run stopped (one per worker) may be unresolved; the
    # intents written ahead for creates never started were cleared.
    assert key("t005") in state.intents
    assert len(state.intents) <= 2
    assert not set(state.intents) & set(state.records)
    assert len(state.records) + len(state.intents) <= 40


def test_a_failure_to_report_a_result_ends_the_run_instead_of_hanging(
        backend: LocalBackend) -> None:
    # As when stdout is a closed pipe (`reconciler apply | head -1`) or --report hits a full disk.
    class SlowApi(FakeApi):
        # Answers that take a while, as real ones do: with instant ones every create could be
        # done before the first result is reported (results wait for their record's write),
        # on a busy machine, and the test would not show whether the workers stop.
        async def create(self, key: DispatchKey, spec: Spec) -> RemoteDispatch:
            await asyncio.sleep(0.01)
            return await super().create(key, spec)

    api = SlowApi()
    desired = [schedule(f"t{n:03d}") for n in range(30)]
    plan = make_plan(desired, backend.read(), desired_digest="d", created_at="now")
    reported: list[str] = []

    def report(result: Any, progress: Any) -> None:
        if len(reported) == 3:
            raise BrokenPipeError("the reader has gone")
        reported.append(result.action.key.task_id)

    outcome: list[BaseException] = []

    def run() -> None:
        with backend.write_session(WHO) as session:
            try:
                Applier(api, session, WHO, parallelism=4, on_result=report).run(
                    plan.actions, set())
            except BaseException as exc:  # what the run ended with
                outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "the run hung"
    assert len(outcome) == 1
    assert isinstance(outcome[0], BrokenPipeError)
    # The workers stopped taking actions once reporting had failed.
    assert sum(n for (method, _), n in api.calls.items() if method == "POST") < 30
    assert backend.current_lock() is None


def test_records_that_fail_to_be_written_end_the_run_with_one_error_and_no_noise(
        backend: LocalBackend, caplog: pytest.LogCaptureFixture) -> None:
    """The first failure ends the run; the others, already settled, are not left for asyncio
    to log one traceback each ("Future exception was never retrieved")."""
    api = FakeApi()
    desired = [schedule(f"t{n:03d}") for n in range(20)]
    plan = make_plan(desired, backend.read(), desired_digest="d", created_at="now")

    def disk_full(records: Any) -> None:
        raise OSError("disk full")

    with backend.write_session(WHO) as session:
        session.put_many = disk_full  # type: ignore[method-assign]
        with pytest.raises(OSError, match="disk full"):
            Applier(api, session, WHO, parallelism=4).run(plan.actions, set())
    gc.collect()  # asyncio logs unretrieved exceptions when their futures are collected
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_the_last_results_do_not_wait_for_records_that_will_never_join_them(
        backend: LocalBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    # The local journal's records gather on the loop for a while before they are written; once
    # every action has its answer, the run writes what is queued instead of waiting.
    monkeypatch.setattr("reconciler.recorder.QUICK_WRITE_DELAY", 30.0)
    started = time.monotonic()
    results = apply(backend, FakeApi(), [schedule(f"t{n}") for n in range(3)])
    assert time.monotonic() - started < 10
    assert [r.outcome for r in results] == ["created"] * 3
    assert len(backend.read().records) == 3
