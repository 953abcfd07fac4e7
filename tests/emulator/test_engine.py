"""The emulator's session state machine, driven directly: a fake clock, synthetic caller audio
(a tone is speech to an energy VAD), every event validated against the openai SDK types."""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from gateway.emulator.config import EngineConfig
from gateway.emulator.engine import Close, Engine, Render
from gateway.emulator.schema import default_session
from gateway.emulator.voice import VoiceRenderer
from tests.emulator.emulator_support import silence, tone_frames, validate_event

RENDERER = VoiceRenderer()


class Harness:
    """Runs an engine the way the runner does: one caller frame in and one assistant frame out
    per 20 ms of (fake) time; renders replies synchronously."""

    def __init__(self, session: dict[str, Any] | None = None, **config: Any) -> None:
        config.setdefault("latency_ms", 100.0)
        self.now = 0.0
        self.engine = Engine(
            default_session("sess_test", 0),
            config=EngineConfig(**config),
            now=self.now,
            rng=random.Random(7),
        )
        self.events: list[dict[str, Any]] = []
        self.closed: list[str] = []
        self.played: list[tuple[float, npt.NDArray[np.int16]]] = []
        self.renders: list[Render] = []
        self.engine.start(self.now)
        self.drain()
        if session is not None:
            self.send({"type": "session.update", "session": session})

    def drain(self) -> None:
        for event in self.engine.events_to_send():
            validate_event(event)
            self.events.append(event)
        for action in self.engine.actions():
            if isinstance(action, Render):
                self.renders.append(action)
                audio = RENDERER.render(action.request)
                self.engine.reply_rendered(action.response_id, audio, self.now)
                self.drain()
            elif isinstance(action, Close):
                self.closed.append(action.reason)

    def send(self, event: dict[str, Any]) -> None:
        self.engine.receive_event(json.dumps(event), self.now)
        self.drain()

    def feed(self, frames: list[Any]) -> None:
        for frame in frames:
            self.now += 0.02
            self.engine.receive_audio(frame, self.now)
            self.engine.tick(self.now)
            out = self.engine.next_output_frame(self.now)
            if out is not None:
                self.played.append((self.now, out))
            self.drain()

    def wait(self, seconds: float) -> None:
        self.feed(silence(seconds))

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def last(self, kind: str) -> dict[str, Any]:
        found = self.of(kind)
        assert found, f"no {kind}; got {self.types()}"
        return found[-1]

    def errors(self) -> list[dict[str, Any]]:
        return [e["error"] for e in self.of("error")]

    def turn(self, speech_s: float = 1.0, after_s: float = 3.0) -> None:
        self.wait(0.5)
        self.feed(tone_frames(speech_s))
        self.wait(after_s)


def test_session_created_comes_first_with_the_defaults() -> None:
    h = Harness()
    [created] = h.events
    assert created["type"] == "session.created"
    session = created["session"]
    assert session["audio"]["output"]["voice"] == "marin"
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert session["output_modalities"] == ["audio"]


def test_session_update_merges_and_rejects_whole_updates_with_ga_errors() -> None:
    h = Harness()
    h.send(
        {
            "type": "session.update",
            "event_id": "c1",
            "session": {
                "type": "realtime",
                "instructions": "Hi.",
                "audio": {"output": {"voice": "ash"}},
            },
        }
    )
    updated = h.last("session.updated")["session"]
    assert updated["instructions"] == "Hi."
    assert updated["audio"]["output"] == {
        "format": {"type": "audio/pcm", "rate": 24000},
        "voice": "ash",
        "speed": 1.0,
    }
    cases = [
        ({"type": "realtime", "voice": "alloy"}, "unknown_parameter", "session.voice"),
        ({"type": "realtime", "modalities": ["audio"]}, "unknown_parameter", "session.modalities"),
        ({"instructions": "x"}, "missing_required_parameter", "session.type"),
        (
            {
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 2}}},
            },
            "invalid_value",
            "session.audio.input.turn_detection.threshold",
        ),
        (
            {"type": "realtime", "audio": {"output": {"voice": "onyx"}}},
            "invalid_value",
            "session.audio.output.voice",
        ),
        ({"type": "realtime", "model": "gpt-realtime-mini"}, "invalid_value", "session.model"),
        ({"type": "realtime", "instructions": 5}, "invalid_type", "session.instructions"),
    ]
    for i, (session, code, param) in enumerate(cases):
        h.send({"type": "session.update", "event_id": f"bad{i}", "session": session})
        err = h.last("error")["error"]
        assert (err["code"], err["param"], err["event_id"]) == (code, param, f"bad{i}"), err
        assert err["type"] == "invalid_request_error"
    # nothing of the rejected updates was applied
    assert h.engine.session["instructions"] == "Hi."
    assert h.engine.session["audio"]["output"]["voice"] == "ash"
    assert len(h.of("session.updated")) == 1


def test_the_voice_is_locked_once_assistant_audio_was_produced() -> None:
    h = Harness(reply="tone")
    h.send(
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"output": {"voice": "coral"}}},
        }
    )
    assert h.errors() == []
    h.send({"type": "response.create"})
    h.wait(2.0)
    assert h.of("output_audio_buffer.started")
    h.send(
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"output": {"voice": "echo"}}},
        }
    )
    assert h.errors()[-1]["code"] == "cannot_update_voice"
    # the same voice again is not a change
    h.send(
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"output": {"voice": "coral"}}},
        }
    )
    assert len(h.errors()) == 1


def test_vad_turn_timing_follows_padding_and_silence_settings() -> None:
    h = Harness(
        {
            "type": "realtime",
            "audio": {
                "input": {
                    "turn_detection": {
                        "type": "server_vad",
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 500,
                    }
                }
            },
        },
        reply="tone",
    )
    h.wait(1.0)
    h.feed(tone_frames(1.0))
    h.wait(0.6)
    started = h.last("input_audio_buffer.speech_started")
    stopped = h.last("input_audio_buffer.speech_stopped")
    # speech from 1000 ms: onset minus 300 ms padding; end = last voice + 500 ms of silence
    assert started["audio_start_ms"] == 700
    assert stopped["audio_end_ms"] == 2500
    committed = h.last("input_audio_buffer.committed")
    assert committed["item_id"] == started["item_id"] == stopped["item_id"]
    assert committed["previous_item_id"] is None
    added = [e for e in h.of("conversation.item.added") if e["item"]["role"] == "user"]
    assert added[0]["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    types = h.types()
    assert (
        types.index("input_audio_buffer.speech_stopped")
        < types.index("input_audio_buffer.committed")
        < types.index("conversation.item.added")
        < types.index("conversation.item.done")
        < types.index("response.created")
    )


def test_response_lifecycle_usage_and_real_time_playout() -> None:
    h = Harness(reply="tone", latency_ms=300)
    h.turn(speech_s=1.0, after_s=3.5)
    types = h.types()
    order = [
        "input_audio_buffer.committed",
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
    pos = 0
    for kind in order:  # each in turn, after the previous one
        assert kind in types[pos:], (kind, types[pos:])
        pos = types.index(kind, pos) + 1
    done = h.last("response.done")["response"]
    assert done["status"] == "completed"
    assert done["conversation_id"].startswith("conv_")
    # a tone as long as the turn (1 s): 50 frames of audio, billed 1 token per 50 ms
    audio_frames = [f for _, f in h.played]
    assert len(audio_frames) == 50
    assert done["usage"]["output_token_details"]["audio_tokens"] == 20
    # input: the 1 s of speech plus padding and the end-of-turn silence, 1 token per 100 ms
    stopped = h.last("input_audio_buffer.speech_stopped")
    started = h.last("input_audio_buffer.speech_started")
    audio_ms = stopped["audio_end_ms"] - started["audio_start_ms"]
    assert done["usage"]["input_token_details"]["audio_tokens"] == audio_ms // 100
    assert done["usage"]["input_token_details"]["text_tokens"] > 0  # instructions
    # first audio comes latency_ms after the end of the turn
    t_commit = 0.5 + 1.0 + 0.5  # lead silence + speech + silence_duration_ms
    assert h.played[0][0] == pytest.approx(t_commit + 0.3, abs=0.021)
    limits = h.last("rate_limits.updated")["rate_limits"]
    assert {r["name"] for r in limits} == {"requests", "tokens"}
    assert all(r["remaining"] < r["limit"] for r in limits)


def test_barge_in_cancels_clears_and_truncates_to_what_was_played() -> None:
    h = Harness(reply="tone", generation_speed=1.0)
    h.turn(speech_s=2.5, after_s=0.9)  # the 2.5 s answer plays for ~0.5 s
    assert h.of("output_audio_buffer.started")
    played_before = len(h.played)
    h.feed(tone_frames(0.5))
    done = h.last("response.done")["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    types = h.types()
    second_start = [i for i, t in enumerate(types) if t == "input_audio_buffer.speech_started"][1]
    assert second_start < types.index("response.done") < types.index("output_audio_buffer.cleared")
    assert "output_audio_buffer.stopped" not in types
    played = len(h.played)
    assert played - played_before <= 4  # the VAD onset, then nothing more
    item_id = done["output"][0]["id"]
    assert done["output"][0]["status"] == "incomplete"
    # the item now holds exactly the audio that was played
    h.send(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": played * 20 + 20,
        }
    )
    assert h.errors()[-1]["code"] == "invalid_value"
    h.send(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": played * 20,
        }
    )
    assert h.last("conversation.item.truncated")["audio_end_ms"] == played * 20


def test_interrupt_response_false_lets_the_answer_play_on() -> None:
    h = Harness(
        {
            "type": "realtime",
            "audio": {
                "input": {"turn_detection": {"type": "server_vad", "interrupt_response": False}}
            },
        },
        reply="tone",
        generation_speed=1.0,
    )
    h.turn(speech_s=2.0, after_s=0.9)
    h.feed(tone_frames(0.5))
    assert len(h.of("input_audio_buffer.speech_started")) == 2
    assert "output_audio_buffer.cleared" not in h.types()
    assert all(e["response"]["status"] != "cancelled" for e in h.of("response.done"))


def test_create_response_false_commits_without_answering() -> None:
    h = Harness(
        {
            "type": "realtime",
            "audio": {
                "input": {"turn_detection": {"type": "server_vad", "create_response": False}}
            },
        }
    )
    h.turn()
    assert h.of("input_audio_buffer.committed")
    assert "response.created" not in h.types()


def test_cancel_and_create_errors_while_idle_or_busy() -> None:
    h = Harness(reply="tone", generation_speed=1.0)
    h.send({"type": "response.cancel", "event_id": "c1"})
    assert h.errors()[-1]["code"] == "response_cancel_not_active"
    assert h.errors()[-1]["event_id"] == "c1"
    h.send({"type": "response.create"})
    h.send({"type": "response.create", "event_id": "c2"})
    err = h.errors()[-1]
    assert err["code"] == "conversation_already_has_active_response"
    assert h.last("response.created")["response"]["id"] in err["message"]
    h.send({"type": "response.cancel"})
    done = h.last("response.done")["response"]
    assert done["status_details"]["reason"] == "client_cancelled"
    assert done["output"] == []  # cancelled before its first output (latency not elapsed)


def test_manual_turns_commit_and_clear() -> None:
    h = Harness({"type": "realtime", "audio": {"input": {"turn_detection": None}}}, reply="tone")
    h.send({"type": "input_audio_buffer.commit", "event_id": "e"})
    assert h.errors()[-1]["code"] == "input_audio_buffer_commit_empty"
    h.feed(tone_frames(1.0))
    assert "input_audio_buffer.speech_started" not in h.types()
    h.send({"type": "input_audio_buffer.clear"})
    assert h.of("input_audio_buffer.cleared")
    h.send({"type": "input_audio_buffer.commit"})
    assert h.errors()[-1]["code"] == "input_audio_buffer_commit_empty"
    h.feed(tone_frames(0.6))
    h.send({"type": "input_audio_buffer.commit"})
    committed = h.last("input_audio_buffer.committed")
    assert "response.created" not in h.types()  # manual mode never answers by itself
    h.send({"type": "response.create"})
    h.wait(1.0)
    assert h.last("response.done")["response"]["status"] == "completed"
    usage = h.last("response.done")["response"]["usage"]
    assert usage["input_token_details"]["audio_tokens"] == 6
    assert committed["item_id"]


def test_a_text_item_gets_a_spoken_answer_about_it() -> None:
    h = Harness()
    h.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "What are your opening hours?"}],
            },
        }
    )
    added = h.last("conversation.item.added")
    assert added["item"]["content"][0]["text"] == "What are your opening hours?"
    assert h.last("conversation.item.done")["item"]["id"] == added["item"]["id"]
    h.send({"type": "response.create"})
    h.wait(3.0)
    done = h.last("response.done")["response"]
    transcript = done["output"][0]["content"][0]["transcript"]
    assert transcript == "You wrote: What are your opening hours. This is marin."
    assert len(h.played) > 50  # over a second of synthesized speech


def test_instructions_in_response_create_speak_a_greeting() -> None:
    h = Harness()
    h.send(
        {
            "type": "response.create",
            "response": {"instructions": 'Greet the caller: "Welcome to Acme."'},
        }
    )
    h.wait(2.0)
    assert h.last("response.output_audio_transcript.done")["transcript"] == "Welcome to Acme."
    h.send(
        {
            "type": "response.create",
            "response": {"instructions": "Introduce yourself warmly. Then wait."},
        }
    )
    h.wait(3.0)
    assert h.last("response.output_audio_transcript.done")["transcript"] == (
        "Hello, this is marin. Introduce yourself warmly."
    )


def test_item_errors_and_retrieve_delete() -> None:
    h = Harness()
    # which items are refused is test_items' concern; here: the refusal is an error event
    h.send({"type": "conversation.item.create", "item": {"role": "user"}})
    assert h.errors()[-1]["code"] == "missing_required_parameter"
    assert h.errors()[-1]["param"] == "item.type"
    h.send(
        {
            "type": "conversation.item.create",
            "item": {
                "id": "item_a",
                "type": "message",
                "role": "system",
                "content": [{"type": "input_text", "text": "Be brief."}],
            },
        }
    )
    h.send({"type": "conversation.item.retrieve", "item_id": "item_a"})
    assert h.last("conversation.item.retrieved")["item"]["id"] == "item_a"
    h.send(
        {
            "type": "conversation.item.create",
            "previous_item_id": "nope",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "x"}],
            },
        }
    )
    assert h.errors()[-1]["code"] == "item_not_found"
    h.send({"type": "conversation.item.delete", "item_id": "item_a"})
    assert h.last("conversation.item.deleted")["item_id"] == "item_a"
    h.send(
        {
            "type": "conversation.item.truncate",
            "item_id": "item_a",
            "content_index": 0,
            "audio_end_ms": 0,
        }
    )
    assert h.errors()[-1]["code"] == "item_not_found"


def test_protocol_errors_for_unknown_events_and_bad_json() -> None:
    h = Harness()
    h.engine.receive_event("{not json", h.now)
    h.drain()
    assert h.errors()[-1]["code"] == "invalid_json"
    h.send({"type": "response.audio.delta", "event_id": "x"})
    err = h.errors()[-1]
    assert (err["code"], err["param"], err["event_id"]) == ("invalid_value", "type", "x")
    h.send({"event_id": "y"})
    assert h.errors()[-1]["code"] == "missing_required_parameter"
    h.send({"type": "response.create", "response": {"modalities": ["audio"]}})
    assert h.errors()[-1]["param"] == "response.modalities"
    h.send({"type": "input_audio_buffer.clear", "extra": 1})
    assert h.errors()[-1]["code"] == "unknown_parameter"


def test_scripted_function_call_and_spoken_follow_up() -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city", "unit"],
        },
    }
    h = Harness(
        {"type": "realtime", "tools": [tool]}, tool_call="get_weather", tool_call_after_turn=1
    )
    h.turn(after_s=1.0)
    done = h.last("response.done")["response"]
    [item] = done["output"]
    assert item["type"] == "function_call" and item["status"] == "completed"
    assert json.loads(item["arguments"]) == {"city": "example", "unit": "c"}
    args_done = h.last("response.function_call_arguments.done")
    assert args_done["arguments"] == item["arguments"]
    assert args_done["call_id"] == item["call_id"]
    deltas = "".join(e["delta"] for e in h.of("response.function_call_arguments.delta"))
    assert deltas == item["arguments"]
    assert "output_audio_buffer.started" not in h.types()
    h.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "function_call_output",
                "call_id": item["call_id"],
                "output": "Sunny, 21 degrees",
            },
        }
    )
    h.send({"type": "response.create"})
    h.wait(3.0)
    follow = h.last("response.output_audio_transcript.done")["transcript"]
    assert follow == "The get_weather tool says: Sunny, 21 degrees."
    # only once: the next turn is answered normally
    h.turn()
    assert h.last("response.done")["response"]["output"][0]["type"] == "message"


def test_idle_timeout_commits_the_silence_and_prompts_the_caller() -> None:
    h = Harness(
        {
            "type": "realtime",
            "audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000}}},
        }
    )
    h.turn(after_s=0.0)
    while not h.of("output_audio_buffer.stopped"):
        h.wait(0.02)
    stopped_at = len(h.events)
    h.wait(4.9)
    assert "input_audio_buffer.timeout_triggered" not in h.types()  # counted from playback end
    h.wait(0.2)
    timeout = h.last("input_audio_buffer.timeout_triggered")
    assert timeout["audio_end_ms"] - timeout["audio_start_ms"] >= 5000
    later = h.types()[stopped_at:]
    assert (
        later.index("input_audio_buffer.timeout_triggered")
        < later.index("input_audio_buffer.committed")
        < later.index("response.created")
    )
    h.wait(2.0)
    assert h.last("response.output_audio_transcript.done")["transcript"] == "Are you still there?"


def test_the_session_expires_after_its_maximum_duration() -> None:
    h = Harness(max_session_s=2.0)
    h.wait(2.1)
    err = h.errors()[-1]
    assert (err["type"], err["code"]) == ("invalid_request_error", "session_expired")
    assert h.closed == ["session expired"]
    h.send({"type": "response.create"})
    assert h.types()[-1] == "error"  # nothing after the end


def test_text_only_responses_stream_text_and_no_audio() -> None:
    h = Harness({"type": "realtime", "output_modalities": ["text"]})
    h.send({"type": "response.create"})
    h.wait(1.0)
    done = h.last("response.done")["response"]
    assert done["output"][0]["content"][0]["type"] == "output_text"
    text = h.last("response.output_text.done")["text"]
    assert "".join(e["delta"] for e in h.of("response.output_text.delta")) == text
    assert not h.played and not h.renders


def test_out_of_band_response_stays_out_of_the_conversation() -> None:
    h = Harness(reply="tone")
    h.send(
        {"type": "response.create", "response": {"conversation": "none", "metadata": {"k": "v"}}}
    )
    h.wait(2.0)
    done = h.last("response.done")["response"]
    assert done["conversation_id"] is None and done["metadata"] == {"k": "v"}
    assert not [e for e in h.of("conversation.item.added") if e["item"].get("role") == "assistant"]


def test_echo_replays_the_committed_caller_audio() -> None:
    h = Harness(reply="echo")
    h.turn(speech_s=1.0, after_s=3.0)
    [render] = h.renders
    echo = render.request.echo
    assert echo is not None
    stopped = h.last("input_audio_buffer.speech_stopped")["audio_end_ms"]
    started = h.last("input_audio_buffer.speech_started")["audio_start_ms"]
    assert echo.size == (stopped - started) * 24
    played = np.concatenate([f for _, f in h.played])[: echo.size]
    assert np.array_equal(played, echo)


def test_append_feeds_the_same_turn_detection() -> None:
    import base64

    h = Harness(reply="tone")
    pcm = np.concatenate(silence(0.4) + tone_frames(0.8) + silence(0.8))
    h.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm.tobytes()).decode()})
    assert h.last("input_audio_buffer.speech_started")["audio_start_ms"] == 100
    assert h.of("input_audio_buffer.committed")


def test_server_error_injection_keeps_the_session() -> None:
    h = Harness()
    h.engine.inject_error()
    h.drain()
    assert h.errors()[-1]["type"] == "server_error"
    assert not h.closed


def test_input_transcription_is_reported_when_configured() -> None:
    h = Harness(
        {
            "type": "realtime",
            "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe", "language": "en"}}},
        },
        reply="tone",
    )
    h.turn(speech_s=1.0, after_s=0.8)
    completed = h.last("conversation.item.input_audio_transcription.completed")
    assert completed["item_id"] == h.last("input_audio_buffer.committed")["item_id"]
    assert completed["usage"]["type"] == "duration" and completed["usage"]["seconds"] > 1.0
    assert h.of("conversation.item.input_audio_transcription.delta")


def test_a_long_session_keeps_only_the_audio_it_still_plays() -> None:
    h = Harness(reply="tone")
    for _ in range(20):
        h.turn(speech_s=1.0, after_s=1.6)
    assert len(h.of("response.done")) == 20
    assert h.engine.held_audio_s <= 1.0  # at most the answer still playing


def test_max_output_tokens_cuts_the_answer_short() -> None:
    h = Harness(reply="tone")
    h.send({"type": "response.create", "response": {"max_output_tokens": 10}})  # 500 ms
    h.wait(2.0)
    done = h.last("response.done")["response"]
    assert done["status"] == "incomplete"
    assert done["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    assert done["output"][0]["status"] == "incomplete"
    assert done["usage"]["output_token_details"]["audio_tokens"] == 10
    assert len(h.played) == 25
