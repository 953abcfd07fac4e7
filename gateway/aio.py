"""Small asyncio helpers the I/O layers share.

Stopping a set of tasks (:func:`cancel_and_wait`), and watching how late the loop runs
(:func:`watch_loop_lag`).

Stopping tasks, written out by hand, is easy to get wrong in one of
two ways - awaiting a cancelled task re-raises *its* ``CancelledError`` (so a bare
``with suppress(CancelledError)`` also swallows the caller's own cancellation, and the caller
keeps running after it was told to stop), or not awaiting at all (so the task's exception is
never retrieved and asyncio logs "Task exception was never retrieved" at garbage collection).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


async def cancel_and_wait(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel ``tasks`` and wait until every one has finished.

    ``None`` entries are skipped and finished tasks are not cancelled, so callers can pass
    optional handles as they are. Exceptions the tasks end (or ended) with are retrieved and
    logged at DEBUG (they were the task's business, reported where they happened); a
    ``CancelledError`` raised *in the caller* while it waits propagates after the tasks have been
    asked to stop - the caller's own cancellation is never swallowed.
    """
    given = [task for task in tasks if task is not None]
    live = [task for task in given if not task.done()]
    for task in live:
        task.cancel()
    if live:
        # asyncio.wait never raises the tasks' exceptions, only the caller's own cancellation.
        await asyncio.wait(live)
    for done in given:  # those that had finished already too: nothing left "never retrieved"
        if done.cancelled():
            continue
        error = done.exception()
        if error is not None:
            log.debug("task %s ended with %r", done.get_name(), error)


LOOP_LAG_INTERVAL_S = 0.02


async def watch_loop_lag(
    observe: Callable[[float], None],
    interval_s: float = LOOP_LAG_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Until cancelled: every ``interval_s``, ``observe`` how many seconds late the loop woke.

    A loop that runs a long callback, or more ready work than fits in a frame time, wakes late
    for everything it has scheduled, a call's 20 ms audio included; this is that lateness, as
    the loop's own timers see it (not delayed by any client or network). One wake-up per
    ``interval_s``: a negligible cost next to one call's 100 per second.
    """
    while True:
        due = clock() + interval_s
        await asyncio.sleep(interval_s)
        observe(max(0.0, clock() - due))
