"""Metrics (Prometheus, no per-call labels) and call-scoped logging.

Each app gets its own :class:`Metrics` on its own registry, so tests and embedded emulators can
run several apps in one process without colliding.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, MutableMapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

# Gateway-added latency is small (a resampler's delay and a queue hop): fine buckets.
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25,
)  # fmt: skip
_SETUP_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0)


class Metrics:
    """Every metric the gateway exports; names are the reference in docs/metrics.md."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        self.active_calls = Gauge(
            "gateway_active_calls", "Calls with a live media stream", registry=r
        )
        self.calls = Counter("gateway_calls", "Finished calls by outcome", ["outcome"], registry=r)
        self.webhooks = Counter(
            "gateway_webhooks", "Incoming-call webhooks by result", ["result"], registry=r
        )
        self.setup_seconds = Histogram(
            "gateway_call_setup_seconds",
            "Stream start to upstream session ready",
            buckets=_SETUP_BUCKETS,
            registry=r,
        )
        self.added_latency = Histogram(
            "gateway_added_latency_seconds",
            "Time audio spends inside the gateway: inbound = carrier frame received to handed "
            "to the WebRTC track; outbound = decoded upstream frame to carrier message written",
            ["direction"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.barge_in_seconds = Histogram(
            "gateway_barge_in_reaction_seconds",
            "Caller-speech event received to carrier clear written",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.barge_ins = Counter("gateway_barge_ins", "Barge-ins by source", ["source"], registry=r)
        self.dropped_frames = Counter(
            "gateway_dropped_frames",
            "Audio frames dropped (queue full, muted after barge-in, setup overflow)",
            ["direction", "reason"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Realtime error events and failures by code", ["code"],
            registry=r,
        )  # fmt: skip
        self.carrier_rejects = Counter(
            "gateway_carrier_messages_rejected",
            "Carrier messages rejected or ignored by reason",
            ["reason"],
            registry=r,
        )
        self.profile_reloads = Counter(
            "gateway_profile_reloads", "Profile reloads by result", ["result"], registry=r
        )
        # Leak detectors: both return to their idle value when every call has ended.
        self.peer_connections = Gauge(
            "gateway_peer_connections", "Upstream WebRTC peer connections not closed", registry=r
        )
        self.event_loop_tasks = Gauge(
            "gateway_event_loop_tasks", "Asyncio tasks alive in the serving event loop", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CallLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger whose lines carry the call's identifiers (call SID, stream SID, number)."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        ctx = self.extra or {}
        tags = " ".join(f"{k}={v}" for k, v in ctx.items() if v)
        return (f"[{tags}] {msg}" if tags else msg), kwargs


def mask_number(number: str | None) -> str:
    """Keep the country code and the last two digits: ``+1*******67``."""
    if not number:
        return ""
    if len(number) <= 5:
        return "*" * len(number)
    return number[:2] + "*" * (len(number) - 4) + number[-2:]


def configure_logging(level: str = "info") -> None:
    """Process-wide logging for the CLI commands: one readable line per record on stderr.

    Call-scoped lines carry their call ids through :class:`CallLogger`. Noisy libraries
    (aioice, aiortc's RTP internals) are held at WARNING unless ``level`` is ``debug``.
    """
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        force=True,
    )
    if level.lower() != "debug":
        for noisy in ("aioice", "aiortc", "uvicorn.error"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def histogram_quantile(
    registry: CollectorRegistry, name: str, q: float, labels: dict[str, str] | None = None
) -> float | None:
    """The ``q`` quantile of histogram ``name`` from its buckets, as PromQL estimates it.

    Linear interpolation inside the bucket that holds the rank; ``None`` without observations.
    Used by the demo and the admin API to report p99s without a Prometheus server.
    """
    want = labels or {}
    buckets: list[tuple[float, float]] = []
    for family in registry.collect():
        if family.name != name:
            continue
        for sample in family.samples:
            if not sample.name.endswith("_bucket"):
                continue
            if any(sample.labels.get(k) != v for k, v in want.items()):
                continue
            buckets.append((float(sample.labels["le"]), sample.value))
    return bucket_quantile(buckets, q)


def bucket_quantile(buckets: Iterable[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile from cumulative ``(le, count)`` pairs, as PromQL's
    ``histogram_quantile`` estimates it; ``None`` without observations.

    Shared by :func:`histogram_quantile` (this process's registry) and the load tester (a
    difference of two scrapes of a gateway's ``/metrics``).
    """
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower  # beyond the last finite bucket: its bound is all we know
            span = count - below
            return lower + (upper - lower) * ((rank - below) / span if span > 0 else 1.0)
        lower, below = upper, count
    return lower
