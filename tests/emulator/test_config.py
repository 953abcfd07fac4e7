"""The emulator's configuration: each part refuses bad values in the operator's words, and the
flat options of ``gateway emulator`` land in the right part."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from gateway.emulator.config import (
    REAL_MAX_SESSION_S,
    EmulatorConfig,
    EngineConfig,
    Faults,
)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"reply": "poem"}, "reply must be speech, echo or tone, got 'poem'"),
        ({"latency_ms": -1}, "latency_ms must not be negative, got -1"),
        ({"latency_jitter_ms": -5}, "latency_jitter_ms must not be negative, got -5"),
        ({"generation_speed": 0.5}, "generation_speed must be at least 1 (real time), got 0.5"),
        ({"max_session_s": 0}, "max_session_s must be positive, got 0"),
        ({"tool_call_after_turn": 0}, "tool_call_after_turn counts user turns from 1, got 0"),
        ({"receive_buffer_ms": 200}, "receive_buffer_ms must be within 0..160, got 200"),
    ],
)
def test_engine_config_names_the_bad_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as refused:
        EngineConfig(**options)
    assert str(refused.value) == message


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"refuse_status": 418},
            "refuse_status must be one of 400, 401, 403, 429, 500, 503, got 418",
        ),
        ({"refuse_count": -1}, "refuse_count must not be negative, got -1"),
        ({"ice_delay_s": -0.5}, "ice_delay_s must not be negative, got -0.5"),
        ({"close_channel_after_s": -1}, "close_channel_after_s must not be negative, got -1"),
        ({"close_peer_after_s": -1}, "close_peer_after_s must not be negative, got -1"),
        ({"server_error_after_s": -1}, "server_error_after_s must not be negative, got -1"),
        ({"max_session_s": -2}, "max_session_s must be positive, got -2"),
    ],
)
def test_faults_name_the_bad_knob(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as refused:
        Faults(**options)
    assert str(refused.value) == message


def test_faults_from_json_check_types_fields_and_values() -> None:
    body = TypeAdapter(Faults)  # what POST /emulator/faults does
    assert body.validate_json(b'{"refuse_status": 503, "ice_delay_s": "1.5"}') == Faults(
        refuse_status=503, ice_delay_s=1.5
    )
    assert body.validate_json(b"{}") == Faults()
    for bad in (b'{"explode": true}', b'{"refuse_count": "many"}', b'{"refuse_status": 418}'):
        with pytest.raises(ValidationError):
            body.validate_json(bad)


def test_flat_options_are_sorted_into_engine_and_faults(tmp_path: Path) -> None:
    config = EmulatorConfig(
        api_key="sk-test",
        event_log=tmp_path / "events.jsonl",
        reply="echo",
        latency_ms=50,
        max_session_s=30,
        tool_call="end_call",
        refuse_status=503,
        refuse_count=1,
        ice_fail=True,
    )
    assert config.engine == EngineConfig(
        reply="echo", latency_ms=50, max_session_s=30, tool_call="end_call"
    )
    # max_session_s at start is the engine's limit; the fault of that name stays unset
    assert config.faults == Faults(refuse_status=503, refuse_count=1, ice_fail=True)
    assert config.api_key == "sk-test"
    assert config.event_log == tmp_path / "events.jsonl"


def test_options_given_as_none_keep_the_defaults() -> None:
    # the CLI passes every option, None where the operator gave none
    config = EmulatorConfig(max_session_s=None, tool_call=None, refuse_status=None)
    assert config.engine.max_session_s == REAL_MAX_SESSION_S
    assert config == EmulatorConfig()


def test_options_apply_on_top_of_given_parts() -> None:
    config = EmulatorConfig(
        engine=EngineConfig(reply="tone", latency_ms=10),
        faults=Faults(ice_delay_s=2.0),
        latency_ms=20,
        refuse_status=429,
    )
    assert config.engine == EngineConfig(reply="tone", latency_ms=20)
    assert config.faults == Faults(ice_delay_s=2.0, refuse_status=429)


def test_bad_and_unknown_options_are_refused() -> None:
    with pytest.raises(ValueError, match="generation_speed must be at least 1"):
        EmulatorConfig(generation_speed=0.5)
    with pytest.raises(ValueError, match="refuse_status must be one of"):
        EmulatorConfig(refuse_status=418)
    with pytest.raises(TypeError, match="unknown options: latency, voice"):
        EmulatorConfig(latency=50, voice="marin")
