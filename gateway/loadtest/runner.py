"""Many simulated calls against one gateway: arrivals, held concurrency, and the gateway's cost.

:class:`LoadRun` starts :class:`~gateway.loadtest.caller.SimulatedCall`\\ s as the
:class:`LoadPlan` says — a total (``calls``), a ceiling of calls in progress (``concurrency``,
reached linearly over ``ramp_up_s``), an arrival rate (``rate`` calls per second) and a time
limit (``duration_s``: no new call starts after it; calls in progress finish their script,
each bounded by ``max_call_s``) — and keeps every call's :class:`CallResult`. While it runs it
scrapes the gateway's ``/metrics`` (when reachable) for CPU, RSS and the added-latency
histograms, and publishes a :class:`Progress` snapshot for a live display.

Everything runs in one event loop: the per-call cost is two tasks and a timer per 20 ms, so
one core carries hundreds of calls (``tests/benchmarks/loadtester_self.py`` measures it, and
every report carries the tool's own pacing lateness so a result can be trusted or discarded).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from gateway.admission import is_loopback_host
from gateway.loadtest.caller import CallOptions, CallResult, SimulatedCall, websocket_url
from gateway.loadtest.gateway_metrics import GatewaySample, GatewayUsage, scrape, usage_between
from gateway.loadtest.scenarios import CallerLines, ScenarioMix, build_script
from gateway.observability import percentile

__all__ = [
    "CallRecord",
    "LoadPlan",
    "LoadResult",
    "LoadRun",
    "Progress",
    "Target",
    "is_loopback_url",
]


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` points at this machine (127.0.0.0/8, ::1 or ``localhost``)."""
    return is_loopback_host(urlsplit(url).hostname)


@dataclass(frozen=True, slots=True)
class Target:
    """The gateway under test."""

    base_url: str
    """``http://127.0.0.1:8080``: the webhook, media socket and metrics hang off it."""
    webhook_path: str | None = "/twilio/voice"
    """``None``: skip the webhook and open ``media_path`` directly (gateways that admit streams
    without a webhook, and the load tester's own benchmark)."""
    media_path: str = "/twilio/media"
    metrics_path: str | None = "/metrics"
    auth_token: str | None = None
    """Sign webhooks and upgrades (``X-Twilio-Signature``) with this Twilio auth token."""
    numbers: tuple[str, ...] = ("+15550100002",)
    """Numbers dialled, round robin (each selects the gateway's profile for it)."""
    carrier: str = "twilio"
    """The dialect the calls speak (:mod:`gateway.loadtest.dialects`); set ``webhook_path``
    to its route (:meth:`for_carrier`)."""

    @classmethod
    def for_carrier(cls, base_url: str, carrier: str, **kw: Any) -> Target:
        """A target whose calls play ``carrier`` on its own webhook route."""
        from gateway.loadtest.dialects import dialect_named

        return cls(base_url, webhook_path=dialect_named(carrier).voice_path, carrier=carrier, **kw)

    @property
    def webhook_url(self) -> str | None:
        if self.webhook_path is None:
            return None
        return self.base_url.rstrip("/") + self.webhook_path

    @property
    def media_url(self) -> str:
        return websocket_url(self.base_url.rstrip("/") + self.media_path)

    @property
    def metrics_url(self) -> str | None:
        if self.metrics_path is None:
            return None
        return self.base_url.rstrip("/") + self.metrics_path


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """How much load, and its shape. Bounded in count or time, always."""

    calls: int | None = None
    """Total calls; ``None`` with ``duration_s``: as many as fit in the duration."""
    concurrency: int = 10
    rate: float | None = None
    """Call arrivals per second; ``None``: start a call whenever one ends (closed loop)."""
    duration_s: float | None = None
    ramp_up_s: float = 0.0
    max_call_s: float = 300.0
    seed: int = 1
    scrape_interval_s: float = 2.0

    def __post_init__(self) -> None:
        if self.calls is None and self.duration_s is None:
            raise ValueError("a load plan needs a number of calls, a duration, or both")
        if self.calls is not None and self.calls < 1:
            raise ValueError("calls must be at least 1")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("duration must be positive")
        if self.ramp_up_s < 0:
            raise ValueError("ramp-up cannot be negative")

    def limit_at(self, elapsed_s: float) -> int:
        """Calls allowed in progress ``elapsed_s`` into the run (linear ramp-up)."""
        if self.ramp_up_s <= 0 or elapsed_s >= self.ramp_up_s:
            return self.concurrency
        return max(1, math.ceil(self.concurrency * elapsed_s / self.ramp_up_s))


@dataclass(slots=True)
class CallRecord:
    """One call of the run: its scenario, when it started (s into the run) and its result."""

    index: int
    scenario: str
    started_s: float
    result: CallResult


@dataclass(frozen=True, slots=True)
class Progress:
    """A live snapshot for the progress display."""

    elapsed_s: float
    started: int
    active: int
    completed: int
    failed: int
    failures: dict[str, int]
    peak_concurrency: int
    response_p95_ms: float | None
    """Over the last 200 answered turns."""
    pacing_max_ms: float
    """The tool's worst lateness sending a frame so far (cheap to compute live)."""
    gateway_active_calls: float | None


@dataclass
class LoadResult:
    """Everything a run produced; :mod:`gateway.loadtest.report` turns it into figures."""

    plan: LoadPlan
    target: Target
    mix: str
    records: list[CallRecord]
    wall_s: float
    peak_concurrency: int
    gateway: GatewayUsage | None
    note: str = ""
    extra: dict[str, object] = field(default_factory=dict)
    """Context a caller attaches (e.g. ``--spawn``'s emulator settings) for the report."""


class LoadRun:
    """One load run. ``await run()`` once; :meth:`progress` is safe to call meanwhile."""

    def __init__(
        self,
        plan: LoadPlan,
        target: Target,
        mix: ScenarioMix,
        lines: CallerLines,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plan = plan
        self.target = target
        self.mix = mix
        self.lines = lines
        self._clock = clock
        self._rng = random.Random(plan.seed)
        self._records: list[CallRecord] = []
        self._active: set[asyncio.Task[CallResult]] = set()
        self._calls: list[SimulatedCall] = []
        self._peak = 0
        self._t0 = 0.0
        self._recent_response: deque[float] = deque(maxlen=200)
        self._failures: Counter[str] = Counter()
        self._completed = 0
        self._gateway_active: float | None = None
        self._peak_rss: float | None = None

    # --- public ----------------------------------------------------------------------------------

    async def run(self) -> LoadResult:
        """Run the plan to its end and return every call's result (never raises for calls)."""
        plan = self.plan
        limits = httpx.Limits(max_connections=plan.concurrency + 8, max_keepalive_connections=16)
        async with httpx.AsyncClient(trust_env=False, limits=limits) as http:
            before = await self._scrape(http)
            stop_scraping = asyncio.Event()
            scraper = asyncio.create_task(self._scrape_loop(http, stop_scraping))
            self._t0 = self._clock()
            try:
                await self._arrivals(http)
                if self._active:
                    await asyncio.wait(set(self._active))
            finally:
                for task in self._active:
                    task.cancel()
                if self._active:
                    await asyncio.wait(set(self._active))
                stop_scraping.set()
                await scraper
            wall = self._clock() - self._t0
            after = await self._settled_scrape(http)
        usage = None
        if before is not None and after is not None:
            minutes = sum(r.result.duration_ms for r in self._records) / 60_000
            usage = usage_between(
                before, after, call_minutes=minutes, peak_rss_bytes=self._peak_rss
            )
        self._records.sort(key=lambda r: r.index)
        return LoadResult(
            plan=plan,
            target=self.target,
            mix=self.mix.describe(),
            records=self._records,
            wall_s=wall,
            peak_concurrency=self._peak,
            gateway=usage,
            note="" if usage is not None else "the gateway's /metrics was not reachable",
        )

    def progress(self) -> Progress:
        p95 = percentile(self._recent_response, 0.95)
        return Progress(
            elapsed_s=self._clock() - self._t0 if self._t0 else 0.0,
            started=len(self._calls),
            active=len(self._active),
            completed=self._completed,
            failed=sum(self._failures.values()),
            failures=dict(self._failures),
            peak_concurrency=self._peak,
            response_p95_ms=p95,
            pacing_max_ms=max((c.result.pacing.max for c in self._calls), default=0.0),
            gateway_active_calls=self._gateway_active,
        )

    # --- arrivals --------------------------------------------------------------------------------

    async def _arrivals(self, http: httpx.AsyncClient) -> None:
        plan = self.plan
        index = 0
        while True:
            elapsed = self._clock() - self._t0
            if plan.calls is not None and index >= plan.calls:
                return
            if plan.duration_s is not None and elapsed >= plan.duration_s:
                return
            wait: float | None = None
            if plan.duration_s is not None:
                wait = plan.duration_s - elapsed
            limit = plan.limit_at(elapsed)
            if len(self._active) >= limit:
                if limit < plan.concurrency:
                    wait = _min(wait, 0.05)  # the ramp may allow another call soon
                await self._wait_for_a_call(wait)
                continue
            if plan.rate is not None:
                due = index / plan.rate - elapsed
                if due > 0:
                    await self._wait_for_a_call(_min(wait, due))
                    continue
            self._start(index, http)
            index += 1

    async def _wait_for_a_call(self, within: float | None) -> None:
        """Until a call ends or ``within`` seconds pass, whichever is first."""
        if self._active:
            await asyncio.wait(
                set(self._active), timeout=within, return_when=asyncio.FIRST_COMPLETED
            )
        elif within is not None:
            await asyncio.sleep(within)

    def _start(self, index: int, http: httpx.AsyncClient) -> None:
        scenario = self.mix.pick(self._rng)
        script = build_script(scenario, self.lines, self._rng)
        target = self.target
        options = CallOptions(
            webhook_url=target.webhook_url,
            media_url=None if target.webhook_url else target.media_url,
            auth_token=target.auth_token,
            carrier=target.carrier,
            to_number=target.numbers[index % len(target.numbers)],
            from_number=f"+1555{2000000 + index % 8000000:07d}",
            max_duration_s=self.plan.max_call_s,
        )
        call = SimulatedCall(script, options, http=http, clock=self._clock)
        self._calls.append(call)
        record = CallRecord(index, scenario.name, self._clock() - self._t0, call.result)
        task = asyncio.create_task(call.run(), name=f"loadtest-call-{index}")
        self._active.add(task)
        self._peak = max(self._peak, len(self._active))

        def done(t: asyncio.Task[CallResult]) -> None:
            self._active.discard(t)
            self._records.append(record)
            result = call.result
            if result.ok:
                self._completed += 1
            else:
                self._failures[result.failure or "unknown"] += 1
            self._recent_response.extend(result.response_latencies_ms)

        task.add_done_callback(done)

    # --- the gateway's view ----------------------------------------------------------------------

    async def _scrape(self, http: httpx.AsyncClient) -> GatewaySample | None:
        url = self.target.metrics_url
        if url is None:
            return None
        sample = await scrape(http, url)
        if sample is not None:
            self._gateway_active = sample.active_calls
            if sample.rss_bytes is not None:
                self._peak_rss = max(self._peak_rss or 0.0, sample.rss_bytes)
        return sample

    async def _scrape_loop(self, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.plan.scrape_interval_s):
                    await stop.wait()
            if not stop.is_set():
                await self._scrape(http)

    async def _settled_scrape(self, http: httpx.AsyncClient) -> GatewaySample | None:
        """The closing scrape, once the gateway has finished its calls (at most ~5 s)."""
        sample = await self._scrape(http)
        for _ in range(50):
            if sample is None or not sample.active_calls:
                return sample
            await asyncio.sleep(0.1)
            sample = await self._scrape(http)
        return sample


def _min(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)
