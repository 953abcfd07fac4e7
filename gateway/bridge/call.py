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
import dataclasses
import logging
import random
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from starlette.websockets import WebSocket

from gateway.aio import cancel_and_wait
from gateway.audio.format import FRAME_MS
from gateway.bridge import control as cc
from gateway.bridge.adapters import CallServices, StarletteCarrierSocket, prepare_call
from gateway.bridge.answering import AnswerGate
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
from gateway.numbers import Profile, Tools
from gateway.observability import CallLogger
from gateway.outbound import answer_rules, with_variables
from gateway.recordings import RecordingWriter
from gateway.records.model import CallRecord
from gateway.telephony.messages import Ignored, InboundMessage, OutboundMessage
from gateway.telephony.twilio import TwilioCodec

log = logging.getLogger("gateway.call")

CALL_TOKEN_PARAM = "gateway_call_token"
PROFILE_PARAM = "gateway_number"
OUTBOUND_PARAM = "gateway_outbound"
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
        carrier_api: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        self.socket: CarrierSocket = StarletteCarrierSocket(ws) if isinstance(ws, WebSocket) else ws
        self.host = host
        self.settings, self.metrics, self.services = host.settings, host.metrics, host.services
        if not carrier_api and self.services.carrier_api is not None:
            # The REST API in CallServices is Twilio's: a call on another carrier has none, so
            # its model is offered no call-control tools and a hang-up closes the stream (the
            # answer document's fallback follows), as on Twilio without REST credentials.
            self.services = dataclasses.replace(self.services, carrier_api=None)
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
        self._early: list[InboundMessage] = []
        self._outbound_id: str | None = None
        self.answer_gate: AnswerGate | None = None
        self._answer = asyncio.Event()
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
                    msgs = [self.codec.parse(raw), *self.codec.drain()]
                    while msgs and self.core.phase is Phase.AWAITING_START:
                        for effect in self.core.carrier_message(msgs.pop(0), self.clock()):
                            if isinstance(effect, Bind):
                                self._bind(effect)
                    # What a reordering dialect released after 'start' is the call's first media.
                    self._early = [m for m in msgs if not isinstance(m, Ignored)]
        except TimeoutError:
            self.core.start_timed_out(START_TIMEOUT_S, self.clock())

    def _bind(self, bind: Bind) -> None:
        start = bind.start
        token = start.custom_parameters.get(CALL_TOKEN_PARAM, "")
        # An outbound call was admitted (and its token signed) before Twilio named its SID.
        outbound_id = start.custom_parameters.get(OUTBOUND_PARAM)
        admission = self.admissions.bind(
            outbound_id or start.call_sid,
            token,
            self.wall_clock(),
            called=start.custom_parameters.get(PROFILE_PARAM),
        )
        self._bound_sid = admission.call_sid
        profile = self.host.profiles.for_number(admission.called)
        if self.services.carrier_api is None and self.host.services.carrier_api is not None:
            # This call's carrier has no API here: its model must not be offered tools that
            # would only close the stream (the session's tools come from the profile).
            profile = profile.model_copy(update={"tools": Tools()})
        self.profile = profile
        if outbound_id is not None:
            profile = self._outbound_bound(outbound_id, profile)
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
        config = wiring.config
        if self.answer_gate is not None:
            frames = max(config.setup_buffer_frames, self.settings.outbound_buffer_ms // FRAME_MS)
            config = replace(config, setup_buffer_frames=frames)
        self.core.bound(
            config,
            called=admission.called,
            caller=admission.caller,
            log=wiring.log,
            trace=wiring.trace,
            now=self.clock(),
        )

    def _outbound_bound(self, outbound_id: str, profile: Profile) -> Profile:
        """An outbound call's stream: its variables join the instructions, and the first
        session waits for who answered (:mod:`gateway.bridge.answering`)."""
        call = self.host.outbound.get(outbound_id)
        if call is None:  # placed by another process: its variables and verdict are there
            self.log.warning("outbound call %s is not known to this process", outbound_id)
            return profile
        self._outbound_id = outbound_id
        self.profile = profile = with_variables(profile, call.variables)
        detect = profile.outbound.machine_detection != "off"
        self.answer_gate = gate = AnswerGate(answer_rules(profile), self.clock(), detect=detect)
        early = self.host.outbound.stream_bound(call, self._answered_by)
        if early is not None:
            gate.answered_by(early, self.clock())
        if gate.decision is not None:
            self._answer.set()
        return profile

    def _answered_by(self, value: str) -> None:
        """The AMD verdict arrived (from the webhook's task): wake the upstream loop."""
        gate = self.answer_gate
        if gate is not None and gate.answered_by(value, self.clock()) is not None:
            self._answer.set()

    async def _await_answer(self) -> bool:
        """Hold the first session until the call knows who answered; False if the call ends
        here (hung up on a machine)."""
        gate = self.answer_gate
        assert gate is not None
        while gate.decision is None:
            wait = TIMER_MAX_SLEEP_S if gate.deadline is None else gate.deadline - self.clock()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(wait, TIMER_MAX_SLEEP_S))):
                    await self._answer.wait()
            gate.tick(self.clock())
        assert gate.decision is not None
        await self._execute(self.core.answer_decided(gate.decision, gate.delay_ms, self.clock()))
        return self.core.phase is Phase.SETTING_UP

    async def _carrier_loop(self) -> None:
        idle_s = self.settings.carrier_idle_timeout_s
        core, codec = self.core, self.codec
        early, self._early = self._early, []
        for first in early:
            await self._execute(core.carrier_message(first, self.clock()))
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
            for held in codec.drain():  # frames a reordering dialect held back, now in order
                await self._execute(core.carrier_message(held, now))

    async def _carrier_action(self, action: cc.HangUp | cc.Transfer) -> None:
        """Hang up or transfer through the carrier's REST API; the core decides what follows.

        Without a carrier API (no REST credentials) a hang-up closes the stream, and Twilio
        runs the TwiML after ``<Connect>`` (the profile's fallback).
        """
        start = self.core.start
        assert start is not None and self._bound_sid is not None
        # Twilio's SID (an outbound call is bound, and admitted, under the gateway's own id).
        call_sid = start.call_sid
        api, error = self.services.carrier_api, None
        if api is not None:
            try:
                if isinstance(action, cc.HangUp):
                    await api.hang_up(call_sid)
                else:
                    await api.transfer(call_sid, action.number)
            except Exception as exc:
                error = exc
        await self._execute(self.core.carrier_action_done(action, error, self.clock()))

    # --- upstream -------------------------------------------------------------------------------

    async def _upstream_loop(self) -> None:
        """Serve the upstream for the life of the call, replacing the session when the core
        says so (lost once, or old). An outbound call first waits for who answered."""
        if self.answer_gate is not None and not await self._await_answer():
            return
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
        if self._outbound_id is not None:
            outbound = self.host.outbound.get(self._outbound_id)
            if outbound is not None:
                self.host.outbound.stream_ended(outbound)
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
        if self._bound_sid is None:
            # Never a call (no start, or a start naming no call this gateway admitted): counted
            # by its outcome, but no record and no recent entry, so forged starts on a
            # captured upgrade signature cannot fill the records database or cost a write.
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
    "OUTBOUND_PARAM",
    "PROFILE_PARAM",
    "RECENT_CALLS",
    "CallRunner",
    "CallServices",
    "UpstreamFactory",
    "UpstreamSession",
]
