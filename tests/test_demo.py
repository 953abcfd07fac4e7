"""``gateway demo``: one call through the real gateway and the embedded emulator."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.demo import DemoReport, build_transcript, in_time_order, summary_lines
from gateway.loadtest.caller import CallResult, Span, TimelineEntry, Turn
from gateway.observability import percentile


@pytest.mark.timeout(120)
def test_demo_json_reports_what_the_caller_heard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OPENAI_API_KEY", "GATEWAY_REALTIME_BASE_URL", "TWILIO_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env
    wav = tmp_path / "call.wav"
    result = CliRunner().invoke(
        app, ["demo", "--json", "--turns", "1", "--record", str(wav), "--latency-ms", "150"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # the "calling ..." notice went to stderr
    assert "embedded Realtime emulator (offline, free)" in result.stderr
    assert not (tmp_path / "data" / "calls.sqlite3").exists()  # a demo writes no call record
    assert report["ok"] is True
    assert report["upstream"] == "embedded emulator"
    assert report["setup_ms"] > 0
    # one question, talked over, then the interruption answered
    assert report["turns"] == 2
    assert len(report["barge_in_stop_ms"]) == 1
    assert len(report["response_latency_ms"]) >= 1
    speakers = [e["speaker"] for e in report["transcript"]]
    assert speakers.count("caller") == 2 and "assistant" in speakers
    assert report["transcript"][0]["speaker"] == "assistant"  # the greeting comes first
    added = report["gateway_added_latency_ms"]
    assert added["inbound_p99"] is not None and added["outbound_p99"] is not None
    assert report["upstream_sessions"][0]["state"] in ("ended", "closed")
    with wave.open(str(wav)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 8000, 2)
        assert w.getnframes() > 8000 * 3


@pytest.mark.timeout(120)
@pytest.mark.parametrize("carrier", ["plivo"])
def test_demo_plays_another_carrier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, carrier: str
) -> None:
    for name in ("OPENAI_API_KEY", "GATEWAY_REALTIME_BASE_URL", "PLIVO_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    args = ["demo", "--json", "--turns", "1", "--no-barge-in", "--latency-ms", "150"]
    result = CliRunner().invoke(app, [*args, "--carrier", carrier])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert len(report["response_latency_ms"]) >= 1


def test_demo_refuses_an_unknown_carrier() -> None:
    result = CliRunner().invoke(app, ["demo", "--carrier", "vonage"])
    assert result.exit_code == 2
    assert "--carrier" in result.output


def test_transcript_pairs_answers_with_the_audio_heard_between_turns() -> None:
    r = CallResult(call_sid="CA1", stream_sid="MZ1")
    r.turns = [Turn(0, "hi", False, onset_ms=3000, end_ms=4000)]
    r.assistant = [Span(500, 2000), Span(2100, 2500), Span(5000, 6000)]
    lines = [
        {"speaker": "assistant", "text": "Hello", "at_ms": 600},
        {"speaker": "assistant", "text": "Hi there", "at_ms": 5100},
    ]
    assert build_transcript(r, lines) == [
        {"speaker": "assistant", "text": "Hello", "start_ms": 500, "end_ms": 2500},
        {"speaker": "caller", "text": "hi", "start_ms": 3000, "end_ms": 4000},
        {"speaker": "assistant", "text": "Hi there", "start_ms": 5000, "end_ms": 6000},
    ]


def test_response_p50_is_the_call_records_percentile() -> None:
    r = CallResult(call_sid="CA1", stream_sid="MZ1")
    r.turns = [
        Turn(i, "q", False, end_ms=1000.0 * i, answer_ms=1000.0 * i + ms)
        for i, ms in enumerate((900.0, 300.0, 650.0, 410.0))
    ]
    report = DemoReport(r, "embedded emulator", [], "+1555", None, {})
    expected = percentile(r.response_latencies_ms, 0.5)
    assert expected == 410.0  # nearest rank: the second smallest of four
    assert report.to_dict()["response_latency_ms_p50"] == expected
    assert "response latency p50 (nearest rank, as heard): 410 ms" in summary_lines(report)


def test_turns_count_from_one_and_the_timeline_prints_in_time_order() -> None:
    r = CallResult(call_sid="CA1", stream_sid="MZ1")
    r.turns = [
        Turn(0, "hi", False, onset_ms=3000, end_ms=4000),
        Turn(1, "stop", True, onset_ms=6000, end_ms=7000),
    ]
    r.turns[0].answer_ms = 5000
    r.turns[1].stop_ms = 6200
    report = DemoReport(r, "x", [], "+1", None, {})
    lines = summary_lines(report)
    assert any(line.startswith("turn 1: answer heard 1000 ms") for line in lines)
    assert any(line.startswith("barge-in (turn 2): assistant silent 200 ms") for line in lines)
    assert not any("turn 0" in line for line in lines)
    late = [TimelineEntry(8320, "caller_end"), TimelineEntry(4920, "assistant_end")]
    assert [e.t_ms for e in in_time_order(late)] == [4920, 8320]
