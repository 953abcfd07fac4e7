"""The only per-call async code: one :class:`CallRunner` per carrier media stream.

Every decision is the call core's (:mod:`gateway.bridge.core`); the runner does the I/O it
asks for. Three tasks run for the life of a call — the carrier reader, the upstream (open a
session, read its events and audio, replace it when the core says so) and a timer — and each
feeds what it reads to the core with the time it read it, then executes the effects the core
returns, batch after batch in the order they were produced (one lock orders the writes to the
carrier, so no audio can overtake a ``clear``). Every task, the session and the websocket end
with the call, whatever ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from starlette.websockets import WebSocket

from gateway.aio import cancel_and_wait
from gateway.bridge import control as cc
from gateway.bridge.adapters import CallServices, StarletteCarrierSocket, prepare_call
from gateway.bridge.core import (
    Bind,
    CallCore,
    CarrierAction,
    Effect,
    EndCall,
    Phase,
    PushAudio,
    ReplaceSession,
    RetrySetup,
    ToCarrier,
    ToUpstream,
    WriteRecording,
)
from gateway.bridge.ports import (
    CallHost,
    CarrierCodec,
    CarrierGone,
    CarrierSocket,
    EncodedAudio,
    UpstreamFactory,
    UpstreamSession,
)
from gateway.errors import (
    CarrierError,
    CarrierProtocolError,
    GatewayError,
    UpstreamError,
    UpstreamRefused,
    UpstreamTimeout,
    close_code_for,
)
from gateway.numbers import Profile
from gateway.observability import CallLogger
from gateway.recordings import RecordingWriter
from gateway.records.model import CallRecord
from gateway.telephony.messages import OutboundMessage
from gateway.telephony.twilio import TwilioCodec

log = logging.getLogger("gateway.call")

CALL_TOKEN_PARAM = "gateway_call_token"
PROFILE_PARAM = "gateway_number"
START_TIMEOUT_S = 10.0
CARRIER_SEND_TIMEOUT_S = 5.0
"""A carrier that does not take a message for this long has stopped reading its socket: the
call ends instead of stalling its audio loop while decoded upstream audio piles up."""
CLOSE_TIMEOUT_S = 2.0
TIMER_MAX_SLEEP_S = 1.0
# Finished calls kept in memory for the admin API and the demo (bounded: summaries only).
RECENT_CALLS = 100


class CallRunner:
    """Runs one media stream from ``connected`` to close. Create it per websocket, then
    :meth:`run` it (or :meth:`refuse` it when the upgrade is not authorized)."""

    def __init__(
        self,
        ws: WebSocket | CarrierSocket,
        host: CallHost,
        *,
        codec: CarrierCodec | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.socket: CarrierSocket = StarletteCarrierSocket(ws) if isinstance(ws, WebSocket) else ws
        self.host = host
        self.settings, self.metrics, self.services = host.settings, host.metrics, host.services
        self.admissions, self.registry = host.admissions, host.calls
        self.clock, self.wall_clock = host.clock, host.wall_clock
        self.codec: CarrierCodec = codec or TwilioCodec(
            max_message_bytes=self.settings.max_message_bytes
        )
        self.core = CallCore(
            metrics=self.metrics,
            log=CallLogger(log),
            now=self.clock(),
            wall_now=self.wall_clock(),
            prices=self.services.prices,
            rng=rng,
        )
        self.profile: Profile | None = None
        self.session: UpstreamSession | None = None
        self.recording: RecordingWriter | None = None
        self.recording_path: Path | None = None
        self._bound_sid: str | None = None  # only the stream that bound a call releases it
        self._ended = asyncio.Event()
        self._replace = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._actions: list[asyncio.Task[None]] = []

    @property
    def log(self) -> CallLogger:
        return self.core.log

    # --- public ---------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """A JSON-able view for the admin API (no secrets, numbers masked)."""
        return self.core.summary(self.clock())

    def record(self) -> CallRecord:
        """The call record: what the operator sees in the database after the call."""
        path = None if self.recording_path is None else str(self.recording_path)
        return self.core.record(self.wall_clock(), path)

    async def refuse(self, exc: GatewayError) -> None:
        """Close an unauthorized upgrade before anything else happens."""
        code, reason = close_code_for(exc)
        self.log.warning("media stream refused: %s", exc)
        self.metrics.calls.labels("refused").inc()
        await self.socket.close(int(code), reason)

    async def hang_up(self, reason: str) -> None:
        """Ask the call to end (shutdown); :meth:`run` does the cleanup."""
        await self._execute(self.core.shutdown(reason, self.clock()))

    async def run(self) -> None:
        """Serve the stream until it ends; never raises (failures become close codes)."""
        await self.socket.accept()
        try:
            await self._handshake()
            if self.core.phase is Phase.SETTING_UP:
                assert self._bound_sid is not None
                self.registry[self._bound_sid] = self
                self.metrics.active_calls.inc()
                self._changed()
                for coro, name in (
                    (self._carrier_loop(), "carrier"),
                    (self._upstream_loop(), "upstream"),
                    (self._timer_loop(), "timers"),
                ):
                    self._tasks.append(asyncio.create_task(self._guard(coro), name=name))
                await self._ended.wait()
        except CarrierGone:
            self.core.carrier_gone(self.clock())
        except Exception as exc:  # one bad call must not hurt the others
            self.core.failed(exc, self.clock())
        finally:
            await self._cleanup()

    # --- effects --------------------------------------------------------------------------------

    async def _execute(self, effects: Sequence[Effect]) -> None:
        """Carry out one batch of the core's effects, in order, after earlier batches."""
        if not effects:
            return
        session = self.session
        if not self._send_lock.locked() and all(type(e) is PushAudio for e in effects):
            if session is not None:  # the hot path: caller audio, nothing to order it with
                for e in effects:
                    session.push_audio(e.frame, e.received_at)  # type: ignore[union-attr]
            return
        self._changed()
        async with self._send_lock:
            for effect in effects:
                session = self.session
                if isinstance(effect, ToCarrier):
                    await self._send(effect.msg)
                elif isinstance(effect, ToUpstream):
                    if session is not None:
                        session.send(effect.event)
                elif isinstance(effect, PushAudio):
                    if session is not None:
                        session.push_audio(effect.frame, effect.received_at)
                elif isinstance(effect, EndCall):
                    self._ended.set()
                elif isinstance(effect, ReplaceSession):
                    self._replace.set()
                elif isinstance(effect, CarrierAction):
                    task = asyncio.create_task(self._carrier_action(effect.action), name="action")
                    self._actions.append(task)
                elif isinstance(effect, WriteRecording):
                    if self.recording is not None:
                        self.recording.write(effect.samples)
                # Bind and RetrySetup are answered where they are asked for.

    async def _send(self, msg: OutboundMessage) -> None:
        try:
            async with asyncio.timeout(CARRIER_SEND_TIMEOUT_S):
                await self.socket.send(self.codec.encode(msg))
        except TimeoutError:
            raise CarrierProtocolError(
                f"the carrier has not read its websocket for {CARRIER_SEND_TIMEOUT_S:g} s"
            ) from None

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run one of the call's tasks; whatever ends it is reported to the core."""
        try:
            await coro
        except CarrierGone:
            await self._execute(self.core.carrier_gone(self.clock()))
        except Exception as exc:
            await self._execute(self.core.failed(exc, self.clock()))

    def _changed(self) -> None:
        """Tell the console this call's summary may have changed (cheap; never blocks)."""
        notify = self.services.on_change
        if notify is not None and self._bound_sid is not None:
            notify(self._bound_sid)

    # --- carrier --------------------------------------------------------------------------------

    async def _handshake(self) -> None:
        """Read ``connected`` and ``start``; bind the stream to the call the webhook admitted."""
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while self.core.phase is Phase.AWAITING_START:
                    raw = await self.socket.receive()
                    effects = self.core.carrier_message(self.codec.parse(raw), self.clock())
                    for effect in effects:
                        if isinstance(effect, Bind):
                            self._bind(effect)
        except TimeoutError:
            self.core.start_timed_out(START_TIMEOUT_S, self.clock())

    def _bind(self, bind: Bind) -> None:
        start = bind.start
        token = start.custom_parameters.get(CALL_TOKEN_PARAM, "")
        admission = self.admissions.bind(
            start.call_sid,
            token,
            self.wall_clock(),
            called=start.custom_parameters.get(PROFILE_PARAM),
        )
        self._bound_sid = start.call_sid
        self.profile = profile = self.host.profiles.for_number(admission.called)
        wiring = prepare_call(
            start,
            profile,
            admission.called,
            settings=self.settings,
            services=self.services,
            started_wall=self.core.started_wall,
            clock=self.clock,
            log=log,
        )
        self.recording = wiring.recording
        self.core.bound(
            wiring.config,
            called=admission.called,
            caller=admission.caller,
            log=wiring.log,
            trace=wiring.trace,
            now=self.clock(),
        )

    async def _carrier_loop(self) -> None:
        idle_s = self.settings.carrier_idle_timeout_s
        core, codec = self.core, self.codec
        while not self._ended.is_set():
            try:
                async with asyncio.timeout(idle_s):
                    raw = await self.socket.receive()
            except TimeoutError:
                raise CarrierProtocolError(
                    f"the carrier sent nothing for {idle_s:g} s (a live stream sends audio "
                    "every 20 ms, even silence)"
                ) from None
            now = self.clock()
            try:
                msg = codec.parse(raw)
            except CarrierError as exc:
                await self._execute(core.carrier_error(exc, now))
                continue
            await self._execute(core.carrier_message(msg, now))

    async def _carrier_action(self, action: cc.HangUp | cc.Transfer) -> None:
        """Hang up or transfer through the carrier's REST API; the core decides what follows.

        Without a carrier API (no REST credentials) a hang-up closes the stream, and Twilio
        runs the TwiML after ``<Connect>`` (the profile's fallback).
        """
        assert self._bound_sid is not None
        api, error = self.services.carrier_api, None
        if api is not None:
            try:
                if isinstance(action, cc.HangUp):
                    await api.hang_up(self._bound_sid)
                else:
                    await api.transfer(self._bound_sid, action.number)
            except Exception as exc:
                error = exc
        await self._execute(self.core.carrier_action_done(action, error, self.clock()))

    # --- upstream -------------------------------------------------------------------------------

    async def _upstream_loop(self) -> None:
        """Serve the upstream for the life of the call, replacing the session when the core
        says so (lost once, or old)."""
        while await self._open_session():
            session = self.session
            assert session is not None
            try:
                await self._pump(session)
            except UpstreamError as exc:
                await self._execute(self.core.session_lost(exc, self.clock()))
            else:
                if not self._replace.is_set():
                    await self._execute(self.core.session_closed(self.clock()))
            if not self._replace.is_set():
                return
            self._replace.clear()
            await self._close_session(session)

    async def _open_session(self) -> bool:
        """Open sessions until one is ready (True) or the core gives up (False).

        Caller audio meanwhile goes to the core's setup buffer.
        """
        assert self.profile is not None
        while not self._ended.is_set():
            self.core.session_opening()
            self.session = session = self.host.upstream(self.profile)
            failure: UpstreamError | None = None
            try:
                async with asyncio.timeout(max(0.0, self.core.setup_deadline - self.clock())):
                    await session.open()
            except (UpstreamRefused, UpstreamTimeout) as exc:
                failure = exc
            except TimeoutError:
                budget = self.core.config.setup_timeout_s
                failure = UpstreamTimeout(f"Realtime session not ready within {budget:g} s")
            self.core.session_phases(session.phase_spans, session.call_id, failure)
            if failure is None:
                await self._execute(self.core.session_ready(session.call_id, self.clock()))
                return True
            await self._close_session(session)
            effects = self.core.setup_failed(failure, self.clock())
            await self._execute(effects)
            retry = next((e for e in effects if isinstance(e, RetrySetup)), None)
            if retry is None:
                return False
            await asyncio.sleep(retry.delay_s)
        return False

    async def _pump(self, session: UpstreamSession) -> None:
        """Read the session's events and audio until it ends, fails (raises) or the core asks
        for a fresh one."""
        events = asyncio.create_task(self._read_events(session), name="upstream-events")
        audio = asyncio.create_task(self._read_audio(session), name="upstream-audio")
        replace = asyncio.create_task(self._replace.wait(), name="replace")
        try:
            await asyncio.wait({events, audio, replace}, return_when=asyncio.FIRST_COMPLETED)
            if replace.done():
                return
            if audio.done() and not audio.cancelled() and (error := audio.exception()):
                raise error
            await events  # the event stream decides: lost (raises) or closed by us
        finally:
            await cancel_and_wait(events, audio, replace)

    async def _read_events(self, session: UpstreamSession) -> None:
        async for ev in session.events():
            await self._execute(self.core.upstream_event(ev, self.clock()))
            self._changed()  # transcripts and turn states change without effects

    async def _read_audio(self, session: UpstreamSession) -> None:
        core, clock = self.core, self.clock
        async for a in session.model_audio():
            if isinstance(a, EncodedAudio):
                effects = core.model_payload(a.payload, a.codec, a.received_at, clock())
            else:
                effects = core.model_audio(a.pcm, a.received_at, clock(), a.rate, a.channels)
            await self._execute(effects)

    async def _close_session(self, session: UpstreamSession) -> None:
        try:
            await session.close()
        except Exception as exc:  # closing is best effort; the call goes on or is over
            self.log.debug("closing the upstream session failed: %r", exc)

    async def _timer_loop(self) -> None:
        while True:
            deadline = self.core.next_deadline()
            wait = TIMER_MAX_SLEEP_S if deadline is None else deadline - self.clock()
            await asyncio.sleep(min(TIMER_MAX_SLEEP_S, max(0.0, wait)))
            await self._execute(self.core.tick(self.clock()))

    # --- the end --------------------------------------------------------------------------------

    async def _cleanup(self) -> None:
        await cancel_and_wait(*self._tasks)
        for task in self._actions:
            # A hang-up or transfer request in flight is let finish (the carrier may already
            # have acted on it), within a bound.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CARRIER_SEND_TIMEOUT_S):
                    await asyncio.shield(task)
        await cancel_and_wait(*self._actions)
        core = self.core
        for effect in core.close(self.clock()):
            if isinstance(effect, WriteRecording) and self.recording is not None:
                self.recording.write(effect.samples)
        if self._bound_sid is not None:
            self.admissions.release(self._bound_sid)
            if self.registry.get(self._bound_sid) is self:
                del self.registry[self._bound_sid]
                self.metrics.active_calls.dec()
        end = core.end
        assert end is not None
        if self.socket.open:
            with contextlib.suppress(Exception):
                reason = end.reason.encode()[:120].decode(errors="ignore")
                async with asyncio.timeout(CLOSE_TIMEOUT_S):  # a carrier that stopped reading
                    await self.socket.close(int(end.close_code), reason)
        # The caller is released first (capacity, and the carrier's fallback plays once the
        # socket closes); then the file is finished and the session hung up upstream.
        await self._finish_recording()
        if self.session is not None:
            await self._close_session(self.session)
        if core.start is None:
            return
        self.host.recent.append(self.summary())
        self._changed()
        if self.services.save_record is not None:
            self.services.save_record(self.record())

    async def _finish_recording(self) -> None:
        writer, self.recording = self.recording, None
        if writer is None:
            return
        try:
            async with asyncio.timeout(CARRIER_SEND_TIMEOUT_S):
                saved = await writer.close()
        except TimeoutError:
            saved = None
            self.log.error("call recording not finished within %g s", CARRIER_SEND_TIMEOUT_S)
        self.recording_path = saved
        if not self.core.recording_failed:  # a failure was counted when it happened
            self.metrics.recordings.labels("saved" if saved is not None else "failed").inc()


__all__ = [
    "CALL_TOKEN_PARAM",
    "PROFILE_PARAM",
    "RECENT_CALLS",
    "CallRunner",
    "CallServices",
    "UpstreamFactory",
    "UpstreamSession",
]
