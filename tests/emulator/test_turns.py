"""Caller audio and turn detection: the input buffer's clock and slices, and the energy VAD's
onset, padding and end of turn, without an engine."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gateway.emulator.turns import InputBuffer, SpeechStarted, SpeechStopped, TurnDetector
from gateway.emulator.voice import FRAME_SAMPLES, MS_SAMPLES
from tests.emulator.emulator_support import silence, tone_frames

VAD: dict[str, Any] = {"threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}


def detect(frames: list[Any], vad: dict[str, Any] = VAD) -> list[Any]:
    """Feed ``frames`` as the engine does (buffer first, then the VAD); what the VAD reported."""
    buffer, turns = InputBuffer(), TurnDetector()
    found = []
    for frame in frames:
        buffer.append(frame)
        turn = turns.feed(frame, vad, buffer)
        if turn is not None:
            found.append(turn)
    return found


def test_a_turn_starts_with_padding_and_ends_after_the_silence() -> None:
    found = detect(silence(1.0) + tone_frames(1.0) + silence(0.6))
    # voice from 1000 ms: start = onset - 300 ms padding; end = last voice + 500 ms of silence
    assert found == [
        SpeechStarted(700 * MS_SAMPLES),
        SpeechStopped(700 * MS_SAMPLES, 2500 * MS_SAMPLES, spoken_s=1.0),
    ]


def test_padding_never_reaches_before_the_session() -> None:
    [started] = detect(silence(0.1) + tone_frames(0.2))
    assert started == SpeechStarted(0)


@pytest.mark.parametrize(("threshold", "detected"), [(0.5, False), (0.1, True)])
def test_vad_threshold_decides_whether_quiet_audio_is_speech(
    threshold: float, detected: bool
) -> None:
    found = detect(tone_frames(1.0, amplitude=150.0), {**VAD, "threshold": threshold})  # -50 dBFS
    assert bool(found) is detected


def test_two_voiced_frames_are_not_speech_and_a_reset_starts_over() -> None:
    assert detect(tone_frames(0.04) + silence(0.1) + tone_frames(0.04)) == []
    buffer, turns = InputBuffer(), TurnDetector()
    for frame in tone_frames(0.1):
        buffer.append(frame)
        turns.feed(frame, VAD, buffer)
    assert turns.speaking
    turns.reset()  # a manual commit or clear ended the turn
    assert not turns.speaking
    buffer.append(silence(0.02)[0])
    assert turns.feed(silence(0.02)[0], VAD, buffer) is None


def test_input_buffer_counts_session_samples_and_slices_by_them() -> None:
    buffer = InputBuffer()
    ramp = np.arange(5 * FRAME_SAMPLES, dtype=np.int16)
    for i in range(5):
        buffer.append(ramp[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES])
    assert (buffer.samples_in, buffer.start) == (5 * FRAME_SAMPLES, 0)
    assert np.array_equal(buffer.audio(100, 1000), ramp[100:1000])
    buffer.clear(at=buffer.samples_in)
    assert buffer.audio(0, buffer.samples_in).size == 0
    buffer.append(ramp[:FRAME_SAMPLES])
    # positions stay session samples after a clear
    assert buffer.start == 5 * FRAME_SAMPLES
    assert np.array_equal(buffer.audio(5 * FRAME_SAMPLES, 6 * FRAME_SAMPLES), ramp[:FRAME_SAMPLES])


def test_input_buffer_keeps_the_last_minute() -> None:
    buffer = InputBuffer()
    frame = np.zeros(FRAME_SAMPLES, np.int16)
    for _ in range(50 * 61):
        buffer.append(frame)
    assert buffer.samples_in - buffer.start == 60 * 50 * FRAME_SAMPLES
