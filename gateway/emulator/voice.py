"""What the emulated assistant sounds like: synthesized speech, an echo of the caller, or a tone.

CPU work, synchronous, safe to call from worker threads (the runner calls :meth:`VoiceRenderer.
render` through ``asyncio.to_thread`` so synthesis never blocks the event loop). Speech is made
of short phrases, each synthesized once per voice and speed and cached, so a load test that asks
the same questions in many sessions costs almost no synthesis after the first turns.

All audio here is 24 kHz mono int16, the Realtime API's own format.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from gateway.audio.format import MODEL_FRAME_SAMPLES, MODEL_RATE
from gateway.audio.tts import REALTIME_VOICES, VoiceStyle

__all__ = ["FRAME_SAMPLES", "MS_SAMPLES", "SAMPLE_RATE", "ReplyRequest", "VoiceRenderer", "tone"]

SAMPLE_RATE: Final = MODEL_RATE
FRAME_SAMPLES: Final = MODEL_FRAME_SAMPLES  # 20 ms
MS_SAMPLES: Final = SAMPLE_RATE // 1000  # samples per millisecond
_GAP: Final = np.zeros(4 * FRAME_SAMPLES, dtype=np.int16)  # 80 ms between phrases

Pcm = npt.NDArray[np.int16]
_FADE_S: Final = 0.01
# A custom voice ({"id": ...}) or an unknown name speaks with this one.
_FALLBACK_VOICE: Final = "marin"


@dataclass(frozen=True, slots=True, eq=False)
class ReplyRequest:
    """One reply to render: ``phrases`` are spoken in order (``speech``); ``echo`` is replayed
    as is; ``tone_s`` seconds of a voice-specific tone."""

    kind: Literal["speech", "echo", "tone"]
    voice: str
    speed: float = 1.0
    phrases: tuple[str, ...] = ()
    echo: npt.NDArray[np.int16] | None = field(default=None, repr=False)
    tone_s: float = 1.0


def tone(seconds: float, freq: float, level: float = 0.25) -> npt.NDArray[np.int16]:
    """A sine of ``freq`` Hz with 10 ms fades, 24 kHz int16 at ``level`` of full scale."""
    n = max(0, round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    x = level * np.sin(2 * np.pi * freq * t)
    ramp = min(n // 2, round(_FADE_S * SAMPLE_RATE))
    if ramp:
        env = np.linspace(0.0, 1.0, ramp)
        x[:ramp] *= env
        x[n - ramp :] *= env[::-1]
    return np.round(x * 32767).astype(np.int16)


def voice_style(voice: str, speed: float = 1.0) -> VoiceStyle:
    """The eSpeak voice for a Realtime voice name, its words per minute scaled by ``speed``."""
    base = REALTIME_VOICES.get(voice) or REALTIME_VOICES[_FALLBACK_VOICE]
    return VoiceStyle(base.espeak_name, max(80, min(450, round(base.wpm * speed))), base.pitch)


def tone_frequency(voice: str) -> float:
    """Each voice beeps at its own pitch (A4 and up in semitones), so tones stay tellable apart."""
    names = list(REALTIME_VOICES)
    index = names.index(voice) if voice in names else 0
    return 440.0 * 2 ** (index / 12)


class VoiceRenderer:
    """Renders :class:`ReplyRequest` values to audio, caching synthesized phrases (LRU).

    One per emulator process, shared by every session; thread-safe.
    """

    def __init__(self, max_phrases: int = 4096) -> None:
        self._cache: OrderedDict[tuple[str, str, float], npt.NDArray[np.int16]] = OrderedDict()
        self._max = max_phrases
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def render(self, request: ReplyRequest) -> npt.NDArray[np.int16]:
        """The reply's audio (24 kHz mono int16). May take tens of ms on a cache miss: call it
        from a worker thread in async code."""
        parts = [pcm for _, pcm in self.render_parts(request)]
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)

    def render_parts(self, request: ReplyRequest) -> list[tuple[Hashable | None, Pcm]]:
        """The reply as consecutive pieces whose lengths are whole 20 ms frames (except an
        echo's), each with a key naming its content (None: unique audio). Equal keys mean
        equal audio, so whatever is derived from a piece (its Opus packets) can be cached."""
        if request.kind == "echo" and request.echo is not None:
            return [(None, request.echo)]
        if request.kind == "tone":
            key = ("tone", request.voice, round(request.tone_s, 2))
            return [(key, _pad(tone(request.tone_s, tone_frequency(request.voice))))]
        parts: list[tuple[Hashable | None, Pcm]] = []
        for phrase in request.phrases:
            if parts:
                parts.append((("gap",), _GAP))
            audio = self.phrase(phrase, request.voice, request.speed)
            parts.append((("phrase", phrase, request.voice, round(request.speed, 2)), audio))
        return parts

    def phrase(self, text: str, voice: str, speed: float = 1.0) -> npt.NDArray[np.int16]:
        """One synthesized phrase (whole 20 ms frames, read-only), from the cache if possible."""
        key = (text, voice, round(speed, 2))
        with self._lock:
            audio = self._cache.get(key)
            if audio is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return audio
        from gateway.audio.tts import synthesizer  # loads eSpeak NG on first use

        audio = _pad(_trim(synthesizer().synthesize(text, voice_style(voice, speed), SAMPLE_RATE)))
        audio.setflags(write=False)
        with self._lock:
            self.misses += 1
            self._cache[key] = audio
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return audio


def _pad(audio: Pcm) -> Pcm:
    """``audio`` with silence appended up to a whole number of 20 ms frames."""
    rest = -audio.size % FRAME_SAMPLES
    return np.concatenate((audio, np.zeros(rest, np.int16))) if rest else audio


def _trim(audio: npt.NDArray[np.int16], floor: int = 64) -> npt.NDArray[np.int16]:
    """Drop the silence eSpeak leaves around a phrase (keeps 20 ms of it at each end)."""
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > floor)
    if loud.size == 0:
        return audio
    keep = SAMPLE_RATE // 50
    start = max(0, int(loud[0]) - keep)
    end = min(audio.size, int(loud[-1]) + 1 + keep)
    return np.ascontiguousarray(audio[start:end])
