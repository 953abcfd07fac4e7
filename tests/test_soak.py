"""Nothing outlives its call: waves of calls through the real gateway and emulator, and after
each wave the gateway is back where it started — no peer connection, task or file left open.

The long version (minutes at ~70 % of capacity, in separate processes) is
``tests/benchmarks/soak.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import pytest

from gateway.app import gateway_state
from gateway.loadtest.runner import LoadPlan, LoadRun, Target
from gateway.loadtest.scenarios import CallerLines, ScenarioMix
from gateway.service import RunningGateway
from tests.support import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def gateway_settings() -> dict[str, Any]:
    return {"max_calls": 6}


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def _gauge(gw: RunningGateway, name: str) -> float:
    value = gateway_state(gw.app).metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


async def _settled(
    gw: RunningGateway, tasks_at_most: float, files_at_most: int
) -> tuple[float, int]:
    """Wait (bounded) for the gateway to return to its idle footprint; return what it reached."""
    state = gateway_state(gw.app)
    async with asyncio.timeout(15):
        await state.idle.wait()
    tasks, files = _gauge(gw, "gateway_event_loop_tasks"), _open_files()

    def settled() -> bool:
        nonlocal tasks, files
        tasks, files = _gauge(gw, "gateway_event_loop_tasks"), _open_files()
        return tasks <= tasks_at_most and files <= files_at_most

    with contextlib.suppress(AssertionError):  # the caller's asserts report what was reached
        await wait_until(settled, 5, interval=0.05)
    return tasks, files


async def test_waves_of_calls_leave_nothing_behind(gateway: RunningGateway) -> None:
    lines = CallerLines.synthesized()
    mix = ScenarioMix.parse("listen=2,conversation=1", turns=1, think_ms=200)

    async def wave(calls: int, seed: int) -> None:
        plan = LoadPlan(calls=calls, concurrency=calls, seed=seed)
        result = await LoadRun(plan, Target(gateway.url), mix, lines).run()
        failed = [r.result.failure_detail for r in result.records if not r.result.ok]
        assert failed == []

    await wave(2, seed=0)  # warm-up: first-use imports, executor threads, pooled connections
    tasks0, files0 = await _settled(gateway, float("inf"), 1 << 30)
    for seed in range(1, 3):
        await wave(3, seed)
        # the callers are done; the gateway hangs their sessions up after closing their sockets
        tasks, files = await _settled(gateway, tasks0, files0)
        assert _gauge(gateway, "gateway_peer_connections") == 0
        assert tasks <= tasks0, f"wave {seed}: {tasks - tasks0:.0f} task(s) outlived their calls"
        assert files <= files0, f"wave {seed}: {files - files0} file(s) outlived their calls"
    assert gateway_state(gateway.app).calls == {}
