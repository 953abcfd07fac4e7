"""Token accounting: the prompt of a response, the usage ``response.done`` reports and the
rate-limit budget, from plain values."""

from __future__ import annotations

from typing import Any

from gateway.emulator.responses import ResponseState
from gateway.emulator.usage import (
    AUDIO_TOKEN_SAMPLES,
    input_usage,
    rate_limits,
    response_usage,
    text_tokens,
)

SESSION: dict[str, Any] = {"instructions": "Be brief.", "tools": []}  # 9 chars: 3 tokens


def response(**fields: Any) -> ResponseState:
    r = ResponseState(
        id="resp_1",
        created_at=0.0,
        due_at=0.0,
        kind="audio",
        in_conversation=True,
        voice="marin",
        modalities=["audio"],
        max_output_tokens="inf",
        metadata=None,
    )
    for name, value in fields.items():
        setattr(r, name, value)
    return r


def usage_of(
    items: list[dict[str, Any]],
    *,
    params: dict[str, Any] | None = None,
    item_audio_ms: dict[str, int] | None = None,
    prev_input_tokens: int = 0,
) -> dict[str, int]:
    return input_usage(
        params or {},
        session=SESSION,
        items=items,
        item_audio_ms=item_audio_ms or {},
        prev_input_tokens=prev_input_tokens,
    )


def test_text_is_about_four_characters_a_token() -> None:
    assert [text_tokens(t) for t in ("", "a", "abcd", "abcde")] == [0, 1, 1, 2]


def test_input_counts_instructions_items_and_audio_by_its_rate() -> None:
    items = [
        {
            "id": "u",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio"}],
            "_audio_ms": 1000,
        },
        {"id": "a", "type": "message", "role": "assistant", "content": [{"type": "output_audio"}]},
        {"id": "f", "type": "function_call", "arguments": '{"a":1}'},  # 7 chars: 2 tokens
    ]
    got = usage_of(items, item_audio_ms={"a": 500})
    # caller audio: one token per 100 ms; assistant audio: one per 50 ms; 4 tokens an item
    assert (got["audio"], got["text"]) == (10 + 10, 3 + 3 * 4 + 2)
    assert got["total"] == 37 and got["cached"] == 0
    assert usage_of(items, params={"input": []})["total"] == 3  # input [] leaves items out


def test_a_long_prompt_reuses_the_previous_one_in_64_token_blocks() -> None:
    items = [{"id": "t", "type": "function_call_output", "output": "x" * 4400}]
    got = usage_of(items, prev_input_tokens=1000)
    assert got["total"] == 3 + 4 + 1100
    assert (got["cached"], got["cached_text"], got["cached_audio"]) == (960, 960, 0)
    assert usage_of(items[:0], prev_input_tokens=1000)["cached"] == 0  # short: no cache


def test_output_is_billed_only_for_what_was_generated() -> None:
    inputs = {"total": 10, "text": 10, "audio": 0, "cached": 0, "cached_text": 0, "cached_audio": 0}
    done = response(
        input_usage=inputs,
        first_at=1.0,
        status="completed",
        text="Hello there",
        output_audio_samples=20 * AUDIO_TOKEN_SAMPLES,
    )
    got = response_usage(done)
    assert got["output_token_details"] == {"text_tokens": 3, "audio_tokens": 20}
    assert got["total_tokens"] == 10 + 23
    cut = response(
        input_usage=inputs,
        first_at=1.0,
        status="cancelled",
        words=["Hello", "there"],
        deltas_sent=1,
        output_audio_samples=0,
    )
    assert response_usage(cut)["output_token_details"]["text_tokens"] == 2  # "Hello"
    never = response(input_usage=inputs, status="cancelled", output_audio_samples=5000)
    assert response_usage(never)["output_tokens"] == 0


def test_rate_limits_reserve_the_output_up_front() -> None:
    r = response(input_usage={"total": 904})
    requests, tokens = rate_limits(r, requests_used=50, tokens_used=1000)
    assert (requests["limit"], requests["remaining"]) == (5000, 4950)
    assert tokens["remaining"] == 400_000 - 1000 - 904 - 4096
