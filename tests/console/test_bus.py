"""The live-call bus: changes coalesce per watcher; a watcher that left hears nothing."""

from __future__ import annotations

import pytest

from gateway.console.bus import CallBus

pytestmark = pytest.mark.timeout(10)


async def test_changes_coalesce_into_one_wake_up_per_watcher() -> None:
    bus = CallBus()
    with bus.watch() as a, bus.watch() as b:
        for _ in range(50):
            bus.changed("CA1")
        bus.changed("CA2")
        assert await a.wait(5.0) == {"CA1", "CA2"}
        assert await b.wait(5.0) == {"CA1", "CA2"}
        assert await a.wait(0.0) == set()  # nothing new: the wait times out empty


async def test_a_watcher_that_left_is_not_told() -> None:
    bus = CallBus()
    with bus.watch():
        assert bus.watchers == 1
    assert bus.watchers == 0
    bus.changed("CA1")  # no one listening: nothing to do, nothing kept
