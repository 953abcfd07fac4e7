"""The console in a real browser: Debian's Chromium driven by playwright, against a real
gateway with the emulator embedded. The browser phone places a call through the phone path
with a fake microphone that says a synthesized sentence; the page must receive and play the
greeting and echo its marks, send a keypad digit that reaches the call, and hang up.

Needs ``apt-get install -y chromium`` and ``pip install playwright`` (:mod:`tests.browser`).
"""

from __future__ import annotations

import asyncio
import json
import os
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.app import gateway_state
from gateway.audio.tts import synthesizer
from gateway.bridge.core import keypad_text
from gateway.loadtest.caller import CallOptions, HangUp, Say, SimulatedCall, WaitForAnswer
from gateway.service import RunningGateway
from tests.browser import chromium
from tests.support import wait_until

pytestmark = pytest.mark.timeout(90)

ADMIN = "console-browser-admin-token"
PROFILES = """
default:
  instructions: "You answer for the default line."
  greeting: "Greet the caller briefly."
numbers:
  "+15551230001":
    instructions: "You are the bakery's assistant."
    greeting: "Say hello from the bakery, and ask how you can help."
    record: true
"""
MIC_RATE = 48_000


@pytest.fixture
def gateway_settings() -> dict[str, Any]:
    return {"max_calls": 2, "admin_token": ADMIN}


@pytest.fixture
def profiles_yaml() -> str:
    return PROFILES


@pytest.fixture
def event_log(tmp_path: Path) -> Path:
    return tmp_path / "emulator-events.jsonl"


@pytest.fixture
def emulator_options(event_log: Path) -> dict[str, object]:
    return {"latency_ms": 100.0, "event_log": event_log}


def _keypad_items(log: Path) -> list[str]:
    """The keypad entries the model was given (conversation items in the emulator's log)."""
    texts = []
    for line in log.read_text().splitlines():
        event: dict[str, Any] = json.loads(line).get("event", json.loads(line))
        if event.get("type") == "conversation.item.create":
            for part in event.get("item", {}).get("content", []):
                if "keypad" in str(part.get("text", "")):
                    texts.append(part["text"])
    return texts


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the fake microphone says: a question two seconds in, over the greeting (a
    barge-in), then ten seconds of silence. Chromium plays the file in a loop."""
    speech = synthesizer().synthesize("Hello, when do you open on Saturday?", rate=MIC_RATE)
    lead, tail = np.zeros(MIC_RATE * 2, dtype=np.int16), np.zeros(MIC_RATE * 10, dtype=np.int16)
    pcm = np.concatenate([lead, speech, tail])
    path = tmp_path_factory.mktemp("mic") / "caller.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(MIC_RATE)
        w.writeframes(pcm.tobytes())
    return path


@pytest.fixture
async def browser(mic_wav: Path, gateway: RunningGateway) -> AsyncIterator[Any]:
    """Chromium, closed before the gateway stops (its open push streams would hold the
    server's shutdown)."""
    args = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic_wav}",
        "--autoplay-policy=no-user-gesture-required",
    ]
    async with chromium(args) as b:
        yield b


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """Where screenshots go: $CONSOLE_ARTIFACTS when set (CI uploads it), else the test's tmp."""
    base = Path(os.environ.get("CONSOLE_ARTIFACTS", tmp_path / "screenshots"))
    base.mkdir(parents=True, exist_ok=True)
    return base


async def _logged_in_page(browser: Any, gateway: RunningGateway, width: int, height: int) -> Any:
    context = await browser.new_context(viewport={"width": width, "height": height})
    page = await context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    await page.goto(f"{gateway.url}/console")
    await page.fill("#token", ADMIN)
    await page.click("button[type=submit]")
    await page.wait_for_selector("body[data-ready=true]", state="attached", timeout=10_000)
    return page


async def test_the_browser_phone_calls_hears_the_greeting_presses_a_key_and_hangs_up(
    browser: Any, gateway: RunningGateway, artifacts: Path, event_log: Path
) -> None:
    page = await _logged_in_page(browser, gateway, 1280, 800)
    await page.goto(f"{gateway.url}/console#phone")
    await page.select_option("#phone-number", "+15551230001")
    await page.click("#phone-call")
    # The greeting arrives and plays; the page echoes each mark once its audio has played.
    # (Polled from here: the page's CSP forbids the eval that wait_for_function needs.)
    await wait_until(
        lambda: page.evaluate("window.phone.stats.played >= 25 && window.phone.stats.marks >= 1"),
        within=30,
        interval=0.1,
    )
    stats = await page.evaluate("window.phone.stats")
    assert stats["received"] >= stats["played"] >= 25
    assert stats["sent"] > 0  # the microphone streams 20 ms μ-law frames

    state = gateway_state(gateway.app)
    (sid,) = state.calls
    runner = state.calls[sid]
    assert runner.summary()["profile"] == "+15551230001"
    # The caller's question two seconds in talks over the greeting: the gateway sends clear,
    # and the page's playout drops what it had queued.
    await wait_until(lambda: page.evaluate("window.phone.stats.clears >= 1"), within=20)
    assert runner.summary()["barge_ins"] >= 1
    await page.click("#keypad button[data-digit='5']")
    await wait_until(lambda: "5" in runner.summary()["dtmf"], within=10)
    await wait_until(lambda: keypad_text("5") in _keypad_items(event_log), within=10)

    # The live page shows the call as it happens, with the greeting in its transcript.
    await page.goto(f"{gateway.url}/console#live")
    await page.wait_for_selector(f"article[data-call-sid='{sid}'] .transcript li.assistant")
    await page.screenshot(path=str(artifacts / "live-call-desktop.png"), full_page=True)

    await page.goto(f"{gateway.url}/console#phone")
    await page.click("#phone-hangup")
    await wait_until(lambda: not state.calls, within=15)

    # Its record, with the keypad entry, a timeline and the stereo recording to play.
    await page.goto(f"{gateway.url}/console#history")
    row = page.locator(f"#history-table tr[data-call-sid='{sid}']")

    async def listed() -> bool:
        await page.click("#history-filter button[type=submit]")
        await page.wait_for_timeout(200)
        return await row.count() == 1

    await wait_until(listed, within=20, interval=0.2)
    await row.click()
    await page.wait_for_selector("#record-audio:not([hidden])")
    assert "Keypad 5" in await page.inner_text("#record-facts")
    assert await page.locator("#record-timeline canvas").count() >= 1
    # the stereo recording drawn as who spoke when
    await page.wait_for_selector("#record-levels[data-seconds] canvas")
    duration = await page.evaluate(
        """async () => {
            const a = document.getElementById('record-audio');
            a.muted = true;
            await a.play();
            return a.duration;
        }"""
    )
    assert duration > 1.0
    await page.screenshot(path=str(artifacts / "history-desktop.png"), full_page=True)

    # Usage and cost count the call, in the table and the chart.
    await page.goto(f"{gateway.url}/console#usage")
    await page.wait_for_selector("#usage-table td:text('+15551230001')")
    await page.wait_for_selector("#usage-chart canvas")
    await page.screenshot(path=str(artifacts / "usage-desktop.png"), full_page=True)

    # Profiles reload from the button.
    await page.goto(f"{gateway.url}/console#profiles")
    await page.wait_for_selector(".profile h3")
    await page.click("#profiles-reload")
    await page.wait_for_selector("#profiles-status:text('Reloaded')")

    assert page.errors == []
    assert ADMIN not in await page.content()


async def test_each_page_fits_a_phone_screen_without_errors(
    browser: Any, gateway: RunningGateway, artifacts: Path
) -> None:
    for width, height, name in ((1280, 800, "desktop"), (390, 844, "phone")):
        page = await _logged_in_page(browser, gateway, width, height)
        for tab in ("live", "phone", "history", "usage", "health", "profiles"):
            await page.goto(f"{gateway.url}/console#{tab}")
            await page.wait_for_selector(f"#page-{tab}:not([hidden])")
            if tab in ("usage", "health"):
                await page.wait_for_selector(f"#page-{tab} .chart canvas")
            await page.screenshot(path=str(artifacts / f"{tab}-{name}.png"), full_page=True)
            overflow = await page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{tab} scrolls sideways by {overflow}px at {width}px"
        assert page.errors == [], page.errors


async def test_the_live_page_shows_a_load_tester_call_as_it_happens(
    browser: Any, gateway: RunningGateway, artifacts: Path
) -> None:
    page = await _logged_in_page(browser, gateway, 1280, 800)
    await page.wait_for_selector("#push-state:text('live')")
    question = Say.from_text("Hello, when do you open on Saturday?")
    options = CallOptions(webhook_url=f"{gateway.url}/twilio/voice", to_number="+15551230001")
    call = asyncio.create_task(
        SimulatedCall([WaitForAnswer(), question, WaitForAnswer(), HangUp()], options).run()
    )
    card = page.locator("article.call")
    await card.locator(".transcript li.assistant").first.wait_for(timeout=30_000)
    await card.locator(".transcript li.caller").first.wait_for(timeout=30_000)
    facts = await card.locator(".facts").inner_text()
    assert "+15551230001" in facts and "Codec" in facts
    await page.screenshot(path=str(artifacts / "live-loadtest-desktop.png"), full_page=True)
    result = await asyncio.wait_for(call, 30)
    assert result.ok, (result.failure, result.failure_detail)
    await page.wait_for_selector(f"article.call.ended[data-call-sid='{result.call_sid}']")
    assert page.errors == []
