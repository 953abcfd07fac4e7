"""The capacity benchmark's floor against the emulator: bare peers come up, audio flows both
ways, the emulator answers, refusals are reported, the CLI exits cleanly.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
import pytest

from gateway.emulator.config import EmulatorConfig
from gateway.loadtest.floor import FRAME_SAMPLES, RATE, caller_audio, run_floor
from tests.emulator.emulator_support import KEY, running, speech

pytestmark = pytest.mark.timeout(60)

UTTERANCE = "Hi, a table for two, please."


async def test_two_bare_peers_send_receive_and_get_answers() -> None:
    async with running() as emu:
        result = await run_floor(
            emu.base_url,
            KEY,
            calls=2,
            duration_s=4.0,
            ramp_s=0.3,
            settle_s=0.5,
            speech=speech(UTTERANCE),
            silence_s=2.0,
        )
        sessions = await emu.sessions()

    assert result.calls_requested == 2
    assert result.calls_up == 2, result.failures
    assert result.failed == 0 and result.failures == []
    assert result.window_s >= 3.9  # the window is never cut short; how long it overruns is load
    # Audio flowed both ways in the window. Whether it kept real time (50 frames a second per
    # call) depends on the machine as much as on the code: tests/benchmarks/floor_rate.py.
    assert result.frames_sent > 0 and result.frames_received > 0
    # The emulator heard the turns and spoke back on both calls.
    assert result.calls_answered == 2 and result.answers >= 2
    assert result.audible_frames_received > 0
    assert result.cpu_seconds > 0 and result.cpu_percent_per_call is not None
    assert result.cpu_percent_per_call == pytest.approx(result.cpu_percent / 2, rel=0.02)
    assert result.cpu_seconds_per_call_minute == pytest.approx(
        result.cpu_seconds / 2 / (result.window_s / 60), rel=0.02
    )
    assert result.send_lateness_ms_p50 is not None and result.send_lateness_ms_p99 is not None
    assert 0 <= result.send_lateness_ms_p50 <= result.send_lateness_ms_p99
    json.dumps(result.to_dict())
    # The emulator decoded our caller audio and the calls were hung up at the end.
    assert len(sessions) == 2
    assert all(s["frames_received"] > 0 for s in sessions), sessions
    assert all(s["turns"] >= 1 for s in sessions), sessions


async def test_refused_calls_are_reported_not_raised() -> None:
    async with running(EmulatorConfig(api_key=KEY, refuse_status=503, latency_ms=50)) as emu:
        result = await run_floor(emu.base_url, KEY, calls=2, duration_s=5.0, ramp_s=0.0)
    assert result.calls_up == 0 and result.failed == 2
    assert all("HTTP 503 service_unavailable" in r for r in result.failures), result.failures
    assert result.window_s < 1.0  # nothing up: no window to wait out
    assert result.cpu_percent_per_call is None and result.frames_sent == 0


async def test_wrong_key_is_reported_without_leaking_it() -> None:
    wrong = "sk-not-the-right-key-0123456789"
    async with running() as emu:
        result = await run_floor(emu.base_url, wrong, calls=1, duration_s=5.0)
    assert result.calls_up == 0 and result.failed == 1
    (reason,) = result.failures
    assert "HTTP 401 invalid_api_key" in reason and wrong not in reason


async def test_unreachable_endpoint_is_a_failure() -> None:
    result = await run_floor(
        "http://127.0.0.1:9/v1", KEY, calls=1, duration_s=1.0, setup_timeout_s=5.0
    )
    assert result.calls_up == 0 and result.failed == 1
    assert "cannot reach" in result.failures[0]


def test_caller_audio_is_speech_then_silence_in_whole_frames() -> None:
    voiced = speech(UTTERANCE)
    loop = caller_audio(voiced, speech_rate=24000, silence_s=1.0)
    assert loop.dtype == np.int16 and loop.size % FRAME_SAMPLES == 0
    speech_samples = voiced.size * 2  # 24 kHz -> 48 kHz
    assert abs(loop.size - (speech_samples + RATE)) < FRAME_SAMPLES + 64
    assert int(np.abs(loop[: speech_samples // 2]).max()) > 1000
    assert not loop[speech_samples + 64 :].any()
    with pytest.raises(ValueError, match="silence"):
        caller_audio(voiced, silence_s=0.3)


async def test_cli_prints_json_and_shuts_down_cleanly() -> None:
    async with running() as emu:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-X",
            "dev",  # asyncio debug: a task left pending or an unawaited coroutine is reported
            "-m",
            "gateway.loadtest.floor",
            "--base-url",
            emu.base_url,
            "--api-key",
            KEY,
            "--calls",
            "1",
            "--duration",
            "1",
            "--ramp",
            "0",
            "--settle",
            "0",
            "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 45)
    stderr = err.decode()
    assert proc.returncode == 0, stderr
    for marker in ("Task was destroyed", "never awaited", "Traceback", "Unclosed"):
        assert marker not in stderr, stderr
    result = json.loads(out)
    assert result["calls_up"] == 1 and result["failed"] == 0
    assert result["frames_sent"] > 0 and result["frames_received"] > 0
    assert result["cpu_percent_per_call"] > 0
