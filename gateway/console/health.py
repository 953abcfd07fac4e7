"""The figures of the console's health page, read from the process's own metrics.

Histograms are cumulative since start-up, so a p99 here is over the life of the process; the
page charts successive samples, which shows a change when it happens. Pure but for reading the
Prometheus registry.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from gateway.observability import bucket_quantile

ADDED_LATENCY = "gateway_added_latency_seconds"
UPSTREAM_ERRORS = "gateway_upstream_errors"


def added_latency_p99_ms(registry: CollectorRegistry) -> dict[str, float | None]:
    """p99 of the gateway's added latency per direction (``inbound``/``outbound``), in ms."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    for metric in registry.collect():
        if metric.name != ADDED_LATENCY:
            continue
        for sample in metric.samples:
            if sample.name == f"{ADDED_LATENCY}_bucket":
                le = float(sample.labels["le"])
                buckets.setdefault(sample.labels["direction"], []).append((le, sample.value))
    out: dict[str, float | None] = {"inbound": None, "outbound": None}
    for direction, pairs in buckets.items():
        value = bucket_quantile(sorted(pairs), 0.99)
        out[direction] = None if value is None else round(value * 1000, 2)
    return out


def upstream_errors(registry: CollectorRegistry) -> dict[str, float]:
    """Realtime errors and failures since start-up, by code."""
    out: dict[str, float] = {}
    for metric in registry.collect():
        if metric.name != UPSTREAM_ERRORS:
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[sample.labels["code"]] = sample.value
    return out


def profile_view(profile: Any) -> dict[str, Any]:
    """A profile's effective settings as JSON (every field, defaults filled in)."""
    data: dict[str, Any] = profile.model_dump(mode="json")
    return data
