"""Call recordings: the timeline's alignment, the writer's WAV files, file naming and retention."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.audio.g711 import ulaw_to_array
from gateway.audio.recording import RecordingTimeline

FRAME = 160  # 20 ms of 8 kHz μ-law


def noise(n: int, seed: int) -> bytes:
    """μ-law bytes that decode to non-silent, easily told-apart samples."""
    rng = np.random.default_rng(seed)
    return bytes(rng.integers(0, 0x7F, n, dtype=np.uint8))  # 0x00-0x7E: negative, never 0


def pcm(ulaw: bytes) -> npt.NDArray[np.int16]:
    return ulaw_to_array(ulaw)


def zeros(n: int) -> npt.NDArray[np.int16]:
    return np.zeros(n, dtype=np.int16)


# --- timeline: caller ---------------------------------------------------------------------------


def test_caller_frames_are_placed_at_their_timestamps() -> None:
    tl = RecordingTimeline()
    frames = [noise(FRAME, i) for i in range(3)]
    for i, f in enumerate(frames):
        tl.caller(f, 20 * i)
    out = tl.take()
    assert out.shape == (3 * FRAME, 2) and out.dtype == np.int16
    assert np.array_equal(out[:, 0], pcm(b"".join(frames)))
    assert not out[:, 1].any()
    assert tl.caller_ms == 60 and tl.taken_ms == 60 and tl.buffered_ms == 0


def test_a_gap_in_caller_timestamps_is_silence() -> None:
    tl = RecordingTimeline()
    a, b = noise(FRAME, 1), noise(FRAME, 2)
    tl.caller(a, 0)
    tl.caller(b, 60)  # frames at 20 and 40 ms were lost
    left = tl.take()[:, 0]
    assert np.array_equal(left, np.concatenate([pcm(a), zeros(2 * FRAME), pcm(b)]))


def test_a_stream_starting_late_is_preceded_by_silence() -> None:
    tl = RecordingTimeline()
    a = noise(FRAME, 1)
    tl.caller(a, 100)
    assert np.array_equal(tl.take()[:, 0], np.concatenate([zeros(800), pcm(a)]))


def test_a_repeated_caller_frame_is_not_heard_twice() -> None:
    tl = RecordingTimeline()
    a, b, again = noise(FRAME, 1), noise(FRAME, 2), noise(FRAME, 3)
    tl.caller(a, 0)
    tl.caller(b, 20)
    tl.caller(again, 20)  # same timestamp, whatever its payload: already placed
    tl.caller(a, 0)
    assert tl.caller_ms == 40
    assert np.array_equal(tl.take()[:, 0], pcm(a + b))


def test_an_overlapping_caller_frame_adds_only_its_new_tail() -> None:
    tl = RecordingTimeline()
    a, b = noise(FRAME, 1), noise(FRAME, 2)
    tl.caller(a, 0)
    tl.caller(b, 10)  # overlaps a's second half
    assert tl.caller_ms == 30
    assert np.array_equal(tl.take()[:, 0], np.concatenate([pcm(a), pcm(b[80:])]))


def test_a_repeat_after_take_changes_nothing() -> None:
    tl = RecordingTimeline()
    a = noise(FRAME, 1)
    tl.caller(a, 0)
    first = tl.take()
    tl.caller(noise(FRAME, 9), 0)
    assert tl.take().shape == (0, 2)
    assert np.array_equal(first[:, 0], pcm(a))


# --- timeline: assistant ------------------------------------------------------------------------


def test_assistant_audio_lines_up_with_the_caller_sample_for_sample() -> None:
    tl = RecordingTimeline()
    caller = noise(50 * FRAME, 1)  # one second
    for i in range(50):
        tl.caller(caller[i * FRAME : (i + 1) * FRAME], 20 * i)
    answer = noise(FRAME, 2)
    tl.assistant(answer, 260.125)  # 2081 samples in
    out = tl.take()
    assert np.array_equal(out[:, 0], pcm(caller))
    expected = np.concatenate([zeros(2081), pcm(answer), zeros(8000 - 2081 - FRAME)])
    assert np.array_equal(out[:, 1], expected)


def test_a_burst_sent_at_once_plays_back_to_back() -> None:
    tl = RecordingTimeline()
    chunks = [noise(FRAME, i) for i in range(5)]
    for c in chunks:
        tl.assistant(c, 100)  # the gateway sends 100 ms of audio in one instant
    assert tl.assistant_ms == 200
    later = noise(FRAME, 9)
    tl.assistant(later, 150)  # sent while the burst still plays: queued behind it
    tl.assistant(later, 500)  # sent after the carrier ran dry: starts when sent
    right = tl.finish(600)[:, 1]
    expected = np.concatenate(
        [zeros(800), pcm(b"".join(chunks)), pcm(later), zeros(4000 - 1760), pcm(later)]
    )
    assert np.array_equal(right, expected)


def test_a_clear_removes_what_the_caller_never_heard() -> None:
    tl = RecordingTimeline()
    answer = noise(8000, 1)  # one second, sent in one burst at 100 ms
    for i in range(0, 8000, FRAME):
        tl.assistant(answer[i : i + FRAME], 100)
    for i in range(25):  # the caller talks over it for half a second
        tl.caller(noise(FRAME, 100 + i), 20 * i)
    tl.cleared(400)  # barge-in: the carrier drops what it had not played
    assert tl.assistant_ms == 400
    resumed = noise(FRAME, 2)
    tl.assistant(resumed, 450)  # the next answer starts when sent, not after the dropped tail
    right = tl.finish(2000)[:, 1]
    # the caller's half second is longer than what is left of the answer: silence to its end
    expected = np.concatenate(
        [zeros(800), pcm(answer[: 300 * 8]), zeros(400), pcm(resumed), zeros(4000 - 3760)]
    )
    assert np.array_equal(right, expected)


def test_a_clear_after_the_answer_played_changes_nothing() -> None:
    tl = RecordingTimeline()
    a = noise(FRAME, 1)
    tl.assistant(a, 0)
    tl.cleared(50)
    assert tl.assistant_ms == 20
    assert np.array_equal(tl.finish(100)[:, 1], pcm(a))


def test_a_clear_inside_a_chunk_keeps_the_part_already_played() -> None:
    tl = RecordingTimeline()
    a = noise(FRAME, 1)
    tl.assistant(a, 0)
    tl.cleared(10)
    assert tl.assistant_ms == 10
    assert np.array_equal(tl.finish(100)[:, 1], pcm(a[:80]))


def test_a_clear_never_rewrites_what_was_handed_out() -> None:
    tl = RecordingTimeline()
    answer = noise(800, 1)
    tl.assistant(answer, 0)
    for i in range(3):
        tl.caller(noise(FRAME, 10 + i), 20 * i)
    first = tl.take()  # 60 ms: final
    tl.cleared(30)  # earlier than the newest caller frame: only audio after 60 ms can go
    rest = tl.finish(1000)
    right = np.concatenate([first, rest])[:, 1]
    assert np.array_equal(right, pcm(answer[:480]))


def test_assistant_audio_sent_into_the_handed_out_past_starts_at_the_first_open_sample() -> None:
    tl = RecordingTimeline()
    for i in range(5):
        tl.caller(noise(FRAME, i), 20 * i)
    tl.take()  # 100 ms final
    late = noise(FRAME, 9)
    tl.assistant(late, 90)
    out = tl.finish(1000)
    assert np.array_equal(out[:, 1], pcm(late))  # starts at 100 ms: nothing lost, nothing moved


def test_take_hands_out_only_what_is_final() -> None:
    tl = RecordingTimeline()
    tl.assistant(noise(8000, 1), 0)  # a second of answer, far ahead of the caller
    tl.caller(noise(FRAME, 2), 0)
    assert len(tl.take()) == FRAME  # the answer beyond the caller might still be cleared
    assert tl.buffered_ms == 980
    tl.caller(noise(FRAME, 3), 20)
    tl.caller(noise(FRAME, 4), 40)
    assert len(tl.take(upto_ms=30)) == 80
    assert len(tl.take(upto_ms=10)) == 0  # already handed out
    assert len(tl.take(upto_ms=1000)) == 2 * FRAME - 80  # never past the caller
    assert tl.taken_ms == 60


def test_finish_truncates_the_answer_at_hang_up() -> None:
    tl = RecordingTimeline()
    answer = noise(16000, 1)
    tl.assistant(answer, 0)  # two seconds queued
    for i in range(50):
        tl.caller(noise(FRAME, 10 + i), 20 * i)
    out = tl.finish(1000)  # hung up after one second: the second half was never played
    assert out.shape == (8000, 2)
    assert np.array_equal(out[:, 1], pcm(answer[:8000]))


def test_finish_keeps_assistant_audio_played_after_the_last_caller_frame() -> None:
    tl = RecordingTimeline()
    tl.caller(noise(FRAME, 1), 0)
    answer = noise(8000, 2)
    tl.assistant(answer, 20)
    out = tl.finish(520)
    assert out.shape == (4160, 2)
    assert np.array_equal(out[:, 1], np.concatenate([zeros(FRAME), pcm(answer[:4000])]))
    assert not out[FRAME:, 0].any()


def test_a_finished_timeline_refuses_more_input() -> None:
    tl = RecordingTimeline()
    tl.finish(0)
    for use in (
        lambda: tl.caller(b"\xff", 0),
        lambda: tl.assistant(b"\xff", 0),
        lambda: tl.cleared(0),
        tl.take,
        lambda: tl.finish(0),
    ):
        with pytest.raises(RuntimeError, match="finished"):
            use()


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_impossible_times_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="max_gap_ms"):
        RecordingTimeline(max_gap_ms=bad)
    tl = RecordingTimeline()
    with pytest.raises(ValueError, match="at_ms"):
        tl.caller(b"\xff" * FRAME, bad)
    with pytest.raises(ValueError, match="at_ms"):
        tl.assistant(b"\xff" * FRAME, bad)
    with pytest.raises(ValueError, match="at_ms"):
        tl.cleared(bad)


def test_a_timestamp_jumping_by_hours_is_refused_not_filled_with_silence() -> None:
    tl = RecordingTimeline(max_gap_ms=60_000)
    a = noise(FRAME, 1)
    tl.caller(a, 0)
    tl.caller(a, 60_020)  # a minute of lost audio: still a gap, filled with silence
    with pytest.raises(ValueError, match=r"caller audio at 7.2e\+06 ms leaves a gap"):
        tl.caller(a, 2 * 3600_000)
    with pytest.raises(ValueError, match=r"assistant audio at 1e\+12 ms leaves a gap"):
        tl.assistant(a, 1e12)  # e.g. monotonic clock milliseconds without subtracting t0
    assert tl.caller_ms == 60_040 and tl.assistant_ms == 0  # refused input changed nothing
    assert len(tl.take()) == 60_040 * 8


def test_memory_stays_bounded_over_a_long_call() -> None:
    """Twenty minutes of caller frames and 3-second answers sent in bursts every 10 s, taken
    every frame: the timeline holds at most one answer's worth, however long the call."""
    frame = noise(FRAME, 1)
    answer_chunk = noise(FRAME, 2)
    minutes = 20
    tl = RecordingTimeline()
    total = 0
    most_buffered = 0.0
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        baseline = tracemalloc.get_traced_memory()[0]
        for i in range(minutes * 60 * 50):
            now = 20 * i
            tl.caller(frame, now)
            if i % 500 == 0:  # every 10 s an answer of 3 s arrives at once
                for _ in range(150):
                    tl.assistant(answer_chunk, now + 20)
            total += len(tl.take())
            most_buffered = max(most_buffered, tl.buffered_ms)
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    total += len(tl.finish(minutes * 60_000))
    assert total == minutes * 60 * 8000
    assert most_buffered <= 3020
    # 3 s of stereo int16 is 96 kB; the buffer may be up to twice the live span
    assert peak < 400_000, f"peak {peak} bytes"


class _Model:
    """The timeline's rules on one array the length of the whole call: no taking, no
    compaction, nothing to get wrong but the rules themselves."""

    def __init__(self, samples: int) -> None:
        self.out = np.zeros((samples, 2), dtype=np.int16)
        self.caller_end = 0
        self.cursor = 0

    def caller(self, ulaw: bytes, at_ms: int) -> None:
        start, end = at_ms * 8, at_ms * 8 + len(ulaw)
        if ulaw and end > self.caller_end:
            new = max(start, self.caller_end)
            self.out[new:end, 0] = pcm(ulaw)[new - start :]
            self.caller_end = end

    def assistant(self, ulaw: bytes, at_ms: int) -> None:
        start = max(at_ms * 8, self.cursor)
        self.out[start : start + len(ulaw), 1] = pcm(ulaw)
        self.cursor = start + len(ulaw)

    def cleared(self, at_ms: int) -> None:
        if at_ms * 8 < self.cursor:
            self.out[at_ms * 8 : self.cursor, 1] = 0
            self.cursor = at_ms * 8

    def finish(self, at_ms: int) -> npt.NDArray[np.int16]:
        self.cleared(at_ms)
        return self.out[: max(self.caller_end, self.cursor)]


@pytest.mark.parametrize("seed", range(4))
def test_a_long_messy_call_matches_the_whole_call_model(seed: int) -> None:
    """Two minutes of lost, repeated and late-stamped caller frames, answers of up to three
    seconds sent in bursts, barge-ins, taken every frame: the buffer is compacted and grown
    many times, and the result must equal the rules applied to one whole-call array."""
    rng = np.random.default_rng(seed)
    steps = 6000
    tl, model = RecordingTimeline(), _Model(3 * steps * FRAME)
    parts = []
    for i in range(steps):
        now = 20 * (i + 1)  # every frame has arrived in full by the time it is placed
        roll = rng.random()
        if roll < 0.9:
            frame = noise(FRAME, seed * steps + i)
            tl.caller(frame, now - 20)
            model.caller(frame, now - 20)
            if roll < 0.05:  # the same frame again
                tl.caller(frame, now - 20)
        elif roll < 0.93:  # a short frame, stamped late within its slot
            n = int(rng.integers(1, FRAME))
            frame = noise(n, i)
            at = now - 20 + (FRAME - n) // 8
            tl.caller(frame, at)
            model.caller(frame, at)
        # otherwise the frame was lost
        if rng.random() < 0.01:
            answer = noise(int(rng.integers(FRAME, 24000)), i)
            for k in range(0, len(answer), FRAME):
                tl.assistant(answer[k : k + FRAME], now)
                model.assistant(answer[k : k + FRAME], now)
        if rng.random() < 0.005:
            tl.cleared(now)
            model.cleared(now)
        if rng.random() < 0.7:
            parts.append(tl.take())
    end = 20 * (steps + 1) + 100
    parts.append(tl.finish(end))
    assert np.array_equal(np.concatenate(parts), model.finish(end))


# --- timeline: properties -----------------------------------------------------------------------

_caller_frames = st.lists(
    st.tuples(st.integers(0, 400), st.integers(0, 240), st.integers(0, 2**32 - 1)),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(
    frames=_caller_frames,
    answers=st.lists(st.tuples(st.integers(0, 500), st.integers(1, 400)), max_size=8),
    clears=st.lists(st.integers(0, 500), max_size=3),
    take_every=st.integers(1, 5),
)
def test_left_channel_is_the_caller_model_and_length_is_the_newest_caller_position(
    frames: list[tuple[int, int, int]],
    answers: list[tuple[int, int]],
    clears: list[int],
    take_every: int,
) -> None:
    """Whatever order, overlaps or gaps the caller frames come in, the left channel is "each
    frame adds what lies beyond the newest position", and a recording finished at the newest
    caller position is exactly that long."""
    tl = RecordingTimeline()
    model: list[int] = []
    parts: list[npt.NDArray[np.int16]] = []
    for i, (ts_ms, n, seed) in enumerate(frames):
        payload = noise(n, seed)
        tl.caller(payload, ts_ms)
        start = ts_ms * 8
        decoded = pcm(payload).tolist()
        if n and start + n > len(model):
            model += [0] * max(0, start - len(model))
            model += decoded[len(model) - start :]
        if i < len(answers):
            at, size = answers[i]
            tl.assistant(noise(size, i), at)
        if i < len(clears):
            tl.cleared(clears[i])
        if i % take_every == 0:
            parts.append(tl.take())
    parts.append(tl.finish(len(model) / 8))
    out = np.concatenate(parts)
    assert len(out) == len(model)
    assert out[:, 0].tolist() == model


@st.composite
def _call(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, bytes]], list[int], int]:
    """A caller stream, answers sent in bursts, and clears, all in milliseconds."""
    caller_ms = draw(st.integers(20, 600))
    caller = noise(caller_ms * 8, draw(st.integers(0, 1000)))
    answers = [
        (draw(st.integers(0, caller_ms)), noise(draw(st.integers(1, 2000)), 7 + k))
        for k in range(draw(st.integers(0, 4)))
    ]
    clears = draw(st.lists(st.integers(0, caller_ms), max_size=3))
    end_ms = draw(st.integers(caller_ms, caller_ms + 400))
    return caller, answers, clears, end_ms


def _cuts(data: st.DataObject, n: int) -> list[int]:
    points = data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=6)) if n > 1 else []
    return [0, *sorted(set(points)), n]


def _play(
    data: st.DataObject,
    caller: bytes,
    answers: list[tuple[int, bytes]],
    clears: list[int],
    end_ms: int,
    *,
    whole: bool,
) -> npt.NDArray[np.int16]:
    """Run one chunking of the call through a timeline, events in the order they happen:
    a caller chunk arrives when it ends, an answer's pieces when sent, clears when sent."""
    events: list[tuple[float, int, str, bytes, float]] = []
    cuts = [0, len(caller)] if whole else _cuts(data, len(caller))
    for a, b in itertools.pairwise(cuts):
        events.append((b / 8, 0, "caller", caller[a:b], a / 8))
    for at, audio in answers:
        pieces = [0, len(audio)] if whole else _cuts(data, len(audio))
        for a, b in itertools.pairwise(pieces):
            events.append((at, 2, "assistant", audio[a:b], at))
    for clear_ms in clears:
        events.append((clear_ms, 1, "clear", b"", clear_ms))
    events.sort(key=lambda e: (e[0], e[1]))
    tl = RecordingTimeline()
    parts: list[npt.NDArray[np.int16]] = []
    for _, _, kind, audio, at_ms in events:
        if kind == "caller":
            tl.caller(audio, at_ms)
        elif kind == "assistant":
            tl.assistant(audio, at_ms)
        else:
            tl.cleared(at_ms)
        if not whole and data.draw(st.booleans()):
            parts.append(tl.take())
    parts.append(tl.finish(end_ms))
    return np.concatenate(parts)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call=_call(), data=st.data())
def test_output_does_not_depend_on_chunking_or_when_it_is_taken(
    call: tuple[bytes, list[tuple[int, bytes]], list[int], int], data: st.DataObject
) -> None:
    caller, answers, clears, end_ms = call
    whole = _play(data, caller, answers, clears, end_ms, whole=True)
    chunked = _play(data, caller, answers, clears, end_ms, whole=False)
    assert np.array_equal(whole, chunked)
    assert np.array_equal(whole[: len(caller), 0], pcm(caller))
