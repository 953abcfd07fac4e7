"""The Twilio Calls-resource stand-in, over real loopback HTTP, and SimulatedCall registered in it.

The small media server below stands in for the gateway (it is not under test): it answers the
webhook with ``<Connect><Stream>``, parses the stream with the real Twilio codec and records
``start``/``stop``; it can close the websocket itself to play a gateway that hangs up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response
from starlette.websockets import WebSocketDisconnect

from gateway.errors import CarrierError
from gateway.loadtest.caller import CallOptions, Pause, SimulatedCall
from gateway.loadtest.twilio_api import Callee, CallUpdate, TwilioApiStandIn, dial_numbers
from gateway.serving import RunningServer, serve_app
from gateway.telephony.messages import Media, Start, Stop
from gateway.telephony.signature import validate_webhook
from gateway.telephony.twilio import TwilioCodec

pytestmark = pytest.mark.timeout(60)

ACCOUNT = "AC" + "ab" * 16
TOKEN = "stand-in-auth-token"
KEY, KEY_SECRET = "SK" + "cd" * 16, "api-key-secret"
CALL = "CA" + "12" * 16


@dataclass
class MediaServer:
    close_after_media: int | None = None
    webhooks: list[dict[str, str]] = field(default_factory=list)
    start: Start | None = None
    media: int = 0
    started: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/twilio/voice")
        async def voice(request: Request) -> Response:
            self.webhooks.append({k: str(v) for k, v in (await request.form()).items()})
            twiml = '<Response><Connect><Stream url="/media"/></Connect></Response>'
            return Response(twiml, media_type="application/xml")

        @app.websocket("/media")
        async def media(ws: WebSocket) -> None:
            await ws.accept()
            codec = TwilioCodec()
            try:
                while True:
                    msg = codec.parse(await ws.receive_text())
                    if isinstance(msg, Start):
                        self.start = msg
                        self.started.set()
                    elif isinstance(msg, Media):
                        self.media += 1
                        if self.close_after_media is not None and (
                            self.media >= self.close_after_media
                        ):
                            await ws.close(code=1000, reason="gateway hung up")
                            return
                    elif isinstance(msg, Stop):
                        self.stopped.set()
            except (WebSocketDisconnect, CarrierError):
                pass
            finally:
                self.closed.set()

        return app


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[TwilioApiStandIn, RunningServer]]:
    api = TwilioApiStandIn(ACCOUNT, TOKEN, api_keys={KEY: KEY_SECRET})
    async with api.serve() as server:
        yield api, server


@contextlib.asynccontextmanager
async def media_server(
    close_after_media: int | None = None,
) -> AsyncIterator[tuple[MediaServer, RunningServer]]:
    fake = MediaServer(close_after_media=close_after_media)
    async with serve_app(fake.app()) as server:
        yield fake, server


def call_url(server: RunningServer, call: str = CALL, account: str = ACCOUNT) -> str:
    return f"{server.url}/2010-04-01/Accounts/{account}/Calls/{call}.json"


AUTH = httpx.BasicAuth(ACCOUNT, TOKEN)


def recorder() -> tuple[list[CallUpdate], Callable[[CallUpdate], Awaitable[None]]]:
    seen: list[CallUpdate] = []

    async def on_update(update: CallUpdate) -> None:
        seen.append(update)

    return seen, on_update


# --- the resource over HTTP --------------------------------------------------------------------


async def test_fetch_returns_the_call_resource_as_twilio_shapes_it(
    stand_in: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    api, server = stand_in
    _, on_update = recorder()
    api.register(CALL, to="+15550100002", from_="+442071838750", on_update=on_update)
    async with httpx.AsyncClient() as http:
        resp = await http.get(call_url(server), auth=AUTH)
    assert resp.status_code == 200
    body = resp.json()
    assert body["sid"] == CALL
    assert body["account_sid"] == ACCOUNT
    assert body["status"] == "in-progress"
    assert (body["to"], body["from"]) == ("+15550100002", "+442071838750")
    assert body["to_formatted"] == "(555) 010-0002"
    assert body["from_formatted"] == "+442071838750"
    assert body["direction"] == "inbound"
    assert body["api_version"] == "2010-04-01"
    assert body["uri"] == f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{CALL}.json"
    assert body["subresource_uris"]["recordings"].endswith(f"/Calls/{CALL}/Recordings.json")
    assert body["duration"] is None and body["end_time"] is None
    for key in ("date_created", "date_updated", "start_time"):
        assert body[key].endswith(" +0000")
        assert parsedate_to_datetime(body[key]).utcoffset() is not None
    assert api.requests[-1].auth_ok and api.requests[-1].status_code == 200


async def test_credentials_and_account_are_checked(
    stand_in: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    api, server = stand_in
    api.register(CALL, to="+15550100002", from_="+15550100001", on_update=recorder()[1])
    other_account = "AC" + "ef" * 16
    async with httpx.AsyncClient() as http:
        missing = await http.get(call_url(server))
        wrong = await http.get(call_url(server), auth=httpx.BasicAuth(ACCOUNT, "nope"))
        elsewhere = await http.get(call_url(server, account=other_account), auth=AUTH)
        by_key = await http.get(call_url(server), auth=httpx.BasicAuth(KEY, KEY_SECRET))
        bad_key = await http.get(call_url(server), auth=httpx.BasicAuth(KEY, TOKEN))
    for resp in (missing, wrong, elsewhere, bad_key):
        assert resp.status_code == 401
        assert resp.json() == {
            "code": 20003,
            "message": "Authenticate",
            "more_info": "https://www.twilio.com/docs/errors/20003",
            "status": 401,
        }
        assert resp.headers["www-authenticate"].startswith("Basic")
    assert by_key.status_code == 200
    assert [r.auth_ok for r in api.requests] == [False, False, True, True, False]
    assert [r.username for r in api.requests] == [None, ACCOUNT, ACCOUNT, KEY, KEY]


async def test_unknown_calls_and_paths_are_twilio_404s(
    stand_in: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    _, server = stand_in
    async with httpx.AsyncClient() as http:
        unknown = await http.post(call_url(server), auth=AUTH, data={"Status": "completed"})
        path = await http.get(f"{server.url}/2010-04-01/Accounts/{ACCOUNT}/Nope.json", auth=AUTH)
        method = await http.delete(call_url(server), auth=AUTH)
    assert unknown.status_code == 404
    assert unknown.json()["code"] == 20404
    assert f"/Calls/{CALL}.json was not found" in unknown.json()["message"]
    assert path.status_code == 404 and path.json()["code"] == 20404
    assert method.status_code == 405 and method.json()["code"] == 20004


async def test_updates_are_validated_before_the_call_is_touched(
    stand_in: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    api, server = stand_in
    seen, on_update = recorder()
    api.register(CALL, to="+15550100002", from_="+15550100001", on_update=on_update)
    cases = [
        ({"Status": "ringing"}, 20001),
        ({"Status": "busy"}, 20001),
        ({"Twiml": "<Response/>", "Url": "https://example.com/t"}, 20001),
        ({"Url": "not a url"}, 21205),
        ({"Url": "ftp://example.com/t"}, 21205),
        ({"Url": "https://example.com/t", "Method": "PUT"}, 20001),
        ({"Twiml": "<Response>" + "<Pause/>" * 600 + "</Response>"}, 20001),
    ]
    async with httpx.AsyncClient() as http:
        for form, code in cases:
            resp = await http.post(call_url(server), auth=AUTH, data=form)
            assert resp.status_code == 400, form
            assert resp.json()["code"] == code, form
        canceled = await http.post(call_url(server), auth=AUTH, data={"Status": "canceled"})
        nothing = await http.post(call_url(server), auth=AUTH, data={"StatusCallback": "x"})
    assert seen == []
    # Status=canceled only stops calls that are queued or ringing: an answered call goes on.
    assert canceled.status_code == 200 and canceled.json()["status"] == "in-progress"
    assert nothing.status_code == 200 and nothing.json()["status"] == "in-progress"
    assert api.call(CALL)["status"] == "in-progress"


async def test_hang_up_awaits_the_call_then_completes_it_and_later_updates_get_21220(
    stand_in: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    api, server = stand_in
    seen, on_update = recorder()
    api.register(CALL, to="+15550100002", from_="+15550100001", on_update=on_update)
    async with httpx.AsyncClient() as http:
        resp = await http.post(call_url(server), auth=AUTH, data={"Status": "completed"})
        again = await http.post(call_url(server), auth=AUTH, data={"Status": "completed"})
        redirect = await http.post(call_url(server), auth=AUTH, data={"Twiml": "<Response/>"})
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "completed"
    assert body["end_time"] is not None and body["duration"] == "0"
    assert seen == [CallUpdate(CALL, "hangup")]
    for late in (again, redirect):
        assert late.status_code == 400
        assert late.json()["code"] == 21220
        assert late.json()["message"] == "Call is not in-progress. Cannot redirect."
    assert api.requests[0].form == {"Status": "completed"}
    assert [r.error_code for r in api.requests] == [None, 21220, 21220]


async def test_redirects_by_twiml_and_url_are_delivered_and_recorded(
    stand_in: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    api, server = stand_in
    seen, on_update = recorder()
    api.register(CALL, to="+15550100002", from_="+15550100001", on_update=on_update)
    twiml = "<Response><Say>One moment</Say><Dial>+15550109999</Dial></Response>"
    async with httpx.AsyncClient() as http:
        by_twiml = await http.post(call_url(server), auth=AUTH, data={"Twiml": twiml})
        by_url = await http.post(
            call_url(server), auth=AUTH, data={"Url": "https://example.com/next", "Method": "get"}
        )
    assert by_twiml.status_code == by_url.status_code == 200
    # Twilio runs the new TwiML: the call itself is still in progress.
    assert by_twiml.json()["status"] == by_url.json()["status"] == "in-progress"
    assert seen == [
        CallUpdate(CALL, "twiml", twiml=twiml),
        CallUpdate(CALL, "url", url="https://example.com/next", method="GET"),
    ]
    assert seen[0].dialed == ["+15550109999"]
    assert api.updates(CALL) == seen


async def test_fault_knobs_answer_429_and_5xx_then_recover(
    stand_in: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    api, server = stand_in
    api.register(CALL, to="+15550100002", from_="+15550100001", on_update=recorder()[1])
    api.fail_next(429, times=2, retry_after=1)
    api.fail_next(503)
    async with httpx.AsyncClient() as http:
        answers = [await http.get(call_url(server), auth=AUTH) for _ in range(4)]
    assert [a.status_code for a in answers] == [429, 429, 503, 200]
    assert answers[0].headers["retry-after"] == "1"
    assert answers[0].json()["code"] == 20429
    assert answers[2].json()["code"] == 20503
    assert "retry-after" not in answers[2].headers
    assert [r.status_code for r in api.requests] == [429, 429, 503, 200]


async def test_a_failing_callback_is_a_500_and_leaves_the_call_as_it_was(
    stand_in: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    api, server = stand_in

    async def broken(update: CallUpdate) -> None:
        raise RuntimeError("harness bug")

    api.register(CALL, to="+15550100002", from_="+15550100001", on_update=broken)
    async with httpx.AsyncClient() as http:
        resp = await http.post(call_url(server), auth=AUTH, data={"Status": "completed"})
    assert resp.status_code == 500 and resp.json()["code"] == 20500
    assert api.call(CALL)["status"] == "in-progress"
    assert api.updates(CALL) == []


def test_dial_numbers_reads_plain_and_nested_dials() -> None:
    assert dial_numbers("<Response><Dial>+15550101</Dial></Response>") == ["+15550101"]
    nested = "<Response><Dial callerId='+1555'><Number>+1</Number><Number> +2 </Number></Dial>"
    assert dial_numbers(nested + "</Response>") == ["+1", "+2"]
    assert dial_numbers("<Response><Say>hi</Say></Response>") == []
    assert dial_numbers("<Response><Dial>") == []


def test_register_refuses_a_second_live_call_with_the_same_sid() -> None:
    api = TwilioApiStandIn(ACCOUNT, TOKEN)
    api.register(CALL, to="+1", from_="+2", on_update=recorder()[1])
    with pytest.raises(ValueError, match="already registered"):
        api.register(CALL, to="+1", from_="+2", on_update=recorder()[1])
    api.unregister(CALL)
    assert api.call(CALL)["status"] == "completed"
    api.register(CALL, to="+1", from_="+2", on_update=recorder()[1])  # a new call, same SID
    assert api.call(CALL)["status"] == "in-progress"


# --- SimulatedCall registered in the stand-in ------------------------------------------------


async def test_simulated_call_ends_like_twilio_on_a_rest_hang_up(
    stand_in: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    api, api_server = stand_in
    async with media_server() as (fake, server):
        options = CallOptions(webhook_url=f"{server.url}/twilio/voice", twilio_api=api)
        call = SimulatedCall([Pause(30_000)], options)
        task = asyncio.create_task(call.run())
        async with asyncio.timeout(10):
            await fake.started.wait()
        sid = call.result.call_sid
        async with httpx.AsyncClient() as http:
            resp = await http.post(
                call_url(api_server, sid), auth=AUTH, data={"Status": "completed"}
            )
            # Twilio answered once the stream had ended: stop sent, websocket closed.
            assert fake.stopped.is_set()
            assert resp.status_code == 200 and resp.json()["status"] == "completed"
            result = await task
            late = await http.post(call_url(api_server, sid), auth=AUTH, data={"Twiml": "<a/>"})
    assert late.json()["code"] == 21220
    assert result.ok, (result.failure, result.failure_detail)
    assert result.ended_by == "rest_hangup"
    assert result.redirect_twiml is None and result.dialed == []
    assert [e.kind for e in result.timeline][-3:] == ["rest_hangup", "hangup", "closed"]
    assert result.to_dict()["ended_by"] == "rest_hangup"
    # the call spoke for the stand-in's account, in the webhook and in start
    assert fake.webhooks[0]["AccountSid"] == ACCOUNT
    assert fake.start is not None and fake.start.account_sid == ACCOUNT
    assert fake.start.call_sid == sid


async def test_simulated_call_records_a_redirect_and_its_dial(
    stand_in: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    api, api_server = stand_in
    twiml = (
        "<Response><Say>Transferring</Say>"
        '<Dial callerId="+15550100002">+15550109999</Dial></Response>'
    )
    async with media_server() as (fake, server):
        options = CallOptions(media_url=f"{server.ws_url}/media", twilio_api=api)
        call = SimulatedCall([Pause(30_000)], options)
        task = asyncio.create_task(call.run())
        async with asyncio.timeout(10):
            await fake.started.wait()
        sid = call.result.call_sid
        async with httpx.AsyncClient() as http:
            resp = await http.post(call_url(api_server, sid), auth=AUTH, data={"Twiml": twiml})
            result = await task
            fetched = await http.get(call_url(api_server, sid), auth=AUTH)
    assert resp.status_code == 200
    assert fake.stopped.is_set() and fake.closed.is_set()
    assert result.ok and result.ended_by == "rest_redirect"
    assert result.redirect_twiml == twiml
    assert result.dialed == ["+15550109999"]
    assert result.to_dict()["dialed"] == ["+15550109999"]
    entry = next(e for e in result.timeline if e.kind == "rest_redirect")
    assert entry.detail == "+15550109999"
    # the caller is now on the <Dial>: the call goes on at Twilio
    assert fetched.json()["status"] == "in-progress"


async def test_ended_by_caller_and_gateway_and_the_stand_in_completes_the_call(
    stand_in: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    api, _ = stand_in
    async with media_server() as (_, server):
        options = CallOptions(media_url=f"{server.ws_url}/media", twilio_api=api)
        by_caller = await SimulatedCall([Pause(100)], options).run()
    async with media_server(close_after_media=3) as (_, server):
        options = CallOptions(media_url=f"{server.ws_url}/media", twilio_api=api)
        by_gateway = await SimulatedCall([Pause(10_000)], options).run()
    assert by_caller.ok and by_caller.ended_by == "caller"
    assert by_gateway.failure == "closed_by_gateway" and by_gateway.ended_by == "gateway"
    for result in (by_caller, by_gateway):
        assert api.call(result.call_sid)["status"] == "completed"
        assert api.call(result.call_sid)["end_time"] is not None


async def test_no_stream_no_ended_by_and_no_registration() -> None:
    api = TwilioApiStandIn(ACCOUNT, TOKEN)
    options = CallOptions(media_url="ws://127.0.0.1:9/media", twilio_api=api, connect_timeout_s=2)
    result = await SimulatedCall([Pause(100)], options).run()
    assert result.failure == "connect_error"
    assert result.ended_by is None
    with pytest.raises(KeyError):
        api.call(result.call_sid)


def test_call_options_account_must_match_the_stand_in() -> None:
    api = TwilioApiStandIn(ACCOUNT, TOKEN)
    options = CallOptions(media_url="ws://x/media", twilio_api=api, account_sid="AC" + "1" * 32)
    with pytest.raises(ValueError, match="differs from the Twilio API stand-in"):
        SimulatedCall([], options)
    same = CallOptions(media_url="ws://x/media", twilio_api=api, account_sid=ACCOUNT)
    SimulatedCall([], same)


# --- placing calls ------------------------------------------------------------------------------


@dataclass
class CallbackSink:
    """Twilio's callbacks as the gateway would receive them, each checked for its signature."""

    received: list[tuple[str, dict[str, str], bool]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/{kind}")
        async def callback(kind: str, request: Request) -> Response:
            form = {k: str(v) for k, v in (await request.form()).items()}
            signed = validate_webhook(
                TOKEN, str(request.url), form, request.headers.get("x-twilio-signature")
            )
            self.received.append((kind, form, signed))
            return Response(status_code=204)

        return app


def _create_form(sink: RunningServer, to: str = "+15550100002") -> list[tuple[str, str]]:
    return [
        ("To", to),
        ("From", "+15550100001"),
        ("Twiml", "<Response><Connect><Stream url='ws://127.0.0.1:9/m'/></Connect></Response>"),
        ("StatusCallback", f"{sink.url}/status"),
        *[("StatusCallbackEvent", e) for e in ("initiated", "ringing", "answered", "completed")],
        ("MachineDetection", "Enable"),
        ("AsyncAmd", "true"),
        ("AsyncAmdStatusCallback", f"{sink.url}/amd"),
    ]


async def test_create_validates_numbers_and_twiml_as_twilio_does(
    stand_in: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    api, server = stand_in
    url = f"{server.url}/2010-04-01/Accounts/{ACCOUNT}/Calls.json"
    async with httpx.AsyncClient(auth=(ACCOUNT, TOKEN)) as http:
        bad_to = await http.post(url, data={"To": "555", "From": "+15550100001", "Twiml": "<R/>"})
        bad_from = await http.post(url, data={"To": "+15550100002", "From": "x", "Twiml": "<R/>"})
        neither = await http.post(url, data={"To": "+15550100002", "From": "+15550100001"})
        bad_amd = await http.post(
            url,
            data={
                "To": "+15550100002",
                "From": "+15550100001",
                "Url": "https://example.com/twiml",
                "MachineDetection": "Always",
            },
        )
    assert (bad_to.status_code, bad_to.json()["code"]) == (400, 21211)
    assert (bad_from.status_code, bad_from.json()["code"]) == (400, 21212)
    assert neither.status_code == 400 and bad_amd.status_code == 400
    assert api.callbacks == []


@pytest.mark.parametrize("status", ["busy", "no-answer", "failed"])
async def test_an_unanswered_call_fires_signed_status_callbacks_in_twilios_order(
    stand_in: tuple[TwilioApiStandIn, RunningServer], status: str
) -> None:
    api, server = stand_in
    sink = CallbackSink()
    api.callee("+15550100002", Callee(answer=status))  # type: ignore[arg-type]
    async with serve_app(sink.app(), host="127.0.0.1", port=0) as receiver:
        url = f"{server.url}/2010-04-01/Accounts/{ACCOUNT}/Calls.json"
        async with httpx.AsyncClient(auth=(ACCOUNT, TOKEN)) as http:
            resp = await http.post(
                url,
                content=urlencode(_create_form(receiver)),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        assert resp.status_code == 201
        created = resp.json()
        assert created["status"] == "queued" and created["direction"] == "outbound-api"
        assert await api.placed_call(created["sid"]) is None
    assert [(kind, form["CallStatus"]) for kind, form, _ in sink.received] == [
        ("status", "queued"),
        ("status", "ringing"),
        ("status", status),
    ]
    assert all(signed for _, _, signed in sink.received)
    assert [form["SequenceNumber"] for _, form, _ in sink.received] == ["0", "1", "2"]
    assert api.call(created["sid"])["status"] == status
