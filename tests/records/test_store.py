"""The record store on SQLite and on a real PostgreSQL server (see conftest.py)."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.schema import CreateTable

from gateway.loadtest.spawn import free_port
from gateway.records.model import CallRecord
from gateway.records.pricing import Usage
from gateway.records.store import (
    RecordQuery,
    RecordStoreError,
    SqlRecordStore,
    mask_url,
    open_store,
    sqlite_url,
)

from .conftest import PG_PASSWORD, PgServer

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def rec(
    sid: str,
    minutes: int,
    *,
    number: str = "+15550001",
    outcome: str = "completed",
    cost: float | None = 0.01,
    usage: Usage | None = None,
    duration_s: float = 30.0,
) -> CallRecord:
    start = T0 + timedelta(minutes=minutes)
    return CallRecord(
        call_sid=sid,
        started_at=start,
        ended_at=start + timedelta(seconds=duration_s),
        number=number,
        outcome=outcome,
        model="gpt-realtime",
        duration_s=duration_s,
        usage=usage or Usage(text_in=100, text_in_cached=50, audio_in=200, audio_out=300),
        cost_usd=cost,
        latency={"response_ms_p50": 612.5, "response_ms_p95": None},
        actions=[{"kind": "end_call", "at_ms": 29000, "ok": True}],
        errors={"upstream_lost": 1},
        dtmf="1#",
    )


async def test_save_get_round_trip_and_upsert(store: SqlRecordStore) -> None:
    assert await store.get("CA-missing") is None
    first = rec("CA1", 0)
    await store.save(first)
    assert await store.get("CA1") == first

    later = rec("CA1", 0, outcome="upstream_error", cost=None, duration_s=45.5)
    later.end_reason = "upstream went away"
    later.recording_path = "/rec/CA1.wav"
    await store.save(later)
    got = await store.get("CA1")
    assert got == later
    assert got is not None and got.started_at.tzinfo is not None
    assert got.started_at.utcoffset() == timedelta(0)
    assert len(await store.query(RecordQuery())) == 1


async def test_long_free_text_fits_on_every_backend(store: SqlRecordStore) -> None:
    r = rec("CA" + "x" * 100, 0, number="sip:" + "9" * 120)
    r.caller, r.profile, r.end_reason = "c" * 300, "p" * 300, "why " * 500
    await store.save(r)
    assert await store.get(r.call_sid) == r


async def test_times_in_other_offsets_are_compared_as_instants(store: SqlRecordStore) -> None:
    east = timezone(timedelta(hours=5))
    r = CallRecord(call_sid="CA-east", started_at=datetime(2026, 3, 1, 14, 0, tzinfo=east))
    await store.save(r)
    got = await store.get("CA-east")
    assert got is not None and got.started_at == datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    hits = await store.query(RecordQuery(since=datetime(2026, 3, 1, 8, 59, tzinfo=UTC)))
    assert [h.call_sid for h in hits] == ["CA-east"]
    misses = await store.query(RecordQuery(since=datetime(2026, 3, 1, 9, 1, tzinfo=UTC)))
    assert misses == []


async def test_query_filters_orders_and_limits(store: SqlRecordStore) -> None:
    records = [
        rec("CA-a", 0, number="+1A"),
        rec("CA-b", 10, number="+1A", outcome="upstream_error"),
        rec("CA-c", 20, number="+1B"),
        rec("CA-d", 30, number="+1A"),
        rec("CA-e", 40, number="+1B", outcome="carrier_error"),
    ]
    for r in records:
        await store.save(r)

    async def sids(**kw: object) -> list[str]:
        return [r.call_sid for r in await store.query(RecordQuery(**kw))]  # type: ignore[arg-type]

    assert await sids() == ["CA-e", "CA-d", "CA-c", "CA-b", "CA-a"]
    assert await sids(number="+1A") == ["CA-d", "CA-b", "CA-a"]
    assert await sids(outcome="completed") == ["CA-d", "CA-c", "CA-a"]
    assert await sids(number="+1B", outcome="completed") == ["CA-c"]
    assert await sids(since=T0 + timedelta(minutes=10)) == ["CA-e", "CA-d", "CA-c", "CA-b"]
    assert await sids(until=T0 + timedelta(minutes=10)) == ["CA-a"]
    window = {"since": T0 + timedelta(minutes=5), "until": T0 + timedelta(minutes=35)}
    assert await sids(**window) == ["CA-d", "CA-c", "CA-b"]
    assert await sids(limit=2) == ["CA-e", "CA-d"]
    assert await sids(number="+1C") == []


def test_query_limit_bounds() -> None:
    assert RecordQuery().limit == 100
    assert RecordQuery(limit=5000).limit == 1000
    with pytest.raises(ValueError):
        RecordQuery(limit=0)
    with pytest.raises(ValueError, match="since"):
        RecordQuery(since=datetime(2026, 1, 1))


async def test_totals_group_by_number_and_count_unpriced_calls(store: SqlRecordStore) -> None:
    u1 = Usage(text_in=100, text_in_cached=40, audio_in=1000, audio_in_cached=10, text_out=5)
    u2 = Usage(text_in=7, audio_in=3, image_in=2, image_in_cached=1, audio_out=900)
    await store.save(rec("CA-1", 0, number="+1A", cost=0.25, usage=u1, duration_s=10.0))
    await store.save(rec("CA-2", 5, number="+1A", cost=None, usage=u2, duration_s=20.5))
    await store.save(rec("CA-3", 10, number="+1A", cost=0.5, usage=u2, duration_s=1.0))
    await store.save(rec("CA-4", 15, number="+1B", cost=None, usage=u1, duration_s=3.0))
    await store.save(rec("CA-5", 60, number="+1B", cost=1.0, usage=u1, duration_s=4.0))

    totals = {t.number: t for t in await store.totals()}
    assert sorted(totals) == ["+1A", "+1B"]
    a, b = totals["+1A"], totals["+1B"]
    assert (a.calls, a.unpriced_calls) == (3, 1)
    assert a.duration_s == pytest.approx(31.5)
    assert a.usage == u1 + u2 + u2
    assert a.cost_usd == pytest.approx(0.75)
    assert (b.calls, b.unpriced_calls, b.usage) == (2, 1, u1 + u1)
    assert b.cost_usd == pytest.approx(1.0)
    assert a.to_dict()["usage"]["audio_out"] == 1800

    early = await store.totals(until=T0 + timedelta(minutes=30))
    assert [(t.number, t.calls) for t in early] == [("+1A", 3), ("+1B", 1)]
    assert early[1].cost_usd == 0.0 and early[1].unpriced_calls == 1
    late = await store.totals(since=T0 + timedelta(minutes=10), number="+1A")
    assert [(t.number, t.calls, t.unpriced_calls) for t in late] == [("+1A", 1, 0)]
    assert await store.totals(since=T0 + timedelta(days=1)) == []


async def test_open_is_idempotent_and_safe_to_race(store_url: str) -> None:
    # Several replicas starting at once against one database, each with its own engine.
    stores = [open_store(store_url) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        await stores[0].open()
        await stores[1].save(rec("CA-race", 0))
        assert await stores[2].get("CA-race") == rec("CA-race", 0)
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_sqlite_uses_wal_and_tolerates_hand_edited_json(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "calls.sqlite3"
    store = open_store(sqlite_url(path))
    await store.open()
    try:
        await store.save(rec("CA1", 0))
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            db.execute(
                "UPDATE call_records SET latency = 'not json', actions = '{\"a\": 1}', "
                "errors = '[1]'"
            )
        got = await store.get("CA1")
        assert got is not None
        assert (got.latency, got.actions, got.errors) == ({}, [], {})
    finally:
        await store.close()


async def test_in_memory_sqlite_keeps_one_database() -> None:
    store = open_store("sqlite+aiosqlite://")
    await store.open()
    try:
        await store.save(rec("CA1", 0))
        assert await store.get("CA1") == rec("CA1", 0)
    finally:
        await store.close()


def test_urls_are_normalized_and_masked(tmp_path: Path) -> None:
    for url in ("postgres://u:pw@h/db", "postgresql://u:pw@h/db", "postgresql+psycopg://u:pw@h/db"):
        store = open_store(url)
        assert store.dialect == "postgresql"
        assert store.url.endswith("u:***@h/db") and "pw" not in repr(store)
    assert open_store("sqlite:///" + str(tmp_path / "x.db")).dialect == "sqlite"
    assert mask_url("postgresql://me:p@ss:w/rd@db.example:5432/calls?sslmode=require") == (
        "postgresql://me:***@db.example:5432/calls?sslmode=require"
    )
    assert mask_url("sqlite+aiosqlite:////var/data/calls.sqlite3") == (
        "sqlite+aiosqlite:////var/data/calls.sqlite3"
    )
    assert mask_url("postgresql://user@host/db") == "postgresql://user@host/db"


@pytest.mark.parametrize(
    "url",
    [
        f"mysql://root:{PG_PASSWORD}@localhost/calls",
        f"not a url {PG_PASSWORD}",
        f"postgresql://u:{PG_PASSWORD}@host:notaport/db",
    ],
)
def test_bad_urls_raise_without_the_password(url: str) -> None:
    with pytest.raises(RecordStoreError) as info:
        open_store(url)
    assert "call records URL" in str(info.value)
    if "://" in url:
        assert PG_PASSWORD not in str(info.value)


async def test_unreachable_postgres_raises_a_masked_error() -> None:
    port = free_port()  # nothing listens there
    store = open_store(f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{port}/calls")
    try:
        with pytest.raises(RecordStoreError) as info:
            await store.open()
    finally:
        await store.close()
    message = str(info.value)
    assert PG_PASSWORD not in message
    assert f"postgresql://postgres:***@127.0.0.1:{port}/calls" in message
    assert "create the call_records table" in message
    assert "[SQL:" not in message


async def test_wrong_database_on_a_live_server_raises_a_masked_error(pg_server: PgServer) -> None:
    port = pg_server.port
    store = open_store(f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{port}/no_such_db")
    try:
        with pytest.raises(RecordStoreError, match="no_such_db") as info:
            await store.open()
    finally:
        await store.close()
    assert PG_PASSWORD not in str(info.value)


async def test_unwritable_sqlite_paths_raise_store_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(RecordStoreError, match="cannot create directory"):
        sqlite_url(blocker / "calls.sqlite3")
    # A URL built by hand, into a directory that does not exist: fails on open.
    store = open_store(f"sqlite+aiosqlite:///{tmp_path}/missing/dir/calls.sqlite3")
    try:
        with pytest.raises(RecordStoreError, match="missing/dir' does not exist"):
            await store.open()
    finally:
        await store.close()


async def test_saving_before_open_is_a_store_error(tmp_path: Path) -> None:
    store = open_store(sqlite_url(tmp_path / "calls.sqlite3"))
    try:
        with pytest.raises(RecordStoreError, match="save call CA1"):
            await store.save(rec("CA1", 0))
    finally:
        await store.close()


async def test_totals_and_queries_separate_directions(store: SqlRecordStore) -> None:
    await store.save(rec("CA-in", 0, number="+1A"))
    out = rec("CA-out", 1, number="+1A")
    out.direction, out.answered_by, out.answered_by_ms, out.voicemail_left = (
        "outbound",
        "machine_end_beep",
        4200.0,
        True,
    )
    await store.save(out)
    assert await store.get("CA-out") == out
    [inbound] = await store.totals(direction="inbound")
    [outbound] = await store.totals(direction="outbound")
    assert (inbound.calls, outbound.calls) == (1, 1)
    [both] = await store.totals()
    assert both.calls == 2
    found = await store.query(RecordQuery(direction="outbound"))
    assert [r.call_sid for r in found] == ["CA-out"]


async def test_a_table_from_an_older_gateway_gains_the_new_columns(tmp_path: Path) -> None:
    from sqlalchemy.dialects import sqlite as sqlite_dialect

    from gateway.records.store import _ADDED_COLUMNS, _calls

    old = sa.MetaData()
    columns = [
        sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
        for c in _calls.columns
        if c.name not in _ADDED_COLUMNS
    ]
    table = sa.Table(_calls.name, old, *columns)
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(str(CreateTable(table).compile(dialect=sqlite_dialect.dialect())))
        db.execute(
            "INSERT INTO call_records (call_sid, started_at, number, stream_sid, account_sid, "
            "profile, caller, upstream_call_id, model, duration_s, outcome, end_reason, turns, "
            "barge_ins, text_in, text_in_cached, text_out, audio_in, audio_in_cached, audio_out, "
            "image_in, image_in_cached, dtmf, latency, actions, errors) VALUES ('CA-old', "
            "'2026-03-01 09:00:00.000000', '+1A', '', '', '', '', '', '', 1.0, 'completed', '', "
            "0, 0, 0, 0, 0, 0, 0, 0, 0, 0, '', '{}', '[]', '{}')"
        )
    store = open_store(sqlite_url(path))
    try:
        await store.open()
        await store.open()  # a second start finds the columns there
        kept = await store.get("CA-old")
        assert kept is not None and kept.direction == "inbound" and kept.answered_by is None
        await store.save(rec("CA-new", 1, number="+1A"))
        assert [t.calls for t in await store.totals(direction="inbound")] == [2]
    finally:
        await store.close()


async def test_the_opt_out_list_adds_once_lists_and_removes(store: SqlRecordStore) -> None:
    assert not await store.opted_out("+15550001")
    await store.opt_out("+15550001", "asked on the call", T0)
    await store.opt_out("+15550001", "again", T0 + timedelta(days=1))  # the first entry stays
    await store.opt_out("+15550002", "", T0)
    assert await store.opted_out("+15550001")
    listed = await store.opt_outs()
    assert [(o.number, o.reason, o.at) for o in listed] == [
        ("+15550001", "asked on the call", T0),
        ("+15550002", "", T0),
    ]
    assert await store.remove_opt_out("+15550001")
    assert not await store.remove_opt_out("+15550001")
    assert not await store.opted_out("+15550001")
