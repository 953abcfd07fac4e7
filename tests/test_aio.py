"""``gateway.aio``: the loop-lag watcher sees a loop that was kept busy."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.aio import cancel_and_wait, watch_loop_lag

pytestmark = pytest.mark.timeout(10)


async def test_a_callback_that_holds_the_loop_shows_as_lag() -> None:
    lags: list[float] = []
    warmed, seen = asyncio.Event(), asyncio.Event()
    blocked = False

    def observe(lag: float) -> None:
        lags.append(lag)
        if len(lags) >= 3:
            warmed.set()
        if blocked:
            seen.set()

    watcher = asyncio.create_task(watch_loop_lag(observe, interval_s=0.01))
    try:
        await warmed.wait()  # a few quiet rounds first
        quiet = len(lags)
        blocked = True
        # the input: one callback holding the loop for 100 ms
        asyncio.get_running_loop().call_soon(time.sleep, 0.1)
        await seen.wait()
    finally:
        await cancel_and_wait(watcher)
    assert max(lags[quiet:]) >= 0.09 - 0.01  # woke late by about what the loop was held
    assert all(lag >= 0 for lag in lags)


async def test_a_task_that_failed_before_is_retrieved_so_nothing_is_logged_as_lost() -> None:
    import gc

    from gateway.aio import cancel_and_wait

    seen: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:

        async def fail() -> None:
            raise RuntimeError("the carrier went away")

        task = asyncio.create_task(fail())
        await asyncio.wait([task])  # it has finished, with an exception nobody has read
        await cancel_and_wait(task)
        del task
        gc.collect()
        assert seen == []  # no "Task exception was never retrieved"
    finally:
        loop.set_exception_handler(None)
