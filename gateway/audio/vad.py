"""Local voice activity detection on the caller's audio, for fast gateway-side barge-in.

The Realtime server has its own turn detection, but its ``speech_started`` arrives a network
round trip (and a jitter buffer) late. :class:`LocalVad` classifies each 8 kHz PCM16 frame with
the WebRTC VAD (``webrtcvad-wheels``) and turns the per-frame decisions into two events with
frame-count hysteresis (:class:`Hysteresis`): speech starts after ``onset_ms`` of consecutive
voiced frames and stops after ``hangover_ms`` of consecutive unvoiced ones. No clock is involved:
time is counted in frames, so the caller must feed every frame, in order.

Measured on this WebRTC VAD: the first ~80 ms of any noise onset are classified as speech until
its noise model adapts (4 frames of 20 ms at every aggressiveness and noise level tried). At the
start of a stream :class:`LocalVad` hides this with ``warmup_ms``; a noise onset mid-call still
produces the blip, which ``onset_ms`` >= 100 rejects and the default 60 ms does not.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Final

import webrtcvad

from gateway.audio.format import CARRIER_RATE
from gateway.errors import AudioFormatError

__all__ = ["Hysteresis", "LocalVad", "VadEvent"]

SAMPLE_RATE: Final = CARRIER_RATE
FRAME_MS_CHOICES: Final = (10, 20, 30)  # what the WebRTC VAD accepts


class VadEvent(StrEnum):
    """A change of the caller's speaking state."""

    SPEECH_STARTED = "speech_started"
    SPEECH_STOPPED = "speech_stopped"


class Hysteresis:
    """Debounces per-frame voiced/unvoiced decisions into start/stop events.

    Speech starts on the ``onset_frames``-th consecutive voiced frame and stops on the
    ``hangover_frames``-th consecutive unvoiced frame; anything shorter is ignored. The start
    event therefore comes ``onset_frames - 1`` frames after the first voiced frame.
    """

    def __init__(self, onset_frames: int, hangover_frames: int) -> None:
        if onset_frames < 1 or hangover_frames < 1:
            raise ValueError(
                f"onset and hangover must be at least one frame, got {onset_frames} and "
                f"{hangover_frames}"
            )
        self.onset_frames: Final = onset_frames
        self.hangover_frames: Final = hangover_frames
        self._speaking = False
        self._run = 0  # consecutive frames that disagree with the current state

    @property
    def speaking(self) -> bool:
        """The debounced state: True between a start and the following stop."""
        return self._speaking

    def update(self, voiced: bool) -> VadEvent | None:
        """Take the next frame's decision; return the event it completes, if any."""
        if voiced == self._speaking:
            self._run = 0
            return None
        self._run += 1
        if self._run < (self.hangover_frames if self._speaking else self.onset_frames):
            return None
        self._run = 0
        self._speaking = voiced
        return VadEvent.SPEECH_STARTED if voiced else VadEvent.SPEECH_STOPPED

    def reset(self) -> None:
        """Back to not speaking, with no partial onset or hangover counted."""
        self._speaking = False
        self._run = 0


class LocalVad:
    """WebRTC VAD on 8 kHz mono PCM16 frames plus :class:`Hysteresis`. One per call.

    ``aggressiveness`` 0-3 trades missed speech (3) for false alarms on noise (0).
    ``onset_ms`` and ``hangover_ms`` are rounded up to whole frames (at least one). During the
    first ``warmup_ms`` after creation or :meth:`reset` the VAD adapts to the line's noise and
    every frame counts as unvoiced, so a call that starts with line noise does not "start
    speaking" (and barge in on the greeting). Raises :class:`ValueError` for a setting out of
    range.
    """

    def __init__(
        self,
        aggressiveness: int = 2,
        onset_ms: int = 60,
        hangover_ms: int = 300,
        frame_ms: int = 20,
        *,
        warmup_ms: int = 100,
    ) -> None:
        if aggressiveness not in range(4):
            raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, got {aggressiveness}")
        if frame_ms not in FRAME_MS_CHOICES:
            raise ValueError(f"frame_ms must be one of {FRAME_MS_CHOICES}, got {frame_ms}")
        if min(onset_ms, hangover_ms, warmup_ms) < 0:
            raise ValueError(
                "onset_ms, hangover_ms and warmup_ms must not be negative, got "
                f"{onset_ms}, {hangover_ms}, {warmup_ms}"
            )
        self.aggressiveness: Final = aggressiveness
        self.frame_ms: Final = frame_ms
        self.frame_bytes: Final = SAMPLE_RATE * frame_ms // 1000 * 2
        """Exact size of the PCM16 frames :meth:`process` accepts (320 bytes for 20 ms)."""
        self._hysteresis = Hysteresis(
            max(1, math.ceil(onset_ms / frame_ms)), max(1, math.ceil(hangover_ms / frame_ms))
        )
        self._warmup_frames = math.ceil(warmup_ms / frame_ms)
        self._frames_seen = 0
        self._vad = webrtcvad.Vad(aggressiveness)

    @property
    def speaking(self) -> bool:
        """True between a :attr:`VadEvent.SPEECH_STARTED` and the next stop."""
        return self._hysteresis.speaking

    def process(self, pcm8k: bytes | bytearray | memoryview) -> VadEvent | None:
        """Classify the next frame (``frame_ms`` of 8 kHz PCM16, native byte order).

        Returns the event this frame completes, or None. Raises :class:`AudioFormatError` if
        the frame is not exactly :attr:`frame_bytes` long; re-frame the audio before calling.
        """
        if len(pcm8k) != self.frame_bytes:
            raise AudioFormatError(
                f"VAD frame must be {self.frame_bytes} bytes ({self.frame_ms} ms of 8 kHz PCM16), "
                f"got {len(pcm8k)}"
            )
        voiced = bool(self._vad.is_speech(bytes(pcm8k), SAMPLE_RATE))
        if self._frames_seen < self._warmup_frames:
            self._frames_seen += 1
            voiced = False  # the noise model is still adapting; see the module docstring
        return self._hysteresis.update(voiced)

    def reset(self) -> None:
        """Forget the speaking state and the adapted noise model; warm up again."""
        self._hysteresis.reset()
        self._frames_seen = 0
        self._vad = webrtcvad.Vad(self.aggressiveness)
