"""Bounded concurrency on one event loop, for the API calls of apply and refresh."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


async def bounded_map(func: Callable[[T], Awaitable[R]], items: Sequence[T],
                      limit: int) -> list[R]:
    """`func` over `items` with at most `limit` calls in flight; results in the order of `items`.

    A fixed set of workers pulls from one iterator rather than a task per item behind a
    semaphore: 1,000 items then cost `limit` tasks, not 1,000. An exception from `func` cancels
    the other workers and propagates as itself, the first one if several failed at once (not as
    TaskGroup's ExceptionGroup): callers catch the errors they expect inside `func`, and treat
    any other as they would from a plain loop.
    """
    results: list[R | None] = [None] * len(items)
    todo = iter(enumerate(items))

    async def worker() -> None:
        for index, item in todo:
            results[index] = await func(item)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, min(limit, len(items)))):
                group.create_task(worker())
    except BaseExceptionGroup as failed:
        raise _first(failed) from None
    return results  # type: ignore[return-value]  # every slot was filled, or we raised


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    error = group.exceptions[0]
    return _first(error) if isinstance(error, BaseExceptionGroup) else error
