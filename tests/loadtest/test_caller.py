"""SimulatedCall against a small real gateway-like server on a loopback port.

The server below is a stand-in for the gateway (not for anything under test): it answers the
webhook with TwiML, validates signatures, parses the stream with the real Twilio codec, detects
caller speech by level, plays tone "responses" paced in real time with marks after every frame,
and sends ``clear`` when the caller talks over it. Everything travels over real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response
from starlette.websockets import WebSocketDisconnect

from gateway.audio.g711 import array_to_ulaw
from gateway.errors import CarrierError
from gateway.loadtest.caller import (
    BargeIn,
    CallOptions,
    CallResult,
    HangUp,
    Pause,
    PressDigits,
    Say,
    SimulatedCall,
    TimelineEntry,
    WaitForAnswer,
    run_call,
)
from gateway.loadtest.carrier import FRAME_BYTES, audible
from gateway.serving import serve_app
from gateway.telephony.ledger import MarkLedger
from gateway.telephony.messages import (
    ClearAudio,
    Dtmf,
    Mark,
    Media,
    PlayAudio,
    PlayMark,
    Start,
    Stop,
)
from gateway.telephony.signature import public_url, validate_webhook, validate_websocket_upgrade
from gateway.telephony.twilio import TwilioCodec

TOKEN = "test-auth-token"


def tone(ms: int, freq: float = 440.0, amplitude: int = 8000) -> bytes:
    n = ms * 8
    t = np.arange(n) / 8000
    return array_to_ulaw((amplitude * np.sin(2 * math.pi * freq * t)).astype(np.int16))


def words(*pattern: int) -> bytes:
    """Caller "speech": alternating tone and silence durations in ms (tone first)."""
    out = b""
    for i, ms in enumerate(pattern):
        out += tone(ms, 300 + 50 * i) if i % 2 == 0 else b"\xff" * (ms * 8)
    return out


@dataclass
class StreamLog:
    start: Start | None = None
    upgrade_signed: bool | None = None
    media: int = 0
    chunks_in_order: bool = True
    timestamps_ok: bool = True
    digits: str = ""
    stopped: bool = False
    marks_back: int = 0
    clears_sent: int = 0
    carrier_errors: list[str] = field(default_factory=list)
    sequence_gaps: int = 0
    ledger_buffered_ms: float = 0.0


@dataclass
class FakeGateway:
    """Behaviour knobs of the stand-in gateway."""

    greeting_ms: int = 600
    reply_ms: int = 800
    reply_delay_ms: int = 150
    lead_ms: int = 60  # how far ahead of real time audio is sent (the carrier's buffer depth)
    stall_after_ms: int | None = None  # pause the greeting after this much audio...
    stall_ms: int = 0  # ...for this long
    hangover_ms: int = 300  # caller silence that ends a caller turn
    auth_token: str | None = None
    twiml_refuses: bool = False
    close_after_start: bool = False
    send_garbage: bool = False
    reject_upgrade: bool = False
    silent: bool = False
    logs: list[StreamLog] = field(default_factory=list)
    webhooks: list[dict[str, str]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/twilio/voice")
        async def voice(request: Request) -> Response:
            form = {k: str(v) for k, v in (await request.form()).items()}
            self.webhooks.append(form)
            if self.auth_token is not None:
                url = public_url(request_url=str(request.url))
                sig = request.headers.get("x-twilio-signature")
                if not validate_webhook(self.auth_token, url, form, sig):
                    return Response("bad signature", status_code=403)
            if self.twiml_refuses:
                body = "<Response><Say>We are busy.</Say><Hangup/></Response>"
            else:
                body = (
                    '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
                    '<Stream url="/twilio/media">'
                    f'<Parameter name="call" value="{form["CallSid"]}"/>'
                    '<Parameter name="to" value="' + form["To"] + '"/>'
                    "</Stream></Connect><Say>fallback</Say></Response>"
                )
            return Response(body, media_type="text/xml")

        @app.websocket("/twilio/media")
        async def media(ws: WebSocket) -> None:
            log = StreamLog()
            self.logs.append(log)
            if self.auth_token is not None:
                url = public_url(request_url=str(ws.url), websocket=True)
                log.upgrade_signed = validate_websocket_upgrade(
                    self.auth_token, url, ws.headers.get("x-twilio-signature")
                )
            if self.reject_upgrade or log.upgrade_signed is False:
                await ws.close(code=1008)  # before accept: the client sees HTTP 403
                return
            await ws.accept()
            await _Stream(self, ws, log).run()

        return app


class _Stream:
    def __init__(self, cfg: FakeGateway, ws: WebSocket, log: StreamLog) -> None:
        self.cfg, self.ws, self.log = cfg, ws, log
        self.codec = TwilioCodec()
        self.ledger = MarkLedger()
        self.lock = asyncio.Lock()
        self.responses: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self.speaking_task: asyncio.Task[None] | None = None
        self.caller_speaking = False
        self.quiet_frames = 0

    async def send(self, msg: PlayAudio | PlayMark | ClearAudio) -> None:
        async with self.lock:
            await self.ws.send_text(self.codec.encode(msg))

    async def run(self) -> None:
        try:
            await self.read()
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            if self.speaking_task is not None:
                self.speaking_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self.speaking_task
            self.log.sequence_gaps = self.codec.sequence_gaps
            self.log.ledger_buffered_ms = self.ledger.buffered_ms

    async def read(self) -> None:
        while True:
            text = await self.ws.receive_text()
            try:
                msg = self.codec.parse(text)
            except CarrierError as exc:
                self.log.carrier_errors.append(str(exc))
                continue
            if isinstance(msg, Start):
                self.log.start = msg
                if self.cfg.close_after_start:
                    await self.ws.close(code=4502, reason="upstream unavailable")
                    return
                if self.cfg.send_garbage:
                    await self.ws.send_text('{"event": "media", "streamSid": "MZnope"}')
                if self.cfg.greeting_ms and not self.cfg.silent:
                    self.play("greeting", self.cfg.greeting_ms, 0)
            elif isinstance(msg, Media):
                self.on_media(msg)
            elif isinstance(msg, Mark):
                self.log.marks_back += 1
                self.ledger.on_mark(msg.name)
            elif isinstance(msg, Dtmf):
                self.log.digits += msg.digit
            elif isinstance(msg, Stop):
                self.log.stopped = True
                return

    def on_media(self, msg: Media) -> None:
        log = self.log
        log.media += 1
        log.chunks_in_order &= msg.chunk == log.media
        log.timestamps_ok &= msg.timestamp_ms == (msg.chunk - 1) * 20
        if audible(msg.payload):
            self.quiet_frames = 0
            if not self.caller_speaking:
                self.caller_speaking = True
                if self.speaking_task is not None and not self.speaking_task.done():
                    self.speaking_task.cancel()  # barge-in: stop talking, flush the carrier
                    self.ledger.on_clear()
                    log.clears_sent += 1
                    asyncio.get_running_loop().create_task(self.send(ClearAudio()))
        elif self.caller_speaking:
            self.quiet_frames += 1
            if self.quiet_frames * 20 >= self.cfg.hangover_ms and not self.cfg.silent:
                self.caller_speaking = False
                self.play("reply", self.cfg.reply_ms, self.cfg.reply_delay_ms)

    def play(self, rid: str, ms: int, delay_ms: int) -> None:
        self.speaking_task = asyncio.get_running_loop().create_task(self.speak(rid, ms, delay_ms))

    async def speak(self, rid: str, ms: int, delay_ms: int) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(delay_ms / 1000)
        audio = tone(ms)
        start = loop.time()
        sent_ms = 0
        stalled = False
        for i in range(0, len(audio), FRAME_BYTES):
            cfg = self.cfg
            if (
                not stalled
                and rid == "greeting"
                and cfg.stall_after_ms is not None
                and sent_ms >= cfg.stall_after_ms
            ):
                stalled = True
                start += cfg.stall_ms / 1000
            # keep lead_ms of audio queued at the carrier, no more
            await asyncio.sleep(max(0.0, start + (sent_ms - cfg.lead_ms) / 1000 - loop.time()))
            frame = audio[i : i + FRAME_BYTES]
            await self.send(PlayAudio(frame))
            name = self.ledger.sent(len(frame), rid)
            if name is not None:
                await self.send(PlayMark(name))
            sent_ms += 20


@contextlib.asynccontextmanager
async def gateway(cfg: FakeGateway):  # type: ignore[no-untyped-def]
    async with serve_app(cfg.app()) as server:
        yield server


def options(server_url: str, **kwargs: object) -> CallOptions:
    return CallOptions(media_url=server_url.replace("http", "ws", 1) + "/twilio/media", **kwargs)  # type: ignore[arg-type]


SPEECH = Say(words(300, 100, 400, 120, 300), "what are your opening hours")
INTERRUPT = Say(words(500, 100, 400), "wait, one more thing")


@pytest.mark.timeout(30)
async def test_conversation_with_greeting_turn_and_digits() -> None:
    cfg = FakeGateway(reply_delay_ms=150)
    seen: list[TimelineEntry] = []
    async with gateway(cfg) as server:
        script = [WaitForAnswer(), SPEECH, WaitForAnswer(), PressDigits("12#", gap_ms=40), HangUp()]
        call = SimulatedCall(script, options(server.url), on_event=seen.append)
        result = await call.run()
    assert result.ok, (result.failure, result.failure_detail)
    log = cfg.logs[0]
    assert log.start is not None and log.start.stream_sid == result.stream_sid
    assert log.start.call_sid == result.call_sid
    assert log.digits == "12#" and log.stopped and log.carrier_errors == []
    # every frame arrived, numbered as Twilio numbers them
    assert log.media == result.frames_sent == result.pacing.count - 1  # + the stop tick
    assert log.chunks_in_order and log.timestamps_ok and log.sequence_gaps == 0
    # every mark the gateway sent came back once its audio had played
    assert result.marks_received == result.marks_echoed == log.marks_back
    # the greeting plays from the start: setup is measured; the turn got one answer
    assert result.setup_ms is not None and result.setup_ms >= 0
    (turn,) = result.turns
    assert turn.onset_ms is not None and turn.end_ms is not None
    assert turn.end_ms - turn.onset_ms == pytest.approx(1220, abs=20)  # the clip's voiced part
    # the stand-in answers hangover + delay after the caller's last sound: never sooner
    (latency,) = result.response_latencies_ms
    assert latency >= cfg.hangover_ms + cfg.reply_delay_ms - 20
    assert len(result.assistant) == 2  # greeting and reply, each heard as one utterance
    greeting, reply = result.assistant
    assert greeting.end_ms - greeting.start_ms == pytest.approx(cfg.greeting_ms, abs=2)
    assert reply.end_ms - reply.start_ms == pytest.approx(cfg.reply_ms, abs=2)
    assert reply.start_ms == turn.answer_ms
    assert result.frames_played == pytest.approx((cfg.greeting_ms + cfg.reply_ms) / 20, abs=0.1)
    assert result.gaps_ms == [] or min(result.gaps_ms) > 40
    kinds = [e.kind for e in result.timeline]
    for kind in ("assistant_start", "caller_start", "caller_end", "dtmf", "hangup"):
        assert kind in kinds
    assert {e.kind for e in seen} >= {"caller_start", "assistant_start", "dtmf"}
    summary = result.to_dict()
    assert summary["ok"] and summary["turns"][0]["text"] == SPEECH.text


@pytest.mark.timeout(30)
async def test_webhook_twiml_and_signatures_are_followed() -> None:
    cfg = FakeGateway(auth_token=TOKEN, greeting_ms=200)
    async with gateway(cfg) as server:
        opts = CallOptions(
            webhook_url=f"{server.url}/twilio/voice",
            auth_token=TOKEN,
            to_number="+15557654321",
            custom_parameters={"extra": "yes"},
        )
        result = await run_call([WaitForAnswer(), HangUp()], opts)
        # a wrong token is refused at the webhook
        bad = await run_call(
            [HangUp()],
            CallOptions(webhook_url=f"{server.url}/twilio/voice", auth_token="wrong"),
        )
    assert result.ok, (result.failure, result.failure_detail)
    assert result.webhook_ms is not None and result.connect_ms is not None
    assert cfg.webhooks[0]["To"] == "+15557654321"
    assert cfg.webhooks[0]["CallSid"] == result.call_sid
    log = cfg.logs[0]
    assert log.upgrade_signed is True
    assert log.start is not None
    assert dict(log.start.custom_parameters) == {
        "call": result.call_sid,
        "to": "+15557654321",
        "extra": "yes",
    }
    assert result.stream_parameters["call"] == result.call_sid
    assert not bad.ok and bad.failure == "webhook_http_403"
    assert len(cfg.logs) == 1


@pytest.mark.timeout(30)
async def test_barge_in_is_measured_as_heard() -> None:
    cfg = FakeGateway(greeting_ms=0, reply_ms=4000, reply_delay_ms=100, lead_ms=200)
    async with gateway(cfg) as server:
        script = [SPEECH, BargeIn(INTERRUPT, after_ms=400), WaitForAnswer(), HangUp()]
        result = await SimulatedCall(script, options(server.url, record_audio=True)).run()
    assert result.ok, (result.failure, result.failure_detail)
    first, barge = result.turns
    assert not first.barge_in and barge.barge_in
    assert first.answer_ms is not None and barge.onset_ms is not None
    # the caller started talking 400 ms into the answer, while it was audible
    assert barge.onset_ms - first.answer_ms == pytest.approx(400, abs=25)
    assert barge.assistant_audible_at_onset
    assert cfg.logs[0].clears_sent == 1 and result.clears_received == 1
    assert barge.clear_ms is not None and barge.stop_ms is not None
    # as heard, the answer stopped when the clear emptied the carrier's buffer: not later
    assert barge.onset_ms <= barge.stop_ms <= barge.clear_ms + 0.2
    assert (stop := barge.barge_in_stop_ms) is not None and stop < 4000 - 400
    assert result.barge_in_stop_ms == [stop]
    assert result.bytes_cleared > 0
    # the buffered audio the clear dropped was never "played"
    assert result.bytes_played + result.bytes_cleared == result.bytes_received
    # the interruption itself got an answer
    assert barge.response_latency_ms is not None
    assert len(result.response_latencies_ms) == 2
    # the recording puts the caller left and the assistant right, on one clock
    stereo = result.stereo_pcm16()
    assert stereo.shape[1] == 2 and stereo.dtype == np.int16
    onset = int(barge.onset_ms * 8)
    assert np.abs(stereo[onset : onset + 160, 0]).max() > 1000  # the caller speaks here
    answer = int(first.answer_ms * 8)
    assert np.abs(stereo[answer : answer + 160, 1]).max() > 1000  # the assistant here
    stop_at = int(barge.stop_ms * 8)
    assert np.abs(stereo[stop_at + 8 : stop_at + 800, 1]).max() < 300  # silent after the stop


@pytest.mark.timeout(30)
async def test_playout_gaps_inside_speech_are_reported(tmp_path: Path) -> None:
    cfg = FakeGateway(greeting_ms=1000, stall_after_ms=400, stall_ms=300, lead_ms=60)
    async with gateway(cfg) as server:
        result = await run_call(
            [WaitForAnswer(quiet_ms=500), HangUp()], options(server.url, record_audio=True)
        )
    assert result.ok, (result.failure, result.failure_detail)
    # the stand-in held back 300 ms with only 60 ms queued: a gap of about 240 ms
    assert any(gap >= 150 for gap in result.gaps_ms), result.gaps_ms
    assert [e for e in result.timeline if e.kind == "gap"]
    assert len(result.assistant) == 1  # a stall is a gap inside one utterance
    path = tmp_path / "call.wav"
    result.write_wav(path)
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (2, 8000, 2)
        assert wav.getnframes() == len(result.stereo_pcm16())


@pytest.mark.timeout(30)
async def test_real_synthesized_speech_gets_an_answer() -> None:
    say = Say.from_text("Hello, I would like to book a table for two.")
    assert say.voiced is not None and say.duration_ms > 1000
    cfg = FakeGateway(greeting_ms=0, hangover_ms=500)
    async with gateway(cfg) as server:
        result = await run_call([Pause(100), say, WaitForAnswer(), HangUp()], options(server.url))
    assert result.ok, (result.failure, result.failure_detail)
    assert len(result.response_latencies_ms) == 1
    assert result.turns[0].text == say.text


# --- failures -------------------------------------------------------------------------------------


async def _failed(cfg: FakeGateway, script: list, **kwargs: object) -> CallResult:  # type: ignore[type-arg]
    async with gateway(cfg) as server:
        return await run_call(script, options(server.url, **kwargs))


@pytest.mark.timeout(30)
async def test_rejected_upgrade() -> None:
    result = await _failed(FakeGateway(reject_upgrade=True), [HangUp()])
    assert result.failure == "ws_rejected_403" and result.outcome == "failed"


@pytest.mark.timeout(30)
async def test_gateway_closing_mid_call_is_a_failure_with_its_close_code() -> None:
    result = await _failed(FakeGateway(close_after_start=True), [WaitForAnswer(), HangUp()])
    assert result.failure == "closed_by_gateway"
    assert result.close_code == 4502 and "upstream unavailable" in result.failure_detail


@pytest.mark.timeout(30)
async def test_no_answer_times_out_and_hangs_up() -> None:
    cfg = FakeGateway(silent=True)
    result = await _failed(cfg, [SPEECH, WaitForAnswer(timeout_ms=300)])
    assert result.failure == "no_answer" and "turn 1" in result.failure_detail
    assert cfg.logs[0].stopped  # the simulated carrier still sent stop


@pytest.mark.timeout(30)
async def test_a_failure_is_on_the_timeline_at_the_time_the_call_ended() -> None:
    result = await _failed(FakeGateway(silent=True), [WaitForAnswer(timeout_ms=300)])
    failed = result.timeline[-1]
    assert (failed.kind, failed.detail) == ("failed", "no_answer")
    assert 300 < failed.t_ms <= round(result.duration_ms, 1) < 5000  # ms, like every entry


@pytest.mark.timeout(30)
async def test_gateway_protocol_errors_fail_the_call() -> None:
    result = await _failed(FakeGateway(send_garbage=True), [WaitForAnswer(), HangUp()])
    assert result.failure == "gateway_protocol_error" and "streamSid" in result.failure_detail


@pytest.mark.timeout(30)
async def test_twiml_without_a_stream_is_a_refusal() -> None:
    cfg = FakeGateway(twiml_refuses=True)
    async with gateway(cfg) as server:
        result = await run_call([HangUp()], CallOptions(webhook_url=f"{server.url}/twilio/voice"))
    assert result.failure == "webhook_refused" and "busy" in result.failure_detail


@pytest.mark.timeout(30)
async def test_nothing_listening_is_a_connect_error() -> None:
    async with serve_app(FastAPI()) as server:
        url = server.ws_url
    result = await run_call([HangUp()], CallOptions(media_url=url + "/twilio/media"))
    assert result.failure == "connect_error"


@pytest.mark.timeout(30)
async def test_max_duration_bounds_a_call() -> None:
    result = await _failed(FakeGateway(), [Pause(10_000)], max_duration_s=0.5)
    assert result.failure == "max_duration" and result.duration_ms < 5000


def test_say_frames_and_voiced_range() -> None:
    say = Say(b"\xff" * 400 + tone(10) + b"\xff" * 10)
    assert len(say.frames) == 4 and say.duration_ms == 80
    assert say.voiced == (2, 2)
    assert Say(b"\xff" * 160).voiced is None
    with pytest.raises(ValueError):
        Say(b"")
    with pytest.raises(ValueError):
        SimulatedCall([], CallOptions())
