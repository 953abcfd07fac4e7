"""CallRecord: JSON round trip and the refusal of naive times."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.records.model import CallRecord
from gateway.records.pricing import Usage


def full_record() -> CallRecord:
    start = datetime(2026, 3, 1, 9, 30, 0, 123456, tzinfo=UTC)
    return CallRecord(
        call_sid="CA0123",
        started_at=start,
        ended_at=start + timedelta(seconds=61.5),
        stream_sid="MZ0123",
        account_sid="AC0123",
        number="+15551230001",
        profile="front-desk",
        caller="+1555***0199",
        upstream_call_id="sess_abc",
        model="gpt-realtime-2025-08-28",
        duration_s=61.5,
        outcome="completed",
        end_reason="caller hung up",
        turns=7,
        barge_ins=2,
        setup_ms=412.5,
        latency={"response_ms_p50": 640.0, "response_ms_p95": 910.0, "added_inbound_ms_p99": None},
        usage=Usage(text_in=500, text_in_cached=300, audio_in=900, audio_out=1200, text_out=80),
        cost_usd=0.0987,
        actions=[{"kind": "end_call", "at_ms": 61000, "ok": True}],
        errors={"upstream_lost": 1},
        recording_path="/var/rec/CA0123.wav",
        dtmf="12#",
        direction="outbound",
        answered_by="machine_end_beep",
        answered_by_ms=4210.5,
        voicemail_left=True,
    )


def test_round_trips_through_json() -> None:
    record = full_record()
    text = json.dumps(record.to_dict())
    assert CallRecord.from_dict(json.loads(text)) == record


def test_a_record_without_the_outbound_fields_reads_as_inbound() -> None:
    old = {k: v for k, v in full_record().to_dict().items() if "answered" not in k}
    del old["direction"], old["voicemail_left"]
    record = CallRecord.from_dict(old)
    assert record.direction == "inbound"
    assert (record.answered_by, record.answered_by_ms, record.voicemail_left) == (None,) * 3


def test_times_are_stored_in_utc() -> None:
    paris = timezone(timedelta(hours=1))
    record = CallRecord(call_sid="CA1", started_at=datetime(2026, 3, 1, 10, 30, tzinfo=paris))
    assert record.started_at == datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    assert record.started_at.utcoffset() == timedelta(0)
    assert record.to_dict()["started_at"] == "2026-03-01T09:30:00+00:00"


def test_naive_times_and_empty_sid_are_refused() -> None:
    with pytest.raises(ValueError, match="started_at must be timezone-aware"):
        CallRecord(call_sid="CA1", started_at=datetime(2026, 3, 1, 9, 30))
    with pytest.raises(ValueError, match="ended_at"):
        CallRecord(
            call_sid="CA1",
            started_at=datetime(2026, 3, 1, 9, 30, tzinfo=UTC),
            ended_at=datetime(2026, 3, 1, 9, 31),
        )
    with pytest.raises(ValueError, match="call_sid"):
        CallRecord(call_sid="", started_at=datetime(2026, 3, 1, tzinfo=UTC))


def test_from_dict_reports_what_is_missing() -> None:
    with pytest.raises(ValueError, match="started_at"):
        CallRecord.from_dict({"call_sid": "CA1"})
    with pytest.raises(ValueError, match="started_at"):
        CallRecord.from_dict({"call_sid": "CA1", "started_at": "2026-03-01T09:30:00"})
    minimal = CallRecord.from_dict({"call_sid": "CA1", "started_at": "2026-03-01T09:30:00Z"})
    assert minimal.number == "default" and minimal.usage == Usage() and minimal.cost_usd is None
