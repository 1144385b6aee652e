"""Recording into a state session from the event loop of an apply, without blocking it.

A session's writes block: the local journal's intents wait for fdatasync (about 0.5 ms here),
PostgreSQL's for a round trip. Run inline they would serialise every request in flight behind
the disk or the database. So one thread owns the session: the loop queues writes and awaits
them, and the thread takes whatever has queued up meanwhile as one batch: all of its intents in
one durable write (`Session.intend_many`), all of its records in one more (`Session.put_many`).
Under load a batch holds the writes of many concurrent actions, which is how 1,000 creates need
far fewer than 1,000 syncs, and the loop wakes once per batch rather than once per write.

A session whose records are quick to write (`Session.quick_puts`: the local journal appends a
line and does not flush) gets its records written on the loop instead, those queued within
`QUICK_WRITE_DELAY` of each other together: handing each over to the thread and back cost more
CPU, in thread switches and contention for the GIL, than the write itself (about 0.1 s per 1,000
creates), and one write for the records of a burst of answers saves a write and the journal's
fencing checks (two `stat` calls) for each of the others. The answers of a burst come in over
several passes of the loop: written at the end of each pass, 1,000 records took about 290
writes; gathered for 2 ms, far fewer, and the loop's CPU per apply of 1,000 creates fell from
0.395 to 0.366 s (medians of 8). Nothing waits on a record but the action's final result: a
record lost to a kill meanwhile is recovered from its intent, as at any other moment.

Ordering: the writes of one key come from one coroutine, each after the previous one is done, so
a batch never holds two writes of one key, and writes of different keys commute.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from reconciler.model import DispatchKey
from reconciler.state.base import Intent, Record, Session


@dataclass(frozen=True, slots=True)
class _Write:
    value: tuple[Intent, ...] | Record | DispatchKey  # what to record: its type says which write
    done: asyncio.Future[None]


_STOP = object()
QUICK_WRITE_DELAY = 0.002
"""Seconds a quick record write waits for the records queued after it, to be written with it."""


class Recorder:
    """`async with Recorder(session) as recorder:` then `await recorder.put(record)` etc.

    Each awaited write is durable (as the session defines it) when the await returns.
    """

    def __init__(self, session: Session) -> None:
        self._session = session
        self._queue: queue.SimpleQueue[_Write | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="state-recorder", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._quick: list[_Write] = []  # records to write on the loop
        self._quick_timer: asyncio.TimerHandle | None = None
        self._stopped: asyncio.Future[None] | None = None  # set by the thread as it ends
        # Whether the thread runs: Thread.is_alive() takes a lock, on every write.
        self._running = False

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._stopped = self._loop.create_future()
        self._thread.start()  # it runs until _STOP: the flag cannot be cleared before it is set
        self._running = True
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.write_queued()
        self._queue.put(_STOP)
        # Writes already queued still run: a result the API gave must reach the state. Waited
        # for through a future the thread settles as it ends, then joined at once: a thread of
        # the loop's executor to join it would cost 2-4 ms, to start it and to shut it down.
        assert self._stopped is not None
        try:
            await asyncio.shield(self._stopped)
        finally:
            # Also when cancelled meanwhile (a second Ctrl-C): the writes queued still run, and
            # the session is not closed under the thread.
            self._thread.join()

    async def intend(self, intent: Intent) -> None:
        await self._submit((intent,))

    async def intend_many(self, intents: Sequence[Intent]) -> None:
        await self._submit(tuple(intents))

    def put(self, record: Record) -> asyncio.Future[None]:
        """Write or queue the record; the future is done when it is durable (await it, or not
        yet)."""
        if not self._session.quick_puts:
            return self._submit(record)
        write = self._write(record)
        self._quick.append(write)
        if self._quick_timer is None:
            assert self._loop is not None
            self._quick_timer = self._loop.call_later(QUICK_WRITE_DELAY, self.write_queued)
        return write.done

    def write_queued(self) -> None:
        """Write the records queued on the loop now: when no more are coming, waiting for them
        to gather only delays the results."""
        if self._quick_timer is not None:
            self._quick_timer.cancel()
            self._quick_timer = None
        batch, self._quick = self._quick, []
        if not batch:
            return
        records = [write.value for write in batch if isinstance(write.value, Record)]
        _settle(self._together(batch, functools.partial(self._session.put_many, records)))

    async def clear_intent(self, key: DispatchKey) -> None:
        await self._submit(key)

    def _submit(self, value: tuple[Intent, ...] | Record | DispatchKey) -> asyncio.Future[None]:
        write = self._write(value)
        self._queue.put(write)
        return write.done

    def _write(self, value: tuple[Intent, ...] | Record | DispatchKey) -> _Write:
        if self._loop is None or not self._running:
            raise RuntimeError("the recorder is not running")
        return _Write(value, self._loop.create_future())

    def _work(self) -> None:
        try:
            self._serve()
        finally:
            self._running = False
            if self._loop is not None and self._stopped is not None:
                with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                    self._loop.call_soon_threadsafe(_stop, self._stopped)

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            batch: list[_Write] = []
            item = self._queue.get()
            while True:
                if item is _STOP:
                    stopping = True
                else:
                    assert isinstance(item, _Write)
                    batch.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                outcomes = self._execute(batch)
                assert self._loop is not None
                with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                    self._loop.call_soon_threadsafe(_settle, outcomes)

    def _execute(self, batch: list[_Write]) -> list[tuple[asyncio.Future[None],
                                                          BaseException | None]]:
        intend: list[_Write] = []
        intents: list[Intent] = []
        put: list[_Write] = []
        records: list[Record] = []
        clear: list[tuple[_Write, DispatchKey]] = []
        for write in batch:
            if isinstance(write.value, tuple):
                intend.append(write)
                intents += write.value
            elif isinstance(write.value, Record):
                put.append(write)
                records.append(write.value)
            else:
                clear.append((write, write.value))
        outcomes = self._together(intend, functools.partial(self._session.intend_many, intents))
        outcomes += self._together(put, functools.partial(self._session.put_many, records))
        for write, key in clear:
            outcomes += self._together([write], functools.partial(self._session.clear_intent, key))
        return outcomes

    @staticmethod
    def _together(writes: list[_Write], call: Callable[[], None]) -> list[
            tuple[asyncio.Future[None], BaseException | None]]:
        """Run one session call for `writes`; each gets its outcome (one failure fails all: a
        batch is written as one, and none of its creates may POST unless it is durable)."""
        if not writes:
            return []
        error: BaseException | None = None
        try:
            call()
        except Exception as exc:
            error = exc
        return [(write.done, error) for write in writes]


def _stop(stopped: asyncio.Future[None]) -> None:
    if not stopped.done():
        stopped.set_result(None)


def _settle(outcomes: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for done, error in outcomes:
        if done.cancelled():
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
