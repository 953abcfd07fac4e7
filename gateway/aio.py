"""Small asyncio helpers the I/O layers share.

Only one today: stopping a set of tasks. Written out by hand it is easy to get wrong in one of
two ways - awaiting a cancelled task re-raises *its* ``CancelledError`` (so a bare
``with suppress(CancelledError)`` also swallows the caller's own cancellation, and the caller
keeps running after it was told to stop), or not awaiting at all (so the task's exception is
never retrieved and asyncio logs "Task exception was never retrieved" at garbage collection).
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


async def cancel_and_wait(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel ``tasks`` and wait until every one has finished.

    ``None`` entries and finished tasks are skipped, so callers can pass optional handles as
    they are. Exceptions the tasks end with are retrieved and logged at DEBUG (they were the
    task's business, reported where they happened); a ``CancelledError`` raised *in the caller*
    while it waits propagates after the tasks have been asked to stop - the caller's own
    cancellation is never swallowed.
    """
    live = [task for task in tasks if task is not None and not task.done()]
    for task in live:
        task.cancel()
    if live:
        # asyncio.wait never raises the tasks' exceptions, only the caller's own cancellation.
        await asyncio.wait(live)
    for done in live:
        if done.cancelled():
            continue
        error = done.exception()
        if error is not None:
            log.debug("task %s ended with %r", done.get_name(), error)
