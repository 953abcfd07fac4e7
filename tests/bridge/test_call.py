"""CallRunner over a real websocket, with a scripted upstream whose every move the test controls.

The end-to-end tests (tests/test_end_to_end.py) run against the real emulator; here the
upstream is an in-process object implementing ``UpstreamSession``, so the test decides exactly
when setup completes, which events arrive and which audio frames flow — and can assert the
precise order of what the gateway writes to the carrier and sends upstream.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.app import CALL_TOKEN_PARAM, create_app, gateway_state
from gateway.audio.g711 import array_to_ulaw
from gateway.bridge import call as call_module
from gateway.bridge.core import BACKOFF_BASE_S, BACKOFF_CAP_S, MAX_SETUP_ATTEMPTS, backoff_s
from gateway.errors import UpstreamLost, UpstreamRefused
from gateway.numbers import Profile, ProfileStore
from gateway.realtime import events as rt
from gateway.realtime.tracks import DecodedAudio
from gateway.serving import RunningServer, serve_app
from gateway.settings import Settings
from gateway.telephony.messages import ClearAudio, Mark, PlayAudio, PlayMark, Stop
from gateway.telephony.twilio import TwilioCarrierCodec, start_message
from tests.support import wait_until

pytestmark = pytest.mark.timeout(30)

_END = object()


@dataclass
class ScriptedUpstream:
    """An ``UpstreamSession`` driven by the test."""

    profile: Profile
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    fail_with: Exception | None = None
    sent: list[dict[str, Any]] = field(default_factory=list)
    pushed: list[npt.NDArray[np.int16]] = field(default_factory=list)
    events_q: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    audio_q: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    sent_changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def call_id(self) -> str | None:
        return "rtc_scripted"

    @property
    def phase_spans(self) -> tuple[tuple[str, float, float], ...]:
        return ()

    async def open(self) -> None:
        await self.ready.wait()
        if self.fail_with is not None:
            raise self.fail_with

    def send(self, event: dict[str, Any]) -> None:
        self.sent.append(event)
        self.sent_changed.set()

    def push_audio(self, frame: npt.NDArray[np.int16], received_at: float) -> None:
        self.pushed.append(frame)

    async def events(self) -> AsyncIterator[rt.ServerEvent]:  # type: ignore[override]
        while (item := await self.events_q.get()) is not _END:
            if isinstance(item, Exception):
                raise item
            yield rt.parse_server_event(json.dumps(item))

    async def model_audio(self) -> AsyncIterator[DecodedAudio]:  # type: ignore[override]
        while (item := await self.audio_q.get()) is not _END:
            assert isinstance(item, np.ndarray)
            yield DecodedAudio(item, 24000, 1, asyncio.get_running_loop().time())

    async def close(self) -> None:
        self.closed.set()
        self.events_q.put_nowait(_END)
        self.audio_q.put_nowait(_END)

    def emit(self, type_: str, **fields: Any) -> None:
        self.events_q.put_nowait({"type": type_, "event_id": "ev", **fields})

    def start_speaking(self, response_id: str = "resp_1") -> None:
        """A response starts and its audio starts playing (the assistant is audible)."""
        self.emit("response.created", response={"id": response_id, "object": "realtime.response"})
        self.emit("output_audio_buffer.started", response_id=response_id)

    async def wait_sent(self, type_: str) -> dict[str, Any]:
        async with asyncio.timeout(10):
            while True:
                for ev in self.sent:
                    if ev["type"] == type_:
                        return ev
                self.sent_changed.clear()
                await self.sent_changed.wait()


@dataclass
class Harness:
    server: RunningServer
    upstreams: list[ScriptedUpstream]
    created: asyncio.Event
    failures: list[Exception]
    """Each new upstream pops the first one and fails its ``open()`` with it (ready at once)."""
    clock: ShiftableClock


class ShiftableClock:
    """The monotonic clock plus an offset the test moves forward (session age)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


@pytest.fixture
async def harness(tmp_path: Any) -> AsyncIterator[Harness]:
    path = tmp_path / "profiles.yaml"
    path.write_text('default:\n  greeting: "Say hello."\n  voice: marin\n')
    upstreams: list[ScriptedUpstream] = []
    created = asyncio.Event()
    failures: list[Exception] = []
    clock = ShiftableClock()

    def factory(profile: Profile) -> ScriptedUpstream:
        up = ScriptedUpstream(profile)
        if failures:
            up.fail_with = failures.pop(0)
            up.ready.set()
        upstreams.append(up)
        created.set()
        return up

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, profiles_file=path, setup_timeout_s=5, session_max_age_s=60
    )
    app = create_app(settings, upstream=factory, profiles=ProfileStore(path))
    gateway_state(app).clock = clock
    async with serve_app(app) as srv:
        yield Harness(srv, upstreams, created, failures, clock)


async def _open_stream(
    h: Harness, call_sid: str = "CA1"
) -> tuple[ClientConnection, TwilioCarrierCodec]:
    async with httpx.AsyncClient() as client:
        resp = await client.post(
            f"{h.server.url}/twilio/voice",
            data={"CallSid": call_sid, "AccountSid": "AC1", "From": "+1555", "To": "+1666"},
        )
    token = resp.text.split(f'name="{CALL_TOKEN_PARAM}" value="')[1].split('"')[0]
    codec = TwilioCarrierCodec("MZ" + call_sid)
    ws = await connect(h.server.ws_url + "/twilio/media")
    await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    start = start_message(
        stream_sid=codec.stream_sid,
        call_sid=call_sid,
        account_sid="AC1",
        custom_parameters={CALL_TOKEN_PARAM: token},
    )
    await ws.send(codec.encode(start))
    return ws, codec


async def _greeted(h: Harness) -> ScriptedUpstream:
    """The call's upstream, once it is open and the gateway has asked for the greeting."""
    await asyncio.wait_for(h.created.wait(), 10)
    up = h.upstreams[0]
    up.ready.set()
    await up.wait_sent("response.create")
    return up


def _tone_frame(i: int) -> str:
    t = (np.arange(160) + 160 * i) / 8000
    pcm = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    return base64.b64encode(array_to_ulaw(pcm)).decode()


def _loud_24k() -> npt.NDArray[np.int16]:
    t = np.arange(480) / 24000
    return (6000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)


async def test_audio_during_setup_is_buffered_then_flushed_in_order_before_the_greeting(
    harness: Harness,
) -> None:
    ws, codec = await _open_stream(harness)
    async with ws:
        await asyncio.wait_for(harness.created.wait(), 10)
        up = harness.upstreams[0]
        for i in range(10):
            await ws.send(codec.encode_media(i + 2, i + 1, 20 * i, _tone_frame(i)))
        runner = gateway_state_from(harness).calls["CA1"]
        await wait_until(lambda: runner.core.stats.frames_in == 10, what="10 frames read")
        # the frames reached the gateway; the upstream is still not ready
        assert up.pushed == []
        up.ready.set()
        greeting = await up.wait_sent("response.create")
        assert greeting["response"]["instructions"] == "Say hello."
        assert len(up.pushed) == 10
        assert all(f.shape == (480,) and f.dtype == np.int16 for f in up.pushed)
        await ws.send(codec.encode(Stop(codec.stream_sid, 999, "CA1", "AC1")))
        await asyncio.wait_for(up.closed.wait(), 10)


async def test_barge_in_clears_carrier_then_cancels_then_clears_upstream(
    harness: Harness,
) -> None:
    ws, codec = await _open_stream(harness)
    async with ws:
        up = await _greeted(harness)
        up.emit("response.created", response={"id": "resp_1", "object": "realtime.response"})
        up.emit(
            "response.output_item.added",
            response_id="resp_1",
            output_index=0,
            item={"id": "item_1", "type": "message", "role": "assistant"},
        )
        up.emit("output_audio_buffer.started", response_id="resp_1")
        for _ in range(15):
            up.audio_q.put_nowait(_loud_24k())
        got: list[object] = []
        async with asyncio.timeout(10):
            while sum(isinstance(m, PlayAudio) for m in got) < 15:
                got.append(codec.parse(await ws.recv()))
        marks = [m for m in got if isinstance(m, PlayMark)]
        assert marks, "the gateway marks what it sends"
        # the caller heard the first 100 ms: echo the first mark only
        await ws.send(codec.encode(Mark(codec.stream_sid, 100, marks[0].name)))
        runner = gateway_state_from(harness).calls["CA1"]
        # the carrier loop reads the echo on its own schedule
        await wait_until(lambda: runner.core.ledger.played_ms_for("resp_1") > 0, what="echo read")
        up.emit("input_audio_buffer.speech_started", audio_start_ms=1000, item_id="item_u")
        async with asyncio.timeout(10):
            while not isinstance(codec.parse(await ws.recv()), ClearAudio):
                pass
        cancel = await up.wait_sent("response.cancel")
        clear = await up.wait_sent("output_audio_buffer.clear")
        assert cancel["response_id"] == "resp_1"
        types = [e["type"] for e in up.sent]
        assert types.index("response.cancel") < types.index("output_audio_buffer.clear")
        truncates = [e for e in up.sent if e["type"] == "conversation.item.truncate"]
        # truncated to what was played — the one echoed 100 ms mark — never beyond
        assert [(t["item_id"], t["audio_end_ms"]) for t in truncates] == [("item_1", 100)]
        assert clear
        # late frames of the cancelled response are not forwarded
        for _ in range(5):
            up.audio_q.put_nowait(_loud_24k())
        up.emit("response.done", response={"id": "resp_1", "status": "cancelled"})
        await ws.send(codec.encode(Stop(codec.stream_sid, 999, "CA1", "AC1")))
        rest: list[object] = []
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                while True:
                    rest.append(codec.parse(await ws.recv()))
        assert not any(isinstance(m, PlayAudio) for m in rest)


async def test_repeated_refusals_close_the_stream_so_the_fallback_plays(
    harness: Harness,
) -> None:
    harness.failures += [UpstreamRefused("Realtime API refused: 429", status=429)] * 5
    ws, _codec = await _open_stream(harness)
    async with ws:
        async with asyncio.timeout(10):
            await ws.wait_closed()
    assert ws.close_code is not None and ws.close_code >= 4000
    assert len(harness.upstreams) == MAX_SETUP_ATTEMPTS
    assert all(up.closed.is_set() for up in harness.upstreams)
    state = gateway_state_from(harness)
    async with asyncio.timeout(5):
        await state.idle.wait()
    assert state.calls == {}
    assert state.admissions.live == 0


def gateway_state_from(h: Harness) -> Any:
    app = h.server.server.config.app
    return gateway_state(app)


async def test_a_retryable_refusal_is_retried_with_a_fresh_session(harness: Harness) -> None:
    harness.failures.append(UpstreamRefused("Realtime API refused the call: 503", status=503))
    ws, codec = await _open_stream(harness)
    async with ws:
        async with asyncio.timeout(10):
            while len(harness.upstreams) < 2:  # the backoff is random: wait for the retry
                harness.created.clear()
                await harness.created.wait()
        first, second = harness.upstreams
        assert first.closed.is_set()  # the refused attempt was cleaned up
        second.ready.set()
        await second.wait_sent("response.create")
        await ws.send(codec.encode(Stop(codec.stream_sid, 999, "CA1", "AC1")))
        await asyncio.wait_for(second.closed.wait(), 10)


async def test_a_final_refusal_is_not_retried(harness: Harness) -> None:
    harness.failures.append(UpstreamRefused("Realtime API refused the key: 401", status=401))
    ws, _codec = await _open_stream(harness)
    async with ws:
        async with asyncio.timeout(10):
            await ws.wait_closed()
    assert len(harness.upstreams) == 1
    assert ws.close_code is not None and ws.close_code >= 4000


@pytest.mark.parametrize("attempt", [1, 2, 3, 6])
def test_backoff_is_full_jitter_under_a_growing_cap(attempt: int) -> None:
    rng = random.Random(7)
    delays = [backoff_s(attempt, rng) for _ in range(200)]
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
    assert all(0 <= d <= ceiling for d in delays)
    assert max(delays) > ceiling * 0.9 and min(delays) < ceiling * 0.1


async def test_a_lost_upstream_is_replaced_once_with_the_conversation_restored(
    harness: Harness,
) -> None:
    ws, _codec = await _open_stream(harness)
    async with ws:
        await asyncio.wait_for(harness.created.wait(), 10)
        first = harness.upstreams[0]
        first.ready.set()
        await first.wait_sent("response.create")
        first.emit(
            "conversation.item.input_audio_transcription.completed",
            item_id="item_u1",
            content_index=0,
            transcript="What time do you open?",
        )
        first.emit(
            "response.output_audio_transcript.done",
            response_id="resp_1",
            item_id="item_a1",
            output_index=0,
            content_index=0,
            transcript="We open at nine.",
        )
        harness.created.clear()
        first.events_q.put_nowait(UpstreamLost("the Realtime data channel closed"))
        await asyncio.wait_for(harness.created.wait(), 10)
        second = harness.upstreams[1]
        assert first.closed.is_set()
        second.ready.set()
        note = await second.wait_sent("conversation.item.create")
        restored = [e["item"] for e in second.sent if e["type"] == "conversation.item.create"]
        assert [(i["role"], i["content"][0]["text"]) for i in restored[:2]] == [
            ("user", "What time do you open?"),
            ("assistant", "We open at nine."),
        ]
        assert restored[-1]["role"] == "system" and "greet" in restored[-1]["content"][0]["text"]
        assert note
        # no second greeting
        assert not any(e["type"] == "response.create" for e in second.sent)
        # a second loss ends the call: the fallback plays
        second.events_q.put_nowait(UpstreamLost("the Realtime peer connection failed"))
        async with asyncio.timeout(10):
            await ws.wait_closed()
    assert ws.close_code is not None and ws.close_code >= 4000
    assert len(harness.upstreams) == 2


async def test_an_old_session_is_rotated_between_turns_without_a_clear(harness: Harness) -> None:
    ws, codec = await _open_stream(harness)
    async with ws:
        await asyncio.wait_for(harness.created.wait(), 10)
        first = harness.upstreams[0]
        first.ready.set()
        await first.wait_sent("response.create")
        first.emit(
            "response.output_audio_transcript.done",
            response_id="resp_1",
            item_id="item_a1",
            output_index=0,
            content_index=0,
            transcript="Hello, this is the bakery.",
        )
        harness.clock.offset += 61  # the session is now older than session_max_age_s
        harness.created.clear()
        first.emit("output_audio_buffer.stopped", response_id="resp_1")
        await asyncio.wait_for(harness.created.wait(), 10)
        second = harness.upstreams[1]
        second.ready.set()
        await second.wait_sent("conversation.item.create")
        assert first.closed.is_set()
        restored = [e["item"] for e in second.sent if e["type"] == "conversation.item.create"]
        assert restored[0]["content"][0]["text"] == "Hello, this is the bakery."
        assert not any(e["type"] == "response.create" for e in second.sent)
        runner = gateway_state_from(harness).calls["CA1"]
        assert runner.core.stats.rotations == 1 and runner.core.stats.reconnects == 0
        await ws.send(codec.encode(Stop(codec.stream_sid, 999, "CA1", "AC1")))
        received: list[object] = []
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                while True:
                    received.append(codec.parse(await ws.recv()))
        assert not any(isinstance(m, ClearAudio) for m in received)


async def test_a_carrier_that_stops_reading_ends_the_call_instead_of_stalling(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(call_module, "CARRIER_SEND_TIMEOUT_S", 0.3)
    ws, _ = await _open_stream(harness)
    async with ws:
        up = await _greeted(harness)
        runner = gateway_state_from(harness).calls["CA1"]
        never = asyncio.Event()

        async def backpressured(_frame: str | bytes) -> None:
            await never.wait()  # the carrier's socket buffer is full and it is not reading

        monkeypatch.setattr(runner.socket, "send", backpressured)
        up.start_speaking()
        up.audio_q.put_nowait(_loud_24k())
        async with asyncio.timeout(10):
            await up.closed.wait()  # the call ended and hung up its upstream session
    state = gateway_state_from(harness)
    async with asyncio.timeout(5):
        await state.idle.wait()
    assert runner.core.end is not None and runner.core.end.outcome == "carrier_error"
    assert "has not read its websocket" in runner.core.end.reason


@pytest.mark.parametrize(
    "code", ["response_cancel_not_active", "conversation_already_has_active_response"]
)
async def test_recoverable_upstream_errors_are_counted_and_the_call_goes_on(
    harness: Harness, code: str
) -> None:
    ws, codec = await _open_stream(harness)
    async with ws:
        up = await _greeted(harness)
        up.emit("error", error={"type": "invalid_request_error", "code": code, "message": "x"})
        # the call is still served: audio still flows to the carrier
        up.start_speaking()
        up.audio_q.put_nowait(_loud_24k())
        async with asyncio.timeout(10):
            while not isinstance(codec.parse(await ws.recv()), PlayAudio):
                pass
        await ws.send(codec.encode(Stop(codec.stream_sid, 999, "CA1", "AC1")))
        await asyncio.wait_for(up.closed.wait(), 10)
    state = gateway_state_from(harness)
    async with asyncio.timeout(5):
        await state.idle.wait()
    assert state.recent[-1]["outcome"] == "completed"
    count = state.metrics.registry.get_sample_value("gateway_upstream_errors_total", {"code": code})
    assert count == 1


async def test_a_refused_start_naming_a_live_call_leaves_that_call_its_slot(
    harness: Harness,
) -> None:
    ws, _ = await _open_stream(harness)
    async with ws:
        await _greeted(harness)
        state = gateway_state_from(harness)
        runner = state.calls["CA1"]
        assert state.admissions.live == 1
        intruder = await connect(harness.server.ws_url + "/twilio/media")
        codec = TwilioCarrierCodec("MZintruder")
        start = start_message(
            stream_sid=codec.stream_sid,
            call_sid="CA1",  # the live call's SID, with a token that is not its own
            account_sid="AC1",
            custom_parameters={CALL_TOKEN_PARAM: "garbage"},
        )
        await intruder.send(codec.encode(start))
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                await intruder.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert state.calls.get("CA1") is runner  # still registered
        assert state.admissions.live == 1  # and still holding its capacity slot


async def test_a_stream_that_never_starts_is_the_remote_sides_fault(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(call_module, "START_TIMEOUT_S", 0.3)
    state = gateway_state_from(harness)
    before = _outcome_count(state, "no_start")
    async with connect(harness.server.ws_url + "/twilio/media") as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002
    assert _outcome_count(state, "no_start") == before + 1
    assert _outcome_count(state, "internal_error") == 0
    assert harness.upstreams == []


def _outcome_count(state: Any, outcome: str) -> float:
    value = state.metrics.registry.get_sample_value("gateway_calls_total", {"outcome": outcome})
    return value or 0.0
