"""One simulated carrier call: a scripted caller on a real websocket, and what it heard.

:class:`SimulatedCall` plays Twilio for one call against a gateway. Optionally it first POSTs
the incoming-call webhook (signed when given an auth token) and follows the
``<Connect><Stream url><Parameter/>`` of the TwiML it gets back; then it opens the media
websocket (signed upgrade), sends ``connected`` and ``start``, and from then on sends one
20 ms ``media`` frame per tick on absolute deadlines of a monotonic clock — speech while the
script says something, μ-law silence otherwise — plus ``dtmf``, mark echoes and finally
``stop``. What the gateway sends back goes through a Twilio-like
:class:`~gateway.loadtest.carrier.PlayoutBuffer`, so every figure is *as heard*::

    script = [WaitForAnswer(), Say.from_text("What are your hours?"), WaitForAnswer(),
              BargeIn(Say.from_text("Sorry, one more thing"), after_ms=800), WaitForAnswer()]
    result = await SimulatedCall(script, CallOptions(webhook_url=f"{gw}/twilio/voice")).run()
    result.setup_ms, result.response_latencies_ms, result.barge_in_stop_ms, result.gaps_ms

Times in a :class:`CallResult` are milliseconds on the stream's media clock (0 is when
``start`` was sent); :mod:`~gateway.loadtest.result` says where each is taken.

With ``CallOptions.twilio_api`` (a :class:`~gateway.loadtest.twilio_api.TwilioApiStandIn`) the
call also exists in a local stand-in of Twilio's REST Calls resource once it streams, so the
gateway (or a test) can hang it up or redirect it as it would through Twilio: the stream then
ends as Twilio ends it (``stop``, close) and :attr:`CallResult.ended_by` says who ended it.

Cheap by design (a load tester runs hundreds of these in one process): speech clips are
base64-encoded once per :class:`Say`, each call has one sender task (a sleep per frame) and one
receiver task, and the per-frame work is string formatting. Each call records its own pacing
lateness so a load result can be trusted or discarded.

This module is the I/O (webhook, websocket, pacing); the script's steps are in
:mod:`~gateway.loadtest.script`, the decisions per tick and per message in
:mod:`~gateway.loadtest.flow` and the figures in :mod:`~gateway.loadtest.result`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlencode

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from gateway.loadtest.carrier import AUDIBLE_PEAK, CallerStream
from gateway.loadtest.dialects import dialect_named, websocket_url
from gateway.loadtest.flow import FRAME_S, CallFailed, CallFlow
from gateway.loadtest.result import CallResult, Span, TimelineEntry, Turn
from gateway.loadtest.script import BargeIn, HangUp, Pause, PressDigits, Say, Step, WaitForAnswer

if TYPE_CHECKING:
    from gateway.loadtest.twilio_api import CallUpdate, TwilioApiStandIn

__all__ = [
    "BargeIn",
    "CallOptions",
    "CallResult",
    "HangUp",
    "Pause",
    "PressDigits",
    "Say",
    "SimulatedCall",
    "Span",
    "Step",
    "TimelineEntry",
    "Turn",
    "WaitForAnswer",
    "run_call",
    "websocket_url",
]

log = logging.getLogger("gateway.loadtest.caller")

_PLACEHOLDER_ACCOUNT = "AC" + "0" * 32


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallOptions:
    """Where to call and how. Give ``webhook_url`` (POST first, follow the TwiML) or
    ``media_url`` (open the media websocket directly, ``ws://host/twilio/media``)."""

    webhook_url: str | None = None
    media_url: str | None = None
    auth_token: str | None = None
    """Sign the webhook and the upgrade with ``X-Twilio-Signature`` when set (for another
    ``carrier``, with its scheme: see :mod:`gateway.loadtest.dialects`)."""
    carrier: str = "twilio"
    """The carrier to play: ``twilio``, ``signalwire``, ``telnyx`` or ``plivo``."""
    from_number: str = "+15550100001"
    to_number: str = "+15550100002"
    custom_parameters: Mapping[str, str] = field(default_factory=dict)
    """Sent in ``start.customParameters`` (after the TwiML's, which they override)."""
    webhook_params: Mapping[str, str] = field(default_factory=dict)
    """Extra form fields for the webhook POST."""
    call_sid: str | None = None
    account_sid: str = _PLACEHOLDER_ACCOUNT
    """``AccountSid`` of the webhook and ``start``; with ``twilio_api``, its account is used."""
    ready_on: Literal["audio", "message"] = "audio"
    """Setup ends at the first audible assistant audio, or at the gateway's first message."""
    connect_timeout_s: float = 10.0
    max_duration_s: float = 300.0
    record_audio: bool = False
    """Keep what was said and heard (8 KB/s per side) for :meth:`CallResult.write_wav`."""
    gap_ms: float = 40.0
    """Playout starvation longer than this inside assistant speech counts as a gap."""
    merge_ms: float = 400.0
    """Audible assistant audio less than this apart is one utterance (pauses between words)."""
    audible_peak: int = AUDIBLE_PEAK
    use_env_proxy: bool = False
    """Honour HTTP(S)_PROXY for the webhook and websocket (off: targets are usually local)."""
    twilio_api: TwilioApiStandIn | None = None
    """Register the call in this stand-in of Twilio's REST API once it streams, so REST
    updates can hang it up or redirect it (the call then uses the stand-in's account SID)."""


# --- the call: webhook, websocket and pacing; the decisions are the flow's ----------------------


class SimulatedCall:
    """One scripted call. Create it, ``await run()`` once, read the :class:`CallResult`.

    ``http`` lets many calls share one connection pool for webhooks; ``on_event`` receives
    timeline entries as they happen (the demo prints them live). ``result`` is readable while
    the call runs (progress displays).
    """

    def __init__(
        self,
        script: Sequence[Step],
        options: CallOptions,
        *,
        http: httpx.AsyncClient | None = None,
        on_event: Callable[[TimelineEntry], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not options.webhook_url and not options.media_url:
            raise ValueError("CallOptions needs webhook_url or media_url")
        self._account_sid = options.account_sid
        self._dialect = dialect_named(options.carrier)
        if options.twilio_api is not None and options.carrier != "twilio":
            raise ValueError("twilio_api is Twilio's REST stand-in: only for carrier='twilio'")
        if options.twilio_api is not None:
            api_account = options.twilio_api.account_sid
            if options.account_sid not in (_PLACEHOLDER_ACCOUNT, api_account):
                raise ValueError(
                    f"account_sid {options.account_sid} differs from the Twilio API stand-in's "
                    f"account {api_account}"
                )
            self._account_sid = api_account
        self.script = list(script)
        self.options = options
        self._http = http
        self._clock = clock
        call_sid = options.call_sid or "CA" + uuid.uuid4().hex
        self.result = CallResult(call_sid=call_sid, stream_sid="MZ" + uuid.uuid4().hex)
        self._flow = CallFlow(self.script, options, self.result, on_event)
        self._ws: ClientConnection | None = None
        self._stream: CallerStream | None = None
        self._ws_open_at = 0.0
        # REST call control (CallOptions.twilio_api)
        self._registered = False
        self._stream_over = asyncio.Event()

    # --- public ----------------------------------------------------------------------------------

    async def run(self) -> CallResult:
        """Place the call and run the script; never raises for call failures (see ``failure``)."""
        result = self.result
        began = self._clock()
        result.failure = None
        try:
            async with asyncio.timeout(self.options.max_duration_s):
                url, parameters = await self._resolve_stream()
                await self._connect(url)
                result.stream_parameters = parameters
                await self._run_stream(parameters)
        except CallFailed as failure:
            self._flow.fail(failure.reason, failure.detail)
        except TimeoutError:
            self._flow.fail("max_duration", f"call exceeded {self.options.max_duration_s:g} s")
        except asyncio.CancelledError:
            self._flow.fail("cancelled", "the call was cancelled")
            raise
        except Exception as exc:  # a bug here must not take a whole load run down with it
            log.exception("simulated call %s crashed", result.call_sid)
            self._flow.fail("internal_error", f"{type(exc).__name__}: {exc}")
        finally:
            if self._ws is not None:
                with contextlib.suppress(Exception):
                    await self._ws.close()
                if result.close_code is None and self._ws.close_code is not None:
                    result.close_code = self._ws.close_code
                    result.close_reason = self._ws.close_reason or ""
            if self._stream is not None and result.ended_by is None:
                result.ended_by = "caller"
            if self._registered and self.options.twilio_api is not None:
                # After a redirect Twilio runs the new TwiML: the call itself goes on.
                self.options.twilio_api.unregister(
                    result.call_sid, completed=result.ended_by != "rest_redirect"
                )
            self._stream_over.set()
            result.duration_ms = (self._clock() - began) * 1000
            self._flow.finish(self._clock())
        return result

    # --- webhook ---------------------------------------------------------------------------------

    async def _resolve_stream(self) -> tuple[str, dict[str, str]]:
        opts = self.options
        if not opts.webhook_url:
            assert opts.media_url is not None
            return opts.media_url, dict(opts.custom_parameters)
        dialect = self._dialect
        form = {
            **dialect.webhook_form(
                self.result.call_sid, self._account_sid, opts.from_number, opts.to_number
            ),
            **opts.webhook_params,
        }
        body = urlencode(form).encode()
        headers = {"content-type": "application/x-www-form-urlencoded"}
        if opts.auth_token:
            headers.update(dialect.sign_webhook(opts.auth_token, opts.webhook_url, form, body))
        t0 = self._clock()
        try:
            if self._http is not None:
                response = await self._post(self._http, opts.webhook_url, body, headers)
            else:
                async with httpx.AsyncClient(trust_env=opts.use_env_proxy) as client:
                    response = await self._post(client, opts.webhook_url, body, headers)
        except httpx.TimeoutException as exc:
            raise CallFailed("webhook_timeout", str(exc) or type(exc).__name__) from None
        except httpx.HTTPError as exc:
            raise CallFailed("webhook_error", str(exc) or type(exc).__name__) from None
        self.result.webhook_ms = (self._clock() - t0) * 1000
        if response.status_code != 200:
            raise CallFailed(f"webhook_http_{response.status_code}", response.text[:200])
        url, parameters = dialect.stream_from_answer(response.text, opts.webhook_url)
        parameters.update(opts.custom_parameters)
        return url, parameters

    async def _post(
        self,
        client: httpx.AsyncClient,
        url: str,
        body: bytes,
        headers: dict[str, str],
    ) -> httpx.Response:
        return await client.post(
            url, content=body, headers=headers, timeout=self.options.connect_timeout_s
        )

    # --- websocket -------------------------------------------------------------------------------

    async def _connect(self, url: str) -> None:
        headers = {}
        if self.options.auth_token:
            headers = self._dialect.sign_upgrade(self.options.auth_token, url)
        t0 = self._clock()
        try:
            self._ws = await connect(
                url,
                additional_headers=headers,
                open_timeout=self.options.connect_timeout_s,
                close_timeout=2,
                compression=None,  # Twilio does not deflate; it would cost CPU for nothing
                ping_interval=None,
                max_size=1024 * 1024,
                proxy=True if self.options.use_env_proxy else None,
                user_agent_header="gateway-loadtest",
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise CallFailed(f"ws_rejected_{status}", _body(exc.response.body)) from None
        except TimeoutError:
            raise CallFailed(
                "connect_timeout", f"no websocket within {self.options.connect_timeout_s:g} s"
            ) from None
        except (OSError, InvalidHandshake) as exc:
            raise CallFailed("connect_error", f"{type(exc).__name__}: {exc}") from None
        self._ws_open_at = self._clock()
        self.result.connect_ms = (self._ws_open_at - t0) * 1000

    async def _run_stream(self, parameters: dict[str, str]) -> None:
        ws = self._ws
        assert ws is not None
        flow = self._flow
        stream = CallerStream(
            stream_sid=self.result.stream_sid,
            call_sid=self.result.call_sid,
            account_sid=self._account_sid,
            custom_parameters=parameters,
            codec=self._dialect.codec(self.result.stream_sid),
            connected=self._dialect.connected,
        )
        self._stream = stream
        try:
            if self._dialect.connected is not None:
                await ws.send(stream.connected())
            epoch = self._clock()
            await ws.send(stream.start())
        except ConnectionClosed as exc:
            self.result.ended_by = "gateway"
            raise CallFailed("closed_by_gateway", _closed(exc)) from None
        flow.open(stream, epoch, self._ws_open_at)
        if self.options.twilio_api is not None:
            self.options.twilio_api.register(
                self.result.call_sid,
                to=self.options.to_number,
                from_=self.options.from_number,
                on_update=self._on_rest_update,
            )
            self._registered = True
        sender = asyncio.create_task(self._send_loop(epoch), name=f"send:{self.result.call_sid}")
        receiver = asyncio.create_task(self._receive_loop(), name=f"recv:{self.result.call_sid}")
        try:
            done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if receiver in done:
                receiver.result()  # the gateway broke the protocol: CallFailed surfaces here
            if sender in done:
                try:
                    sender.result()  # the script failed (no answer, ...)
                except CallFailed:
                    with contextlib.suppress(ConnectionClosed):
                        await ws.send(stream.stop())  # hang up, as a carrier would
                    raise
            if not flow.script_done and not flow.ended_by_rest:
                if not receiver.done():
                    await receiver  # the sender saw the close first; learn the close code
                if self.result.ended_by is None:
                    self.result.ended_by = "gateway"
                raise CallFailed("closed_by_gateway", self._close_text())
            # Twilio closes right after stop; wait for the close handshake to finish.
            await ws.close()
            await receiver
            flow.closed(self._clock(), self._close_text())
        finally:
            for task in (sender, receiver):
                if not task.done():
                    task.cancel()
            for task in (sender, receiver):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _send_loop(self, epoch: float) -> None:
        ws = self._ws
        assert ws is not None
        flow = self._flow
        clock = self._clock
        pacing = self.result.pacing
        deadline = epoch + FRAME_S
        frames: list[str] = []
        try:
            while True:
                delay = deadline - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                now = clock()
                pacing.record((now - deadline) * 1000)
                frames.clear()
                flow.tick(deadline, now, frames)
                for frame in frames:
                    await ws.send(frame)
                if flow.hangup:
                    return
                deadline += FRAME_S
        except ConnectionClosed:
            return  # the receiver reports why

    async def _receive_loop(self) -> None:
        ws = self._ws
        assert ws is not None
        flow = self._flow
        result = self.result
        clock = self._clock
        replies: list[str] = []
        try:
            async for raw in ws:
                replies.clear()
                flow.receive(raw, clock(), replies)
                for reply in replies:
                    await ws.send(reply)
        except ConnectionClosed:
            pass  # a close without a proper handshake: reported from close_code
        result.close_code = ws.close_code
        result.close_reason = ws.close_reason or ""

    async def _on_rest_update(self, update: CallUpdate) -> None:
        """The stand-in's REST update of this call, applied as Twilio applies it (see
        :meth:`CallFlow.rest_update`). Returns once the stream has ended."""
        if self._stream_over.is_set() or not self._flow.rest_update(update):
            return  # the stream is already ending
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.options.connect_timeout_s):
                await self._stream_over.wait()

    def _close_text(self) -> str:
        code = self.result.close_code
        reason = self.result.close_reason
        return f"websocket closed with code {code}" + (f" ({reason})" if reason else "")


def _body(body: bytes | bytearray | None) -> str:
    return bytes(body or b"").decode("utf-8", "replace")[:200]


def _closed(exc: ConnectionClosed) -> str:
    frame = exc.rcvd
    if frame is None:
        return "websocket closed without a close frame"
    return f"websocket closed with code {frame.code}" + (
        f" ({frame.reason})" if frame.reason else ""
    )


async def run_call(
    script: Sequence[Step],
    options: CallOptions,
    **kwargs: Any,
) -> CallResult:
    """``await SimulatedCall(script, options, **kwargs).run()``."""
    return await SimulatedCall(script, options, **kwargs).run()
