"""CORS on ``/v1/realtime/calls``: a web page can post its offer with an ephemeral key, as the
documented browser flow does; other routes stay without CORS."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway.emulator.cors import CALLS_PATH
from tests.browser import chromium
from tests.emulator.emulator_support import KEY, running

pytestmark = pytest.mark.timeout(60)

PREFLIGHT = {
    "Origin": "https://app.example",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}


async def test_the_calls_route_answers_a_preflight_for_any_origin() -> None:
    async with running() as emu, httpx.AsyncClient(base_url=emu.server.url) as http:
        resp = await http.options(CALLS_PATH, headers=PREFLIGHT)
        assert resp.status_code == 204
        assert resp.headers["access-control-allow-origin"] == "*"
        assert "POST" in resp.headers["access-control-allow-methods"]
        allowed = resp.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed and "content-type" in allowed
        # an answer (here a refusal: no key) carries the CORS headers too, Location exposed
        refused = await http.post(
            CALLS_PATH, content="v=0", headers={"Content-Type": "application/sdp"}
        )
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == "*"
        assert refused.headers["access-control-expose-headers"] == "Location"
        # minting keys is for servers: no CORS there
        other = await http.options("/v1/realtime/client_secrets", headers=PREFLIGHT)
        assert "access-control-allow-origin" not in other.headers


async def test_a_chromium_page_creates_a_call_with_an_ephemeral_key() -> None:
    async with running() as emu, httpx.AsyncClient(base_url=emu.base_url) as http:
        minted = await http.post(
            "/realtime/client_secrets",
            json={"session": {"type": "realtime"}},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        key = minted.json()["value"]
        async with chromium() as browser:
            page = await browser.new_page()
            result: dict[str, Any] = await page.evaluate(
                """async ([url, key]) => {
                    const pc = new RTCPeerConnection();
                    pc.addTransceiver('audio');
                    pc.createDataChannel('oai-events');
                    await pc.setLocalDescription(await pc.createOffer());
                    const resp = await fetch(url, {
                        method: 'POST', body: pc.localDescription.sdp,
                        headers: {Authorization: `Bearer ${key}`,
                                  'Content-Type': 'application/sdp'},
                    });
                    const answer = await resp.text();
                    pc.close();
                    return {status: resp.status, location: resp.headers.get('Location'),
                            answer: answer.slice(0, 3)};
                }""",
                [f"{emu.server.url}{CALLS_PATH}", key],
            )
        assert result["status"] == 201, result
        assert result["answer"] == "v=0"
        assert result["location"].startswith("/v1/realtime/calls/rtc_")
        assert len(await emu.sessions()) == 1
