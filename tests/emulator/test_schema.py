"""GA session validation and merging: what the emulator accepts, refuses and fills in."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.emulator.schema import (
    SessionError,
    apply_session,
    default_session,
    vad_settings,
)

BASE = default_session("sess_1", 0)


def refused(update: Any, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(SessionError) as exc:
        apply_session(BASE, update, **kwargs)
    return exc.value.error


@pytest.mark.parametrize(
    "beta",
    [
        "modalities",
        "voice",
        "input_audio_format",
        "output_audio_format",
        "turn_detection",
        "input_audio_transcription",
        "input_audio_noise_reduction",
        "temperature",
        "max_response_output_tokens",
        "speed",
    ],
)
def test_beta_field_names_are_unknown_parameters(beta: str) -> None:
    err = refused({"type": "realtime", beta: None})
    assert (err["code"], err["param"]) == ("unknown_parameter", f"session.{beta}")
    assert err["message"] == f"Unknown parameter: 'session.{beta}'."


@pytest.mark.parametrize(
    ("update", "code", "param"),
    [
        ({}, "missing_required_parameter", "session.type"),
        ({"type": "realtim"}, "invalid_value", "session.type"),
        ({"type": "transcription"}, "invalid_value", "session.type"),
        (
            {"type": "realtime", "audio": {"output": {"tone": 1}}},
            "unknown_parameter",
            "session.audio.output.tone",
        ),
        (
            {"type": "realtime", "audio": {"middle": {}}},
            "unknown_parameter",
            "session.audio.middle",
        ),
        (
            {
                "type": "realtime",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}},
            },
            "invalid_value",
            "session.audio.input.format.rate",
        ),
        (
            {"type": "realtime", "audio": {"input": {"format": {"type": "audio/opus"}}}},
            "invalid_value",
            "session.audio.input.format.type",
        ),
        (
            {
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "eagerness": "low"}}},
            },
            "unknown_parameter",
            "session.audio.input.turn_detection.eagerness",
        ),
        (
            {"type": "realtime", "audio": {"input": {"turn_detection": {"threshold": 0.5}}}},
            "missing_required_parameter",
            "session.audio.input.turn_detection.type",
        ),
        (
            {
                "type": "realtime",
                "audio": {
                    "input": {
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": "500"}
                    }
                },
            },
            "invalid_type",
            "session.audio.input.turn_detection.silence_duration_ms",
        ),
        (
            {"type": "realtime", "audio": {"output": {"speed": 2.0}}},
            "invalid_value",
            "session.audio.output.speed",
        ),
        (
            {"type": "realtime", "output_modalities": ["audio", "text"]},
            "invalid_value",
            "session.output_modalities",
        ),
        (
            {"type": "realtime", "max_output_tokens": 5000},
            "invalid_value",
            "session.max_output_tokens",
        ),
        (
            {"type": "realtime", "tools": [{"type": "function"}]},
            "missing_required_parameter",
            "session.tools[0].name",
        ),
        ({"type": "realtime", "tool_choice": "sometimes"}, "invalid_value", "session.tool_choice"),
        ({"type": "realtime", "model": "gpt-5"}, "invalid_value", "session.model"),
        (
            {"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-2"}}}},
            "invalid_value",
            "session.audio.input.transcription.model",
        ),
    ],
)
def test_invalid_sessions_name_the_parameter(update: Any, code: str, param: str) -> None:
    err = refused(update, creating=True)
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", code, param)


def test_merge_changes_only_what_is_named_and_fills_vad_defaults() -> None:
    merged = apply_session(
        BASE,
        {
            "type": "realtime",
            "audio": {
                "input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 800}}
            },
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "max_output_tokens": "inf",
        },
    )
    td = merged["audio"]["input"]["turn_detection"]
    assert td["silence_duration_ms"] == 800 and td["threshold"] == 0.5 and td["create_response"]
    assert merged["audio"]["input"]["format"] == BASE["audio"]["input"]["format"]
    assert merged["audio"]["output"] == BASE["audio"]["output"]
    assert merged["instructions"] == BASE["instructions"]
    assert BASE["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500  # not mutated
    # clearing: empty instructions, no tools, null turn detection
    cleared = apply_session(
        merged,
        {
            "type": "realtime",
            "instructions": "",
            "tools": [],
            "audio": {"input": {"turn_detection": None}},
        },
    )
    assert cleared["instructions"] == "" and cleared["tools"] == []
    assert vad_settings(cleared) is None


def test_model_and_voice_locks() -> None:
    assert (
        apply_session(BASE, {"type": "realtime", "model": "gpt-realtime-mini"}, creating=True)[
            "model"
        ]
        == "gpt-realtime-mini"
    )
    assert refused({"type": "realtime", "model": "gpt-realtime-mini"})["code"] == "invalid_value"
    err = refused({"type": "realtime", "audio": {"output": {"voice": "ash"}}}, audio_produced=True)
    assert (err["code"], err["param"]) == ("cannot_update_voice", None)
    same = apply_session(
        BASE, {"type": "realtime", "audio": {"output": {"voice": "marin"}}}, audio_produced=True
    )
    assert same["audio"]["output"]["voice"] == "marin"


@pytest.mark.parametrize(("eagerness", "silence_ms"), [("low", 900), ("auto", 550), ("high", 300)])
def test_semantic_vad_maps_onto_end_of_turn_silence(eagerness: str, silence_ms: int) -> None:
    merged = apply_session(
        BASE,
        {
            "type": "realtime",
            "audio": {
                "input": {
                    "turn_detection": {
                        "type": "semantic_vad",
                        "eagerness": eagerness,
                        "interrupt_response": False,
                    }
                }
            },
        },
    )
    vad = vad_settings(merged)
    assert vad is not None
    assert vad["silence_duration_ms"] == silence_ms
    assert vad["interrupt_response"] is False and vad["create_response"] is True
