"""GA client event builders and the server event parser."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import UpstreamProtocolError
from gateway.realtime import events as rt

# ------------------------------------------------------------------ client events


def test_every_builder_gets_a_unique_event_id() -> None:
    built = [
        rt.session_update({"type": "realtime"}),
        rt.response_create(),
        rt.response_cancel(),
        rt.output_audio_buffer_clear(),
        rt.input_audio_buffer_commit(),
        rt.input_audio_buffer_clear(),
        rt.conversation_item_create_user_text("hi"),
        rt.conversation_item_create_system_text("be brief"),
        rt.conversation_item_create_function_output("call_1", "{}"),
        rt.conversation_item_truncate("item_1", 0, 1200),
    ]
    ids = [e["event_id"] for e in built]
    assert len(set(ids)) == len(ids)
    assert all(isinstance(i, str) and i for i in ids)


def test_session_update_carries_the_ga_session_and_drops_read_only_fields() -> None:
    session = {
        "type": "realtime",
        "id": "sess_1",
        "object": "realtime.session",
        "model": "gpt-realtime",
        "instructions": "Be kind.",
        "audio": {"output": {"voice": "marin"}},
    }
    ev = rt.session_update(session)
    assert ev["type"] == "session.update"
    assert ev["session"] == {
        "type": "realtime",
        "model": "gpt-realtime",
        "instructions": "Be kind.",
        "audio": {"output": {"voice": "marin"}},
    }
    assert "id" in session  # the caller's dict is not modified


def test_session_update_without_ga_type_is_refused() -> None:
    with pytest.raises(ValueError, match="type"):
        rt.session_update({"instructions": "x"})
    with pytest.raises(ValueError, match="type"):
        rt.session_update({"type": "pcm16"})


def test_response_create_shapes() -> None:
    assert "response" not in rt.response_create()
    assert rt.response_create("Say hello")["response"] == {"instructions": "Say hello"}
    ev = rt.response_create("Greet", response={"conversation": "none", "instructions": "x"})
    assert ev["response"] == {"conversation": "none", "instructions": "Greet"}
    assert rt.response_create(response={"metadata": {"k": "v"}})["response"] == {
        "metadata": {"k": "v"}
    }


def test_response_cancel_with_and_without_id() -> None:
    assert "response_id" not in rt.response_cancel()
    assert rt.response_cancel("resp_1")["response_id"] == "resp_1"


def test_simple_buffer_events() -> None:
    assert rt.output_audio_buffer_clear()["type"] == "output_audio_buffer.clear"
    assert rt.input_audio_buffer_commit()["type"] == "input_audio_buffer.commit"
    assert rt.input_audio_buffer_clear()["type"] == "input_audio_buffer.clear"


def test_conversation_items() -> None:
    user = rt.conversation_item_create_user_text("hello", previous_item_id="root")
    assert user["type"] == "conversation.item.create"
    assert user["previous_item_id"] == "root"
    assert user["item"] == {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "hello"}],
    }
    system = rt.conversation_item_create_system_text("The caller is VIP.")
    assert system["item"]["role"] == "system"
    assert system["item"]["content"] == [{"type": "input_text", "text": "The caller is VIP."}]
    assert "previous_item_id" not in system
    out = rt.conversation_item_create_function_output("call_9", '{"ok":true}')
    assert out["item"] == {
        "type": "function_call_output",
        "call_id": "call_9",
        "output": '{"ok":true}',
    }


def test_truncate() -> None:
    ev = rt.conversation_item_truncate("item_7", 0, 1500)
    assert {k: v for k, v in ev.items() if k != "event_id"} == {
        "type": "conversation.item.truncate",
        "item_id": "item_7",
        "content_index": 0,
        "audio_end_ms": 1500,
    }
    with pytest.raises(ValueError, match="audio_end_ms"):
        rt.conversation_item_truncate("item_7", 0, -1)


def test_encode_is_compact_json_that_round_trips() -> None:
    ev = rt.conversation_item_create_user_text("héllo ☎")
    text = rt.encode(ev)
    assert ", " not in text and ": " not in text
    assert "☎" in text
    assert json.loads(text) == ev


# ------------------------------------------------------------------ server events


def parse(obj: dict[str, Any]) -> rt.ServerEvent:
    return rt.parse_server_event(json.dumps(obj))


def test_session_events_carry_the_session() -> None:
    ev = parse({"type": "session.updated", "event_id": "event_1", "session": {"type": "realtime"}})
    assert ev.type == "session.updated"
    assert ev.event_id == "event_1"
    assert ev.session == {"type": "realtime"}


def test_error_event() -> None:
    ev = parse(
        {
            "type": "error",
            "event_id": "event_2",
            "error": {
                "type": "invalid_request_error",
                "code": "unknown_parameter",
                "message": "Unknown parameter: 'session.voice'.",
                "param": "session.voice",
                "event_id": "gw_1",
            },
        }
    )
    assert ev.error == {
        "type": "invalid_request_error",
        "code": "unknown_parameter",
        "message": "Unknown parameter: 'session.voice'.",
        "param": "session.voice",
        "event_id": "gw_1",
    }
    assert ev.error_code == "unknown_parameter"


def test_error_without_code_falls_back_to_type_and_tolerates_a_bare_error() -> None:
    ev = parse({"type": "error", "error": {"type": "server_error", "message": "boom"}})
    assert ev.error_code == "server_error"
    assert ev.error is not None and ev.error["code"] is None and ev.error["param"] is None
    bare = parse({"type": "error", "error": "something broke"})
    assert bare.error is not None and bare.error["message"] == "something broke"
    assert parse({"type": "session.created"}).error_code is None


def test_speech_events() -> None:
    ev = parse(
        {"type": "input_audio_buffer.speech_started", "audio_start_ms": 1200, "item_id": "i"}
    )
    assert (ev.audio_start_ms, ev.item_id) == (1200, "i")
    ev = parse({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 2400, "item_id": "i"})
    assert ev.audio_end_ms == 2400


def test_response_lifecycle_lifts_id_status_and_usage() -> None:
    created = parse(
        {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}}
    )
    assert (created.response_id, created.status) == ("resp_1", "in_progress")
    usage = {"total_tokens": 30, "input_tokens": 20, "output_tokens": 10}
    done = parse(
        {
            "type": "response.done",
            "response": {
                "id": "resp_1",
                "status": "cancelled",
                "status_details": {"type": "cancelled", "reason": "turn_detected"},
                "usage": usage,
                "output": [],
            },
        }
    )
    assert done.response_id == "resp_1"
    assert done.status == "cancelled"
    assert done.status_details == {"type": "cancelled", "reason": "turn_detected"}
    assert done.usage == usage


def test_output_buffer_events_carry_response_id() -> None:
    for kind in ("started", "stopped", "cleared"):
        ev = parse({"type": f"output_audio_buffer.{kind}", "response_id": "resp_3"})
        assert ev.response_id == "resp_3"


def test_items_lift_id_role_type_status() -> None:
    ev = parse(
        {
            "type": "response.output_item.added",
            "response_id": "resp_1",
            "output_index": 0,
            "item": {
                "id": "item_1",
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
            },
        }
    )
    assert (ev.response_id, ev.item_id, ev.item_type, ev.item_role, ev.item_status) == (
        "resp_1",
        "item_1",
        "message",
        "assistant",
        "in_progress",
    )
    assert ev.output_index == 0
    added = parse({"type": "conversation.item.added", "item": {"id": "u1", "role": "user"}})
    assert (added.item_id, added.item_role) == ("u1", "user")


def test_transcripts() -> None:
    delta = parse(
        {
            "type": "response.output_audio_transcript.delta",
            "response_id": "r",
            "item_id": "i",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hel",
        }
    )
    assert (delta.delta, delta.response_id, delta.item_id, delta.content_index) == (
        "Hel",
        "r",
        "i",
        0,
    )
    done = parse({"type": "response.output_audio_transcript.done", "transcript": "Hello."})
    assert done.transcript == "Hello."
    user = parse(
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "u1",
            "content_index": 0,
            "transcript": "I need help",
            "usage": {"type": "duration", "seconds": 2},
        }
    )
    assert (user.item_id, user.transcript, user.usage) == (
        "u1",
        "I need help",
        {"type": "duration", "seconds": 2},
    )
    failed = parse(
        {
            "type": "conversation.item.input_audio_transcription.failed",
            "item_id": "u1",
            "error": {
                "type": "transcription_error",
                "code": "audio_unintelligible",
                "message": "x",
            },
        }
    )
    assert failed.error_code == "audio_unintelligible"


def test_function_calls() -> None:
    args = parse(
        {
            "type": "response.function_call_arguments.done",
            "response_id": "r",
            "item_id": "fc1",
            "call_id": "call_1",
            "name": "lookup",
            "arguments": '{"q":"x"}',
        }
    )
    assert (args.name, args.call_id, args.arguments) == ("lookup", "call_1", '{"q":"x"}')
    item = parse(
        {
            "type": "response.output_item.done",
            "response_id": "r",
            "item": {
                "id": "fc1",
                "type": "function_call",
                "status": "completed",
                "call_id": "call_1",
                "name": "lookup",
                "arguments": '{"q":"x"}',
            },
        }
    )
    assert (item.item_type, item.item_status, item.name, item.call_id, item.arguments) == (
        "function_call",
        "completed",
        "lookup",
        "call_1",
        '{"q":"x"}',
    )


def test_unknown_types_pass_through_with_their_fields() -> None:
    ev = parse({"type": "response.future_thing.delta", "event_id": "e", "response_id": "r", "x": 1})
    assert ev.type == "response.future_thing.delta"
    assert ev.response_id == "r"
    assert ev.raw["x"] == 1


def test_wrongly_typed_fields_are_ignored_not_trusted() -> None:
    ev = parse(
        {
            "type": "input_audio_buffer.speech_started",
            "audio_start_ms": "12",
            "item_id": 5,
            "content_index": True,
        }
    )
    assert (ev.audio_start_ms, ev.item_id, ev.content_index) == (None, None, None)
    assert parse({"type": "response.done", "response": "nope"}).response_id is None


def test_bytes_are_accepted() -> None:
    assert rt.parse_server_event(b'{"type":"session.created"}').type == "session.created"


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ("not json", "not JSON"),
        (b"\xff\xfe{", "not JSON"),
        ("[1, 2]", "not an object"),
        ('{"event_id": "e"}', "without a type"),
        ('{"type": 5}', "without a type"),
    ],
)
def test_malformed_messages_raise_protocol_error(raw: str | bytes, match: str) -> None:
    with pytest.raises(UpstreamProtocolError, match=match):
        rt.parse_server_event(raw)


def test_long_garbage_is_quoted_briefly() -> None:
    with pytest.raises(UpstreamProtocolError) as info:
        rt.parse_server_event("x" * 10_000)
    assert len(str(info.value)) < 300


@given(st.text(max_size=200) | st.binary(max_size=200))
def test_parser_never_raises_anything_but_protocol_error(raw: str | bytes) -> None:
    try:
        ev = rt.parse_server_event(raw)
    except UpstreamProtocolError:
        return
    assert isinstance(ev.type, str)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(
    st.sampled_from(
        [
            "error",
            "session.updated",
            "response.done",
            "response.output_item.done",
            "conversation.item.added",
            "conversation.item.input_audio_transcription.failed",
            "input_audio_buffer.speech_started",
            "x.y",
        ]
    ),
    st.dictionaries(
        st.sampled_from(
            ["response", "item", "error", "session", "response_id", "item_id", "usage", "delta"]
        ),
        json_values,
    ),
)
def test_any_json_object_with_a_type_parses(kind: str, fields: dict[str, Any]) -> None:
    ev = parse({"type": kind, **fields})
    assert ev.type == kind
    assert ev.response_id is None or isinstance(ev.response_id, str)
    assert ev.usage is None or isinstance(ev.usage, dict)
