"""Writing call records off the audio path.

A call ends on the event loop that also carries every other call's audio, so the bridge must
not wait on a database there. :meth:`RecordWriter.submit` only appends to a bounded queue; one
background task saves the records in order, retrying a failing save with exponential backoff.

A record is never dropped silently. When the queue is full, when the store keeps failing, or
when shutdown leaves records unwritten, the record is logged at ERROR level as one line of JSON
(``call record not saved``) so it can be replayed from the logs, and ``on_failed`` is called so
the gateway can count it. Saves are upserts by ``call_sid``, so replaying a record that did get
through is harmless.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from gateway.aio import cancel_and_wait
from gateway.records.model import CallRecord
from gateway.records.store import RecordStore

__all__ = ["RecordWriter"]

log = logging.getLogger("gateway.records")

# Why a record was not saved, as passed to on_failed.
QUEUE_FULL = "queue_full"
STORE_ERROR = "store_error"
SHUTDOWN = "shutdown"


def _as_json(record: CallRecord) -> str:
    try:
        return json.dumps(record.to_dict(), default=str, sort_keys=True)
    except Exception:  # the log line must be written whatever the record holds
        return repr(record)


class RecordWriter:
    """Saves submitted records in the background; owns ``store`` from :meth:`start` on.

    The caller opens the store first (so a bad database fails startup loudly), then
    :meth:`start`; :meth:`close` writes what is queued, within a deadline, and closes the store.

    ``on_written(record)`` runs after each save; ``on_failed(record, reason)`` for each record
    given up, ``reason`` being ``"queue_full"``, ``"store_error"`` or ``"shutdown"``. Both run
    on the event loop and must not block; an exception in them is logged and ignored.
    """

    def __init__(
        self,
        store: RecordStore,
        *,
        max_queue: int = 10_000,
        on_written: Callable[[CallRecord], None] | None = None,
        on_failed: Callable[[CallRecord, str], None] | None = None,
        retries: int = 3,
        backoff_s: float = 0.5,
        write_timeout_s: float = 10.0,
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self.store = store
        self._queue: asyncio.Queue[CallRecord] = asyncio.Queue(maxsize=max_queue)
        self._on_written = on_written
        self._on_failed = on_failed
        self._retries = max(0, retries)
        self._backoff_s = backoff_s
        self._write_timeout_s = write_timeout_s
        self._task: asyncio.Task[None] | None = None
        self._current: CallRecord | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        """Records submitted and not yet saved or given up (including the one being written)."""
        return self._queue.qsize() + (1 if self._current is not None else 0)

    def submit(self, record: CallRecord) -> None:
        """Queue ``record`` for saving. Never blocks and never raises."""
        try:
            if self._closed:
                self._give_up(record, SHUTDOWN, "the record writer is closed")
                return
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self._give_up(record, QUEUE_FULL, f"{self._queue.maxsize} records already queued")
        except Exception:  # the audio path calls this; it must not fail there
            log.exception("call record %s: submit failed", getattr(record, "call_sid", "?"))

    async def start(self) -> None:
        """Start the background writer (idempotent)."""
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name="call-record-writer")

    async def close(self, timeout_s: float = 5.0) -> None:
        """Save what is queued (waiting at most ``timeout_s``), log what is not, close the store.

        Records submitted after this call are logged and reported as ``"shutdown"``.
        Idempotent.
        """
        if self._closed:
            return
        if self._task is None:
            await self.start()
        self._closed = True
        task = self._task
        if task is not None:
            drained = asyncio.ensure_future(self._queue.join())
            await asyncio.wait({drained, task}, timeout=timeout_s, return_when="FIRST_COMPLETED")
            await cancel_and_wait(drained, task)
        unsaved = f"not saved within {timeout_s:g} s of close"
        if self._current is not None:
            # Cancelled mid-save: it may or may not have landed; log it so it is not lost.
            self._give_up(self._current, SHUTDOWN, unsaved)
            self._current = None
        while not self._queue.empty():
            record = self._queue.get_nowait()
            self._queue.task_done()
            self._give_up(record, SHUTDOWN, unsaved)
        await self.store.close()

    async def _run(self) -> None:
        while True:
            record = await self._queue.get()
            self._current = record
            try:
                await self._write(record)
            except asyncio.CancelledError:
                self._queue.task_done()
                raise  # leaves _current set: close() logs it
            self._current = None
            self._queue.task_done()

    async def _write(self, record: CallRecord) -> None:
        delay = self._backoff_s
        reason = ""
        for attempt in range(self._retries + 1):
            try:
                await asyncio.wait_for(self.store.save(record), self._write_timeout_s)
            except TimeoutError:
                reason = f"save took longer than {self._write_timeout_s:g} s"
            except Exception as e:  # any store failure is retried, then logged
                reason = str(e) or type(e).__name__
            else:
                self._notify_written(record)
                return
            if attempt < self._retries:
                log.warning(
                    "call record %s: save failed (attempt %d of %d), retrying in %.2g s: %s",
                    record.call_sid,
                    attempt + 1,
                    self._retries + 1,
                    delay,
                    reason,
                )
                await asyncio.sleep(delay)
                delay *= 2
        self._give_up(record, STORE_ERROR, reason)

    def _notify_written(self, record: CallRecord) -> None:
        if self._on_written is None:
            return
        try:
            self._on_written(record)
        except Exception:
            log.exception("call record %s: on_written callback failed", record.call_sid)

    def _give_up(self, record: CallRecord, reason: str, detail: str) -> None:
        log.error(
            "call record not saved (%s: %s); record follows: %s",
            reason,
            detail,
            _as_json(record),
            extra={"call_sid": getattr(record, "call_sid", None), "record_failure": reason},
        )
        if self._on_failed is None:
            return
        try:
            self._on_failed(record, reason)
        except Exception:
            log.exception("call record %s: on_failed callback failed", record.call_sid)
