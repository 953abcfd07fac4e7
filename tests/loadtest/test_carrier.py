"""The simulated carrier's pure parts: Twilio-like playout, caller-side stream, statistics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.loadtest.carrier import (
    FRAME_BYTES,
    SILENCE_FRAME,
    AudioPlayed,
    CallerStream,
    Histogram,
    MarkEchoed,
    PlayoutBuffer,
    PlayoutCleared,
    PlayoutDrained,
    PlayoutEvent,
    PlayoutStarted,
    Underrun,
    audible,
)
from gateway.telephony.messages import (
    ClearAudio,
    Connected,
    Dtmf,
    Mark,
    Media,
    PlayMark,
    Start,
    Stop,
)
from gateway.telephony.twilio import TwilioCodec

T0 = 1000.0  # an arbitrary monotonic epoch


def played(events: list[PlayoutEvent]) -> list[AudioPlayed]:
    return [e for e in events if isinstance(e, AudioPlayed)]


def test_audio_plays_in_real_time_from_its_arrival() -> None:
    buf = PlayoutBuffer(T0)
    events = buf.push_audio(b"\x01" * 160, T0 + 0.005)
    assert events == []
    events = buf.advance(T0 + 0.015)
    assert events[0] == PlayoutStarted(T0 + 0.005, None)
    assert events[1] == AudioPlayed(T0 + 0.005, 40, b"\x01" * 80)  # 10 ms = 80 bytes so far
    events = buf.advance(T0 + 0.030)
    assert played(events) == [AudioPlayed(T0 + 0.015, 120, b"\x01" * 80)]
    assert events[-1] == PlayoutDrained(T0 + 0.025)
    assert buf.bytes_played == 160 and not buf.playing


def test_queued_audio_plays_back_to_back() -> None:
    buf = PlayoutBuffer(T0)
    for _ in range(5):
        buf.push_audio(SILENCE_FRAME, T0)  # a burst: 100 ms arrives at once
    assert buf.queued_ms == 100
    events = buf.advance(T0 + 0.050)
    assert sum(len(e.payload) for e in played(events)) == 400
    assert buf.queued_ms == 50 and buf.playing


def test_a_mark_echoes_when_the_audio_before_it_has_played() -> None:
    buf = PlayoutBuffer(T0)
    buf.push_audio(b"\x02" * 320, T0)
    assert [e for e in buf.push_mark("m1", T0 + 0.001) if isinstance(e, MarkEchoed)] == []
    assert not any(isinstance(e, MarkEchoed) for e in buf.advance(T0 + 0.039))
    echoes = [e for e in buf.advance(T0 + 0.041) if isinstance(e, MarkEchoed)]
    assert echoes == [MarkEchoed("m1", T0 + 0.040, played=True)]


def test_a_mark_echoes_at_once_when_nothing_is_queued() -> None:
    buf = PlayoutBuffer(T0)
    assert buf.push_mark("idle", T0 + 0.0123) == [MarkEchoed("idle", T0 + 0.01225, True)]


def test_clear_drops_queued_audio_and_echoes_pending_marks_unplayed() -> None:
    buf = PlayoutBuffer(T0)
    buf.push_audio(b"\x03" * 800, T0)
    buf.push_mark("a", T0)
    buf.push_audio(b"\x03" * 800, T0)
    buf.push_mark("b", T0)
    events = buf.clear(T0 + 0.030)
    assert sum(len(e.payload) for e in played(events)) == 240
    assert [e for e in events if isinstance(e, MarkEchoed)] == [
        MarkEchoed("a", T0 + 0.030, played=False),
        MarkEchoed("b", T0 + 0.030, played=False),
    ]
    assert events[-1] == PlayoutCleared(T0 + 0.030, 1360)
    assert buf.bytes_dropped == 1360 and buf.marks_cleared == 2 and not buf.playing
    assert buf.advance(T0 + 1) == []
    # playout resumes after a clear without an underrun: the clear ended the assistant's speech
    buf.push_audio(b"\x03" * 160, T0 + 1.0)
    events = buf.advance(T0 + 1.1)
    assert not any(isinstance(e, Underrun) for e in events)


def test_underruns_inside_speech_only() -> None:
    buf = PlayoutBuffer(T0)
    events = buf.push_audio(SILENCE_FRAME, T0)
    events += buf.push_audio(SILENCE_FRAME, T0 + 0.100)  # 80 ms late
    events += buf.advance(T0 + 0.200)
    assert [e for e in events if isinstance(e, Underrun)] == [Underrun(T0 + 0.020, T0 + 0.100)]
    assert [e.idle_ms for e in events if isinstance(e, PlayoutStarted)] == [None, 80.0]
    # a 30 ms stall is below the threshold; a caller turn makes the next pause a turn boundary
    buf = PlayoutBuffer(T0)
    events = buf.push_audio(SILENCE_FRAME, T0)
    events += buf.push_audio(SILENCE_FRAME, T0 + 0.050)
    events += buf.advance(T0 + 0.3)
    buf.end_speech()
    events += buf.push_audio(SILENCE_FRAME, T0 + 0.500)
    events += buf.push_audio(SILENCE_FRAME, T0 + 3.000)  # beyond max_gap_ms: a new utterance
    events += buf.advance(T0 + 4)
    assert not any(isinstance(e, Underrun) for e in events)


def test_audio_arriving_just_as_playout_ends_continues_without_a_gap() -> None:
    buf = PlayoutBuffer(T0)
    buf.push_audio(SILENCE_FRAME, T0)
    assert not any(isinstance(e, PlayoutDrained) for e in buf.advance(T0 + 0.020))
    buf.push_audio(SILENCE_FRAME, T0 + 0.020)
    events = buf.advance(T0 + 0.040)
    assert not any(isinstance(e, PlayoutStarted | PlayoutDrained) for e in events)


def test_now_never_goes_backwards() -> None:
    buf = PlayoutBuffer(T0)
    buf.push_audio(SILENCE_FRAME, T0)
    buf.advance(T0 + 0.010)
    assert buf.advance(T0 + 0.005) == []
    assert played(buf.advance(T0 + 0.015))[0].sample == 80


inputs = st.lists(
    st.tuples(
        st.sampled_from(["audio", "mark", "clear", "advance"]),
        st.floats(0, 0.2),  # time step before the input
        st.integers(1, 500),
    ),
    max_size=40,
)


def _run(buf: PlayoutBuffer, ops: list[tuple[str, float, int]], polls: list[float]) -> list[object]:
    events: list[PlayoutEvent] = []
    t = T0
    pending = sorted(polls)
    for i, (op, dt, n) in enumerate(ops):
        target = t + dt
        while pending and T0 + pending[0] < target:
            events += buf.advance(T0 + pending.pop(0))
        t = target
        if op == "audio":
            events += buf.push_audio(bytes([i % 256]) * n, t)
        elif op == "mark":
            events += buf.push_mark(f"m{i}", t)
        elif op == "clear":
            events += buf.clear(t)
        else:
            events += buf.advance(t)
    events += buf.advance(t + 100)
    # Normalise: played audio as one byte per sample position, the rest as-is.
    samples: dict[int, int] = {}
    rest: list[object] = []
    for e in events:
        if isinstance(e, AudioPlayed):
            for k, b in enumerate(e.payload):
                assert e.sample + k not in samples
                samples[e.sample + k] = b
        elif not isinstance(e, PlayoutStarted | PlayoutDrained):
            rest.append(e)
    return [sorted(samples.items()), rest]


@settings(max_examples=300, deadline=None)
@given(ops=inputs, polls=st.lists(st.floats(0, 3), max_size=30))
def test_results_do_not_depend_on_how_often_it_is_polled(
    ops: list[tuple[str, float, int]], polls: list[float]
) -> None:
    assert _run(PlayoutBuffer(T0), ops, []) == _run(PlayoutBuffer(T0), ops, polls)


@settings(max_examples=200, deadline=None)
@given(ops=inputs)
def test_every_byte_is_played_or_dropped_and_every_mark_echoes_once(
    ops: list[tuple[str, float, int]],
) -> None:
    buf = PlayoutBuffer(T0)
    samples, rest = _run(buf, ops, [])
    assert buf.bytes_received == buf.bytes_played + buf.bytes_dropped
    assert len(samples) == buf.bytes_played  # type: ignore[arg-type]
    names = [e.name for e in rest if isinstance(e, MarkEchoed)]  # type: ignore[union-attr]
    assert sorted(names) == sorted(f"m{i}" for i, (op, _, _) in enumerate(ops) if op == "mark")


# --- caller-side stream --------------------------------------------------------------------------


def test_caller_stream_numbers_messages_as_twilio_does() -> None:
    stream = CallerStream(
        stream_sid="MZ1", call_sid="CA1", account_sid="AC1", custom_parameters={"k": "v"}
    )
    gateway = TwilioCodec()
    assert gateway.parse(stream.connected()) == Connected("Call", "1.0.0")
    start = gateway.parse(stream.start())
    assert isinstance(start, Start) and start.sequence_number == 1
    assert dict(start.custom_parameters) == {"k": "v"}
    expected = stream.media_message(SILENCE_FRAME)
    assert gateway.parse(stream.media_bytes(SILENCE_FRAME)) == expected
    second = gateway.parse(stream.media_bytes(SILENCE_FRAME))
    assert isinstance(second, Media)
    assert (second.sequence_number, second.chunk, second.timestamp_ms) == (3, 2, 20)
    assert gateway.parse(stream.mark("gw1")) == Mark("MZ1", 4, "gw1")
    assert gateway.parse(stream.dtmf("5")) == Dtmf("MZ1", 5, "5")
    assert gateway.parse(stream.stop()) == Stop("MZ1", 6, "CA1", "AC1")
    assert gateway.sequence_gaps == 0 and gateway.rejected_count == 0


def test_caller_stream_reads_the_gateways_commands() -> None:
    stream = CallerStream(stream_sid="MZ1", call_sid="CA1", account_sid="AC1")
    gateway = TwilioCodec()
    gateway.parse(stream.start())
    assert stream.parse(gateway.encode(PlayMark("x"))) == PlayMark("x")
    assert stream.parse(gateway.encode(ClearAudio())) == ClearAudio()


# --- helpers -------------------------------------------------------------------------------------


def test_audible() -> None:
    assert not audible(SILENCE_FRAME)
    assert not audible(b"\x7f\xfe\xfd" * 10)  # -0 and the two smallest levels
    assert audible(SILENCE_FRAME[:-1] + b"\x80")  # one loud sample is enough
    assert len(SILENCE_FRAME) == FRAME_BYTES


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.floats(0, 1500, allow_nan=False), min_size=1, max_size=300))
def test_histogram_quantiles_are_within_one_bucket(values: list[float]) -> None:
    hist = Histogram(resolution_ms=0.5, max_ms=1000)
    half = len(values) // 2
    hist.extend(values[:half])
    other = Histogram(resolution_ms=0.5, max_ms=1000)
    other.extend(values[half:])
    hist.merge(other)
    assert hist.count == len(values) and hist.max == max(values)
    for q in (0.5, 0.9, 0.99, 1.0):
        exact = float(np.quantile(values, q, method="inverted_cdf"))
        # beyond max_ms everything is one overflow bucket, reported as the true maximum
        bound = exact + 0.5 + 1e-9 if exact < 1000 else hist.max
        assert exact - 1e-9 <= hist.quantile(q) <= bound


def test_histogram_edge_cases() -> None:
    hist = Histogram()
    assert hist.quantile(0.99) == 0 and hist.mean == 0
    with pytest.raises(ValueError):
        hist.quantile(2)
    with pytest.raises(ValueError):
        hist.merge(Histogram(resolution_ms=1))
