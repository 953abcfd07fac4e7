"""The gateway's cost of a run, from two scrapes of a real metrics registry."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from gateway.loadtest.gateway_metrics import parse_metrics, usage_between
from gateway.observability import Metrics


def test_a_run_is_the_difference_between_two_scrapes() -> None:
    metrics = Metrics()
    inbound = metrics.added_latency.labels(direction="inbound")
    outbound = metrics.added_latency.labels(direction="outbound")
    for _ in range(1000):
        inbound.observe(0.040)  # before the run: slow, must not count
    before = parse_metrics(generate_latest(metrics.registry).decode())
    for _ in range(1000):
        inbound.observe(0.0015)
        outbound.observe(0.0004)
    metrics.active_calls.set(0)
    after = parse_metrics(generate_latest(metrics.registry).decode())
    assert after.cpu_seconds is not None and after.rss_bytes is not None
    usage = usage_between(before, after, call_minutes=2.0, peak_rss_bytes=after.rss_bytes * 2)
    inbound_p99 = usage.added_latency_ms["inbound_p99"]
    outbound_p99 = usage.added_latency_ms["outbound_p99"]
    assert inbound_p99 is not None and 1.0 < inbound_p99 <= 2.0  # the run's bucket, not 40 ms
    assert outbound_p99 is not None and outbound_p99 <= 0.5
    assert usage.rss_mb == pytest.approx(after.rss_bytes * 2 / 2**20)
    assert usage.cpu_seconds is not None and usage.cpu_seconds >= 0
    assert usage.cpu_seconds_per_call_minute == pytest.approx(usage.cpu_seconds / 2.0)


def test_missing_figures_stay_missing() -> None:
    empty = parse_metrics("# nothing here\n")
    usage = usage_between(empty, empty, call_minutes=1.0)
    assert usage.cpu_seconds is None and usage.rss_mb is None
    assert usage.added_latency_ms == {"inbound_p99": None, "outbound_p99": None}
    assert usage.to_dict()["cpu_seconds_per_call_minute"] is None
