"""The browser phone's audio worklets in a real Chromium, against our own G.711 codec:
capture gives 160-byte μ-law frames of 8 kHz audio with what lies above 4 kHz filtered out
(not folded down); the player echoes a mark only once the audio before it has played, and
clear drops its queue at once and echoes the pending marks, as Twilio does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from gateway.audio.g711 import array_to_ulaw, ulaw_to_array
from gateway.service import RunningGateway
from tests.browser import chromium

pytestmark = pytest.mark.timeout(60)

WORKLET = "/console/static/phone-worklet.js"


@pytest.fixture
def gateway_settings() -> dict[str, Any]:
    return {"max_calls": 1, "admin_token": "worklet-test-token"}  # serves the static files


@pytest.fixture
async def page(gateway: RunningGateway) -> AsyncIterator[Any]:
    async with chromium(["--autoplay-policy=no-user-gesture-required"]) as browser:
        p = await browser.new_page()
        await p.goto(f"{gateway.url}/console")  # same origin as the worklet module
        yield p


async def _capture(page: Any, freq: float, frames: int) -> list[bytes]:
    out: list[list[int]] = await page.evaluate(
        """async ([url, freq, frames]) => {
            const ctx = new AudioContext();
            await ctx.audioWorklet.addModule(url);
            const capture = new AudioWorkletNode(ctx, 'mulaw-capture');
            const tone = new OscillatorNode(ctx, {frequency: freq});
            const gain = new GainNode(ctx, {gain: 0.5});
            tone.connect(gain).connect(capture);
            tone.start();
            const got = [];
            await new Promise((done) => {
                capture.port.onmessage = (e) => {
                    got.push(Array.from(e.data));
                    if (got.length === frames) done();
                };
            });
            await ctx.close();
            return got;
        }""",
        [WORKLET, freq, frames],
    )
    return [bytes(frame) for frame in out]


async def test_capture_sends_8khz_mulaw_frames_filtered_above_4khz(page: Any) -> None:
    speech_band = await _capture(page, 1000.0, 25)
    assert all(len(f) == 160 for f in speech_band)
    pcm = ulaw_to_array(b"".join(speech_band[5:])).astype(np.float64)  # past the filter's start
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    peak_hz = np.argmax(spectrum) * 8000 / len(pcm)
    assert abs(peak_hz - 1000) < 50
    rms_1k = float(np.sqrt(np.mean(pcm**2)))
    assert 0.5 * 32768 * 0.5 < rms_1k * np.sqrt(2) < 1.2 * 32768 * 0.5  # amplitude 0.5 kept

    # 6 kHz would fold down to 2 kHz without the low-pass filter
    above = await _capture(page, 6000.0, 25)
    folded = ulaw_to_array(b"".join(above[5:])).astype(np.float64)
    assert float(np.sqrt(np.mean(folded**2))) < 0.05 * rms_1k


async def test_player_echoes_marks_after_their_audio_and_clear_flushes_them(page: Any) -> None:
    frame = array_to_ulaw((8000 * np.sin(np.arange(160) * 2 * np.pi / 20)).astype(np.int16))
    events: list[dict[str, Any]] = await page.evaluate(
        """async ([url, frame]) => {
            const ctx = new AudioContext();
            await ctx.audioWorklet.addModule(url);
            const player = new AudioWorkletNode(ctx, 'mulaw-player');
            player.connect(ctx.destination);
            const events = [];
            let played = 0;
            const waitFor = (test) => new Promise((done) => {
                player.port.onmessage = (e) => {
                    const m = e.data;
                    if (m.type === 'played') { played = m.frames; return; }
                    events.push({...m, frames: played});
                    if (test(m)) done();
                };
            });
            const bytes = new Uint8Array(frame);
            // 10 frames, mark 'first', then 100 frames (2 s) and mark 'second'
            for (let i = 0; i < 10; i++) player.port.postMessage({type: 'audio', bytes});
            player.port.postMessage({type: 'mark', name: 'first'});
            for (let i = 0; i < 100; i++) player.port.postMessage({type: 'audio', bytes});
            player.port.postMessage({type: 'mark', name: 'second'});
            await waitFor((m) => m.name === 'first');
            const cleared = waitFor((m) => m.type === 'cleared');
            player.port.postMessage({type: 'clear'});
            await cleared;
            await ctx.close();
            return events;
        }""",
        [WORKLET, list(frame)],
    )
    first, second, cleared = events
    assert (first["type"], first["name"], first["played"]) == ("mark", "first", True)
    assert first["frames"] >= 9  # echoed once its 10 frames had played (reports lag a frame)
    # the clear came long before 'second' was reached: echoed unplayed, right away
    assert (second["name"], second["played"]) == ("second", False)
    assert second["frames"] < 100
    assert cleared["type"] == "cleared"
