"""Keypad (DTMF) end to end: a caller types, the model gets one entry, the caller hears it answer.

Simulated Twilio caller -> real gateway -> real emulator; the emulator's event log shows what
reached the model.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import gateway_state
from gateway.bridge.core import keypad_text
from gateway.loadtest.caller import CallOptions, Pause, PressDigits, SimulatedCall, WaitForAnswer
from gateway.numbers import ProfileStore
from gateway.service import RunningGateway, running_gateway
from gateway.settings import Settings
from tests.support import wait_all_ended

pytestmark = pytest.mark.timeout(90)

PROFILES = """
default:
  greeting: "Say: press 1 for sales, 2 for service, then pound."
  dtmf_timeout_ms: 400
"""


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[RunningGateway, Path]]:
    path = tmp_path / "profiles.yaml"
    path.write_text(PROFILES)
    log = tmp_path / "events.jsonl"
    settings = Settings(_env_file=None, profiles_file=path, records_url="off")  # type: ignore[call-arg]
    async with running_gateway(
        settings,
        port=0,
        emulator_options={"latency_ms": 100.0, "event_log": log},
        profiles=ProfileStore(path),
    ) as gw:
        yield gw, log


def _keypad_items(log: Path) -> list[str]:
    texts = []
    for line in log.read_text().splitlines():
        event: dict[str, Any] = json.loads(line).get("event", json.loads(line))
        if event.get("type") != "conversation.item.create":
            continue
        for part in event.get("item", {}).get("content", []):
            if "keypad" in str(part.get("text", "")):
                texts.append(part["text"])
    return texts


def test_keypad_text_names_the_keys() -> None:
    assert keypad_text("12#") == "[The caller pressed on the phone keypad: 1, 2, pound (#)]"
    assert keypad_text("*0") == "[The caller pressed on the phone keypad: star (*), 0]"


async def test_an_entry_reaches_the_model_once_and_is_answered(
    gateway: tuple[RunningGateway, Path],
) -> None:
    gw, log = gateway
    script = [WaitForAnswer(), PressDigits("12#", gap_ms=120), Pause(3500), PressDigits("7")]
    script += [Pause(2500)]
    result = await SimulatedCall(
        script, CallOptions(webhook_url=f"{gw.url}/twilio/voice", to_number="+15550100002")
    ).run()
    assert result.ok, result.failure_detail
    await wait_all_ended(gw)
    # "12#" ends at the terminator; "7" alone ends at the 400 ms inter-digit timeout.
    assert _keypad_items(log) == [keypad_text("12#"), keypad_text("7")]
    summary = gateway_state(gw.app).recent[-1]
    assert summary["dtmf"] == "12#7"
    # The caller heard an answer after each entry: the emulator replies to the item. "7"
    # interrupts the first answer (typing over the assistant is a barge-in), so the second
    # answer is audio heard after the entry's clear.
    digits = [e.t_ms for e in result.timeline if e.kind == "dtmf"]
    clears = [e.t_ms for e in result.timeline if e.kind == "clear"]
    assert any(digits[2] < s.start_ms < digits[3] for s in result.assistant), result.timeline
    cleared_at = min(t for t in clears if t > digits[3])
    assert any(s.end_ms > cleared_at + 300 for s in result.assistant), result.timeline
