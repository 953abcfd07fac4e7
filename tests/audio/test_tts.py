from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt
import pytest

from gateway.audio.tts import (
    CALLER_VOICE,
    ESPEAK_RATE,
    REALTIME_VOICES,
    VoiceStyle,
    resample_buffer,
    synthesizer,
)

TEXT = "Thanks for calling. How can I help you today?"


def rms(x: npt.NDArray[np.int16]) -> float:
    return float(np.sqrt(np.mean(np.square(x.astype(np.float64)))))


def dominant_pitch_hz(x: npt.NDArray[np.int16], rate: int) -> float:
    """Median autocorrelation pitch over voiced 40 ms windows (60-400 Hz)."""
    win = rate // 25
    pitches = []
    for i in range(0, x.size - win, win):
        seg = x[i : i + win].astype(np.float64)
        if rms(x[i : i + win]) < 1000:
            continue
        seg -= seg.mean()
        ac = np.correlate(seg, seg, "full")[win - 1 :]
        lo, hi = rate // 400, rate // 60
        pitches.append(rate / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(pitches))


def test_synthesizer_is_a_process_wide_singleton() -> None:
    assert synthesizer() is synthesizer()
    assert synthesizer().sample_rate == ESPEAK_RATE


def test_synthesize_returns_audible_mono_int16_of_plausible_length() -> None:
    audio = synthesizer().synthesize(TEXT, CALLER_VOICE, 8000)
    assert audio.dtype == np.int16 and audio.ndim == 1
    seconds = audio.size / 8000
    assert 1.5 < seconds < 6.0  # nine words at 170 words per minute
    assert rms(audio) > 1000
    assert np.abs(audio.astype(np.int32)).max() < 32767  # not clipping


def envelope(x: npt.NDArray[np.int16], rate: int) -> npt.NDArray[np.float64]:
    """RMS per 20 ms: what was said when, independent of the sample rate."""
    frame = rate // 50
    n = x.size // frame
    return np.sqrt(np.mean(np.square(x[: n * frame].astype(np.float64)).reshape(n, frame), axis=1))


def same_utterance(a: npt.NDArray[np.int16], b: npt.NDArray[np.int16], rate: int) -> bool:
    # eSpeak NG carries state from one call to the next, so repeating a sentence in one process
    # gives a few samples more or less and different fine detail; the envelope stays the same.
    ea, eb = envelope(a, rate), envelope(b, rate)
    n = min(ea.size, eb.size)
    return abs(a.size - b.size) < 0.01 * a.size and np.corrcoef(ea[:n], eb[:n])[0, 1] > 0.95


def test_requested_rate_scales_the_length() -> None:
    tts = synthesizer()
    native = tts.synthesize(TEXT, CALLER_VOICE, ESPEAK_RATE)
    for rate in [8000, 24000, 48000]:
        audio = tts.synthesize(TEXT, CALLER_VOICE, rate)
        assert abs(audio.size - native.size * rate / ESPEAK_RATE) < 0.005 * audio.size
        assert same_utterance(resample_buffer(native, ESPEAK_RATE, rate), audio, rate)


def test_different_texts_are_different_utterances() -> None:
    tts = synthesizer()
    a = tts.synthesize(TEXT, CALLER_VOICE, 8000)
    b = tts.synthesize(
        "Your table for four is booked for seven thirty tonight.", CALLER_VOICE, 8000
    )
    assert not same_utterance(a, b, 8000)


def test_every_realtime_voice_speaks_and_sounds_different() -> None:
    tts = synthesizer()
    outputs = {
        name: tts.synthesize("Hello there.", style, 16000)
        for name, style in REALTIME_VOICES.items()
    }
    assert all(rms(a) > 500 for a in outputs.values())
    distinct = {a.tobytes() for a in outputs.values()}
    assert len(distinct) == len(REALTIME_VOICES)


def test_voice_pitch_follows_the_style() -> None:
    tts = synthesizer()
    low = tts.synthesize(TEXT, VoiceStyle("en-us+m1", 165, 20), 16000)
    high = tts.synthesize(TEXT, VoiceStyle("en-us+m1", 165, 80), 16000)
    assert dominant_pitch_hz(high, 16000) > 1.2 * dominant_pitch_hz(low, 16000)


def test_words_per_minute_changes_the_duration() -> None:
    tts = synthesizer()
    slow = tts.synthesize(TEXT, VoiceStyle("en-us", 120), 8000)
    fast = tts.synthesize(TEXT, VoiceStyle("en-us", 240), 8000)
    assert fast.size < 0.75 * slow.size


def test_unknown_voice_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no-such-voice"):
        synthesizer().synthesize(TEXT, VoiceStyle("no-such-voice"))
    assert synthesizer().synthesize("Still working.", CALLER_VOICE).size > 0


@pytest.mark.timeout(30)
def test_concurrent_callers_get_their_own_audio() -> None:
    tts = synthesizer()
    texts = [
        "This is the first caller.",
        "Good evening, I am calling about my order from last week.",
        "Yes.",
        "Could you please repeat the confirmation number slowly?",
        "Thank you, goodbye.",
        "I would like to speak with someone in the billing department, please.",
    ]
    expected = [tts.synthesize(t, CALLER_VOICE, 8000) for t in texts]
    results: dict[int, npt.NDArray[np.int16]] = {}

    def work(i: int) -> None:
        results[i] = tts.synthesize(texts[i], CALLER_VOICE, 8000)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    # the lock keeps each caller's chunks apart: every result is its own sentence, whole
    assert all(same_utterance(expected[i], results[i], 8000) for i in range(len(texts)))


def test_resample_buffer_same_rate_is_identity() -> None:
    x = np.arange(-100, 100, dtype=np.int16)
    assert resample_buffer(x, 8000, 8000) is x


def test_resample_buffer_preserves_a_tone() -> None:
    n = np.arange(8000)
    x = np.rint(10000 * np.sin(2 * np.pi * 1000 * n / 8000)).astype(np.int16)
    y = resample_buffer(x, 8000, 24000)
    assert y.dtype == np.int16 and y.size == 24000
    m = np.arange(24000)
    ideal = 10000 * np.sin(2 * np.pi * 1000 * m / 24000)
    err = (y - ideal)[2400:-2400]  # away from the buffer edges
    assert 20 * np.log10(np.sqrt(np.mean(err**2)) / (10000 / np.sqrt(2))) < -60


def test_resample_buffer_clips_instead_of_wrapping() -> None:
    square = np.repeat(np.tile(np.array([32767, -32768], dtype=np.int16), 10), 50)
    y = resample_buffer(square, 8000, 24000)
    plateaus = y[: y.size // 150 * 150].reshape(-1, 150)[:, 3:-3]  # 50 samples in, 150 out
    signs = np.tile([1, -1], plateaus.shape[0] // 2)[:, None]
    # Gibbs overshoot next to each edge is clipped at full scale: nothing wraps to the other sign
    assert np.all(plateaus * signs > 0)
    assert np.sum(plateaus == 32767) > 0 and np.sum(plateaus == -32768) > 0
