"""Conversation items: what ``conversation.item.create`` accepts, how items are found, and the
public view of an item."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.emulator.items import find_item, previous_id, public, require_item, validate_item
from gateway.emulator.schema import SessionError


def never() -> str:
    raise AssertionError("the item had an id")


def numbered() -> str:
    return "item_new"


@pytest.mark.parametrize(
    ("item", "code", "param"),
    [
        (
            {"type": "message", "role": "user", "content": [{"type": "output_text", "text": "x"}]},
            "invalid_value",
            "item.content[0].type",
        ),
        (
            {"type": "message", "role": "robot", "content": [{"type": "input_text", "text": "x"}]},
            "invalid_value",
            "item.role",
        ),
        ({"type": "message", "role": "user", "content": []}, "missing_required_parameter", None),
        (
            {"type": "function_call_output", "output": "x"},
            "missing_required_parameter",
            "item.call_id",
        ),
        (
            {"type": "message", "role": "user", "content": [], "colour": 1},
            "unknown_parameter",
            "item.colour",
        ),
        ({"role": "user"}, "missing_required_parameter", "item.type"),
        ({"type": "image"}, "invalid_value", "item.type"),
    ],
)
def test_bad_items_are_refused_with_ga_errors(
    item: dict[str, Any], code: str, param: str | None
) -> None:
    with pytest.raises(SessionError) as refused:
        validate_item(item, numbered)
    assert refused.value.code == code
    if param is not None:
        assert refused.value.error["param"] == param


def test_a_valid_item_is_copied_completed_and_named_only_if_unnamed() -> None:
    message = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}
    stored = validate_item(message, numbered)
    assert stored == {
        "id": "item_new",
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_text", "text": "x"}],
    }
    assert stored["content"][0] is not message["content"][0]
    call = {"id": "item_c", "type": "function_call", "name": "lookup", "call_id": "call_1"}
    assert validate_item(call, never)["arguments"] == ""


def test_items_are_found_by_id() -> None:
    items: list[dict[str, Any]] = [{"id": "a"}, {"id": "b"}]
    assert find_item(items, "b") is items[1]
    assert find_item(items, "z") is None
    assert (previous_id(items, "a"), previous_id(items, "b"), previous_id(items, "z")) == (
        None,
        "a",
        None,
    )
    assert require_item(items, {"item_id": "a"}) is items[0]
    for event, code in (({}, "missing_required_parameter"), ({"item_id": "z"}, "item_not_found")):
        with pytest.raises(SessionError) as refused:
            require_item(items, event)
        assert refused.value.code == code


def test_the_public_view_drops_private_keys_at_every_level() -> None:
    item = {"id": "a", "_audio_ms": 900, "content": [{"type": "input_audio", "_x": 1}]}
    assert public({"item": item}) == {"item": {"id": "a", "content": [{"type": "input_audio"}]}}
    assert item["_audio_ms"] == 900  # a copy: the engine keeps its own
