"""What the emulated assistant says, chosen by what it answers."""

from __future__ import annotations

from typing import Any

from gateway.emulator.replies import (
    chunks,
    clip_words,
    example_arguments,
    greeting,
    reply_phrases,
)


def phrases(trigger: str, items: list[dict[str, Any]], instructions: Any = None) -> list[str]:
    return reply_phrases(instructions, trigger, "marin", items=items, turns=3, last_turn_ms=1500)


def test_the_answer_depends_on_what_came_last() -> None:
    assert phrases("idle", []) == ["Are you still there?"]
    assert phrases("client", [], 'Say "Welcome to Acme."') == ["Welcome to Acme."]
    assert phrases("client", []) == ["Hello, this is marin.", "How can I help you?"]
    spoken = {"type": "message", "role": "user", "content": [{"type": "input_audio"}]}
    assert phrases("turn", [{**spoken, "_audio_ms": 900}]) == [
        "This is marin.",
        "Turn 3.",
        "You spoke for 1.5 seconds.",  # the VAD's measure of the turn, not the item's length
    ]
    assert phrases("client", [{**spoken, "_audio_ms": 900}])[-1] == "You spoke for 0.9 seconds."
    typed = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}
    assert phrases("client", [typed]) == ["You wrote: Hi.", "This is marin."]
    tool = [
        {"type": "function_call", "name": "lookup", "call_id": "c1"},
        {"type": "function_call_output", "call_id": "c1", "output": "Booked for 7 pm"},
    ]
    assert phrases("client", tool) == ["The lookup tool says: Booked for 7 pm."]


def test_greetings_quote_or_summarise_the_instructions() -> None:
    assert greeting("Greet with \u201cHi there\u201d please", "cedar") == ["Hi there"]
    assert greeting("You are a booking agent. Be kind.", "cedar") == [
        "Hello, this is cedar.",
        "You are a booking agent.",
    ]


def test_text_helpers() -> None:
    assert clip_words("one two three.", 5) == "one two three"
    assert clip_words("one two three", 2) == "one two ..."
    assert chunks("abcdefghij", 4) == ["abcd", "efgh", "ij"]
    assert chunks("", 4) == [""]


def test_example_arguments_fill_every_required_property() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "party": {"type": "integer"},
            "when": {"enum": ["lunch", "dinner"]},
            "tags": {"type": "array", "items": {"type": "boolean"}},
            "note": {"type": "string"},
        },
        "required": ["name", "party", "when", "tags"],
    }
    assert example_arguments(schema) == {
        "name": "example",
        "party": 1,
        "when": "lunch",
        "tags": [True],
    }
    assert example_arguments(None) == {}
