"""Conversation items: checking the ones clients create, finding them by id, and the public view
of an item (without the engine's private keys)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.emulator.schema import SessionError

__all__ = ["find_item", "previous_id", "public", "require_item", "validate_item"]


def find_item(items: Sequence[dict[str, Any]], item_id: Any) -> dict[str, Any] | None:
    return next((i for i in items if i["id"] == item_id), None)


def previous_id(items: Sequence[Mapping[str, Any]], item_id: str) -> str | None:
    """The id of the item before ``item_id`` (None at the root or if it is not there)."""
    for i, item in enumerate(items):
        if item["id"] == item_id:
            return str(items[i - 1]["id"]) if i > 0 else None
    return None


def require_item(items: Sequence[dict[str, Any]], event: Mapping[str, Any]) -> dict[str, Any]:
    """The item an event's ``item_id`` names; raises :class:`SessionError` if it has none."""
    item_id = event.get("item_id")
    if not isinstance(item_id, str):
        raise SessionError(
            "missing_required_parameter", "Missing required parameter: 'item_id'.", "item_id"
        )
    item = find_item(items, item_id)
    if item is None:
        raise SessionError("item_not_found", f"Item with item_id '{item_id}' not found.", "item_id")
    return item


def validate_item(item: Mapping[str, Any], new_id: Callable[[], str]) -> dict[str, Any]:
    """A copy of a client's ``conversation.item.create`` item, checked as the service checks it
    (raises :class:`SessionError`); ``new_id`` names it if the client did not."""
    kind = item.get("type")
    allowed_common = {"id", "type", "object", "status"}
    if kind == "message":
        fields = allowed_common | {"role", "content"}
    elif kind == "function_call":
        fields = allowed_common | {"name", "call_id", "arguments"}
    elif kind == "function_call_output":
        fields = allowed_common | {"call_id", "output"}
    elif kind is None:
        raise SessionError(
            "missing_required_parameter",
            "Missing required parameter: 'item.type'.",
            "item.type",
        )
    else:
        raise SessionError(
            "invalid_value",
            f"Invalid value: '{kind}'. Supported values are: 'message', 'function_call', "
            "'function_call_output'.",
            "item.type",
        )
    for key in item:
        if key not in fields:
            raise SessionError(
                "unknown_parameter", f"Unknown parameter: 'item.{key}'.", f"item.{key}"
            )
    stored: dict[str, Any] = {
        "id": item.get("id") if isinstance(item.get("id"), str) else new_id(),
        "object": "realtime.item",
        "type": kind,
        "status": "completed",
    }
    if kind == "message":
        role = item.get("role")
        content_types = {
            "user": ("input_text", "input_audio", "input_image"),
            "system": ("input_text",),
            "assistant": ("output_text", "output_audio"),
        }
        if role not in content_types:
            raise SessionError(
                "invalid_value",
                f"Invalid value: {role!r}. Supported values are: 'user', 'system', 'assistant'.",
                "item.role",
            )
        content = item.get("content")
        if not isinstance(content, list) or not content:
            raise SessionError(
                "missing_required_parameter",
                "Missing required parameter: 'item.content'.",
                "item.content",
            )
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in content_types[role]:
                got = part.get("type") if isinstance(part, dict) else part
                raise SessionError(
                    "invalid_value",
                    f"Invalid value: {got!r}. Supported values are: "
                    + ", ".join(f"'{t}'" for t in content_types[role])
                    + ".",
                    f"item.content[{i}].type",
                )
            parts.append(dict(part))
        stored.update(role=role, content=parts)
    else:
        for key in ("call_id",) + (("output",) if kind == "function_call_output" else ("name",)):
            if not isinstance(item.get(key), str):
                raise SessionError(
                    "missing_required_parameter",
                    f"Missing required parameter: 'item.{key}'.",
                    f"item.{key}",
                )
        stored.update({k: item[k] for k in ("call_id", "output", "name", "arguments") if k in item})
        if kind == "function_call":
            stored.setdefault("arguments", "")
    return stored


def public(value: Any) -> Any:
    """A copy of ``value`` without the engine's private keys (``_audio_ms``)."""
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [public(v) for v in value]
    return value
