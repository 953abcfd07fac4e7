"""Scaling out: two gateway replicas behind one load balancer.

Twilio POSTs the webhook and then opens the media websocket as two separate connections, so a
load balancer in front of several replicas may send them to different processes. The stream
must then still be accepted by the replica it lands on. These tests run two real gateways on
loopback and play the load balancer by hand.
"""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from gateway.app import create_app
from gateway.errors import UpstreamError
from gateway.numbers import Profile
from gateway.serving import RunningServer, serve_app
from gateway.settings import Settings
from gateway.telephony.twilio import TwilioCarrierCodec, start_message

pytestmark = pytest.mark.timeout(30)

CONNECTED = json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


class UpstreamProbe:
    """An upstream factory that records that a call got as far as opening a session."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def __call__(self, profile: Profile) -> Any:
        self.opened.append(profile.name)
        # Refuse at once: the test only needs to know the stream was accepted and bound.
        raise UpstreamError("test upstream: refused on purpose", code="test")


def _settings(secret: str = "shared-by-every-replica") -> Settings:
    return Settings(_env_file=None, max_calls=5, call_token_secret=secret)  # type: ignore[call-arg]


@pytest.fixture
async def replicas() -> AsyncIterator[list[tuple[RunningServer, UpstreamProbe]]]:
    probes = [UpstreamProbe(), UpstreamProbe()]
    async with (
        serve_app(create_app(_settings(), upstream=probes[0])) as a,
        serve_app(create_app(_settings(), upstream=probes[1])) as b,
    ):
        yield [(a, probes[0]), (b, probes[1])]


async def _admit(server: RunningServer, call_sid: str) -> dict[str, str]:
    async with httpx.AsyncClient() as client:
        resp = await client.post(
            f"{server.url}/twilio/voice",
            data={"CallSid": call_sid, "AccountSid": "AC1", "From": "+15550009999", "To": "+1555"},
        )
    resp.raise_for_status()
    # Twilio sends every <Parameter> of the TwiML back in start.customParameters
    stream = ET.fromstring(resp.text).find("./Connect/Stream")
    assert stream is not None
    return {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}


async def _stream(server: RunningServer, call_sid: str, params: dict[str, str]) -> int | None:
    codec = TwilioCarrierCodec("MZ" + call_sid)
    start = start_message(
        stream_sid=codec.stream_sid,
        call_sid=call_sid,
        account_sid="AC1",
        custom_parameters=params,
    )
    async with connect(server.ws_url + "/twilio/media") as ws:
        await ws.send(CONNECTED)
        await ws.send(codec.encode(start))
        async with asyncio.timeout(10):
            await ws.wait_closed()
    return ws.close_code


async def test_stream_on_the_admitting_replica_is_bound(
    replicas: list[tuple[RunningServer, UpstreamProbe]],
) -> None:
    (a, probe_a), _ = replicas
    token = await _admit(a, "CAsame")
    code = await _stream(a, "CAsame", token)
    assert probe_a.opened == ["default"], "the admitted stream should reach the upstream"
    assert code == 4502  # our probe refused the upstream: the stream was accepted and bound


async def test_stream_on_another_replica_is_bound(
    replicas: list[tuple[RunningServer, UpstreamProbe]],
) -> None:
    (a, probe_a), (b, probe_b) = replicas
    token = await _admit(a, "CAother")
    code = await _stream(b, "CAother", token)
    assert code != 1008, "replica B refused a call that replica A admitted"
    assert probe_b.opened == ["default"]
    assert probe_a.opened == []


async def test_a_replica_with_another_secret_refuses_the_stream() -> None:
    probes = [UpstreamProbe(), UpstreamProbe()]
    async with (
        serve_app(create_app(_settings("one"), upstream=probes[0])) as a,
        serve_app(create_app(_settings("two"), upstream=probes[1])) as b,
    ):
        token = await _admit(a, "CAmismatch")
        assert await _stream(b, "CAmismatch", token) == 1008
    assert probes == [probes[0], probes[1]] and probes[1].opened == []


async def test_a_stream_binds_once(replicas: list[tuple[RunningServer, UpstreamProbe]]) -> None:
    (a, probe_a), (b, probe_b) = replicas
    token = await _admit(a, "CAonce")
    assert await _stream(b, "CAonce", token) == 4502
    # the same start replayed to the same replica is refused before any upstream request
    assert await _stream(b, "CAonce", token) == 1008
    assert probe_b.opened == ["default"] and probe_a.opened == []
