"""Real synthesized speech for the audio tests, made once per session (eSpeak NG, ~25 ms each).

``speech_8k`` is what a caller sounds like after the phone network: four sentences from three
voices at 8 kHz, separated by 300 ms of silence and padded with 200 ms at both ends.

``bandlimited_speech_8k`` is the same audio strictly band-limited below 3.4 kHz, the signal the
issue's >= 60 dB round-trip requirement is stated for. The band-limiting is a linear-phase
Kaiser-window FIR applied to the whole buffer (zero-phase, centred): pass band to 3.2 kHz,
stop band from 3.4 kHz at 100 dB, 257 taps at 8 kHz. The resamplers' own pass band ends at 3.4
kHz, so what remains is exactly the part of the spectrum they promise to carry unchanged; the
3.4-4 kHz transition band, which they are allowed to attenuate, is empty.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from gateway.audio.tts import CALLER_VOICE, REALTIME_VOICES, VoiceStyle, synthesizer

SENTENCES: list[tuple[str, VoiceStyle]] = [
    ("Hello, thanks for calling. How can I help you today?", CALLER_VOICE),
    (
        "I would like to book a table for four people at seven thirty tonight.",
        REALTIME_VOICES["alloy"],
    ),
    ("Sure. Can I have a name and a phone number for the reservation?", REALTIME_VOICES["echo"]),
    ("Please hold on while I check the availability for you.", CALLER_VOICE),
]


def _speech(rate: int) -> npt.NDArray[np.int16]:
    tts = synthesizer()
    gap = np.zeros(rate * 300 // 1000, dtype=np.int16)
    edge = np.zeros(rate * 200 // 1000, dtype=np.int16)
    parts: list[npt.NDArray[np.int16]] = [edge]
    for text, voice in SENTENCES:
        parts += [tts.synthesize(text, voice, rate), gap]
    parts[-1] = edge
    return np.concatenate(parts)


def kaiser_lowpass(
    x: npt.NDArray[np.int16], rate: int, pass_hz: float, stop_hz: float, atten_db: float = 100.0
) -> npt.NDArray[np.int16]:
    """Zero-phase whole-buffer low-pass (Kaiser-window sinc), rounded back to int16."""
    width = 2 * math.pi * (stop_hz - pass_hz) / rate
    taps = math.ceil((atten_db - 7.95) / (2.285 * width)) | 1
    beta = 0.1102 * (atten_db - 8.7)
    fc = (pass_hz + stop_hz) / 2 / rate
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * fc * np.sinc(2 * fc * n) * np.kaiser(taps, beta)
    full = np.convolve(x.astype(np.float64), h)
    y = full[(taps - 1) // 2 : (taps - 1) // 2 + x.size]
    return np.clip(np.rint(y), -32768, 32767).astype(np.int16)


@pytest.fixture(scope="session")
def speech_8k() -> npt.NDArray[np.int16]:
    return _speech(8000)


@pytest.fixture(scope="session")
def speech_24k() -> npt.NDArray[np.int16]:
    return _speech(24000)


@pytest.fixture(scope="session")
def speech_48k() -> npt.NDArray[np.int16]:
    return _speech(48000)


@pytest.fixture(scope="session")
def bandlimited_speech_8k(speech_8k: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    return kaiser_lowpass(speech_8k, 8000, 3200.0, 3400.0)


@pytest.fixture(scope="session")
def lowpass() -> Callable[..., npt.NDArray[np.int16]]:
    """:func:`kaiser_lowpass`, for tests that band-limit their own signals."""
    return kaiser_lowpass
