"""A response of the emulated model: its record (:class:`ResponseState`) and the wire objects
built from it. The engine owns the records and moves them along their timeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = ["ResponseState", "assistant_item", "response_object", "sent_text"]


@dataclass(slots=True, eq=False)
class ResponseState:
    """Everything the engine tracks about one response, from ``response.created`` until its
    audio has played (or been cleared)."""

    id: str
    created_at: float
    due_at: float
    kind: Literal["audio", "text", "function"]
    in_conversation: bool
    voice: str
    modalities: list[str]
    max_output_tokens: int | str
    metadata: Any
    text: str = ""
    words: list[str] = field(default_factory=list)
    deltas_sent: int = 0
    item_id: str = ""
    call_id: str = ""
    function_name: str = ""
    audio: npt.NDArray[np.int16] | None = None
    needs_render: bool = False
    first_at: float | None = None
    gen_end_at: float | None = None
    status: str = "in_progress"
    input_usage: dict[str, int] = field(default_factory=dict)
    output_audio_samples: int = 0  # generated audio (what usage bills)
    # playout
    played: int = 0
    limit: int = 0  # samples the buffer may still play (truncation lowers it)
    playout_started: bool = False
    out_of_tokens: bool = False  # max_output_tokens cut the reply short


def sent_text(r: ResponseState) -> str:
    """The part of the answer's text already sent as deltas."""
    if r.kind == "function":
        return "".join(r.words[: r.deltas_sent])
    return " ".join(r.words[: r.deltas_sent])


def assistant_item(r: ResponseState, status: str, text: str = "") -> dict[str, Any]:
    """The conversation item ``r`` produces, with ``text`` as its transcript, text or
    arguments."""
    item: dict[str, Any] = {"id": r.item_id, "object": "realtime.item", "status": status}
    if r.kind == "function":
        item.update(type="function_call", name=r.function_name, call_id=r.call_id, arguments=text)
    elif r.kind == "audio":
        item.update(
            type="message",
            role="assistant",
            content=[{"type": "output_audio", "transcript": text}],
        )
    else:
        item.update(
            type="message", role="assistant", content=[{"type": "output_text", "text": text}]
        )
    return item


def response_object(
    r: ResponseState,
    *,
    audio_format: Any,
    conversation_id: str,
    output: list[dict[str, Any]] | None = None,
    details: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``realtime.response`` object of ``response.created`` / ``response.done``."""
    return {
        "object": "realtime.response",
        "id": r.id,
        "status": r.status,
        "status_details": details,
        "output": output or [],
        "conversation_id": conversation_id if r.in_conversation else None,
        "output_modalities": r.modalities,
        "max_output_tokens": r.max_output_tokens,
        "audio": {"output": {"format": audio_format, "voice": r.voice}},
        "usage": usage,
        "metadata": r.metadata,
    }
