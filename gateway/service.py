"""``gateway serve``: the gateway process, its upstream, its signals and its drain.

:func:`running_gateway` assembles one gateway from settings: with neither ``OPENAI_API_KEY``
nor ``GATEWAY_REALTIME_BASE_URL`` it starts the Realtime emulator on loopback in the same
process and points the upstream at it (and says so, loudly: the product works out of the box
but never pretends to be talking to OpenAI). :func:`serve_forever` adds what a production
process needs on top: SIGTERM/SIGINT start a drain (``/readyz`` turns 503, the webhook answers
fallback TwiML, live calls finish, up to ``GATEWAY_DRAIN_TIMEOUT_S``), a second signal stops at
once, SIGHUP reloads the profiles file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from gateway.aio import cancel_and_wait, watch_loop_lag
from gateway.app import VOICE_PATH, create_app, gateway_state, upgrade_screen
from gateway.bridge.call import CallServices
from gateway.errors import ConfigError
from gateway.limits import (
    ConnectionGuard,
    connection_limits,
    open_file_limit,
    quiet_accept_errors,
    raise_open_file_limit,
)
from gateway.numbers import ProfileStore
from gateway.observability import Metrics
from gateway.realtime.session import open_peer_connections
from gateway.recordings import sweep_recordings
from gateway.records import (
    PriceTable,
    RecordStoreError,
    RecordWriter,
    open_store,
    sqlite_url,
)
from gateway.records.store import SqlRecordStore
from gateway.serving import ResponseHeader, RunningServer, serve_app
from gateway.settings import Settings
from gateway.telephony.carriers import served
from gateway.telephony.rest import TwilioRestClient
from gateway.tracing import Tracing
from gateway.upstream import realtime_config, session_factory

log = logging.getLogger("gateway.service")

# The embedded emulator checks that a bearer is present; this one never leaves the process.
EMBEDDED_EMULATOR_KEY = "embedded-emulator-key"
EMULATOR_BANNER = (
    "NO OPENAI_API_KEY: calls go to the EMBEDDED REALTIME EMULATOR at %s (offline, synthesized "
    "voice, not OpenAI). Set OPENAI_API_KEY to reach the real Realtime API."
)


WORKER_HEADER = "x-gateway-worker"


@dataclass(frozen=True, slots=True)
class WorkerSeat:
    """What a supervisor (:mod:`gateway.workers`) hands one of its workers: its number, its
    share of the listening socket, and the URL of the emulator every worker shares (``None``
    unless the settings call for the embedded emulator)."""

    index: int
    socket: socket.socket
    emulator_url: str | None = None


@dataclass(frozen=True, slots=True)
class RunningGateway:
    """A gateway serving on ``server``; ``emulator`` is set when the upstream is embedded."""

    app: FastAPI
    server: RunningServer
    upstream_base_url: str
    emulator: RunningServer | None

    @property
    def url(self) -> str:
        return self.server.url


@contextlib.asynccontextmanager
async def running_gateway(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    profiles: ProfileStore | None = None,
    emulator_options: dict[str, object] | None = None,
    worker: WorkerSeat | None = None,
) -> AsyncIterator[RunningGateway]:
    """Serve a gateway built from ``settings`` until the block exits.

    ``host``/``port`` override the settings (``port=0`` picks a free one). ``emulator_options``
    are :class:`~gateway.emulator.config.EmulatorConfig` fields for the embedded emulator (the
    demo uses them for ``--reply`` and ``--latency-ms``); they are ignored when a real upstream
    is configured. ``worker`` makes this one of a supervisor's workers (see
    :class:`WorkerSeat`). Raises :class:`ConfigError` when the profiles file is invalid.
    """
    profiles = profiles or ProfileStore(settings.profiles_file)
    metrics = Metrics()
    carrier_auth, problems = settings.carrier_auth_report()
    log.info("carrier requests: %s", carrier_auth)
    for problem in problems:
        log.warning(problem)
    async with contextlib.AsyncExitStack() as stack:
        emulator: RunningServer | None = None
        base_url, api_key = settings.effective_realtime_base_url, None
        if settings.uses_embedded_emulator and worker is not None and worker.emulator_url:
            # The supervisor runs the one emulator every worker shares (and logs the banner).
            base_url, api_key = worker.emulator_url, EMBEDDED_EMULATOR_KEY
        elif settings.uses_embedded_emulator:
            from gateway.emulator.app import create_app as create_emulator
            from gateway.emulator.config import EmulatorConfig

            config = EmulatorConfig(api_key=EMBEDDED_EMULATOR_KEY, **(emulator_options or {}))  # type: ignore[arg-type]
            emulator = await stack.enter_async_context(
                serve_app(create_emulator(config), host="127.0.0.1", port=0)
            )
            base_url, api_key = f"{emulator.url}/v1", EMBEDDED_EMULATOR_KEY
            log.warning(EMULATOR_BANNER, base_url)
        elif settings.openai_api_key is None:
            log.warning(
                "GATEWAY_REALTIME_BASE_URL=%s is set without OPENAI_API_KEY: "
                "requests go out with an empty bearer",
                base_url,
            )
        # One pooled HTTP client for every call's SDP exchange (TLS set up once, not per call).
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=settings.setup_timeout_s))
        realtime = realtime_config(settings, base_url=base_url, api_key=api_key, http_client=http)
        loop = asyncio.get_running_loop()
        metrics.live(metrics.peer_connections, open_peer_connections)
        metrics.live(metrics.event_loop_tasks, lambda: len(asyncio.all_tasks(loop)))
        lag = asyncio.create_task(watch_loop_lag(metrics.event_loop_lag.observe), name="loop-lag")
        stack.push_async_callback(cancel_and_wait, lag)
        store, writer = await _open_records(settings, metrics, stack)
        tracing = Tracing.from_environ()
        if tracing.enabled:
            log.info("tracing: %s", tracing.description)
            stack.push_async_callback(asyncio.to_thread, tracing.shutdown)
        services = CallServices(
            carrier_api=await _carrier_api(settings, profiles, stack),
            prices=PriceTable.default(settings.prices),
            save_record=writer.submit if writer is not None else None,
            tracing=tracing,
            recordings_dir=settings.recordings_dir,
        )
        if settings.recordings_retention_days > 0:
            sweeper = asyncio.create_task(
                _sweep_recordings_hourly(
                    settings.recordings_dir, settings.recordings_retention_days
                ),
                name="recordings-retention",
            )
            stack.callback(sweeper.cancel)
        # label "inbound" is caller -> model (docs/metrics.md)
        caller_latency = metrics.added_latency.labels("inbound")
        caller_queue_full = metrics.dropped_frames.labels("inbound", "queue_full")
        app = create_app(
            settings,
            upstream=session_factory(
                realtime,
                on_caller_audio_handoff=caller_latency.observe,
                on_caller_audio_drop=caller_queue_full.inc,
                call_control=services.carrier_api is not None,
                default_codec=settings.upstream_codec,
            ),
            profiles=profiles,
            metrics=metrics,
            services=services,
            records=store,
        )
        limits = connection_limits(settings, open_file_limit())
        log.info(
            "connections: at most %d open, %d per client; request head within %g s, body "
            "within %g s",
            limits.max_connections,
            limits.max_per_client,
            limits.header_timeout_s,
            limits.body_timeout_s,
        )
        dropped = metrics.connections_dropped
        guard = ConnectionGuard(limits, on_drop=lambda reason: dropped.labels(reason).inc())
        metrics.live(metrics.open_connections, lambda: guard.table.total)
        served: Any = app
        if worker is not None:
            # The stream of a call lands on whichever worker the kernel picks: its slot is
            # taken there, not reserved by the webhook's worker (docs/deployment.md).
            gateway_state(app).admissions.hold_pending = False
            served = ResponseHeader(app, WORKER_HEADER, str(os.getpid()))
        if metrics.multiprocess_dir is not None:
            refresher = asyncio.create_task(_refresh_metrics(metrics), name="metrics-refresh")
            stack.push_async_callback(cancel_and_wait, refresher)
        server = await stack.enter_async_context(
            serve_app(
                served,
                host=settings.host if host is None else host,
                port=settings.port if port is None else port,
                ws_max_size=settings.max_message_bytes,
                guard=guard,
                screen=upgrade_screen(app),
                timeout_keep_alive=settings.keep_alive_timeout_s,
                sock=worker.socket if worker is not None else None,
            )
        )
        yield RunningGateway(app=app, server=server, upstream_base_url=base_url, emulator=emulator)


METRICS_REFRESH_S = 1.0


async def _refresh_metrics(metrics: Metrics) -> None:
    """Sibling workers: publish this worker's read-when-scraped values once a second."""
    while True:
        metrics.refresh()
        await asyncio.sleep(METRICS_REFRESH_S)


RETENTION_SWEEP_S = 3600.0
TOOLS_WITHOUT_CALL_CONTROL = (
    "profile(s) %s enable call-control tools, but TWILIO_ACCOUNT_SID and a token or API key "
    "are not set: the tools are not offered to the model, and budget or maximum-duration "
    "endings close the stream (the caller hears the fallback)"
)


async def _sweep_recordings_hourly(directory: Path, retention_days: int) -> None:
    """Delete recordings past their retention now and every hour, off the event loop."""
    while True:
        try:
            removed = await asyncio.to_thread(
                sweep_recordings, directory, retention_days, datetime.now(UTC)
            )
        except OSError as exc:
            log.error("recordings retention sweep of %s failed: %s", directory, exc)
        else:
            if removed:
                log.info("deleted %d recording(s) older than %d days", removed, retention_days)
        await asyncio.sleep(RETENTION_SWEEP_S)


async def _carrier_api(
    settings: Settings, profiles: ProfileStore, stack: contextlib.AsyncExitStack
) -> TwilioRestClient | None:
    """Twilio's REST API for call control, when credentials are set; closed with ``stack``."""
    credentials = settings.twilio_rest_credentials()
    if credentials is None:
        using = profiles.current.using_tools()
        if using:
            log.warning(TOOLS_WITHOUT_CALL_CONTROL, ", ".join(using))
        return None
    assert settings.twilio_account_sid is not None
    client = TwilioRestClient(
        settings.twilio_account_sid, *credentials, base_url=settings.twilio_api_base_url
    )
    stack.push_async_callback(client.aclose)
    log.info("call control through Twilio's REST API at %s", settings.twilio_api_base_url)
    return client


async def _open_records(
    settings: Settings, metrics: Metrics, stack: contextlib.AsyncExitStack
) -> tuple[SqlRecordStore | None, RecordWriter | None]:
    """The call-record store and its writer, closed (queue flushed) when ``stack`` unwinds,
    after the server: the last calls' records are written before the process exits."""
    if not settings.records_enabled:
        log.info("call records are off (GATEWAY_RECORDS_URL=off)")
        return None, None
    try:
        url = settings.records_url or sqlite_url(settings.records_path)
        store = open_store(url)
        await store.open()
    except (RecordStoreError, OSError) as exc:
        raise ConfigError(f"call records: {exc}") from None
    written, failed = metrics.call_records.labels("written"), metrics.call_records.labels("failed")
    writer = RecordWriter(
        store,
        on_written=lambda _r: written.inc(),
        on_failed=lambda _r, _why: failed.inc(),
    )
    await writer.start()
    stack.push_async_callback(writer.close)
    log.info("call records go to %s", store.url)
    return store, writer


async def drain(app: FastAPI, timeout_s: float) -> int:
    """Stop taking calls and wait up to ``timeout_s`` for the open media streams to end.

    Returns how many calls were still live at the deadline; the caller hangs them up (leaving
    the ``serve_app`` block does).
    """
    state = gateway_state(app)
    state.admissions.draining = True
    if state.streams:
        log.warning(
            "draining: no new calls; waiting up to %.0f s for %d live call(s)",
            timeout_s,
            state.streams,
        )
    else:
        log.info("draining: no new calls, no live calls")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(state.idle.wait(), timeout_s)
    return state.streams


async def hang_up_all(app: FastAPI, reason: str, timeout_s: float = 5.0) -> int:
    """End every live call cleanly (1001 to the carrier, upstream session hung up) and wait up
    to ``timeout_s`` for them to finish; returns how many were hung up."""
    state = gateway_state(app)
    calls = list(state.calls.values())
    for call in calls:
        await call.hang_up(reason)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(state.idle.wait(), timeout_s)
    return len(calls)


def reload_profiles(app: FastAPI) -> None:
    """SIGHUP: re-read the profiles file; an invalid file keeps the current profiles."""
    state = gateway_state(app)
    try:
        fresh = state.profiles.reload()
    except ConfigError as exc:
        state.metrics.profile_reloads.labels("invalid").inc()
        log.error("SIGHUP: profiles file is invalid; keeping the current profiles: %s", exc)
        return
    state.metrics.profile_reloads.labels("ok").inc()
    log.info("SIGHUP: profiles reloaded (%d numbers)", len(fresh.numbers))


async def serve_forever(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    profiles: ProfileStore | None = None,
    on_ready: Callable[[RunningGateway], None] | None = None,
    worker: WorkerSeat | None = None,
) -> int:
    """Run the gateway until a signal; returns the number of calls cut short by the drain."""
    # Connections are bounded below the open-file limit, so take all of it that is allowed; a
    # process that still runs out gets one line a minute about it, not a traceback per accept.
    open_files = raise_open_file_limit()
    log.info("open-file limit: %d", open_files)
    with quiet_accept_errors(asyncio.get_running_loop()):
        return await _serve_until_stopped(settings, host, port, profiles, on_ready, worker)


async def _serve_until_stopped(
    settings: Settings,
    host: str | None,
    port: int | None,
    profiles: ProfileStore | None,
    on_ready: Callable[[RunningGateway], None] | None,
    worker: WorkerSeat | None,
) -> int:
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    hard_stop = asyncio.Event()

    def on_stop() -> None:
        if stop_requested.is_set():
            log.warning("second stop signal: ending live calls now")
            hard_stop.set()
        stop_requested.set()

    async with running_gateway(
        settings, host=host, port=port, profiles=profiles, worker=worker
    ) as gw:
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_stop)
                installed.append(sig)
        with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
            loop.add_signal_handler(signal.SIGHUP, reload_profiles, gw.app)
            installed.append(signal.SIGHUP)
        log.info(
            "gateway %s %slistening on %s; upstream %s",
            _version(),
            "" if worker is None else f"worker {worker.index} (pid {os.getpid()}) ",
            gw.url,
            gw.upstream_base_url,
        )
        if settings.public_url:
            log.info("Twilio voice webhook URL: %s%s", settings.public_url, VOICE_PATH)
        else:
            log.info(
                "Twilio voice webhook URL: set GATEWAY_PUBLIC_URL to the https:// origin Twilio "
                "calls (a proxy or tunnel in front of %s), then use <that origin>%s",
                gw.url,
                VOICE_PATH,
            )
        for carrier in served(settings).values():
            if carrier.name != "twilio":
                log.info(
                    "%s answer URL: %s%s",
                    carrier.name,
                    settings.public_url or "<public origin>",
                    carrier.voice_path,
                )
        if settings.admin_token is not None:
            log.info("operator console: %s/console (log in with GATEWAY_ADMIN_TOKEN)", gw.url)
        else:
            log.info("operator console: off (set GATEWAY_ADMIN_TOKEN to open %s/console)", gw.url)
        if on_ready is not None:
            on_ready(gw)
        try:
            await stop_requested.wait()
            draining = asyncio.ensure_future(drain(gw.app, settings.drain_timeout_s))
            hard = asyncio.ensure_future(hard_stop.wait())
            await asyncio.wait({draining, hard}, return_when=asyncio.FIRST_COMPLETED)
            if draining.done():
                left = draining.result()
                why = "drain deadline reached"
            else:
                left = len(gateway_state(gw.app).calls)
                why = "second stop signal"
            await cancel_and_wait(draining, hard)
            if left:
                log.warning("%s: hanging up %d call(s)", why, left)
                await hang_up_all(gw.app, f"gateway shutting down ({why})")
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
        log.info("gateway stopped")
        return left


def _version() -> str:
    from gateway import __version__

    return __version__
