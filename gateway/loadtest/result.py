"""What one simulated call measured: :class:`CallResult`, its turns, spans and timeline.

Times are milliseconds on the stream's media clock: 0 is when ``start`` was sent, caller frame
*k* covers ``[20k, 20k + 20)`` and assistant audio is placed where it played. A caller turn's
speech starts at the first audible sample of its first voiced frame's slot and ends at the end
of its last voiced frame's slot; a response is heard from the first audible sample played
after that end.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from gateway.audio.g711 import ulaw_to_array
from gateway.loadtest.carrier import FRAME_BYTES, RATE, Histogram

__all__ = ["CallResult", "Span", "TimelineEntry", "Turn"]


@dataclass(slots=True)
class Turn:
    """One caller utterance and the answer heard after it (ms on the media clock)."""

    index: int
    text: str
    barge_in: bool
    onset_ms: float | None = None
    end_ms: float | None = None
    answer_ms: float | None = None
    """First audible assistant sample after ``end_ms``."""
    stop_ms: float | None = None
    """Barge-in only: when the assistant audio that was playing at the onset stopped."""
    clear_ms: float | None = None
    """Barge-in only: when the first ``clear`` after the onset arrived."""
    assistant_audible_at_onset: bool | None = None

    @property
    def response_latency_ms(self) -> float | None:
        if self.answer_ms is None or self.end_ms is None:
            return None
        return self.answer_ms - self.end_ms

    @property
    def barge_in_stop_ms(self) -> float | None:
        if self.stop_ms is None or self.onset_ms is None:
            return None
        return max(0.0, self.stop_ms - self.onset_ms)


@dataclass(slots=True)
class Span:
    """An assistant utterance as heard: audible audio from ``start_ms`` to ``end_ms``."""

    start_ms: float
    end_ms: float


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    t_ms: float
    kind: str
    """``caller_start``, ``caller_end``, ``assistant_start``, ``assistant_end``, ``clear``,
    ``dtmf``, ``gap``, ``hangup``, ``closed``, ``failed``, ``rest_hangup``, ``rest_redirect``."""
    detail: str = ""


@dataclass
class CallResult:
    """Everything one call measured. ``ok`` is true when the script ran to the end."""

    call_sid: str
    stream_sid: str
    outcome: Literal["completed", "failed"] = "failed"
    failure: str | None = "not_started"
    """Short reason key (``webhook_http_503``, ``ws_rejected_403``, ``connect_error``,
    ``closed_by_gateway``, ``no_answer``, ``gateway_protocol_error``, ``max_duration``, ...)."""
    failure_detail: str = ""
    webhook_ms: float | None = None
    connect_ms: float | None = None
    setup_ms: float | None = None
    """Websocket open -> first audible assistant audio (or first message; see ``ready_on``)."""
    duration_ms: float = 0.0
    turns: list[Turn] = field(default_factory=list)
    assistant: list[Span] = field(default_factory=list)
    gaps_ms: list[float] = field(default_factory=list)
    timeline: list[TimelineEntry] = field(default_factory=list)
    frames_sent: int = 0
    media_received: int = 0
    bytes_received: int = 0
    bytes_played: int = 0
    bytes_cleared: int = 0
    marks_received: int = 0
    marks_echoed: int = 0
    clears_received: int = 0
    ignored_received: int = 0
    dtmf_sent: int = 0
    close_code: int | None = None
    close_reason: str = ""
    pacing: Histogram = field(default_factory=lambda: Histogram(resolution_ms=0.1, max_ms=500))
    """How late each frame was sent after its deadline (ms)."""
    caller_audio: bytes = b""
    assistant_audio: bytes = b""
    """μ-law at 8 kHz on the media clock, when ``record_audio`` was set."""
    stream_parameters: dict[str, str] = field(default_factory=dict)
    ended_by: Literal["caller", "gateway", "rest_hangup", "rest_redirect"] | None = None
    """Who ended the stream: the caller (the script ended, hung up or gave up), the gateway
    (it closed the websocket), or a REST update (hang-up, or new TwiML that left the stream).
    ``None`` when no stream started."""
    redirect_twiml: str | None = None
    """The TwiML a REST redirect replaced the stream with (``None`` for a ``Url`` redirect)."""
    dialed: list[str] = field(default_factory=list)
    """Numbers the redirect's TwiML ``<Dial>``s (a transfer)."""

    @property
    def ok(self) -> bool:
        return self.outcome == "completed" and self.failure is None

    @property
    def response_latencies_ms(self) -> list[float]:
        """One per answered caller turn, as heard."""
        return [t.response_latency_ms for t in self.turns if t.response_latency_ms is not None]

    @property
    def barge_in_stop_ms(self) -> list[float]:
        """One per barge-in that found the assistant audible: onset -> assistant silent."""
        return [t.barge_in_stop_ms for t in self.turns if t.barge_in_stop_ms is not None]

    @property
    def frames_received(self) -> float:
        """Assistant audio received, in 20 ms frames."""
        return self.bytes_received / FRAME_BYTES

    @property
    def frames_played(self) -> float:
        return self.bytes_played / FRAME_BYTES

    def stereo_pcm16(self) -> npt.NDArray[np.int16]:
        """``(n, 2)`` int16 at 8 kHz: the caller left, the assistant right (needs recording)."""
        n = max(len(self.caller_audio), len(self.assistant_audio))
        caller = self.caller_audio.ljust(n, b"\xff")
        assistant = self.assistant_audio.ljust(n, b"\xff")
        return np.stack([ulaw_to_array(caller), ulaw_to_array(assistant)], axis=1)

    def write_wav(self, path: str | Path) -> None:
        """Write :meth:`stereo_pcm16` as a 16-bit 8 kHz stereo WAV file."""
        frames = self.stereo_pcm16().astype("<i2").tobytes()
        with wave.open(str(path), "wb") as out:
            out.setnchannels(2)
            out.setsampwidth(2)
            out.setframerate(RATE)
            out.writeframes(frames)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no audio)."""
        return {
            "ok": self.ok,
            "outcome": self.outcome,
            "failure": self.failure,
            "failure_detail": self.failure_detail,
            "call_sid": self.call_sid,
            "stream_sid": self.stream_sid,
            "webhook_ms": _r(self.webhook_ms),
            "connect_ms": _r(self.connect_ms),
            "setup_ms": _r(self.setup_ms),
            "duration_ms": _r(self.duration_ms),
            "response_latency_ms": [_r(x) for x in self.response_latencies_ms],
            "barge_in_stop_ms": [_r(x) for x in self.barge_in_stop_ms],
            "gaps_ms": [_r(x) for x in self.gaps_ms],
            "turns": [
                {
                    "index": t.index,
                    "text": t.text,
                    "barge_in": t.barge_in,
                    "start_ms": _r(t.onset_ms),
                    "end_ms": _r(t.end_ms),
                    "answer_ms": _r(t.answer_ms),
                    "response_latency_ms": _r(t.response_latency_ms),
                    "barge_in_stop_ms": _r(t.barge_in_stop_ms),
                    "clear_ms": _r(t.clear_ms),
                }
                for t in self.turns
            ],
            "assistant": [
                {"start_ms": _r(s.start_ms), "end_ms": _r(s.end_ms)} for s in self.assistant
            ],
            "frames": {
                "sent": self.frames_sent,
                "received": round(self.frames_received, 1),
                "played": round(self.frames_played, 1),
                "cleared": round(self.bytes_cleared / FRAME_BYTES, 1),
            },
            "marks": {"received": self.marks_received, "echoed": self.marks_echoed},
            "clears": self.clears_received,
            "pacing_lateness_ms": {
                "p50": _r(self.pacing.quantile(0.5)),
                "p99": _r(self.pacing.quantile(0.99)),
                "max": _r(self.pacing.max),
            },
            "close": {"code": self.close_code, "reason": self.close_reason},
            "ended_by": self.ended_by,
            "redirect_twiml": self.redirect_twiml,
            "dialed": list(self.dialed),
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
