"""Token accounting of the emulated model: what a response's prompt costs, what ``response.done``
reports as usage, and the ``rate_limits.updated`` budget. Estimates in the service's units, not
a tokenizer."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from gateway.emulator.responses import ResponseState, sent_text
from gateway.emulator.voice import MS_SAMPLES

__all__ = ["AUDIO_TOKEN_SAMPLES", "input_usage", "rate_limits", "response_usage", "text_tokens"]

AUDIO_TOKEN_SAMPLES: Final = 50 * MS_SAMPLES
"""Output audio samples per token: one audio token per 50 ms."""
_REQUEST_LIMIT: Final = 5_000
_TOKEN_LIMIT: Final = 400_000


def text_tokens(text: str) -> int:
    """About four characters per token, as OpenAI's tokenizers average on English."""
    return math.ceil(len(text) / 4)


def input_usage(
    params: Mapping[str, Any],
    *,
    session: Mapping[str, Any],
    items: Sequence[Mapping[str, Any]],
    item_audio_ms: Mapping[str, int],
    prev_input_tokens: int,
) -> dict[str, int]:
    """Input tokens of a response created with ``params``: the instructions, tools and every
    conversation item so far; ``prev_input_tokens`` (the last response's) is a cached prefix."""
    instructions = params.get("instructions", session.get("instructions") or "")
    tools = params.get("tools", session.get("tools") or [])
    text = text_tokens(str(instructions)) + (text_tokens(json.dumps(tools)) if tools else 0)
    audio = 0
    if params.get("input") != []:
        for item in items:
            text += 4  # per-item framing tokens
            if item["type"] == "message":
                for part in item["content"]:
                    if part.get("type") == "input_audio":
                        audio += item.get("_audio_ms", 0) // 100
                    elif part.get("type") == "output_audio":
                        audio += item_audio_ms.get(item["id"], 0) // 50
                    else:
                        text += text_tokens(str(part.get("text") or ""))
            else:
                text += text_tokens(str(item.get("arguments") or item.get("output") or ""))
    total = text + audio
    # The previous response's prompt is a cached prefix of this one (64-token blocks).
    cached = min(total, prev_input_tokens) // 64 * 64 if total >= 1024 else 0
    cached_audio = min(audio, cached * audio // total) if total else 0
    return {
        "total": total,
        "text": text,
        "audio": audio,
        "cached": cached,
        "cached_text": cached - cached_audio,
        "cached_audio": cached_audio,
    }


def response_usage(r: ResponseState) -> dict[str, Any]:
    """The ``usage`` of ``response.done``: output counts only what was generated."""
    i = r.input_usage
    out_audio = r.output_audio_samples // AUDIO_TOKEN_SAMPLES
    out_text = text_tokens(sent_text(r) if r.status != "completed" else r.text)
    if r.first_at is None:
        out_audio = out_text = 0
    output = out_audio + out_text
    return {
        "total_tokens": i["total"] + output,
        "input_tokens": i["total"],
        "output_tokens": output,
        "input_token_details": {
            "text_tokens": i["text"],
            "audio_tokens": i["audio"],
            "image_tokens": 0,
            "cached_tokens": i["cached"],
            "cached_tokens_details": {
                "text_tokens": i["cached_text"],
                "audio_tokens": i["cached_audio"],
                "image_tokens": 0,
            },
        },
        "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio},
    }


def rate_limits(r: ResponseState, *, requests_used: int, tokens_used: int) -> list[dict[str, Any]]:
    """The ``rate_limits`` of ``rate_limits.updated`` as ``r`` starts."""
    reserved = r.input_usage["total"] + 4096  # output tokens are reserved up front
    return [
        {
            "name": "requests",
            "limit": _REQUEST_LIMIT,
            "remaining": max(0, _REQUEST_LIMIT - requests_used),
            "reset_seconds": round(60.0 * requests_used / _REQUEST_LIMIT, 3),
        },
        {
            "name": "tokens",
            "limit": _TOKEN_LIMIT,
            "remaining": max(0, _TOKEN_LIMIT - tokens_used - reserved),
            "reset_seconds": round(60.0 * (tokens_used + reserved) / _TOKEN_LIMIT, 3),
        },
    ]
