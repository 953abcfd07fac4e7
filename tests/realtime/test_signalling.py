"""HTTP signalling against httpx's MockTransport: what goes out, how refusals and failures map.

The whole exchange with a real server (and a real aiortc answer) is covered by
``test_session.py``; here the requests and the error mapping, with nothing but HTTP.
"""

from __future__ import annotations

import email
import json
from collections.abc import Callable

import httpx
import pytest

from gateway.errors import UpstreamError, UpstreamProtocolError, UpstreamRefused
from gateway.realtime.signalling import Signalling, call_id_from_location

KEY = "sk-test-SECRET-0123456789"
BASE = "http://rt.test/v1"
ANSWER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def _parts(request: httpx.Request) -> dict[str, bytes]:
    msg = email.message_from_bytes(
        b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n" + request.content
    )
    parts: dict[str, bytes] = {}
    for part in msg.walk():
        if not part.is_multipart():
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            parts[str(part.get_param("name", header="content-disposition"))] = payload
    return parts


@pytest.mark.parametrize(
    ("location", "call_id"),
    [
        ("/v1/realtime/calls/rtc_test", "rtc_test"),
        ("https://api.openai.com/v1/realtime/calls/rtc_u1_9c65ab?x=rtc_no", "rtc_u1_9c65ab"),
        ("/v1/realtime/calls/rtc_abc/", "rtc_abc"),
        ("/v1/realtime/calls/rtc_abc#frag", "rtc_abc"),
        ("/v1/realtime/calls/12345", None),
        ("", None),
        (None, None),
    ],
)
def test_call_id_from_location(location: str | None, call_id: str | None) -> None:
    assert call_id_from_location(location) == call_id


async def test_unified_offer_is_multipart_with_the_server_key() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, text=ANSWER, headers={"Location": "/v1/realtime/calls/rtc_42"})

    signalling = Signalling(BASE, KEY, safety_identifier="user-7")
    async with _client(answer) as client:
        got = await signalling.post_offer(client, "v=0 offer", session={"type": "realtime"})
    assert (got.sdp, got.call_id) == (ANSWER, "rtc_42")
    [request] = seen
    assert str(request.url) == f"{BASE}/realtime/calls"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["openai-safety-identifier"] == "user-7"
    parts = _parts(request)
    assert parts["sdp"] == b"v=0 offer"
    assert json.loads(parts["session"]) == {"type": "realtime"}


async def test_ephemeral_offer_is_raw_sdp_with_the_minted_key() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/client_secrets"):
            return httpx.Response(200, json={"value": "ek_1"})
        return httpx.Response(201, text=ANSWER)

    signalling = Signalling(BASE, KEY)
    async with _client(answer) as client:
        secret = await signalling.client_secret(client, {"type": "realtime"}, 60)
        got = await signalling.post_offer(client, "v=0 offer", ephemeral_key=secret)
    assert got.call_id is None
    mint, offer = seen
    assert json.loads(mint.content) == {
        "expires_after": {"anchor": "created_at", "seconds": 60},
        "session": {"type": "realtime"},
    }
    assert offer.headers["authorization"] == "Bearer ek_1"
    assert offer.headers["content-type"] == "application/sdp"
    assert offer.content == b"v=0 offer"
    with pytest.raises(ValueError, match="exactly one"):
        await signalling.post_offer(client, "v=0", session={}, ephemeral_key="ek_1")


async def test_refusal_names_status_code_and_hint_without_the_key() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        body = {"error": {"code": "invalid_api_key", "message": f"Incorrect key {KEY}"}}
        return httpx.Response(401, json=body)

    async with _client(refuse) as client:
        with pytest.raises(UpstreamRefused) as caught:
            await Signalling(BASE, KEY).post_offer(client, "v=0", session={})
    err = caught.value
    assert (err.status, err.code) == (401, "invalid_api_key")
    assert "HTTP 401 invalid_api_key" in str(err) and "check OPENAI_API_KEY" in str(err)
    assert KEY not in str(err)


async def test_answer_without_sdp_is_a_protocol_error() -> None:
    async with _client(lambda _: httpx.Response(201, text="{}")) as client:
        with pytest.raises(UpstreamProtocolError, match="without an SDP body"):
            await Signalling(BASE, KEY).post_offer(client, "v=0", session={})


async def test_connection_failure_is_unreachable_and_timeouts_pass_through() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    async with _client(fail) as client:
        with pytest.raises(UpstreamError, match="cannot reach") as caught:
            await Signalling(BASE, KEY).hangup(client, "rtc_1")
    assert caught.value.code == "unreachable"
    async with _client(slow) as client:
        with pytest.raises(httpx.TimeoutException):
            await Signalling(BASE, KEY).hangup(client, "rtc_1")
