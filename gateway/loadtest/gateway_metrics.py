"""What the gateway says about itself during a load run, from its Prometheus ``/metrics``.

The load tester scrapes ``/metrics`` before the first call, every few seconds while calls run
(for peak RSS and active calls) and after the last call, and reports the *difference*: CPU
seconds the process spent per minute of call time, and the p99 of the gateway-added latency
histograms over the run alone (bucket counts after minus before, as PromQL's ``increase``
would). Parsing uses ``prometheus_client``'s own text parser.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability import bucket_quantile

__all__ = ["GatewaySample", "GatewayUsage", "parse_metrics", "scrape", "usage_between"]

ADDED_LATENCY: str = "gateway_added_latency_seconds"


@dataclass(frozen=True, slots=True)
class GatewaySample:
    """One scrape: the figures the load report needs, keyed for subtraction."""

    cpu_seconds: float | None
    rss_bytes: float | None
    active_calls: float | None
    added_latency_buckets: Mapping[str, Mapping[float, float]] = field(default_factory=dict)
    """direction -> {le: cumulative count}."""


def parse_metrics(text: str) -> GatewaySample:
    """Pick CPU, RSS, active calls and the added-latency buckets out of a ``/metrics`` page."""
    cpu = rss = active = None
    buckets: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if name == "process_cpu_seconds_total":
                cpu = sample.value
            elif name == "process_resident_memory_bytes":
                rss = sample.value
            elif name == "gateway_active_calls":
                active = sample.value
            elif name == ADDED_LATENCY + "_bucket":
                direction = sample.labels.get("direction", "")
                le = float(sample.labels["le"])
                buckets.setdefault(direction, {})[le] = sample.value
    return GatewaySample(cpu, rss, active, buckets)


async def scrape(client: httpx.AsyncClient, url: str) -> GatewaySample | None:
    """One scrape of ``url``; ``None`` when the gateway does not answer (metrics are optional)."""
    try:
        response = await client.get(url, timeout=5.0)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        return parse_metrics(response.text)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class GatewayUsage:
    """The gateway's cost of a run, from two scrapes and the peak seen between them."""

    cpu_seconds: float | None
    cpu_seconds_per_call_minute: float | None
    rss_mb: float | None
    """The largest resident set seen during the run."""
    added_latency_ms: Mapping[str, float | None]
    """p99 per direction (``inbound_p99``, ``outbound_p99``) over the run."""

    def to_dict(self) -> dict[str, object]:
        return {
            "cpu_seconds": _r(self.cpu_seconds, 2),
            "cpu_seconds_per_call_minute": _r(self.cpu_seconds_per_call_minute, 3),
            "rss_mb": _r(self.rss_mb, 1),
            "added_latency_ms": {k: _r(v, 2) for k, v in self.added_latency_ms.items()},
        }


def usage_between(
    before: GatewaySample,
    after: GatewaySample,
    *,
    call_minutes: float,
    peak_rss_bytes: float | None = None,
) -> GatewayUsage:
    """The run's share of the gateway's counters: ``after`` minus ``before``."""
    cpu = None
    if before.cpu_seconds is not None and after.cpu_seconds is not None:
        cpu = max(0.0, after.cpu_seconds - before.cpu_seconds)
    per_call_minute = cpu / call_minutes if cpu is not None and call_minutes > 0 else None
    rss_values = [v for v in (peak_rss_bytes, after.rss_bytes) if v is not None]
    rss_mb = max(rss_values) / 2**20 if rss_values else None
    latency: dict[str, float | None] = {}
    for direction in ("inbound", "outbound"):
        now = after.added_latency_buckets.get(direction, {})
        then = before.added_latency_buckets.get(direction, {})
        delta = [(le, count - then.get(le, 0.0)) for le, count in now.items()]
        p99 = bucket_quantile(delta, 0.99)
        latency[f"{direction}_p99"] = None if p99 is None else p99 * 1000
    return GatewayUsage(cpu, per_call_minute, rss_mb, latency)


def _r(value: float | None, digits: int) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(value, digits)
