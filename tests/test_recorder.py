"""The recorder: session writes from coroutines, run in one thread, intents flushed in batches."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence

import pytest

from reconciler.model import DispatchKey
from reconciler.recorder import QUICK_WRITE_DELAY, Recorder
from reconciler.state.base import Intent, Record, Snapshot, StateError
from tests.factories import key, record


def intent(task: str) -> Intent:
    return Intent(key(task), f"id-{task}", "create", "2026-11-29T00:00:00Z", "fp")


class SlowSession:
    """Each durable flush takes a while, like fdatasync; records what was called, by whom."""

    serial = 2
    quick_puts = False

    def __init__(self, flush: float = 0.01, fail_intents: bool = False) -> None:
        self.flush = flush
        self.fail_intents = fail_intents
        self.batches: list[list[DispatchKey]] = []
        self.puts: list[DispatchKey] = []
        self.cleared: list[DispatchKey] = []
        self.threads: set[str] = set()

    def intend_many(self, intents: Sequence[Intent]) -> None:
        self.threads.add(threading.current_thread().name)
        if self.fail_intents:
            raise StateError("disk full")
        threading.Event().wait(self.flush)
        self.batches.append([i.key for i in intents])

    def intend(self, intent: Intent) -> None:
        self.intend_many([intent])

    def put(self, record: Record) -> None:
        self.put_many([record])

    def put_many(self, records: Sequence[Record]) -> None:
        self.threads.add(threading.current_thread().name)
        self.puts += [record.key for record in records]

    def remove(self, key: DispatchKey) -> None:
        raise AssertionError("not used")

    def clear_intent(self, key: DispatchKey) -> None:
        self.cleared.append(key)

    def commit(self, summary: str) -> Snapshot:
        raise AssertionError("not used")


def test_concurrent_intents_share_flushes_and_every_write_happens_off_the_loop() -> None:
    session = SlowSession()

    async def main() -> None:
        async with Recorder(session) as recorder:
            async def create(n: int) -> None:
                await recorder.intend(intent(f"t{n}"))
                await recorder.put(record(f"t{n}"))
            await asyncio.gather(*(create(n) for n in range(100)))

    asyncio.run(main())
    assert sorted(k for batch in session.batches for k in batch) == sorted(
        key(f"t{n}") for n in range(100))
    assert len(session.batches) < 50, "intents queued during a flush go out together"
    assert max(len(b) for b in session.batches) > 1
    assert sorted(session.puts) == sorted(key(f"t{n}") for n in range(100))
    assert session.threads == {"state-recorder"}


def test_an_intent_returns_only_after_its_flush() -> None:
    session = SlowSession(flush=0.05)
    order: list[str] = []

    async def main() -> None:
        async with Recorder(session) as recorder:
            await recorder.intend(intent("t1"))
            order.append(f"after intent: {len(session.batches)} flushed")

    asyncio.run(main())
    assert order == ["after intent: 1 flushed"]


def test_a_failed_flush_fails_every_intent_of_its_batch_and_nothing_else() -> None:
    session = SlowSession(fail_intents=True)

    async def main() -> list[BaseException | None]:
        async with Recorder(session) as recorder:
            results = await asyncio.gather(
                recorder.intend(intent("t1")), recorder.intend(intent("t2")),
                recorder.put(record("t3")), return_exceptions=True)
        return list(results)

    first, second, put = asyncio.run(main())
    assert isinstance(first, StateError)
    assert isinstance(second, StateError)
    assert put is None
    assert session.puts == [key("t3")]


def test_writes_queued_before_exit_still_reach_the_session() -> None:
    session = SlowSession()

    async def main() -> None:
        async with Recorder(session) as recorder:
            pending = [asyncio.ensure_future(recorder.put(record(f"t{n}"))) for n in range(20)]
            await asyncio.sleep(0)
        await asyncio.gather(*pending)

    asyncio.run(main())
    assert len(session.puts) == 20


def test_using_a_recorder_that_is_not_running_is_an_error() -> None:
    recorder = Recorder(SlowSession())

    async def main() -> None:
        await recorder.put(record("t1"))

    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(main())


class QuickSession(SlowSession):
    """Records are appended without a flush, like the local journal's."""

    quick_puts = True

    def __init__(self, fail_puts: bool = False) -> None:
        super().__init__()
        self.fail_puts = fail_puts
        self.put_calls = 0

    def put_many(self, records: Sequence[Record]) -> None:
        if self.fail_puts:
            raise StateError("journal gone")
        self.put_calls += 1
        super().put_many(records)


def test_quick_records_are_written_on_the_loop_together_and_intents_off_it() -> None:
    session = QuickSession()

    async def main() -> str:
        async with Recorder(session) as recorder:
            await recorder.intend(intent("t1"))
            burst = [recorder.put(record("t1"))]
            await asyncio.sleep(0)  # answers of a burst come in over several passes of the loop
            assert session.puts == []  # queued, for those that follow
            burst += [recorder.put(record(f"t{n}")) for n in range(2, 4)]
            await asyncio.wait(burst, timeout=QUICK_WRITE_DELAY + 5)
            assert all(done.done() for done in burst)
            assert session.puts == [key("t1"), key("t2"), key("t3")]
            assert session.put_calls == 1  # one write for the burst
            last = recorder.put(record("t4"))  # still queued when the recorder stops
        assert last.done()
        assert session.puts[-1] == key("t4")
        return threading.current_thread().name

    loop_thread = asyncio.run(main())
    assert session.threads == {"state-recorder", loop_thread}
    assert session.batches == [[key("t1")]]


def test_a_quick_record_that_fails_fails_its_future() -> None:
    session = QuickSession(fail_puts=True)

    async def main() -> None:
        async with Recorder(session) as recorder:
            await recorder.put(record("t1"))

    with pytest.raises(StateError, match="journal gone"):
        asyncio.run(main())


def test_queued_quick_records_can_be_written_at_once() -> None:
    session = QuickSession()

    async def main() -> None:
        async with Recorder(session) as recorder:
            done = [recorder.put(record(f"t{n}")) for n in range(3)]
            recorder.write_queued()  # the last answers are in: no wait for others to join them
            assert all(future.done() for future in done)
            assert session.put_calls == 1
            await asyncio.sleep(QUICK_WRITE_DELAY * 3)  # the gathering timer was cancelled
            assert session.put_calls == 1
            later = recorder.put(record("t9"))  # a new batch gathers again
            await asyncio.wait([later], timeout=QUICK_WRITE_DELAY + 5)
            assert session.put_calls == 2
            recorder.write_queued()  # nothing queued: no write
        assert session.put_calls == 2

    asyncio.run(main())


def test_leaving_the_recorder_ends_its_thread_without_the_loops_executor() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        def no_executor(*args: object) -> None:
            raise AssertionError("the recorder's exit used the loop's executor")

        loop.run_in_executor = no_executor  # type: ignore[method-assign, assignment]
        async with Recorder(SlowSession()) as recorder:
            await recorder.put(record("t1"))

    before = threading.active_count()
    asyncio.run(main())
    assert threading.active_count() == before


def test_a_cancelled_exit_still_lets_the_queued_writes_run_before_it_returns() -> None:
    # A second Ctrl-C, or an outer timeout, while the recorder waits for its thread.
    session = SlowSession(flush=0.3)
    raised: list[BaseException] = []
    hook = threading.excepthook
    threading.excepthook = lambda args: raised.append(args.exc_value)  # type: ignore[assignment]
    recorders: list[Recorder] = []

    async def body() -> None:
        async with Recorder(session) as recorder:
            recorders.append(recorder)
            first = asyncio.ensure_future(recorder.intend(intent("t1")))
            await asyncio.sleep(0.01)  # t1's flush has begun: t2 queues behind it
            second = asyncio.ensure_future(recorder.intend(intent("t2")))
            await asyncio.sleep(0)
        await asyncio.gather(first, second)

    async def main() -> None:
        task = asyncio.ensure_future(body())
        await asyncio.sleep(0.1)  # inside the recorder's exit by now
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    finally:
        threading.excepthook = hook
    assert not recorders[0]._thread.is_alive()
    assert session.batches == [[key("t1")], [key("t2")]]
    assert raised == []
