"""What a simulated caller says and does, and when: the steps of a call's script.

A script is a list of steps run in order, one 20 ms media frame at a time (see
:mod:`gateway.loadtest.flow`)::

    script = [WaitForAnswer(), Say.from_text("What are your hours?"), WaitForAnswer(),
              BargeIn(Say.from_text("Sorry, one more thing"), after_ms=800), WaitForAnswer()]

After the last step the caller hangs up. Build :class:`Say` clips before calls start and reuse
them: each is cut into frames and base64-encoded once.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.audio.g711 import array_to_ulaw
from gateway.loadtest.carrier import AUDIBLE_PEAK, FRAME_BYTES, FRAME_MS, RATE, audible_table

__all__ = ["BargeIn", "HangUp", "Pause", "PressDigits", "Say", "Step", "WaitForAnswer"]


@dataclass(frozen=True, slots=True, eq=False)
class Say:
    """Say ``audio`` (8 kHz μ-law) — ``text`` is what it says, for the timeline.

    Build one per utterance and reuse it across calls: the clip is cut into 20 ms frames and
    base64-encoded once, here. Use :meth:`from_pcm16` for PCM at any rate and
    :meth:`from_text` for offline synthesized speech.
    """

    audio: bytes
    text: str = ""
    audible_peak: int = AUDIBLE_PEAK
    frames: tuple[str, ...] = field(init=False, repr=False)
    """The clip as base64 20 ms frames (the last padded with silence)."""
    voiced: tuple[int, int] | None = field(init=False, repr=False)
    """Indices of the first and last frame with audible speech, ``None`` if all silent."""

    def __post_init__(self) -> None:
        if not self.audio:
            raise ValueError("Say needs at least one sample of audio")
        table = audible_table(self.audible_peak)
        frames: list[str] = []
        loud: list[int] = []
        for i in range(0, len(self.audio), FRAME_BYTES):
            chunk = self.audio[i : i + FRAME_BYTES].ljust(FRAME_BYTES, b"\xff")
            frames.append(base64.b64encode(chunk).decode("ascii"))
            if 1 in chunk.translate(table):
                loud.append(len(frames) - 1)
        object.__setattr__(self, "frames", tuple(frames))
        object.__setattr__(self, "voiced", (loud[0], loud[-1]) if loud else None)

    @classmethod
    def from_pcm16(cls, samples: npt.NDArray[np.int16], rate: int = RATE, text: str = "") -> Say:
        """From mono int16 PCM at ``rate`` Hz (resampled to 8 kHz with soxr if needed)."""
        if rate != RATE:
            from gateway.audio.tts import resample_buffer

            samples = resample_buffer(samples, rate, RATE)
        return cls(array_to_ulaw(np.ascontiguousarray(samples, dtype=np.int16)), text)

    @classmethod
    def from_text(cls, text: str, voice: Any = None) -> Say:
        """Synthesize ``text`` offline (eSpeak NG, the caller's voice by default).

        CPU-bound (a few ms per second of speech): build scripts before the calls start.
        """
        from gateway.audio.tts import CALLER_VOICE, synthesizer

        pcm = synthesizer().synthesize(text, voice or CALLER_VOICE, RATE)
        return cls.from_pcm16(pcm, RATE, text)

    @property
    def duration_ms(self) -> float:
        return len(self.frames) * FRAME_MS


@dataclass(frozen=True, slots=True)
class WaitForAnswer:
    """Wait until the assistant has answered: audible audio played after the last caller turn
    (or, before any turn, the greeting), then ``quiet_ms`` without audible audio.

    Fails the call (``no_answer``) if no answer starts within ``timeout_ms``.
    """

    timeout_ms: float = 15_000
    quiet_ms: float = 700


@dataclass(frozen=True, slots=True)
class Pause:
    """Stay silent (silence frames keep flowing) for ``ms``."""

    ms: float


@dataclass(frozen=True, slots=True)
class BargeIn:
    """Start saying ``say`` ``after_ms`` after the assistant's answer started being heard.

    Fails the call (``no_answer``) if no answer starts within ``timeout_ms``.
    """

    say: Say
    after_ms: float = 800
    timeout_ms: float = 15_000


@dataclass(frozen=True, slots=True)
class PressDigits:
    """Send a ``dtmf`` message per digit, ``gap_ms`` apart."""

    digits: str
    gap_ms: float = 200


@dataclass(frozen=True, slots=True)
class HangUp:
    """Send ``stop`` and close the websocket (also what happens after the last step)."""


Step = Say | WaitForAnswer | Pause | BargeIn | PressDigits | HangUp
