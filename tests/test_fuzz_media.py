"""Fuzz the media websocket endpoint: whatever a carrier (or an attacker) sends, before or after
a proper ``start``, the gateway answers with a meaningful close code — never an internal
error — opens no upstream session for an unadmitted stream, and stays healthy.

Each example runs a real server on a loopback port with a quiet stand-in upstream, so the
endpoint, the codec, the bridge's carrier loop and the close paths are all real.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.app import create_app, gateway_state
from gateway.numbers import Profile
from gateway.realtime import events as rt
from gateway.realtime.tracks import DecodedAudio
from gateway.serving import serve_app
from gateway.telephony.twilio import TwilioCarrierCodec
from tests import support
from tests.support import CONNECTED, admit, start_frame

pytestmark = pytest.mark.timeout(300)

ALLOWED_CLOSE_CODES = {1000, 1002, 1003, 1008, 1009}


class QuietUpstream:
    """An upstream that opens at once, says nothing and records what it is sent."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.closed = asyncio.Event()
        self.frames = 0

    @property
    def call_id(self) -> str | None:
        return "rtc_fuzz"

    @property
    def phase_spans(self) -> tuple[tuple[str, float, float], ...]:
        return ()

    async def open(self) -> None:
        return None

    def send(self, event: dict[str, Any]) -> None:
        return None

    def push_audio(self, frame: npt.NDArray[np.int16], received_at: float) -> None:
        self.frames += 1

    async def events(self) -> AsyncIterator[rt.ServerEvent]:
        await self.closed.wait()
        return
        yield  # an async generator that ends when the session closes

    async def model_audio(self) -> AsyncIterator[DecodedAudio]:
        await self.closed.wait()
        return
        yield

    async def close(self) -> None:
        self.closed.set()


_EVENTS = ["connected", "start", "media", "mark", "dtmf", "stop", "clear", "bogus", ""]
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20))
_PAYLOADS = st.one_of(
    st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode()),
    st.text(max_size=40),
    st.just(base64.b64encode(b"\xff" * 160).decode()),
)
_JSON_MESSAGES = st.fixed_dictionaries(
    {"event": st.sampled_from(_EVENTS)},
    optional={
        "sequenceNumber": _SCALARS,
        "streamSid": _SCALARS,
        "media": st.one_of(
            _SCALARS,
            st.fixed_dictionaries(
                {"payload": _PAYLOADS},
                optional={"track": _SCALARS, "chunk": _SCALARS, "timestamp": _SCALARS},
            ),
        ),
        "mark": st.one_of(_SCALARS, st.fixed_dictionaries({"name": _SCALARS})),
        "dtmf": st.one_of(_SCALARS, st.fixed_dictionaries({"digit": _SCALARS})),
        "start": st.one_of(
            _SCALARS,
            st.dictionaries(st.text(max_size=12), _SCALARS, max_size=5),
        ),
    },
).map(json.dumps)
MESSAGES = st.lists(
    st.one_of(
        _JSON_MESSAGES,
        st.text(max_size=120),
        st.binary(max_size=120),
        st.just("{" * 50),
        st.just("x" * 70_000),  # over GATEWAY_MAX_MESSAGE_BYTES
    ),
    min_size=1,
    max_size=12,
)


async def _exercise(messages: list[str | bytes], admitted: bool) -> tuple[int | None, Any]:
    upstreams: list[QuietUpstream] = []

    def factory(profile: Profile) -> QuietUpstream:
        upstream = QuietUpstream(profile)
        upstreams.append(upstream)
        return upstream

    config = support.settings(max_calls=2)
    app = create_app(config, upstream=factory)
    async with serve_app(app) as srv:
        ws = await connect(srv.ws_url + "/twilio/media", max_size=None)
        async with ws:
            if admitted:
                token = await admit(srv.url, "CAfuzz")
                await ws.send(CONNECTED)
                await ws.send(start_frame(TwilioCarrierCodec("MZfuzz"), "CAfuzz", token))
            with contextlib.suppress(ConnectionClosed):
                for message in messages:
                    await ws.send(message)
                await ws.send(json.dumps({"event": "stop", "sequenceNumber": "999"}))
            with contextlib.suppress(ConnectionClosed):
                async with asyncio.timeout(10):
                    await ws.close()
        state = gateway_state(app)
        async with asyncio.timeout(10):
            await state.idle.wait()
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{srv.url}/healthz")).status_code == 200
        internal = state.metrics.registry.get_sample_value(
            "gateway_calls_total", {"outcome": "internal_error"}
        )
        if not admitted:
            assert upstreams == [], "an unadmitted stream opened an upstream session"
        return ws.close_code, internal


def _check(close_code: int | None, internal: Any) -> None:
    assert close_code in ALLOWED_CLOSE_CODES, close_code
    assert not internal, "the gateway hit an internal error"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MESSAGES)
def test_unadmitted_streams_get_a_meaningful_close_and_cost_nothing(
    messages: list[str | bytes],
) -> None:
    _check(*asyncio.run(_exercise(messages, admitted=False)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MESSAGES)
def test_admitted_streams_survive_or_close_meaningfully(messages: list[str | bytes]) -> None:
    _check(*asyncio.run(_exercise(messages, admitted=True)))
