"""Realtime GA events: builders for what the gateway sends, a fast parser for what it receives.

Pure and synchronous. Client builders return plain ``dict`` events, each with a fresh client
``event_id`` (the server echoes it in ``error.event_id`` when it rejects that event, which is how
a caller matches an error to the request that caused it). Serialize with :func:`encode`.

Server events go through :func:`parse_server_event`: ``json.loads``, a dispatch on ``type`` and a
handful of ``dict.get`` calls into a :class:`ServerEvent`; no validation models on the hot path.
Types this module does not know still parse (``ServerEvent.raw`` keeps every field), so a new
server event never breaks a call. Only text that is not a JSON object with a string ``type``
raises :class:`~gateway.errors.UpstreamProtocolError`.

Field names follow the GA API (PROTOCOLS.md A6-A8, A11).
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypedDict

from gateway.errors import UpstreamProtocolError

__all__ = [
    "FATAL_ERROR_CODES",
    "RECOVERABLE_ERROR_CODES",
    "ErrorDetail",
    "ServerEvent",
    "conversation_item_create",
    "conversation_item_create_function_output",
    "conversation_item_create_system_text",
    "conversation_item_create_user_text",
    "conversation_item_truncate",
    "encode",
    "input_audio_buffer_clear",
    "input_audio_buffer_commit",
    "new_event_id",
    "output_audio_buffer_clear",
    "parse_server_event",
    "response_cancel",
    "response_create",
    "session_update",
]

RECOVERABLE_ERROR_CODES: Final = frozenset(
    {
        # a cancel that raced the response's natural end: nothing to undo
        "response_cancel_not_active",
        # a commit with nothing in the buffer (server VAD already committed it)
        "input_audio_buffer_commit_empty",
        # response.create while server VAD had already started one
        "conversation_already_has_active_response",
    }
)
"""Error codes that are harmless races: count them, do not end the call."""

FATAL_ERROR_CODES: Final = frozenset(
    {
        "session_expired",  # the upstream maximum session duration was reached
        "beta_api_shape_disabled",  # we are talking to a dialect the server no longer serves
    }
)
"""Error codes after which the session cannot continue: end (or rotate) the session."""

# Client event ids: a per-process random prefix plus a counter is unique across the gateway's
# processes and costs a fraction of a uuid4.
_ID_PREFIX: Final = f"gw_{secrets.token_hex(4)}_"
_ids = itertools.count(1)


def new_event_id() -> str:
    """A client ``event_id`` unique in this process and, with high probability, across them."""
    return f"{_ID_PREFIX}{next(_ids)}"


def encode(event: Mapping[str, Any]) -> str:
    """Serialize a client event for the data channel (compact JSON, UTF-8 kept as is)."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


# --------------------------------------------------------------------------- client events


def session_update(session: Mapping[str, Any]) -> dict[str, Any]:
    """``session.update`` carrying a GA session object (full or partial).

    GA rejects an update without ``session.type``, so this raises :class:`ValueError` for one
    rather than letting the server fail the call later. The session's ``id`` (present when the
    dict came from a ``session.created``) is read-only and is dropped.
    """
    if session.get("type") not in ("realtime", "transcription"):
        raise ValueError(
            "a GA session object needs type 'realtime' or 'transcription', "
            f"got {session.get('type')!r}"
        )
    body = {k: v for k, v in session.items() if k not in ("id", "object")}
    return {"type": "session.update", "event_id": new_event_id(), "session": body}


def response_create(
    instructions: str | None = None, *, response: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``response.create``; ``instructions`` override the session's for this response only.

    ``response`` carries any other per-response fields (``conversation``, ``input``,
    ``metadata``, ...); ``instructions`` wins over a value in it.
    """
    event: dict[str, Any] = {"type": "response.create", "event_id": new_event_id()}
    body = dict(response) if response else {}
    if instructions is not None:
        body["instructions"] = instructions
    if body:
        event["response"] = body
    return event


def response_cancel(response_id: str | None = None) -> dict[str, Any]:
    """``response.cancel``; without ``response_id`` the server cancels the active response.

    Send it only while a response is active, or expect a harmless
    ``response_cancel_not_active`` error.
    """
    event: dict[str, Any] = {"type": "response.cancel", "event_id": new_event_id()}
    if response_id is not None:
        event["response_id"] = response_id
    return event


def output_audio_buffer_clear() -> dict[str, Any]:
    """``output_audio_buffer.clear`` (WebRTC/SIP): drop audio not yet sent; after a cancel."""
    return {"type": "output_audio_buffer.clear", "event_id": new_event_id()}


def input_audio_buffer_commit() -> dict[str, Any]:
    """``input_audio_buffer.commit``: make the buffered caller audio a user item (VAD off)."""
    return {"type": "input_audio_buffer.commit", "event_id": new_event_id()}


def input_audio_buffer_clear() -> dict[str, Any]:
    """``input_audio_buffer.clear``: discard caller audio not yet committed."""
    return {"type": "input_audio_buffer.clear", "event_id": new_event_id()}


def conversation_item_create(
    item: Mapping[str, Any], *, previous_item_id: str | None = None
) -> dict[str, Any]:
    """``conversation.item.create`` with any GA item; ``previous_item_id="root"`` inserts first."""
    event: dict[str, Any] = {
        "type": "conversation.item.create",
        "event_id": new_event_id(),
        "item": dict(item),
    }
    if previous_item_id is not None:
        event["previous_item_id"] = previous_item_id
    return event


def conversation_item_create_user_text(
    text: str, *, previous_item_id: str | None = None
) -> dict[str, Any]:
    """A user text message; send ``response.create`` afterwards for the model to answer."""
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return conversation_item_create(item, previous_item_id=previous_item_id)


def conversation_item_create_system_text(
    text: str, *, previous_item_id: str | None = None
) -> dict[str, Any]:
    """A system message (extra context or a steer); it does not trigger a response."""
    item = {
        "type": "message",
        "role": "system",
        "content": [{"type": "input_text", "text": text}],
    }
    return conversation_item_create(item, previous_item_id=previous_item_id)


def conversation_item_create_function_output(call_id: str, output: str) -> dict[str, Any]:
    """The result of a function call; send ``response.create`` next, the model will not go on."""
    item = {"type": "function_call_output", "call_id": call_id, "output": output}
    return conversation_item_create(item)


def conversation_item_truncate(
    item_id: str, content_index: int, audio_end_ms: int
) -> dict[str, Any]:
    """``conversation.item.truncate`` of an assistant item to what the caller heard.

    The server rejects an ``audio_end_ms`` beyond the item's audio, so pass a measured lower
    bound (mark echoes), never an estimate. Raises :class:`ValueError` for negative values.
    """
    if content_index < 0 or audio_end_ms < 0:
        raise ValueError(
            f"content_index and audio_end_ms must be >= 0, got {content_index}, {audio_end_ms}"
        )
    return {
        "type": "conversation.item.truncate",
        "event_id": new_event_id(),
        "item_id": item_id,
        "content_index": content_index,
        "audio_end_ms": int(audio_end_ms),
    }


# --------------------------------------------------------------------------- server events


class ErrorDetail(TypedDict, total=False):
    """The ``error`` object of an ``error`` event (or of a failed transcription)."""

    type: str
    code: str | None
    message: str
    param: str | None
    event_id: str | None


@dataclass(slots=True, eq=False)
class ServerEvent:
    """The fields of one server event that the gateway acts on; ``raw`` holds all of them.

    Fields a given ``type`` does not carry are ``None``. ``response_id`` and ``item_id`` are
    lifted out of a nested ``response`` / ``item`` object when the event carries one, so
    ``response.created`` and ``response.output_audio_transcript.delta`` read the same way.
    """

    type: str
    event_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    response_id: str | None = None
    item_id: str | None = None
    previous_item_id: str | None = None
    content_index: int | None = None
    output_index: int | None = None
    audio_start_ms: int | None = None
    audio_end_ms: int | None = None
    # item.* (conversation.item.*, response.output_item.*)
    item_type: str | None = None
    item_role: str | None = None
    item_status: str | None = None
    # response.* (response.created / response.done)
    status: str | None = None
    status_details: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    # transcripts, text, function-call arguments
    delta: str | None = None
    transcript: str | None = None
    text: str | None = None
    # function calls (response.function_call_arguments.*, function_call items)
    name: str | None = None
    call_id: str | None = None
    arguments: str | None = None
    # error, conversation.item.input_audio_transcription.failed
    error: ErrorDetail | None = None
    # session.created / session.updated
    session: dict[str, Any] | None = None

    @property
    def error_code(self) -> str | None:
        """``error.code``, falling back to ``error.type``; None when the event has no error."""
        if self.error is None:
            return None
        return self.error.get("code") or self.error.get("type")


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _dict(v: Any) -> dict[str, Any] | None:
    return v if isinstance(v, dict) else None


def _error_detail(v: Any) -> ErrorDetail:
    if not isinstance(v, dict):
        # An error event without its object is still an error; keep what there is.
        return ErrorDetail(type="unknown", code=None, message=str(v), param=None, event_id=None)
    return ErrorDetail(
        type=_str(v.get("type")) or "unknown",
        code=_str(v.get("code")),
        message=_str(v.get("message")) or "",
        param=_str(v.get("param")),
        event_id=_str(v.get("event_id")),
    )


def _with_response(ev: ServerEvent, data: dict[str, Any]) -> None:
    resp = _dict(data.get("response"))
    if resp is None:
        return
    ev.response_id = _str(resp.get("id")) or ev.response_id
    ev.status = _str(resp.get("status"))
    ev.status_details = _dict(resp.get("status_details"))
    ev.usage = _dict(resp.get("usage"))


def _with_item(ev: ServerEvent, data: dict[str, Any]) -> None:
    item = _dict(data.get("item"))
    if item is None:
        return
    ev.item_id = _str(item.get("id")) or ev.item_id
    ev.item_type = _str(item.get("type"))
    ev.item_role = _str(item.get("role"))
    ev.item_status = _str(item.get("status"))
    if ev.item_type == "function_call":
        ev.name = _str(item.get("name"))
        ev.call_id = _str(item.get("call_id"))
        ev.arguments = _str(item.get("arguments"))


def _with_error(ev: ServerEvent, data: dict[str, Any]) -> None:
    ev.error = _error_detail(data.get("error"))


def _with_session(ev: ServerEvent, data: dict[str, Any]) -> None:
    ev.session = _dict(data.get("session"))


# Everything else is read from top-level fields by parse_server_event itself.
_NESTED: Final[dict[str, Callable[[ServerEvent, dict[str, Any]], None]]] = {
    "error": _with_error,
    "session.created": _with_session,
    "session.updated": _with_session,
    "response.created": _with_response,
    "response.done": _with_response,
    "response.output_item.added": _with_item,
    "response.output_item.done": _with_item,
    "conversation.item.added": _with_item,
    "conversation.item.done": _with_item,
    "conversation.item.created": _with_item,
    "conversation.item.retrieved": _with_item,
    "conversation.item.input_audio_transcription.failed": _with_error,
}


def parse_server_event(raw: str | bytes) -> ServerEvent:
    """Parse one data-channel message into a :class:`ServerEvent`.

    Raises :class:`~gateway.errors.UpstreamProtocolError` when the message is not JSON, not an
    object, or has no string ``type``; the caller decides whether one bad message ends the call.
    Unknown types parse into a generic event.
    """
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UpstreamProtocolError(
            f"Realtime server sent a message that is not JSON: {exc}: {_preview(raw)}"
        ) from None
    if not isinstance(data, dict):
        raise UpstreamProtocolError(
            f"Realtime server sent JSON that is not an object: {_preview(raw)}"
        )
    kind = data.get("type")
    if not isinstance(kind, str):
        raise UpstreamProtocolError(f"Realtime server event without a type: {_preview(raw)}")
    get = data.get
    ev = ServerEvent(
        type=kind,
        event_id=_str(get("event_id")),
        raw=data,
        response_id=_str(get("response_id")),
        item_id=_str(get("item_id")),
        previous_item_id=_str(get("previous_item_id")),
        content_index=_int(get("content_index")),
        output_index=_int(get("output_index")),
        audio_start_ms=_int(get("audio_start_ms")),
        audio_end_ms=_int(get("audio_end_ms")),
        delta=_str(get("delta")),
        transcript=_str(get("transcript")),
        text=_str(get("text")),
        name=_str(get("name")),
        call_id=_str(get("call_id")),
        arguments=_str(get("arguments")),
        usage=_dict(get("usage")),
    )
    nested = _NESTED.get(kind)
    if nested is not None:
        nested(ev, data)
    return ev


def _preview(raw: str | bytes, limit: int = 120) -> str:
    text = raw if isinstance(raw, str) else raw.decode("utf-8", errors="replace")
    return repr(text[:limit] + ("..." if len(text) > limit else ""))
