"""RealtimeSession against a real local HTTP server that answers with a real aiortc peer.

``FakeRealtime`` is deliberately minimal: it speaks just enough of the GA WebRTC protocol (the
HTTP endpoints, SDP answer, ``oai-events`` channel, session.created/updated) to exercise the
client, records what it received, and can misbehave on request.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from gateway.errors import (
    UpstreamError,
    UpstreamLost,
    UpstreamProtocolError,
    UpstreamRefused,
    UpstreamRejected,
    UpstreamTimeout,
)
from gateway.realtime import events as rt
from gateway.realtime.config import RealtimeConfig, SetupTimeouts
from gateway.realtime.session import RealtimeSession
from gateway.realtime.tracks import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    CallerAudioTrack,
    RemoteAudioReader,
)
from gateway.serving import serve_app

KEY = "sk-test-SECRET-0123456789"
SESSION: dict[str, Any] = {
    "type": "realtime",
    "model": "gpt-realtime",
    "instructions": "You answer the phone for Acme.",
    "output_modalities": ["audio"],
    "audio": {
        "input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 500}},
        "output": {"voice": "marin"},
    },
}

pytestmark = pytest.mark.timeout(60)


def tone(n_frames: int, freq: float) -> list[npt.NDArray[np.int16]]:
    t = np.arange(n_frames * FRAME_SAMPLES) / SAMPLE_RATE
    pcm = (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    return [pcm[i : i + FRAME_SAMPLES] for i in range(0, pcm.size, FRAME_SAMPLES)]


def dominant_hz(frames: list[npt.NDArray[np.int16]]) -> float:
    pcm = np.concatenate(frames).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(pcm.size)))
    return float(np.argmax(spectrum) * SAMPLE_RATE / pcm.size)


# ------------------------------------------------------------------ the fake server


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes
    parts: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # name -> (type, bytes)


@dataclass
class Behaviour:
    status: int = 201
    error_body: Any = None
    hang: bool = False
    location: str | None = "/v1/realtime/calls/rtc_test123?trace=1"
    answer_body: str | None = None  # replaces the SDP answer
    update: str = "accept"  # accept | reject | ignore
    tone_hz: float = 660.0


class FakeRealtime:
    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.requests: list[Recorded] = []
        self.client_events: list[dict[str, Any]] = []
        self.peers: list[RTCPeerConnection] = []
        self.channels: list[RTCDataChannel] = []
        self.heard: list[npt.NDArray[np.int16]] = []
        self.base_url = ""
        self._release = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()

    async def wait_for(self, predicate: Any, limit_s: float = 10) -> None:
        async with asyncio.timeout(limit_s):
            async with self._changed:
                await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/realtime/client_secrets")
        async def client_secrets(request: Request) -> Response:
            body = await request.body()
            self.requests.append(Recorded(request.url.path, dict(request.headers), body))
            await self._notify()
            if request.headers.get("authorization") != f"Bearer {KEY}":
                return JSONResponse({"error": {"type": "invalid_request_error"}}, 401)
            session = json.loads(body)["session"]
            return JSONResponse(
                {"value": "ek_test_abc", "expires_at": 1, "session": {**session, "id": "sess_1"}}
            )

        @app.post("/v1/realtime/calls")
        async def calls(request: Request) -> Response:
            body = await request.body()
            rec = Recorded(request.url.path, dict(request.headers), body)
            self.requests.append(rec)
            await self._notify()
            b = self.behaviour
            if b.hang:
                await self._release.wait()
                return Response(status_code=503)
            if b.status >= 400:
                if isinstance(b.error_body, str):
                    return Response(b.error_body, b.status, media_type="text/html")
                return JSONResponse(b.error_body, b.status)
            content_type = request.headers.get("content-type", "")
            if content_type.startswith("multipart/form-data"):
                msg = email.message_from_bytes(
                    b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
                )
                for part in msg.walk():
                    if part.is_multipart():
                        continue
                    name = str(part.get_param("name", header="content-disposition"))
                    payload = part.get_payload(decode=True)
                    assert isinstance(payload, bytes)
                    rec.parts[name] = (part.get_content_type(), payload)
                offer = rec.parts["sdp"][1].decode()
            else:
                offer = body.decode()
            if b.answer_body is not None:
                return Response(b.answer_body, b.status, media_type="application/json")
            answer = await self._answer(offer)
            headers = {"Location": b.location} if b.location else {}
            return Response(answer, b.status, media_type="application/sdp", headers=headers)

        @app.post("/v1/realtime/calls/{call_id}/hangup")
        async def hangup(call_id: str, request: Request) -> Response:
            self.requests.append(Recorded(request.url.path, dict(request.headers), b""))
            return Response(status_code=200)

        return app

    async def _answer(self, offer: str) -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.peers.append(pc)
        voice = CallerAudioTrack()
        for frame in tone(25, self.behaviour.tone_hz):
            voice.push(frame)
        pc.addTrack(voice)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            task = asyncio.create_task(self._listen(track))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        @pc.on("datachannel")
        def on_channel(channel: RTCDataChannel) -> None:
            self.channels.append(channel)
            channel.on("message", lambda m: self._on_event(channel, m))
            channel.send(json.dumps({"type": "session.created", "event_id": "event_1"}))

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return str(pc.localDescription.sdp)

    async def _listen(self, track: MediaStreamTrack) -> None:
        async for frame, _ in RemoteAudioReader(track):
            if np.abs(frame).max() > 2000:
                self.heard.append(frame)
                await self._notify()

    def _on_event(self, channel: RTCDataChannel, message: str) -> None:
        ev = json.loads(message)
        self.client_events.append(ev)
        task = asyncio.ensure_future(self._notify())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if ev["type"] != "session.update":
            return
        if self.behaviour.update == "accept":
            channel.send(json.dumps({"type": "session.updated", "session": ev["session"]}))
        elif self.behaviour.update == "reject":
            error = {
                "type": "invalid_request_error",
                "code": "unknown_parameter",
                "message": "Unknown parameter: 'session.voice'.",
                "param": "session.voice",
                "event_id": ev["event_id"],
            }
            channel.send(json.dumps({"type": "error", "event_id": "event_9", "error": error}))

    async def drop_calls(self) -> None:
        """The server ends every call abruptly (closes its peer connections)."""
        for pc in self.peers:
            await pc.close()

    async def aclose(self) -> None:
        self._release.set()
        for pc in self.peers:
            await pc.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
async def fake() -> AsyncIterator[FakeRealtime]:
    server = FakeRealtime()
    async with serve_app(server.app()) as srv:
        server.base_url = f"{srv.url}/v1"
        try:
            yield server
        finally:
            await server.aclose()


def config(fake: FakeRealtime, **kwargs: Any) -> RealtimeConfig:
    timeouts = kwargs.pop("timeouts", SetupTimeouts(5, 5, 5, 5, 5))
    return RealtimeConfig(base_url=fake.base_url, api_key=KEY, timeouts=timeouts, **kwargs)


@contextlib.asynccontextmanager
async def opened(cfg: RealtimeConfig) -> AsyncIterator[RealtimeSession]:
    session = RealtimeSession(cfg, SESSION)
    try:
        await session.open()
        yield session
    finally:
        await session.close()


# ------------------------------------------------------------------ pure helpers


def test_config_refuses_nonsense_and_hides_the_key() -> None:
    with pytest.raises(ValueError, match="auth"):
        RealtimeConfig(base_url="http://x", api_key="k", auth="magic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="base_url"):
        RealtimeConfig(base_url="api.openai.com", api_key="k")
    assert KEY not in repr(RealtimeConfig(base_url="http://x", api_key=KEY))


def test_session_without_ga_type_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="type"):
        RealtimeSession(RealtimeConfig(base_url="http://x", api_key="k"), {"voice": "marin"})


# ------------------------------------------------------------------ setup flows


async def test_unified_flow_posts_multipart_and_gets_ready(fake: FakeRealtime) -> None:
    async with opened(config(fake)) as session:
        assert session.state == "open"
        assert session.call_id == "rtc_test123"
        assert session.connection_state == "connected"
        assert session.audio_codec == "audio/opus"
        [req] = fake.requests
        assert req.path == "/v1/realtime/calls"
        assert req.headers["authorization"] == f"Bearer {KEY}"
        assert req.headers["accept"] == "application/sdp"
        assert req.headers["content-type"].startswith("multipart/form-data; boundary=")
        sdp_type, sdp = req.parts["sdp"]
        assert sdp_type == "application/sdp"
        assert sdp.startswith(b"v=0")
        assert b"m=audio" in sdp and b"webrtc-datachannel" in sdp  # channel made before offer
        assert b"a=candidate" in sdp  # gathered before posting (no trickle)
        session_type, session_json = req.parts["session"]
        assert session_type == "application/json"
        assert json.loads(session_json) == SESSION
        # then session.update with the same session, answered by session.updated
        [update] = fake.client_events
        assert update["type"] == "session.update"
        assert update["session"] == SESSION
        first = [await anext(aiter(session.events())) for _ in range(2)]
        assert [e.type for e in first] == ["session.created", "session.updated"]
        assert set(session.setup_timings) == {
            "offer",
            "sdp_exchange",
            "ice_dtls",
            "data_channel",
            "session_created",
            "session_updated",
            "total",
        }
        assert all(v >= 0 for v in session.setup_timings.values())


async def test_ephemeral_flow_mints_a_key_then_posts_raw_sdp(fake: FakeRealtime) -> None:
    async with opened(config(fake, auth="ephemeral", client_secret_ttl_s=120)) as session:
        assert session.call_id == "rtc_test123"
        secret_req, call_req = fake.requests
        assert secret_req.path == "/v1/realtime/client_secrets"
        assert secret_req.headers["authorization"] == f"Bearer {KEY}"
        assert json.loads(secret_req.body) == {
            "expires_after": {"anchor": "created_at", "seconds": 120},
            "session": SESSION,
        }
        assert call_req.path == "/v1/realtime/calls"
        assert call_req.headers["authorization"] == "Bearer ek_test_abc"
        assert call_req.headers["content-type"] == "application/sdp"
        assert call_req.body.startswith(b"v=0")
        assert not call_req.parts
        assert "client_secret" in session.setup_timings


async def test_safety_identifier_header_is_sent(fake: FakeRealtime) -> None:
    async with opened(config(fake, safety_identifier="caller-hash-1")):
        assert fake.requests[0].headers["openai-safety-identifier"] == "caller-hash-1"


async def test_missing_location_leaves_call_id_unknown(fake: FakeRealtime) -> None:
    fake.behaviour.location = None
    async with opened(config(fake)) as session:
        assert session.call_id is None


@pytest.mark.parametrize(
    ("status", "body", "code", "fragment"),
    [
        (
            401,
            {
                "error": {
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                    "message": f"Incorrect API key provided: {KEY}.",
                }
            },
            "invalid_api_key",
            "check OPENAI_API_KEY",
        ),
        (
            429,
            {"error": {"type": "rate_limit_error", "message": "Too many calls."}},
            "rate_limit_error",
            "retry later",
        ),
        (500, "<html>upstream exploded</html>", None, "upstream exploded"),
    ],
)
async def test_http_errors_raise_upstream_refused(
    fake: FakeRealtime, status: int, body: Any, code: str | None, fragment: str
) -> None:
    fake.behaviour.status = status
    fake.behaviour.error_body = body
    session = RealtimeSession(config(fake), SESSION)
    with pytest.raises(UpstreamRefused) as info:
        await session.open()
    err = info.value
    assert err.status == status
    assert err.code == code
    assert f"HTTP {status}" in str(err)
    assert fragment in str(err)
    assert KEY not in str(err)
    assert err.retryable is (status != 401)
    assert session.state == "closed"
    assert session.connection_state == "closed"


async def test_client_secret_refusal(fake: FakeRealtime) -> None:
    cfg = RealtimeConfig(base_url=fake.base_url, api_key="sk-wrong", auth="ephemeral")
    with pytest.raises(UpstreamRefused, match="client secret request: HTTP 401"):
        await RealtimeSession(cfg, SESSION).open()


async def test_server_that_never_answers_times_out_naming_the_phase(fake: FakeRealtime) -> None:
    fake.behaviour.hang = True
    session = RealtimeSession(config(fake, timeouts=SetupTimeouts(sdp_exchange=0.5)), SESSION)
    with pytest.raises(UpstreamTimeout, match="SDP exchange") as info:
        await session.open()
    assert info.value.code == "timeout_sdp_exchange"
    assert session.connection_state == "closed"


async def test_unreachable_service(fake: FakeRealtime) -> None:
    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    cfg = config(fake, transport=httpx.MockTransport(refuse))
    with pytest.raises(UpstreamError, match="cannot reach the Realtime API") as info:
        await RealtimeSession(cfg, SESSION).open()
    assert info.value.code == "unreachable"


async def test_answer_that_is_not_sdp(fake: FakeRealtime) -> None:
    fake.behaviour.answer_body = '{"ok": true}'
    with pytest.raises(UpstreamProtocolError, match="without an SDP body"):
        await RealtimeSession(config(fake), SESSION).open()


async def test_session_update_error_raises_with_code_and_param(fake: FakeRealtime) -> None:
    fake.behaviour.update = "reject"
    session = RealtimeSession(config(fake), SESSION)
    with pytest.raises(
        UpstreamRejected, match=r"unknown_parameter \(field session.voice\)"
    ) as info:
        await session.open()
    assert (info.value.code, info.value.param) == ("unknown_parameter", "session.voice")
    assert session.connection_state == "closed"


async def test_no_session_updated_times_out(fake: FakeRealtime) -> None:
    fake.behaviour.update = "ignore"
    timeouts = SetupTimeouts(5, 5, 5, 5, session_updated=0.3)
    with pytest.raises(UpstreamTimeout, match=r"no session\.updated within 0\.3 s"):
        await RealtimeSession(config(fake, timeouts=timeouts), SESSION).open()


async def test_cancelling_open_cleans_up(fake: FakeRealtime) -> None:
    fake.behaviour.hang = True
    session = RealtimeSession(config(fake), SESSION)
    opening = asyncio.create_task(session.open())
    await fake.wait_for(lambda: len(fake.requests) == 1)
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    assert session.state == "closed"
    assert session.connection_state == "closed"


async def test_open_twice_is_a_bug(fake: FakeRealtime) -> None:
    async with opened(config(fake)) as session:
        with pytest.raises(RuntimeError, match="once"):
            await session.open()


# ------------------------------------------------------------------ steady state


async def test_events_and_audio_flow_both_ways(fake: FakeRealtime) -> None:
    async with opened(config(fake)) as session:
        session.send(rt.response_create("Say hello"))
        await fake.wait_for(lambda: fake.client_events[-1]["type"] == "response.create")
        assert fake.client_events[-1]["response"] == {"instructions": "Say hello"}

        for frame in tone(25, 440.0):
            session.push_audio(frame)
        await fake.wait_for(lambda: len(fake.heard) >= 10)
        assert dominant_hz(fake.heard[:10]) == pytest.approx(440, abs=10)

        heard: list[npt.NDArray[np.int16]] = []
        async with asyncio.timeout(10):
            async for frame, received_at in session.audio_frames():
                assert frame.shape == (FRAME_SAMPLES,) and received_at > 0
                if np.abs(frame).max() > 2000:
                    heard.append(frame)
                    if len(heard) == 10:
                        break
        assert dominant_hz(heard) == pytest.approx(660, abs=10)
        assert session.model_audio_stats is not None and session.model_audio_stats.frames_out >= 10
        assert session.caller_track.stats.dropped == 0


async def test_model_audio_comes_as_decoded_for_a_one_hop_consumer(fake: FakeRealtime) -> None:
    async with opened(config(fake)) as session:
        loud = 0
        async with asyncio.timeout(10):
            async for audio in session.model_audio():
                assert (audio.rate, audio.channels) == (48000, 2)  # Opus, as aiortc decodes it
                assert audio.pcm.dtype == np.int16 and audio.pcm.size == 960 * 2
                loud += int(np.abs(audio.pcm).max() > 2000)
                if loud == 5:
                    break
        with pytest.raises(RuntimeError, match="already being consumed"):
            await anext(session.audio_frames())


async def test_model_audio_goes_through_the_short_receive_buffer(fake: FakeRealtime) -> None:
    async with opened(config(fake, receive_buffer_packets=2)) as session:
        assert session.receive_buffer is not None and session.receive_buffer.depth == 2
        heard = 0
        async with asyncio.timeout(10):
            async for frame, _ in session.audio_frames():
                heard += int(np.abs(frame).max() > 2000)
                if heard == 10:
                    break
        assert session.receive_buffer.released >= 10
    async with opened(config(fake)) as plain:
        assert plain.receive_buffer is None  # aiortc's own buffer unless asked


async def test_pcmu_negotiation(fake: FakeRealtime) -> None:
    async with opened(config(fake, audio_codecs=("audio/PCMU",))) as session:
        assert session.audio_codec == "audio/PCMU"
        assert b"PCMU/8000" in fake.requests[0].parts["sdp"][1]
        assert b"opus" not in fake.requests[0].parts["sdp"][1]
        heard = 0
        async with asyncio.timeout(10):
            async for frame, _ in session.audio_frames():
                heard += int(np.abs(frame).max() > 2000)
                if heard == 5:
                    break


async def test_malformed_server_message_is_reported_and_stream_goes_on(fake: FakeRealtime) -> None:
    async with opened(config(fake)) as session:
        stream = session.events()
        assert (await anext(stream)).type == "session.created"
        assert (await anext(stream)).type == "session.updated"
        fake.channels[0].send("{not json")
        fake.channels[0].send(json.dumps({"type": "response.created", "response": {"id": "r1"}}))
        with pytest.raises(UpstreamProtocolError, match="not JSON"):
            await asyncio.wait_for(anext(stream), 10)
        ev = await asyncio.wait_for(anext(stream), 10)
        assert (ev.type, ev.response_id) == ("response.created", "r1")
        assert session.protocol_errors == 1


async def test_server_dropping_the_call_is_reported_as_lost(fake: FakeRealtime) -> None:
    session = RealtimeSession(config(fake), SESSION)
    await session.open()
    await fake.drop_calls()
    reason = await asyncio.wait_for(session.wait_closed(), 10)
    assert reason in ("data channel closed by the server", "peer connection closed")
    assert session.lost
    events = [e.type async for e in _until_lost(session)]
    assert events == ["session.created", "session.updated"]  # delivered before the loss
    with pytest.raises(UpstreamLost, match="data channel is closed"):
        session.send(rt.response_create())
    await session.close()  # still fine after a loss


async def _until_lost(session: RealtimeSession) -> AsyncIterator[rt.ServerEvent]:
    with pytest.raises(UpstreamLost, match="Realtime session lost"):
        async for ev in session.events():
            yield ev


async def test_hangup_posts_and_closes(fake: FakeRealtime) -> None:
    session = RealtimeSession(config(fake), SESSION)
    await session.open()
    assert await session.hangup()
    assert fake.requests[-1].path == "/v1/realtime/calls/rtc_test123/hangup"
    assert fake.requests[-1].headers["authorization"] == f"Bearer {KEY}"
    assert session.close_reason == "hung up by the gateway"
    assert not session.lost


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
async def test_close_leaves_no_tasks_peers_or_sockets(fake: FakeRealtime) -> None:
    # one warm-up call so lazily created process-wide state is not counted as a leak
    async with opened(config(fake)):
        pass
    await fake.drop_calls()
    before_tasks = asyncio.all_tasks()
    before_fds = _open_fds()

    session = RealtimeSession(config(fake), SESSION)
    await session.open()
    consumer = asyncio.create_task(_drain(session))
    await asyncio.gather(session.close(), session.close())  # concurrent and idempotent
    await session.close()
    assert session.state == "closed"
    assert session.connection_state == "closed"
    assert session.caller_track.readyState == "ended"
    assert not session.lost
    assert await asyncio.wait_for(consumer, 10) >= 2  # events ended cleanly, not by error
    await fake.drop_calls()

    def leftovers() -> tuple[set[asyncio.Task[Any]], int]:
        current = {asyncio.current_task()}
        return asyncio.all_tasks() - before_tasks - current, _open_fds()

    # aiortc finishes a few of its own callbacks after close() returns: give them 10 s
    for _ in range(500):
        tasks, fds = leftovers()
        if not tasks and fds <= before_fds:
            break
        await asyncio.sleep(0.02)
    tasks, fds = leftovers()
    assert not tasks, f"tasks left behind: {tasks}"
    assert fds <= before_fds, f"file descriptors left behind: {fds} > {before_fds}"


async def _drain(session: RealtimeSession) -> int:
    return len([ev async for ev in session.events()])


async def test_audio_frames_before_open_is_a_bug() -> None:
    session = RealtimeSession(RealtimeConfig(base_url="http://x", api_key="k"), SESSION)
    with pytest.raises(RuntimeError, match="open session"):
        await anext(session.audio_frames())
    await session.close()
