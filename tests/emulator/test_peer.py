"""The emulator over real WebRTC: the gateway's own RealtimeSession (and a raw aiortc client)
against the emulator on a loopback port. Every server event is validated against the openai
SDK types by :class:`Recorder`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.codecs.opus import OpusDecoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from gateway.emulator.config import EmulatorConfig
from gateway.emulator.peer import opus_packets, opus_silence
from gateway.errors import UpstreamRefused, UpstreamTimeout
from gateway.realtime import events as rt
from gateway.realtime.config import SetupTimeouts
from gateway.realtime.receiver import ShortJitterBuffer
from gateway.realtime.session import RealtimeSession
from gateway.realtime.tracks import CallerAudioTrack
from tests.emulator.emulator_support import (
    KEY,
    SESSION,
    Emulator,
    Listener,
    Recorder,
    running,
    say,
    speech,
    validate_event,
)

pytestmark = pytest.mark.timeout(60)


@contextlib.asynccontextmanager
async def call(
    emu: Emulator, session: dict[str, Any] | None = None, **config: Any
) -> AsyncIterator[tuple[RealtimeSession, Recorder, Listener]]:
    s = RealtimeSession(emu.config(**config), session or SESSION)
    await s.open()
    rec = Recorder(s)
    listener = Listener(s)
    try:
        yield s, rec, listener
    finally:
        await s.close()
        await listener.aclose()
        await rec.aclose()


RESPONSE_ORDER = [
    "response.created",
    "rate_limits.updated",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
    "output_audio_buffer.started",
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
    "output_audio_buffer.stopped",
]


def in_order(types: list[str], wanted: list[str]) -> bool:
    """``wanted`` occurs in ``types`` as a subsequence."""
    it = iter(types)
    return all(any(t == w for t in it) for w in wanted)


@pytest.mark.parametrize("auth", ["unified", "ephemeral"])
async def test_connect_creates_and_updates_the_session(auth: str) -> None:
    async with running() as emu, call(emu, auth=auth) as (s, rec, _):
        created = await rec.wait_for("session.created")
        updated = await rec.wait_for("session.updated")
        assert rec.types()[:2] == ["session.created", "session.updated"]
        assert s.call_id is not None and s.call_id.startswith("rtc_")
        assert s.audio_codec == "audio/opus"
        eff = updated["session"]
        assert eff["audio"]["output"]["voice"] == "cedar"
        assert eff["instructions"] == SESSION["instructions"]
        # the merge keeps defaults for what the update did not name
        td = eff["audio"]["input"]["turn_detection"]
        assert td == {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 300,
            "idle_timeout_ms": None,
            "create_response": True,
            "interrupt_response": True,
        }
        # the session was configured at creation already (multipart session / minted key)
        assert created["session"]["audio"]["output"]["voice"] == "cedar"
        [listed] = await emu.sessions()
        assert listed["id"] == s.call_id
        assert listed["state"] == "active"
        assert listed["session"] == eff
        assert listed["events_received"] == {"session.update": 1}


async def test_a_vad_turn_gets_a_spoken_answer_paced_in_real_time() -> None:
    async with running() as emu, call(emu) as (s, rec, listener):
        await rec.wait_for("session.updated")
        utterance = speech("I would like a table for two.")
        await say(s, utterance, lead_s=0.4)
        started = await rec.wait_for("input_audio_buffer.speech_started")
        stopped = await rec.wait_for("input_audio_buffer.speech_stopped")
        committed = await rec.wait_for("input_audio_buffer.committed")
        assert started["item_id"] == stopped["item_id"] == committed["item_id"]
        # 400 ms of lead silence, 300 ms prefix padding, onset within a few frames
        assert 60 <= started["audio_start_ms"] <= 200
        speech_ms = utterance.size * 1000 // 24000
        assert speech_ms + 300 <= stopped["audio_end_ms"] - 400 <= speech_ms + 500
        done = await rec.wait_for("response.done")
        stop = await rec.wait_for("output_audio_buffer.stopped", limit_s=20)
        t_stop = time.monotonic()
        types = rec.types()
        assert in_order(
            types,
            [
                "input_audio_buffer.committed",
                "conversation.item.added",
                "conversation.item.done",
                *RESPONSE_ORDER,
            ],
        ), types
        assert "response.output_audio.delta" not in types  # WebRTC: audio only on RTP
        response = done["response"]
        assert response["status"] == "completed"
        assert stop["response_id"] == response["id"]
        transcript = response["output"][0]["content"][0]["transcript"]
        assert transcript.startswith("This is cedar. Turn 1. You spoke for ")
        deltas = "".join(e["delta"] for e in rec.of("response.output_audio_transcript.delta"))
        assert deltas == transcript
        usage = response["usage"]
        assert (
            usage["input_token_details"]["audio_tokens"]
            >= (stopped["audio_end_ms"] - 400) // 100 - 2
        )
        assert usage["output_token_details"]["audio_tokens"] > 20  # > 1 s of speech
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
        # The assistant audio arrived on RTP, in real time: as long as the tokens say.
        loud = listener.loud()
        assert loud, "no assistant audio received"
        audio_s = usage["output_token_details"]["audio_tokens"] * 0.05
        assert loud[-1] - loud[0] >= 0.8 * audio_s - 0.3
        assert loud[-1] <= t_stop + 0.5
        [listed] = await emu.sessions()
        assert (listed["turns"], listed["responses"]) == (1, 1)


async def test_the_caller_audio_receiver_takes_the_short_buffer_when_asked() -> None:
    cfg = EmulatorConfig(api_key=KEY, latency_ms=50, receive_buffer_ms=40)
    async with running(cfg) as emu, call(emu) as (s, rec, _):
        await rec.wait_for("session.updated")
        await say(s, speech("Hello there."))
        await rec.wait_for("input_audio_buffer.speech_stopped")  # the caller was heard
        [peer] = emu.state.calls.values()
        audio = next(t for t in peer.pc.getTransceivers() if t.kind == "audio")
        buffer = audio.receiver._RTCRtpReceiver__jitter_buffer
        assert isinstance(buffer, ShortJitterBuffer) and buffer.depth == 2
        assert buffer.released > 50


async def test_barge_in_cancels_the_response_and_clears_the_audio() -> None:
    # generation at real-time speed keeps the response active while it plays
    cfg = EmulatorConfig(api_key=KEY, latency_ms=50, generation_speed=1.0)
    async with running(cfg) as emu, call(emu) as (s, rec, _):
        await rec.wait_for("session.updated")
        await say(s, speech("Hello there."))
        started = await rec.wait_for("output_audio_buffer.started")
        created = await rec.wait_for("response.created")
        await asyncio.sleep(0.5)  # let some of the answer play (the test's point, not a wait)
        await say(s, speech("Wait, stop please."), lead_s=0.0, tail_s=0.6)
        barge = await rec.wait_for("input_audio_buffer.speech_started", count=2)
        done = await rec.wait_for("response.done")
        cleared = await rec.wait_for("output_audio_buffer.cleared")
        assert done["response"]["id"] == created["response"]["id"] == started["response_id"]
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"] == {
            "type": "cancelled",
            "reason": "turn_detected",
        }
        item = done["response"]["output"][0]
        assert item["status"] == "incomplete"
        assert cleared["response_id"] == done["response"]["id"]
        types = rec.types()
        i = types.index
        assert (
            i("input_audio_buffer.speech_started", types.index("output_audio_buffer.started"))
            < i("response.done")
            < i("output_audio_buffer.cleared")
        )
        assert barge["audio_start_ms"] > 0
        # the truncated answer was billed for what was generated, not the whole reply
        assert done["response"]["usage"]["output_token_details"]["audio_tokens"] < 60
        # the second turn is answered in its turn
        second = await rec.wait_for("response.done", count=2)
        assert second["response"]["status"] == "completed"
        assert "Turn 2." in second["response"]["output"][0]["content"][0]["transcript"]
        # no audio of the cancelled answer after the clear (network and jitter buffer aside)
        first_of_second = await rec.wait_for("output_audio_buffer.started", count=2)
        assert first_of_second["response_id"] == second["response"]["id"]
        [listed] = await emu.sessions()
        assert listed["cancelled_responses"] == 1


async def test_response_cancel_and_output_audio_buffer_clear() -> None:
    # Generation at twice real time: at the cancel, about as much audio is generated but not
    # yet played as has been played, so the buffer is still playing when the clear arrives.
    cfg = EmulatorConfig(api_key=KEY, latency_ms=50, generation_speed=2.0)
    async with running(cfg) as emu, call(emu) as (s, rec, listener):
        await rec.wait_for("session.updated")
        s.send(rt.response_create('Say "Thank you for calling Acme, how may I help you today?"'))
        created = await rec.wait_for("response.created")
        await rec.wait_for("output_audio_buffer.started")
        await rec.wait_for("response.output_audio_transcript.delta", count=5)
        s.send(rt.response_cancel())
        s.send(rt.output_audio_buffer_clear())  # the documented manual interrupt
        done = await rec.wait_for("response.done")
        assert done["response"]["id"] == created["response"]["id"]
        assert done["response"]["status_details"] == {
            "type": "cancelled",
            "reason": "client_cancelled",
        }
        cleared = await rec.wait_for("output_audio_buffer.cleared")
        t_cleared = time.monotonic()
        assert cleared["response_id"] == done["response"]["id"]
        # the transcript keeps what was generated before the cancel
        transcript = done["response"]["output"][0]["content"][0]["transcript"]
        assert transcript.startswith("Thank you for calling")
        assert transcript != "Thank you for calling Acme, how may I help you today?"
        # a cancel with nothing running is a harmless error that names the request
        again = rt.response_cancel()
        s.send(again)
        err = await rec.wait_for("error")
        assert err["error"]["code"] == "response_cancel_not_active"
        assert err["error"]["event_id"] == again["event_id"]
        # audio stops: nothing loud arrives once the receive path has drained
        await asyncio.sleep(0.6)
        assert not listener.loud(since=t_cleared + 0.3)
        assert "output_audio_buffer.stopped" not in rec.types()


async def test_a_raw_aiortc_client_offering_only_pcmu_gets_pcmu() -> None:
    async with running() as emu:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            transceiver = pc.addTransceiver(CallerAudioTrack(), direction="sendrecv")
            pcmu = [
                c
                for c in RTCRtpSender.getCapabilities("audio").codecs
                if c.mimeType == "audio/PCMU"
            ]
            transceiver.setCodecPreferences(pcmu)
            channel = pc.createDataChannel("oai-events")
            inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            channel.on("message", lambda m: inbox.put_nowait(json.loads(m)))
            remote: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
            pc.on("track", lambda t: remote.done() or remote.set_result(t))
            await pc.setLocalDescription(await pc.createOffer())
            async with httpx.AsyncClient() as http:
                resp = await http.post(
                    f"{emu.base_url}/realtime/calls",
                    files={
                        "sdp": (None, pc.localDescription.sdp, "application/sdp"),
                        "session": (None, json.dumps({"type": "realtime"}), "application/json"),
                    },
                    headers={"Authorization": f"Bearer {KEY}"},
                )
            assert resp.status_code == 201
            assert resp.headers["content-type"].startswith("application/sdp")
            assert resp.headers["location"].startswith("/v1/realtime/calls/rtc_")
            answer = resp.text
            assert "a=rtpmap:0 PCMU/8000" in answer and "opus" not in answer
            assert "a=setup:active" in answer  # the service is the DTLS client, as OpenAI's
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

            async def next_event() -> dict[str, Any]:
                async with asyncio.timeout(10):
                    event = await inbox.get()
                validate_event(event)
                return event

            assert (await next_event())["type"] == "session.created"
            channel.send(json.dumps(rt.response_create('Say "Hello from the emulator."')))
            track = await remote
            frames: list[AudioFrame] = []

            async def read() -> None:
                while True:
                    frame = await track.recv()
                    assert isinstance(frame, AudioFrame)
                    frames.append(frame)

            reader = asyncio.create_task(read())
            types = []
            while "output_audio_buffer.stopped" not in types:
                types.append((await next_event())["type"])
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, MediaStreamError):
                await reader
            assert in_order(types, RESPONSE_ORDER), types
            assert {(f.sample_rate, len(f.layout.channels)) for f in frames} == {(8000, 1)}
            loud = [f for f in frames if np.abs(f.to_ndarray()).max() > 300]
            assert len(loud) > 25  # the greeting, over half a second of it
        finally:
            await pc.close()


async def test_a_manual_commit_turn_over_webrtc() -> None:
    session = {**SESSION, "audio": {"input": {"turn_detection": None}}}
    async with running() as emu, call(emu, session) as (s, rec, _):
        updated = await rec.wait_for("session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        await say(s, speech("Book a table please."), tail_s=0.2)
        # let the pushed audio reach the emulator before committing (it is paced in real time)
        await emu_heard(emu, frames=50)
        s.send(rt.input_audio_buffer_commit())
        committed = await rec.wait_for("input_audio_buffer.committed")
        assert "input_audio_buffer.speech_started" not in rec.types()
        s.send(rt.response_create())
        done = await rec.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        assert committed["item_id"]


async def emu_heard(emu: Emulator, frames: int) -> None:
    """Wait until the emulator's live call has received ``frames`` caller frames."""
    async with asyncio.timeout(10):
        while True:
            [call_] = emu.state.calls.values()
            if call_.frames_received >= frames:
                return
            await asyncio.sleep(0.02)


async def test_scripted_function_call_over_webrtc() -> None:
    tool = {
        "type": "function",
        "name": "lookup_booking",
        "parameters": {
            "type": "object",
            "properties": {"name": {"type": "string"}},
            "required": ["name"],
        },
    }
    cfg = EmulatorConfig(api_key=KEY, latency_ms=50, tool_call="lookup_booking")
    async with running(cfg) as emu, call(emu, {**SESSION, "tools": [tool]}) as (s, rec, _):
        await rec.wait_for("session.updated")
        await say(s, speech("Do I have a booking?"))
        args = await rec.wait_for("response.function_call_arguments.done")
        assert json.loads(args["arguments"]) == {"name": "example"}
        assert args["name"] == "lookup_booking"
        await rec.wait_for("response.done")
        s.send(rt.conversation_item_create_function_output(args["call_id"], "Booked for 7 pm"))
        s.send(rt.response_create())
        done = await rec.wait_for("response.done", count=2)
        transcript = done["response"]["output"][0]["content"][0]["transcript"]
        assert transcript == "The lookup_booking tool says: Booked for 7 pm."


@pytest.mark.parametrize(
    ("fault", "reasons"),
    [
        ({"close_channel_after_s": 0.3}, ("data channel closed by the server",)),
        # a closing peer takes its channel along: the client may notice either first
        (
            {"close_peer_after_s": 0.3},
            ("peer connection closed", "data channel closed by the server"),
        ),
    ],
)
async def test_the_server_can_drop_the_channel_or_the_peer(
    fault: dict[str, Any], reasons: tuple[str, ...]
) -> None:
    async with running() as emu:
        async with httpx.AsyncClient() as http:
            await http.post(f"{emu.server.url}/emulator/faults", json=fault)
        s = RealtimeSession(emu.config(), SESSION)
        await s.open()
        try:
            async with asyncio.timeout(10):
                got = await s.wait_closed()
            assert s.lost and got in reasons
        finally:
            await s.close()
        [listed] = await emu.sessions()
        assert listed["state"] == "ended"


async def test_server_error_and_session_expiry_faults() -> None:
    async with running() as emu:
        async with httpx.AsyncClient() as http:
            await http.post(
                f"{emu.server.url}/emulator/faults",
                json={"server_error_after_s": 0.2, "max_session_s": 1.0},
            )
        async with call(emu) as (s, rec, _):
            err = await rec.wait_for("error")
            assert err["error"]["type"] == "server_error"
            expired = await rec.wait_for("error", count=2)
            assert expired["error"]["code"] == "session_expired"
            async with asyncio.timeout(10):
                await s.wait_closed()
            assert s.lost
            assert rt.FATAL_ERROR_CODES >= {"session_expired"}


async def test_ice_can_be_delayed_or_never_complete() -> None:
    async with running(EmulatorConfig(api_key=KEY, ice_delay_s=1.0)) as emu:
        s = RealtimeSession(emu.config(), SESSION)
        await s.open()
        assert s.setup_timings["ice_dtls"] >= 0.9
        await s.close()
    async with running(EmulatorConfig(api_key=KEY, ice_fail=True)) as emu:
        s = RealtimeSession(emu.config(timeouts=SetupTimeouts(5, 1.5, 5, 5, 5)), SESSION)
        with pytest.raises(UpstreamTimeout) as timeout:
            await s.open()
        assert timeout.value.code == "timeout_ice_dtls"


def test_opus_packets_decode_back_to_the_audio() -> None:
    t = np.arange(24000) / 24000
    pcm = np.round(6000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    packets = opus_packets(pcm)
    assert len(packets) == 50
    decoder = OpusDecoder()
    out = np.concatenate(
        [
            f.to_ndarray().reshape(-1)[::2]  # left channel, 48 kHz
            for i, p in enumerate(packets)
            for f in decoder.decode(JitterFrame(data=p, timestamp=i * 960))
        ]
    ).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(out[4800:]))
    assert abs(np.argmax(spectrum) * 48000 / out[4800:].size - 440) < 3
    rms = np.sqrt(np.mean(out[4800:] ** 2))
    assert 0.8 * 6000 / np.sqrt(2) < rms < 1.2 * 6000 / np.sqrt(2)
    silent = OpusDecoder().decode(JitterFrame(data=opus_silence(), timestamp=0))
    assert len(opus_silence()) < 10 and not silent[0].to_ndarray().any()


async def test_echo_comes_back_recognisably_over_two_opus_legs() -> None:
    cfg = EmulatorConfig(api_key=KEY, reply="echo", latency_ms=50)
    async with running(cfg) as emu, call(emu) as (s, rec, listener):
        await rec.wait_for("session.updated")
        sent = speech("Testing one two three, can you hear me?")
        await say(s, sent)
        await rec.wait_for("output_audio_buffer.stopped", limit_s=20)
        heard = listener.audio().astype(np.float64)
        ref = sent.astype(np.float64)
        # align by cross-correlation (FFT), then compare waveforms: normalised correlation
        n = 1 << (heard.size + ref.size).bit_length()
        xcorr = np.fft.irfft(np.fft.rfft(heard, n) * np.conj(np.fft.rfft(ref, n)), n)
        lag = int(np.argmax(xcorr[: heard.size - ref.size]))
        seg = heard[lag : lag + ref.size]
        similarity = float(seg @ ref) / (np.linalg.norm(seg) * np.linalg.norm(ref))
        assert similarity > 0.8, similarity  # two Opus legs and resampling, still the same words
        stats = await emu_stats(emu)
        assert stats["calls"] == 1 and stats["frames_received"] > 100


async def emu_stats(emu: Emulator) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"{emu.server.url}/emulator/stats")
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result


# ------------------------------------------------------------------ a G.711 leg


def _g711_session(codec: str) -> dict[str, Any]:
    fmt = {"format": {"type": f"audio/{codec}"}}
    audio = SESSION.get("audio", {})
    return {
        **SESSION,
        "audio": {
            "input": {**audio.get("input", {}), **fmt},
            "output": {**audio.get("output", {}), **fmt},
        },
    }


@pytest.mark.parametrize("codec", ["pcmu", "pcma"])
async def test_a_g711_session_talks_in_g711_both_ways(codec: str) -> None:
    from gateway.audio.g711 import alaw_to_array, array_to_ulaw, ulaw_to_alaw, ulaw_to_array
    from gateway.audio.resample import StreamResampler
    from gateway.realtime.tracks import EncodedAudio

    async with running() as emu:
        s = RealtimeSession(emu.config(), _g711_session(codec), codec=codec)  # type: ignore[arg-type]
        await s.open()
        rec = Recorder(s)
        try:
            assert s.audio_codec == f"audio/{codec.upper()}"
            [emu_call] = emu.state.calls.values()
            assert emu_call.codec == f"audio/{codec}"
            pcm8k = StreamResampler(24000, 8000).process(speech("Hello, what time is it?"))
            pcm8k = np.concatenate((pcm8k, np.zeros(8000, np.int16)))
            ulaw = array_to_ulaw(pcm8k[: pcm8k.size // 160 * 160])
            wire = ulaw if codec == "pcmu" else ulaw_to_alaw(ulaw)
            frames = [wire[i : i + 160] for i in range(0, len(wire), 160)]

            async def talk() -> None:
                for f in frames:  # in real time, as a carrier delivers it
                    s.push_audio(f)
                    await asyncio.sleep(0.02)

            talker = asyncio.create_task(talk())
            await rec.wait_for("input_audio_buffer.speech_started")  # the emulator heard speech
            loud = 0
            async with asyncio.timeout(20):
                async for audio in s.model_audio():
                    assert isinstance(audio, EncodedAudio) and audio.codec == codec
                    decode = ulaw_to_array if codec == "pcmu" else alaw_to_array
                    loud += int(np.abs(decode(audio.payload)).max() > 300)
                    if loud == 25:  # half a second of the answer, as G.711 straight from RTP
                        break
            await talker
        finally:
            await s.close()
            await rec.aclose()


async def test_a_g711_format_on_an_opus_leg_is_refused_at_creation_and_on_update() -> None:
    async with running() as emu:
        s = RealtimeSession(emu.config(), _g711_session("pcmu"))  # an Opus leg
        with pytest.raises(UpstreamRefused, match=r"audio\.input\.format") as refused:
            await s.open()
        assert refused.value.status == 400 and refused.value.code == "invalid_value"

        s = RealtimeSession(emu.config(), _g711_session("pcmu"), codec="pcmu")
        await s.open()
        try:
            rec = Recorder(s)
            s.send(rt.session_update(_g711_session("pcma")))
            error = await rec.wait_for("error")
            assert error["error"]["code"] == "invalid_value"
            assert error["error"]["param"] == "session.audio.input.format"
            await rec.aclose()
        finally:
            await s.close()
