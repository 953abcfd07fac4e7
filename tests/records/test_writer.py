"""RecordWriter: submit never waits on the store; failures are retried, then logged."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.records.model import CallRecord
from gateway.records.pricing import Usage
from gateway.records.store import (
    RecordQuery,
    RecordStoreError,
    UsageTotals,
    open_store,
    sqlite_url,
)
from gateway.records.writer import RecordWriter

pytestmark = pytest.mark.timeout(30)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def rec(i: int) -> CallRecord:
    return CallRecord(
        call_sid=f"CA{i:04d}",
        started_at=T0 + timedelta(seconds=i),
        number="+15550001",
        model="gpt-realtime",
        usage=Usage(audio_in=10 * i, audio_out=20 * i),
        cost_usd=0.001 * i,
    )


class FakeStore:
    """An in-memory store whose save can be held, slowed or made to fail."""

    def __init__(self, *, failures: int = 0, hold: bool = False) -> None:
        self.saved: dict[str, CallRecord] = {}
        self.attempts: list[str] = []
        self.failures = failures
        self.released = asyncio.Event()
        if not hold:
            self.released.set()
        self.entered = asyncio.Event()
        self.closed = False

    async def open(self) -> None:
        pass

    async def save(self, record: CallRecord) -> None:
        self.attempts.append(record.call_sid)
        self.entered.set()
        await self.released.wait()
        if self.failures:
            self.failures -= 1
            raise RecordStoreError("call records at sqlite:///x: cannot save: disk I/O error")
        self.saved[record.call_sid] = record

    async def get(self, call_sid: str) -> CallRecord | None:
        return self.saved.get(call_sid)

    async def query(self, q: RecordQuery) -> list[CallRecord]:
        return list(self.saved.values())[: q.limit]

    async def totals(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        number: str | None = None,
    ) -> list[UsageTotals]:
        return []

    async def close(self) -> None:
        self.closed = True


class Seen:
    """Collects callbacks and wakes a waiter when ``n`` of them have come."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self._want = 0
        self._event = asyncio.Event()

    def on_written(self, record: CallRecord) -> None:
        self.written.append(record.call_sid)
        self._check()

    def on_failed(self, record: CallRecord, reason: str) -> None:
        self.failed.append((record.call_sid, reason))
        self._check()

    def _check(self) -> None:
        if len(self.written) + len(self.failed) >= self._want:
            self._event.set()

    async def wait(self, n: int) -> None:
        self._want = n
        self._event.clear()
        self._check()
        await asyncio.wait_for(self._event.wait(), 10)


def logged_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The records the writer logged as unsaved, parsed back from their JSON."""
    out = []
    for r in caplog.records:
        if r.levelno == logging.ERROR and r.getMessage().startswith("call record not saved"):
            out.append(json.loads(r.getMessage().split("record follows: ", 1)[1]))
    return out


async def test_submit_does_not_wait_for_a_blocked_store(caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore(hold=True)
    seen = Seen()
    writer = RecordWriter(store, max_queue=5, on_written=seen.on_written, on_failed=seen.on_failed)
    await writer.start()
    writer.submit(rec(0))
    await asyncio.wait_for(store.entered.wait(), 5)  # the writer is now stuck in save()
    for i in range(1, 8):  # 5 fit in the queue, 2 do not
        writer.submit(rec(i))
    assert writer.pending == 6
    assert seen.failed == [("CA0006", "queue_full"), ("CA0007", "queue_full")]
    assert [r["call_sid"] for r in logged_records(caplog)] == ["CA0006", "CA0007"]

    store.released.set()
    await seen.wait(8)
    assert seen.written == [f"CA{i:04d}" for i in range(6)]  # in submission order
    assert writer.pending == 0
    await writer.close()
    assert store.closed


async def test_failing_store_is_retried_then_the_record_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore(failures=100)
    seen = Seen()
    writer = RecordWriter(store, on_failed=seen.on_failed, retries=3, backoff_s=0.001)
    await writer.start()
    record = rec(7)
    writer.submit(record)
    await seen.wait(1)
    assert store.attempts == ["CA0007"] * 4
    assert seen.failed == [("CA0007", "store_error")]
    logged = logged_records(caplog)
    assert len(logged) == 1
    assert CallRecord.from_dict(logged[0]) == record  # the log line holds the whole record
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "disk I/O error" in errors[0].getMessage()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 3
    await writer.close()


async def test_a_transient_failure_is_retried_until_it_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore(failures=2)
    seen = Seen()
    writer = RecordWriter(store, on_written=seen.on_written, retries=3, backoff_s=0.001)
    await writer.start()
    writer.submit(rec(1))
    await seen.wait(1)
    assert store.attempts == ["CA0001"] * 3 and "CA0001" in store.saved
    assert logged_records(caplog) == []
    await writer.close()


async def test_a_hung_save_times_out_and_is_retried() -> None:
    store = FakeStore(hold=True)
    seen = Seen()
    writer = RecordWriter(
        store, on_failed=seen.on_failed, retries=1, backoff_s=0.001, write_timeout_s=0.05
    )
    await writer.start()
    writer.submit(rec(3))
    await seen.wait(1)
    assert store.attempts == ["CA0003", "CA0003"]
    assert seen.failed == [("CA0003", "store_error")]
    await writer.close(timeout_s=0.1)


async def test_close_flushes_the_queue_into_a_real_store(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "calls.sqlite3")
    store = open_store(url)
    await store.open()
    writer = RecordWriter(store)
    await writer.start()
    for i in range(50):
        writer.submit(rec(i))
    await writer.close(timeout_s=20)
    assert writer.pending == 0

    check = open_store(url)
    try:
        saved = await check.query(RecordQuery(limit=1000))
        assert sorted(r.call_sid for r in saved) == [f"CA{i:04d}" for i in range(50)]
        assert await check.get("CA0042") == rec(42)
    finally:
        await check.close()


async def test_close_writes_records_submitted_before_start() -> None:
    store = FakeStore()
    writer = RecordWriter(store)
    writer.submit(rec(1))
    writer.submit(rec(2))
    await writer.close()
    assert sorted(store.saved) == ["CA0001", "CA0002"] and store.closed


async def test_close_deadline_logs_what_was_not_written(caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore(hold=True)
    seen = Seen()
    writer = RecordWriter(store, on_failed=seen.on_failed)
    await writer.start()
    for i in range(3):
        writer.submit(rec(i))
    await asyncio.wait_for(store.entered.wait(), 5)
    await writer.close(timeout_s=0.05)
    # the one cut off mid-save and the two still queued, all logged, none silently dropped
    assert sorted(seen.failed) == [(f"CA{i:04d}", "shutdown") for i in range(3)]
    assert sorted(r["call_sid"] for r in logged_records(caplog)) == ["CA0000", "CA0001", "CA0002"]
    assert writer.pending == 0 and store.closed

    writer.submit(rec(9))  # after close: logged, not queued, no exception
    assert seen.failed[-1] == ("CA0009", "shutdown")
    await writer.close()  # idempotent


async def test_callbacks_that_raise_do_not_stop_the_writer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore()
    done = asyncio.Event()

    def on_written(record: CallRecord) -> None:
        if record.call_sid == "CA0002":
            done.set()
        raise RuntimeError("metrics backend down")

    writer = RecordWriter(store, on_written=on_written)
    await writer.start()
    for i in range(3):
        writer.submit(rec(i))
    await asyncio.wait_for(done.wait(), 5)
    assert sorted(store.saved) == ["CA0000", "CA0001", "CA0002"]
    assert any("on_written callback failed" in r.getMessage() for r in caplog.records)
    await writer.close()
