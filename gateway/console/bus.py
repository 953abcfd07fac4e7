"""Which live calls changed since a watcher last looked: the console's push stream.

The call runner says "call X may have changed" (:meth:`CallBus.changed`, cheap and synchronous:
a set insert and an event); each watcher (one per open push stream) collects the call SIDs
and wakes up. The watcher then reads the calls' current summaries itself, so a burst of
changes costs one update per call, not one per change, and a slow browser never slows a call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


class Watcher:
    """One reader of the bus; get it from :meth:`CallBus.watch` and call :meth:`wait`."""

    def __init__(self) -> None:
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()

    def _mark(self, call_sid: str) -> None:
        self._dirty.add(call_sid)
        self._wake.set()

    async def wait(self, timeout_s: float) -> set[str]:
        """The call SIDs that changed since the last call (empty when ``timeout_s`` passed)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()
        self._wake.clear()
        dirty, self._dirty = self._dirty, set()
        return dirty


class CallBus:
    """Publish with :meth:`changed`; read with ``with bus.watch() as watcher``."""

    def __init__(self) -> None:
        self._watchers: set[Watcher] = set()

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def changed(self, call_sid: str) -> None:
        for watcher in self._watchers:
            watcher._mark(call_sid)

    @contextlib.contextmanager
    def watch(self) -> Iterator[Watcher]:
        watcher = Watcher()
        self._watchers.add(watcher)
        try:
            yield watcher
        finally:
            self._watchers.discard(watcher)
