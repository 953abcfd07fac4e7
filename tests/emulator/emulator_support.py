"""Shared helpers for the emulator tests (``tests`` is a package, so test modules with the
same basename in different folders never collide): the emulator on a loopback port, caller
speech, and strict validation of server events against the ``openai`` SDK's realtime types.

``validate_event`` picks the SDK model of the event's ``type`` out of the
``RealtimeServerEvent`` union, validates with a pydantic ``TypeAdapter`` and then refuses any
field the model does not declare, at every nesting level (the SDK models themselves accept
extra fields, which would hide a misspelt name).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import typing
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from openai.types.realtime.realtime_session_create_response import RealtimeSessionCreateResponse
from pydantic import BaseModel, TypeAdapter

from gateway.audio.tts import CALLER_VOICE, synthesizer
from gateway.emulator.app import EmulatorState, create_app
from gateway.emulator.config import EmulatorConfig
from gateway.errors import UpstreamLost
from gateway.realtime.config import RealtimeConfig
from gateway.realtime.session import RealtimeSession
from gateway.serving import RunningServer, serve_app

KEY = "sk-emulator-test-key"
RATE = 24000
FRAME = 480


@functools.cache
def _models() -> dict[str, type[BaseModel]]:
    union = typing.get_args(RealtimeServerEvent)[0]  # Annotated[Union[...], PropertyInfo]
    out: dict[str, type[BaseModel]] = {}
    for cls in typing.get_args(union):
        (literal,) = typing.get_args(cls.model_fields["type"].annotation)
        out[literal] = cls
    return out


# The SDK types session.created's session as the *request* model, which lacks the read-only
# fields the service adds; the response model (RealtimeSessionCreateResponse) has them and is
# checked separately below.
_SESSION_READ_ONLY = frozenset({"id", "object", "expires_at"})


def _no_extra(value: Any, path: str) -> None:
    if isinstance(value, BaseModel):
        extra = set(value.model_extra or {})
        if path.endswith(".session"):
            extra -= _SESSION_READ_ONLY
        assert not extra, f"{path}: fields the SDK does not know: {sorted(extra)}"
        for name in type(value).model_fields:
            _no_extra(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _no_extra(v, f"{path}[{i}]")


def validate_event(event: dict[str, Any]) -> BaseModel:
    """Validate one server event against the SDK; return the parsed model."""
    assert isinstance(event.get("event_id"), str) and event["event_id"], event
    cls = _models().get(event["type"])
    assert cls is not None, f"{event['type']!r} is not a GA server event type"
    model = TypeAdapter(cls).validate_python(event)
    _no_extra(model, event["type"])
    if event["type"] in ("session.created", "session.updated"):
        full = TypeAdapter(RealtimeSessionCreateResponse).validate_python(event["session"])
        _no_extra(full, "session")
    return model


SESSION: dict[str, Any] = {
    "type": "realtime",
    "model": "gpt-realtime",
    "instructions": "You answer the phone for Acme. Be brief.",
    "audio": {
        "input": {
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 300},
        },
        "output": {"voice": "cedar"},
    },
}


@functools.cache
def tone_frames(seconds: float, amplitude: float = 8000.0, freq: float = 220.0) -> list[Any]:
    """A sine as 20 ms frames of 24 kHz audio: speech to an energy VAD."""
    n = round(seconds * 50)
    t = np.arange(n * FRAME) / RATE
    pcm = np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    return [pcm[i * FRAME : (i + 1) * FRAME] for i in range(n)]


def silence(seconds: float) -> list[Any]:
    """Digital silence as 20 ms frames of 24 kHz audio."""
    return [np.zeros(FRAME, np.int16)] * round(seconds * 50)


def _speech(text: str) -> npt.NDArray[np.int16]:
    audio = synthesizer().synthesize(text, CALLER_VOICE, RATE)
    audio.setflags(write=False)
    return audio


def speech(text: str) -> npt.NDArray[np.int16]:
    """Caller speech (eSpeak, 24 kHz int16), cached across tests."""
    return _speech(text)


@contextlib.asynccontextmanager
async def running(config: EmulatorConfig | None = None) -> AsyncIterator[Emulator]:
    """The emulator served on a free loopback port."""
    cfg = config or EmulatorConfig(api_key=KEY, latency_ms=50)
    app = create_app(cfg)
    async with serve_app(app, host="127.0.0.1") as srv:
        yield Emulator(srv, app.state.emulator)


class Emulator:
    def __init__(self, server: RunningServer, state: EmulatorState) -> None:
        self.server = server
        self.state = state
        self.base_url = f"{server.url}/v1"

    def config(self, **kwargs: Any) -> RealtimeConfig:
        kwargs.setdefault("api_key", KEY)
        return RealtimeConfig(base_url=self.base_url, **kwargs)

    async def sessions(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient() as client:
            resp = await client.get(f"{self.server.url}/emulator/sessions")
            resp.raise_for_status()
            result: list[dict[str, Any]] = resp.json()
            return result


class Recorder:
    """Consumes a session's events in the background, validating each; tests wait on them."""

    def __init__(self, session: RealtimeSession) -> None:
        self.session = session
        self.events: list[dict[str, Any]] = []
        self.lost: UpstreamLost | None = None
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for ev in self.session.events():
                validate_event(ev.raw)
                async with self._changed:
                    self.events.append(ev.raw)
                    self._changed.notify_all()
        except UpstreamLost as exc:
            self.lost = exc
        async with self._changed:
            self._changed.notify_all()

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    async def wait_for(
        self, kind: str, count: int = 1, limit_s: float = 15.0, **match: Any
    ) -> dict[str, Any]:
        """The ``count``-th event of ``kind`` (whose top-level fields equal ``match``)."""

        def found() -> list[dict[str, Any]]:
            return [
                e
                for e in self.events
                if e["type"] == kind and all(e.get(k) == v for k, v in match.items())
            ]

        async with asyncio.timeout(limit_s):
            async with self._changed:
                await self._changed.wait_for(lambda: len(found()) >= count or self._task.done())
        got = found()
        assert len(got) >= count, f"no {kind} {match or ''} (count {count}); got {self.types()}"
        return got[count - 1]

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._task.done() and not self._task.cancelled() and self._task.exception():
            raise self._task.exception()  # type: ignore[misc]


class Listener:
    """Reads the assistant audio of a session; remembers when loud frames arrived."""

    def __init__(self, session: RealtimeSession, floor: int = 300) -> None:
        self.frames: list[tuple[float, npt.NDArray[np.int16]]] = []
        self.floor = floor
        self._task = asyncio.create_task(self._run(session))

    async def _run(self, session: RealtimeSession) -> None:
        async for frame, at in session.audio_frames():
            self.frames.append((at, frame))

    def loud(self, since: float = 0.0) -> list[float]:
        return [t for t, f in self.frames if t >= since and int(np.abs(f).max()) > self.floor]

    def audio(self) -> npt.NDArray[np.int16]:
        if not self.frames:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([f for _, f in self.frames])

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def say(
    session: RealtimeSession,
    audio: npt.NDArray[np.int16],
    *,
    lead_s: float = 0.2,
    tail_s: float = 0.5,
) -> None:
    """Push ``audio`` as the caller, framed and padded with silence, never overfilling the
    outbound queue (the track sends it in real time)."""
    pcm = np.concatenate(
        (
            np.zeros(round(lead_s * RATE), np.int16),
            audio,
            np.zeros(round(tail_s * RATE) + FRAME, np.int16),
        )
    )
    for i in range(0, pcm.size - FRAME + 1, FRAME):
        # The track's queue has nothing to wait on; poll it. Two frames queued at most: more
        # would make the track catch up faster than real time.
        while session.caller_track.queued_frames >= 2:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        session.push_audio(np.ascontiguousarray(pcm[i : i + FRAME]))
