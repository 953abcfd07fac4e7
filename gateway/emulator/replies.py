"""What the emulated assistant says: the words of each answer, chosen by what it answers (the
caller's turn, a typed message, a tool's output, instructions), and example tool arguments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["chunks", "clip_words", "example_arguments", "greeting", "reply_phrases"]


def reply_phrases(
    instructions: Any,
    trigger: str,
    voice: str,
    *,
    items: Sequence[Mapping[str, Any]],
    turns: int,
    last_turn_ms: float,
) -> list[str]:
    """What the assistant says, by what the response answers: ``trigger`` is what created it
    (``client``, ``turn`` or ``idle``), ``items`` the conversation so far, ``turns`` the user
    turns so far, ``last_turn_ms`` how long the caller spoke in the last turn."""
    last = items[-1] if items else None
    if trigger == "idle":
        return ["Are you still there?"]
    if trigger == "client" and isinstance(instructions, str) and instructions.strip():
        return greeting(instructions, voice)
    if last is not None and last["type"] == "function_call_output":
        output = str(last.get("output", ""))
        name = next(
            (
                i.get("name", "the tool")
                for i in items
                if i["type"] == "function_call" and i.get("call_id") == last.get("call_id")
            ),
            "the tool",
        )
        return [f"The {name} tool says: {clip_words(output, 16)}."]
    if last is not None and last["type"] == "message" and last["role"] == "user":
        text = next((p.get("text") for p in last["content"] if p.get("type") == "input_text"), None)
        if text:
            return [f"You wrote: {clip_words(text, 16)}.", f"This is {voice}."]
        seconds = last.get("_audio_ms", 0) / 1000
        spoke = last_turn_ms / 1000 if trigger == "turn" else seconds
        return [
            f"This is {voice}.",
            f"Turn {turns}.",
            f"You spoke for {spoke:.1f} seconds.",
        ]
    return [f"Hello, this is {voice}.", "How can I help you?"]


def clip_words(text: str, n: int) -> str:
    """The first ``n`` words of ``text``, with `` ...`` if there were more."""
    words = text.split()
    clipped = " ".join(words[:n])
    return clipped.rstrip(".!?") + (" ..." if len(words) > n else "")


def chunks(text: str, size: int) -> list[str]:
    """``text`` in pieces of ``size`` characters (one empty piece for empty text)."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def greeting(instructions: str, voice: str) -> list[str]:
    """The greeting a ``response.create`` with instructions speaks: the quoted text when the
    instructions quote one (``Say "Hello, thanks for calling"``), else a hello naming the voice
    and the first sentence of the instructions."""
    for open_q, close_q in (('"', '"'), ("\u201c", "\u201d"), ("'", "'")):
        start = instructions.find(open_q)
        end = instructions.find(close_q, start + 1) if start >= 0 else -1
        if start >= 0 and end > start + 1:
            return [instructions[start + 1 : end].strip()]
    first = instructions.strip().split(". ")[0].rstrip(".")
    return [f"Hello, this is {voice}.", f"{clip_words(first, 14)}."]


def example_arguments(schema: Any) -> Any:
    """Plausible arguments for a JSON Schema: every required property gets a value of its type."""
    if not isinstance(schema, dict):
        return {}
    kind = schema.get("type")
    if schema.get("enum"):
        return schema["enum"][0]
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        required = schema.get("required") or list(props)
        return {name: example_arguments(props.get(name, {})) for name in required if name in props}
    if kind == "array":
        return [example_arguments(schema.get("items"))]
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "string":
        return "example"
    return None
