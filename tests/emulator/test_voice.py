"""The assistant's voice: synthesized per Realtime voice, cached per phrase, echo and tone."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gateway.emulator.voice import SAMPLE_RATE, ReplyRequest, VoiceRenderer, tone_frequency


def pitch_hz(audio: npt.NDArray[np.int16]) -> float:
    """Median autocorrelation pitch of the voiced 40 ms blocks."""
    x = audio.astype(np.float64)
    block = SAMPLE_RATE // 25
    pitches = []
    for i in range(0, x.size - block, block):
        b = x[i : i + block] - x[i : i + block].mean()
        if np.sqrt(np.mean(b * b)) < 1000:
            continue
        ac = np.correlate(b, b, "full")[block - 1 :]
        lo, hi = SAMPLE_RATE // 400, SAMPLE_RATE // 60
        pitches.append(SAMPLE_RATE / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(pitches))


def test_voices_sound_different_and_phrases_are_cached() -> None:
    r = VoiceRenderer()
    marin = r.render(ReplyRequest("speech", "marin", phrases=("Hello there, how are you?",)))
    cedar = r.render(ReplyRequest("speech", "cedar", phrases=("Hello there, how are you?",)))
    assert marin.dtype == np.int16 and marin.size > SAMPLE_RATE // 2
    # marin is a female eSpeak voice, cedar a male one: their pitch differs by far
    assert pitch_hz(marin) > 1.3 * pitch_hz(cedar)
    misses = r.misses
    again = r.render(ReplyRequest("speech", "marin", phrases=("Hello there, how are you?", "Bye.")))
    assert r.misses == misses + 1 and r.hits >= 1
    assert np.array_equal(again[: marin.size], marin)
    faster = r.render(
        ReplyRequest("speech", "marin", speed=1.5, phrases=("Hello there, how are you?",))
    )
    assert faster.size < 0.85 * marin.size


def test_echo_and_tone() -> None:
    r = VoiceRenderer()
    caller = (np.arange(4800) % 100).astype(np.int16)
    assert r.render(ReplyRequest("echo", "marin", echo=caller)) is caller
    beep = r.render(ReplyRequest("tone", "ash", tone_s=0.5))
    assert beep.size == SAMPLE_RATE // 2
    spectrum = np.abs(np.fft.rfft(beep.astype(np.float64)))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / beep.size - tone_frequency("ash")) < 3
    assert tone_frequency("ash") != tone_frequency("alloy")
