"""The call core on its own: inputs in, effects out; no sockets, no tasks, no sleeps.

Time is a number the test passes in. The cases are tables: one barge-in policy for every
speech source in every turn state, drain, wrap-up, the lifecycle's legal and illegal moves.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from gateway.audio.g711 import pcm16_to_ulaw
from gateway.audio.tts import CALLER_VOICE, synthesizer
from gateway.bridge import answering as ans
from gateway.bridge import machine as m
from gateway.bridge.core import (
    LIFECYCLE,
    Bind,
    CallConfig,
    CallCore,
    CarrierAction,
    Effect,
    EndCall,
    Phase,
    PushAudio,
    ReplaceSession,
    RetrySetup,
    ToCarrier,
    ToUpstream,
    WriteRecording,
)
from gateway.errors import (
    CarrierProtocolError,
    CloseCode,
    InternalError,
    UpstreamCodecRefused,
    UpstreamLost,
    UpstreamRefused,
    UpstreamTimeout,
)
from gateway.observability import CallLogger, Metrics
from gateway.realtime import events as rt
from gateway.telephony.messages import (
    ClearAudio,
    Connected,
    Dtmf,
    Mark,
    Media,
    PlayAudio,
    PlayMark,
    Start,
    Stop,
)
from gateway.tracing import CallTrace

SID = "MZ1"
LOG = CallLogger(logging.getLogger("tests.core"))


def ev(type_: str, **fields: Any) -> rt.ServerEvent:
    return rt.parse_server_event(json.dumps({"type": type_, "event_id": "ev", **fields}))


def start_msg() -> Start:
    return Start(SID, "CA1", "AC1", ("inbound",), {"call_token": "t"})


def media(seq: int, pcm8k: npt.NDArray[np.int16]) -> Media:
    return Media(SID, seq, seq, 20 * seq, pcm16_to_ulaw(pcm8k.tobytes()))


QUIET = np.zeros(160, dtype=np.int16)
LOUD_24K = (8000 * np.sin(2 * np.pi * 440 * np.arange(480) / 24000)).astype(np.int16)


def upstream(effects: Sequence[Effect]) -> list[str]:
    return [e.event["type"] for e in effects if isinstance(e, ToUpstream)]


def carrier(effects: Sequence[Effect]) -> list[type]:
    return [type(e.msg) for e in effects if isinstance(e, ToCarrier)]


@dataclass
class Call:
    """A core driven to LIVE, with the time the test moves."""

    core: CallCore
    now: float = 1.0

    def at(self, dt: float = 0.02) -> float:
        self.now += dt
        return self.now

    def event(self, type_: str, **fields: Any) -> list[Effect]:
        return self.core.upstream_event(ev(type_, **fields), self.at())

    def model_frames(self, n: int) -> list[Effect]:
        out: list[Effect] = []
        for _ in range(n):
            now = self.at()
            out += self.core.model_audio(LOUD_24K, now, now)
        return out

    def echo_marks(self, effects: Sequence[Effect]) -> list[Effect]:
        out: list[Effect] = []
        for e in effects:
            if isinstance(e, ToCarrier) and isinstance(e.msg, PlayMark):
                out += self.core.carrier_message(Mark(SID, 99, e.msg.name), self.at())
        return out

    # --- turn states ---

    def responding(self) -> None:
        self.event("response.created", response={"id": "resp_1", "object": "realtime.response"})
        self.event(
            "response.output_item.added",
            response_id="resp_1",
            output_index=0,
            item={"id": "item_1", "type": "message", "role": "assistant"},
        )

    def speaking(self) -> list[Effect]:
        self.responding()
        self.event("output_audio_buffer.started", response_id="resp_1")
        return self.model_frames(10)

    def draining(self) -> list[Effect]:
        sent = self.speaking()
        sent += self.event("output_audio_buffer.stopped", response_id="resp_1")
        self.event("response.done", response={"id": "resp_1", "status": "completed"})
        return sent


def live(**config: Any) -> Call:
    core = CallCore(metrics=Metrics(), log=LOG, now=0.0, wall_now=1_700_000_000.0)
    assert core.carrier_message(Connected("Call", "1.0.0"), 0.0) == []
    effects = core.carrier_message(start_msg(), 0.0)
    assert effects == [Bind(start_msg())] and core.phase is Phase.BINDING
    core.bound(
        CallConfig(**config), called="+1555", caller="+1666", log=LOG, trace=CallTrace(), now=0.0
    )
    core.session_opening()
    core.session_ready("rtc_1", 0.5)
    assert core.phase is Phase.LIVE
    return Call(core)


# --- one barge-in policy ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech_8k() -> npt.NDArray[np.int16]:
    pcm: npt.NDArray[np.int16] = synthesizer().synthesize(
        "Hello, I would like to order a cake please.", CALLER_VOICE, 8000
    )
    return pcm


def server_speech(call: Call, _speech: npt.NDArray[np.int16]) -> list[Effect]:
    return call.event("input_audio_buffer.speech_started", audio_start_ms=900, item_id="item_u")


def keypad(call: Call, _speech: npt.NDArray[np.int16]) -> list[Effect]:
    return call.core.carrier_message(Dtmf(SID, 50, "#"), call.at())


def local_speech(call: Call, speech: npt.NDArray[np.int16]) -> list[Effect]:
    """The caller's real (synthesized) voice through the local VAD, frame by frame."""
    out: list[Effect] = []
    for i in range(0, speech.size - 160, 160):
        out += [e for e in call.core.carrier_message(media(i, speech[i : i + 160]), call.at())]
    return out


SOURCES = {"server": server_speech, "dtmf": keypad, "local": local_speech}


@pytest.mark.parametrize(
    ("state", "source", "interrupts"),
    [
        # the assistant is audible: every source interrupts
        ("speaking", "server", True),
        ("speaking", "dtmf", True),
        ("speaking", "local", True),
        ("draining", "server", True),
        ("draining", "dtmf", True),
        ("draining", "local", True),
        # a response is on its way, nothing audible yet: only the sources that are sure
        ("responding", "server", True),
        ("responding", "dtmf", True),
        ("responding", "local", False),
        # nothing plays: the caller simply has the floor
        ("listening", "server", False),
        ("listening", "dtmf", False),
        ("listening", "local", False),
    ],
)
def test_one_barge_in_policy_for_every_speech_source(
    state: str, source: str, interrupts: bool, speech_8k: npt.NDArray[np.int16]
) -> None:
    call = live(local_barge_in=True)
    if state != "listening":
        getattr(call, state)()
    before = call.core.machine.state
    out = SOURCES[source](call, speech_8k)
    if interrupts:
        assert call.core.machine.state is m.State.INTERRUPTED
        assert call.core.stats.barge_ins == 1
        audible = state in ("speaking", "draining")
        assert (ClearAudio in carrier(out)) is audible
        sent = upstream(out)
        if state != "draining":  # a drained response is done: nothing to cancel
            assert "response.cancel" in sent
        if state in ("speaking", "responding"):  # upstream may still hold its audio
            assert "output_audio_buffer.clear" in sent
            assert sent.index("response.cancel") < sent.index("output_audio_buffer.clear")
    else:
        assert call.core.machine.state is before
        assert call.core.stats.barge_ins == 0
        assert ClearAudio not in carrier(out)
        assert "response.cancel" not in upstream(out)


def test_after_a_barge_in_the_cancelled_response_stays_muted_and_the_next_one_plays() -> None:
    call = live()
    call.speaking()
    call.event("input_audio_buffer.speech_started", audio_start_ms=900, item_id="item_u")
    assert call.model_frames(5) == []  # late frames of the cancelled answer
    assert call.core.stats.muted_frames == 5
    call.event("output_audio_buffer.started", response_id="resp_1")
    assert call.model_frames(1) == []
    call.event("response.created", response={"id": "resp_2", "object": "realtime.response"})
    call.event("output_audio_buffer.started", response_id="resp_2")
    assert PlayAudio in carrier(call.model_frames(1))


def test_truncate_names_only_what_the_carrier_reported_played() -> None:
    call = live(truncate_to_heard=True)
    sent = call.speaking()  # 10 frames of 20 ms, a mark every 100 ms
    marks = [e for e in sent if isinstance(e, ToCarrier) and isinstance(e.msg, PlayMark)]
    assert len(marks) == 2
    call.echo_marks(marks[:1])  # the caller heard the first 100 ms
    out = call.event("input_audio_buffer.speech_started", audio_start_ms=900, item_id="item_u")
    truncate = [e.event for e in out if isinstance(e, ToUpstream)][-1]
    assert truncate["type"] == "conversation.item.truncate"
    assert truncate["item_id"] == "item_1" and truncate["audio_end_ms"] == 100


# --- playback finished: one owner -------------------------------------------------------------


def test_playback_is_finished_when_the_carrier_echoes_the_last_mark() -> None:
    call = live()
    sent = call.draining()
    assert call.core.machine.state is m.State.DRAINING
    assert call.core.machine.assistant_audible
    marks = [e for e in sent if isinstance(e, ToCarrier) and isinstance(e.msg, PlayMark)]
    call.echo_marks(marks[:-1])
    assert call.core.machine.state is m.State.DRAINING  # the carrier still holds the tail
    call.echo_marks(marks[-1:])
    assert call.core.machine.state is m.State.LISTENING
    assert call.core.machine.assistant_quiet


def test_late_frames_while_draining_are_marked_at_once_so_the_drain_can_finish() -> None:
    call = live()
    sent = call.draining()
    late = call.model_frames(1)  # RTP trails the data channel's "stopped"
    assert carrier(late) == [PlayAudio, PlayMark]
    call.echo_marks(sent)
    assert call.core.machine.state is m.State.DRAINING
    call.echo_marks(late)
    assert call.core.machine.state is m.State.LISTENING


def test_opus_decoded_audio_reaches_the_carrier_in_one_hop() -> None:
    call = live()
    call.responding()
    call.event("output_audio_buffer.started", response_id="resp_1")
    stereo = np.repeat(np.resize(LOUD_24K, 960), 2).astype(np.int16)  # 20 ms, 48 kHz, L=R
    sent: list[Effect] = []
    for _ in range(5):
        now = call.at()
        sent += call.core.model_audio(stereo, now, now, rate=48000, channels=2)
    frames = [e.msg for e in sent if isinstance(e, ToCarrier) and isinstance(e.msg, PlayAudio)]
    assert len(frames) == 5 and all(len(f.payload) == 160 for f in frames)


@pytest.mark.parametrize("codec", ["pcmu", "pcma"])
def test_a_g711_leg_passes_the_bytes_through_both_ways(codec: str) -> None:
    from gateway.audio.g711 import alaw_to_ulaw, ulaw_to_alaw

    call = live(upstream_codec=codec)
    loud = (8000 * np.sin(np.arange(160) / 3)).astype(np.int16)
    msg = media(1, loud)
    pushed = [e for e in call.core.carrier_message(msg, call.at()) if isinstance(e, PushAudio)]
    wire = msg.payload if codec == "pcmu" else ulaw_to_alaw(msg.payload)
    assert [p.frame for p in pushed] == [wire]  # no decode, no resample: the carrier's bytes
    if codec == "pcmu":
        assert pushed[0].frame is msg.payload

    call.responding()
    call.event("output_audio_buffer.started", response_id="resp_1")
    now = call.at()
    sent = call.core.model_payload(wire, codec, now, now)  # type: ignore[arg-type]
    played = [e.msg for e in sent if isinstance(e, ToCarrier) and isinstance(e.msg, PlayAudio)]
    expected = wire if codec == "pcmu" else alaw_to_ulaw(wire)
    assert [p.payload for p in played] == [expected]
    silence = b"\xff" * 160 if codec == "pcmu" else b"\xd5" * 160
    call.event("output_audio_buffer.stopped", response_id="resp_1")
    call.event("response.done", response={"id": "resp_1", "status": "completed"})
    call.echo_marks(sent)
    now = call.at()
    assert call.core.model_payload(silence, codec, now, now) == []  # silence between answers


def test_silence_between_answers_is_not_forwarded() -> None:
    call = live()
    now = call.at()
    assert call.core.model_audio(np.zeros(480, dtype=np.int16), now, now) == []
    call.speaking()
    now = call.at()
    assert carrier(call.core.model_audio(np.zeros(480, dtype=np.int16), now, now)) == [PlayAudio]


# --- wrap-up and call control -----------------------------------------------------------------


def test_the_maximum_duration_wraps_up_then_hangs_up_once_the_assistant_is_quiet() -> None:
    call = live(max_call_seconds=60)
    assert call.core.next_deadline() == pytest.approx(60.5)
    call.now = 60.5
    out = call.core.tick(call.now)
    assert upstream(out) == ["conversation.item.create", "response.create"]
    sent = call.draining()  # the goodbye
    out = call.echo_marks(sent)
    assert [type(e) for e in out if isinstance(e, CarrierAction | EndCall)] == [CarrierAction]
    action = next(e.action for e in out if isinstance(e, CarrierAction))
    done = call.core.carrier_action_done(action, None, call.at())
    assert done == [EndCall()]
    assert call.core.end is not None and call.core.end.outcome == "completed"
    assert "maximum call duration (60 s)" in call.core.end.reason


def test_a_wrap_up_the_assistant_never_finishes_is_cut_off_by_the_hard_stop() -> None:
    call = live(max_call_seconds=60)
    call.now = 60.5
    call.core.tick(call.now)
    call.responding()  # the goodbye never ends
    wrap_up = call.core.next_deadline()
    assert wrap_up is not None
    out = call.core.tick(wrap_up)
    hang_up = [e for e in out if isinstance(e, CarrierAction)]
    assert hang_up and EndCall() not in out  # asked the carrier to hang up...
    hard_stop = call.core.next_deadline()
    assert hard_stop is not None and hard_stop > wrap_up
    assert call.core.tick(hard_stop) == [EndCall()]  # ...which never answered: the stream closes
    assert call.core.end is not None and "maximum call duration" in call.core.end.reason


# --- keypad -----------------------------------------------------------------------------------


def test_keys_typed_while_an_answer_is_produced_join_it_instead_of_asking_for_more() -> None:
    call = live()
    first = call.core.carrier_message(Dtmf(SID, 2, "#"), call.at())
    assert upstream(first) == ["conversation.item.create", "response.create"]
    for seq in (3, 4, 5):  # the caller hammers the key
        assert upstream(call.core.carrier_message(Dtmf(SID, seq, "#"), call.at())) == [
            "conversation.item.create"
        ]
    call.event("response.created", response={"id": "resp_k", "object": "realtime.response"})
    out = call.event("response.done", response={"id": "resp_k", "status": "completed"})
    assert upstream(out) == ["response.create"]  # one answer for all three
    assert call.core.stats.keypad_coalesced == 3
    call.event("response.created", response={"id": "resp_k2", "object": "realtime.response"})
    out = call.event("response.done", response={"id": "resp_k2", "status": "completed"})
    assert upstream(out) == []


def test_keys_typed_before_the_session_is_ready_are_delivered_when_it_is() -> None:
    core = CallCore(metrics=Metrics(), log=LOG, now=0.0, wall_now=1_700_000_000.0)
    core.carrier_message(start_msg(), 0.0)
    core.bound(CallConfig(), called="+1555", caller=None, log=LOG, trace=CallTrace(), now=0.0)
    assert core.carrier_message(Dtmf(SID, 2, "#"), 0.1) == []
    core.session_opening()
    out = core.session_ready("rtc_1", 0.5)
    assert upstream(out) == ["conversation.item.create", "response.create"]


# --- setup, replacement -----------------------------------------------------------------------


def test_setup_buffers_caller_audio_and_replays_it_from_shortly_before_speech() -> None:
    core = CallCore(metrics=Metrics(), log=LOG, now=0.0, wall_now=1_700_000_000.0)
    core.carrier_message(start_msg(), 0.0)
    core.bound(
        CallConfig(greeting="Hello"), called="+1", caller=None, log=LOG, trace=CallTrace(), now=0
    )
    loud = (8000 * np.sin(np.arange(160) / 3)).astype(np.int16)
    frames = [QUIET] * 40 + [loud] * 3
    for i, f in enumerate(frames):
        assert core.carrier_message(media(i, f), i * 0.02) == []
    core.session_opening()
    out = core.session_ready("rtc_1", 1.0)
    pushed = [e for e in out if isinstance(e, PushAudio)]
    assert len(pushed) == 15 + 3  # the lead-in, then the speech
    assert upstream(out)[-1] == "response.create"  # the greeting after the caller's audio
    assert isinstance(out[-1], ToUpstream) and all(isinstance(e, PushAudio) for e in out[:-1])


@pytest.mark.parametrize(
    ("failure", "retried"),
    [
        (UpstreamRefused("busy", status=429), True),
        (UpstreamTimeout("slow"), True),
        (UpstreamRefused("bad key", status=401), False),
        (UpstreamCodecRefused("no PCMU", code="codec_refused"), False),
    ],
)
def test_setup_failures_are_retried_only_when_worth_it(
    failure: UpstreamRefused | UpstreamTimeout | UpstreamCodecRefused, retried: bool
) -> None:
    core = CallCore(metrics=Metrics(), log=LOG, now=0.0, wall_now=1_700_000_000.0)
    core.carrier_message(start_msg(), 0.0)
    core.bound(CallConfig(), called="+1", caller=None, log=LOG, trace=CallTrace(), now=0.0)
    core.session_opening()
    out = core.setup_failed(failure, 0.1)
    assert any(isinstance(e, RetrySetup) for e in out) is retried
    assert (EndCall() in out) is not retried
    if not retried:
        assert core.end is not None and core.end.close_code is not CloseCode.NORMAL


def test_a_lost_session_is_replaced_once_then_the_call_ends() -> None:
    call = live()
    call.speaking()
    out = call.core.session_lost(UpstreamLost("data channel closed"), call.at())
    assert ClearAudio in carrier(out)  # what the lost session said stops at once
    assert ReplaceSession(rotating=False) in out
    assert call.core.phase is Phase.REPLACING
    out = call.core.session_ready("rtc_2", call.at())
    assert call.core.phase is Phase.LIVE
    assert upstream(out)[-1] == "conversation.item.create"  # "the call continues", no greeting
    out = call.core.session_lost(UpstreamLost("again"), call.at())
    assert out == [EndCall()]
    assert call.core.end is not None and call.core.end.outcome != "completed"


def test_an_old_session_is_rotated_between_turns_and_its_audio_left_to_play() -> None:
    call = live(session_max_age_s=30)
    call.speaking()
    call.now = 40
    out = call.event("output_audio_buffer.stopped", response_id="resp_1")
    assert ReplaceSession(rotating=True) in out
    assert ClearAudio not in carrier(out)
    assert call.core.stats.rotations == 1


# --- lifecycle --------------------------------------------------------------------------------


def test_every_phase_can_end_and_ended_is_final() -> None:
    for phase, moves in LIFECYCLE.items():
        if phase not in (Phase.ENDING, Phase.ENDED):
            assert Phase.ENDING in moves, phase
    assert LIFECYCLE[Phase.ENDED] == frozenset()


def test_an_illegal_move_is_our_bug_and_says_which() -> None:
    core = CallCore(metrics=Metrics(), log=LOG, now=0.0, wall_now=1_700_000_000.0)
    with pytest.raises(InternalError, match="awaiting_start -> live is illegal"):
        core.session_ready("rtc_1", 0.0)


@pytest.mark.parametrize(
    ("first", "outcome", "code"),
    [
        (Media(SID, 1, 1, 0, b"\xff" * 160), "carrier_error", CloseCode.PROTOCOL_ERROR),
        (Stop(SID, 2, "CA1", "AC1"), "carrier_error", CloseCode.PROTOCOL_ERROR),
    ],
)
def test_a_stream_that_does_not_start_with_start_ends_with_the_remote_to_blame(
    first: Media | Stop, outcome: str, code: CloseCode
) -> None:
    core = CallCore(metrics=Metrics(), log=LOG, now=0.0, wall_now=1_700_000_000.0)
    out = core.carrier_message(first, 0.0)
    assert out == [EndCall()] and core.phase is Phase.ENDING
    assert core.end is not None
    assert (core.end.outcome, core.end.close_code) == (outcome, code)


def test_no_start_in_time_is_its_own_outcome() -> None:
    core = CallCore(metrics=Metrics(), log=LOG, now=0.0, wall_now=1_700_000_000.0)
    core.start_timed_out(10, 10.0)
    assert core.end is not None and core.end.outcome == "no_start"
    assert "no 'start' within 10 s" in core.end.reason


def test_the_first_end_is_kept_and_close_finishes_the_lifecycle() -> None:
    call = live()
    call.core.carrier_message(Stop(SID, 9, "CA1", "AC1"), call.at())
    call.core.carrier_gone(call.at())  # the socket then closes: not a second cause
    assert call.core.end is not None and call.core.end.reason == "carrier sent stop"
    call.core.close(call.at())
    assert call.core.phase is Phase.ENDED
    assert call.core.summary(call.now)["outcome"] == "completed"


def test_a_hopeless_stream_ends_after_many_bad_frames_in_a_row() -> None:
    call = live()
    for _ in range(49):
        assert call.core.carrier_error(CarrierProtocolError("bad json"), call.at()) == []
    assert call.core.carrier_error(CarrierProtocolError("bad json"), call.at()) == [EndCall()]
    assert call.core.end is not None and call.core.end.outcome == "carrier_error"


# --- recording --------------------------------------------------------------------------------


def test_a_recording_never_runs_ahead_of_the_call_whatever_the_timestamps_say() -> None:
    call = live(record=True)
    loud = (8000 * np.sin(np.arange(160) / 3)).astype(np.int16)
    for i in range(30):  # 20 ms apart in real time; the timestamps jump 59 s each
        frame = Media(SID, i, i, 59_000 * i, pcm16_to_ulaw(loud.tobytes()))
        call.core.carrier_message(frame, call.at())
    assert call.core.recording_failed
    tail = [e for e in call.core.close(call.at()) if isinstance(e, WriteRecording)]
    seconds = sum(e.samples.shape[0] for e in tail) / 8000
    assert seconds < 2, f"{seconds:.1f} s of recording for a call of 0.6 s"


def test_a_recording_follows_a_carrier_clock_within_its_jitter() -> None:
    call = live(record=True)
    loud = (8000 * np.sin(np.arange(160) / 3)).astype(np.int16)
    for i in range(50):  # the carrier's timestamps run up to 300 ms early: jitter, kept
        frame = Media(SID, i, i, 20 * i + (300 if i % 2 else 0), pcm16_to_ulaw(loud.tobytes()))
        call.core.carrier_message(frame, call.at())
    assert not call.core.recording_failed


# --- outbound: who answered ------------------------------------------------------------------


def outbound_bound(greeting: str | None = "Say hello") -> CallCore:
    """An outbound call's core: bound, the callee's hello buffered, no session yet."""
    core = CallCore(metrics=Metrics(), log=LOG, now=0.0, wall_now=1_700_000_000.0)
    core.carrier_message(start_msg(), 0.0)
    core.bound(
        CallConfig(greeting=greeting, setup_timeout_s=5.0, setup_buffer_frames=500),
        called="default",
        caller="+1666",
        log=LOG,
        trace=CallTrace(),
        now=0.0,
    )
    loud = (8000 * np.sin(np.arange(160) / 3)).astype(np.int16)
    for i, f in enumerate([QUIET] * 10 + [loud] * 5):
        core.carrier_message(media(i, f), i * 0.02)
    return core


@pytest.mark.parametrize(("speak_first", "greets"), [(True, True), (False, False)])
def test_a_human_gets_the_buffered_hello_and_a_greeting_only_if_the_profile_speaks_first(
    speak_first: bool, greets: bool
) -> None:
    core = outbound_bound()
    assert core.answer_decided(ans.Converse(speak_first, "human"), 3000.0, now=8.0) == []
    assert core.setup_deadline == 13.0  # the session's own budget starts at the verdict
    core.session_opening()
    out = core.session_ready("rtc_1", 8.2)
    assert len([e for e in out if isinstance(e, PushAudio)]) >= 5  # the hello was kept
    assert ("response.create" in upstream(out)) is greets
    record = core.record(1_700_000_010.0, None)
    assert (record.direction, record.answered_by, record.answered_by_ms) == (
        "outbound",
        "human",
        3000.0,
    )
    assert record.voicemail_left is None


def test_a_machine_gets_the_message_instead_of_its_own_greeting_then_a_hang_up() -> None:
    core = outbound_bound()
    core.answer_decided(ans.LeaveVoicemail("Call us back.", "machine_end_beep"), 4000.0, now=9.0)
    core.session_opening()
    out = core.session_ready("rtc_1", 9.2)
    assert not any(isinstance(e, PushAudio) for e in out)  # the machine's greeting is dropped
    [note, ask] = [e.event for e in out if isinstance(e, ToUpstream)]
    assert note["type"] == "conversation.item.create" and ask["type"] == "response.create"
    assert "Call us back." in ask["response"]["instructions"]
    call = Call(core, now=9.2)
    out = call.echo_marks(call.draining())  # the message, said and heard to its end
    [action] = [e.action for e in out if isinstance(e, CarrierAction)]
    assert action.reason == "voicemail left"
    assert core.carrier_action_done(action, None, call.at()) == [EndCall()]
    assert core.end is not None and core.end.reason == "voicemail left"
    assert core.record(1_700_000_020.0, None).voicemail_left is True


def test_a_hang_up_rule_ends_the_call_before_any_session() -> None:
    core = outbound_bound()
    out = core.answer_decided(ans.HangUp("machine", "machine_start"), 2000.0, now=2.5)
    assert out == [EndCall()] and core.phase is Phase.ENDING
    assert core.end is not None and core.end.outcome == "machine"
    core.close(2.6)
    assert core.record(1_700_000_003.0, None).upstream_call_id == ""
