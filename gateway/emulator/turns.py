"""Caller audio and turn detection, sans-I/O: the input audio buffer with the session's audio
clock (:class:`InputBuffer`) and the energy VAD that finds where turns start and stop
(:class:`TurnDetector`). The engine turns what they report into events and items."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gateway.emulator.voice import FRAME_SAMPLES, MS_SAMPLES, SAMPLE_RATE

__all__ = ["InputBuffer", "SpeechStarted", "SpeechStopped", "TurnDetector"]

_ONSET_FRAMES: Final = 3  # 60 ms of consecutive voiced frames start speech
_MAX_BUFFER_FRAMES: Final = 50 * 60  # uncommitted caller audio kept (60 s)


class InputBuffer:
    """Uncommitted caller audio (the last 60 s at most) and the session's audio clock.

    Positions are session samples: :attr:`samples_in` counts every sample received, as the
    service's ``audio_start_ms`` and friends do; :attr:`start` is where the buffer begins.
    """

    def __init__(self) -> None:
        self.samples_in = 0  # session audio clock
        self.start = 0  # session sample at which the buffer begins
        self._frames: deque[npt.NDArray[np.int16]] = deque(maxlen=_MAX_BUFFER_FRAMES)

    def append(self, frame: npt.NDArray[np.int16]) -> None:
        """One 20 ms frame; the oldest is dropped once the buffer holds 60 s."""
        self._frames.append(frame)
        self.samples_in += FRAME_SAMPLES
        if len(self._frames) == self._frames.maxlen:
            self.start = self.samples_in - len(self._frames) * FRAME_SAMPLES

    def audio(self, start: int, end: int) -> npt.NDArray[np.int16]:
        """The buffered audio of session samples [start, end)."""
        if not self._frames:
            return np.zeros(0, dtype=np.int16)
        pcm = np.concatenate(self._frames)
        lo = max(0, start - self.start)
        hi = max(lo, end - self.start)
        return pcm[lo:hi]

    def clear(self, at: int) -> None:
        """Drop the buffered audio; the buffer begins again at session sample ``at``."""
        self._frames.clear()
        self.start = at


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech began; the turn's audio starts at session sample ``start`` (prefix padding
    included)."""

    start: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """The turn ended at session sample ``end`` (the silence that ended it included); its audio
    is [``start``, ``end``) and the caller spoke for ``spoken_s`` seconds of it."""

    start: int
    end: int
    spoken_s: float


class TurnDetector:
    """Server VAD over 20 ms frames: an energy gate, ``_ONSET_FRAMES`` voiced frames to start
    speech, ``silence_duration_ms`` of unvoiced frames to stop it. Feed each frame after the
    :class:`InputBuffer` has taken it; :meth:`reset` when a commit or clear ends the turn."""

    def __init__(self) -> None:
        self.speaking = False
        self.speech_start = 0  # audio_start_ms in samples (prefix padding included)
        self._voiced_run = 0
        self._silent_run = 0
        self._onset = 0  # first voiced sample of the current utterance

    def reset(self) -> None:
        self.speaking = False
        self._voiced_run = self._silent_run = 0

    def feed(
        self, frame: npt.NDArray[np.int16], vad: dict[str, Any], buffer: InputBuffer
    ) -> SpeechStarted | SpeechStopped | None:
        """The frame just appended to ``buffer``, judged with the session's ``vad`` settings."""
        x = frame.astype(np.float32)
        energy = float(np.dot(x, x)) / FRAME_SAMPLES
        level_db = 10 * math.log10(energy / (32768.0**2) + 1e-12)
        # threshold 0..1 maps onto an energy gate from -70 to -20 dBFS (0.5 -> -45 dBFS): higher
        # thresholds need louder speech, as with the service's VAD.
        voiced = level_db > -70.0 + 50.0 * float(vad["threshold"])
        if not self.speaking:
            self._voiced_run = self._voiced_run + 1 if voiced else 0
            if self._voiced_run < _ONSET_FRAMES:
                return None
            onset = buffer.samples_in - _ONSET_FRAMES * FRAME_SAMPLES
            padding = int(vad["prefix_padding_ms"]) * MS_SAMPLES
            self._onset = onset
            self.speech_start = max(buffer.start, onset - padding, 0)
            self.speaking = True
            self._silent_run = 0
            return SpeechStarted(self.speech_start)
        self._silent_run = 0 if voiced else self._silent_run + 1
        silence_frames = max(1, math.ceil(int(vad["silence_duration_ms"]) / 20))
        if self._silent_run < silence_frames:
            return None
        self.speaking = False
        self._voiced_run = 0
        end = buffer.samples_in
        spoken = (end - self._onset - self._silent_run * FRAME_SAMPLES) / SAMPLE_RATE
        return SpeechStopped(self.speech_start, end, spoken)
