"""bounded_map: order, the bound, and errors raised as themselves."""

from __future__ import annotations

import asyncio

import pytest

from reconciler.concurrency import bounded_map


def test_results_keep_the_order_of_the_items_and_the_bound_holds() -> None:
    in_flight = peak = 0

    async def slow_square(n: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001 * (n % 3))
        in_flight -= 1
        return n * n

    assert asyncio.run(bounded_map(slow_square, list(range(50)), 7)) == [
        n * n for n in range(50)]
    assert peak == 7


def test_no_items_and_a_bound_below_one() -> None:
    async def echo(n: int) -> int:
        return n

    assert asyncio.run(bounded_map(echo, [], 10)) == []
    assert asyncio.run(bounded_map(echo, [1, 2], 0)) == [1, 2]


def test_an_error_propagates_as_itself_and_stops_the_rest() -> None:
    started: list[int] = []

    async def fail_on_three(n: int) -> int:
        started.append(n)
        await asyncio.sleep(0)
        if n == 3:
            raise ValueError("three")
        return n

    with pytest.raises(ValueError, match="three"):
        asyncio.run(bounded_map(fail_on_three, list(range(100)), 4))
    assert len(started) < 100
