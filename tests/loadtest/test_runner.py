"""Load runs against the real gateway (embedded emulator) on loopback: arrivals, concurrency,
failures by reason, and the gateway's own figures scraped from its /metrics."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from gateway.loadtest.report import summarize
from gateway.loadtest.runner import LoadPlan, LoadRun, Target, is_loopback_url
from gateway.loadtest.scenarios import CallerLines, ScenarioMix
from gateway.service import RunningGateway

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def lines() -> CallerLines:
    return CallerLines.synthesized()


def test_plans_are_bounded_and_ramp_linearly() -> None:
    with pytest.raises(ValueError, match="number of calls, a duration, or both"):
        LoadPlan(calls=None, duration_s=None)
    with pytest.raises(ValueError, match="concurrency"):
        LoadPlan(calls=1, concurrency=0)
    plan = LoadPlan(calls=10, concurrency=8, ramp_up_s=4.0)
    assert [plan.limit_at(t) for t in (0.0, 0.5, 1.0, 2.0, 3.9, 4.0, 9.0)] == [1, 1, 2, 4, 8, 8, 8]
    assert LoadPlan(calls=1, concurrency=3).limit_at(0.0) == 3


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://127.0.0.1:8080", True),
        ("http://127.9.9.9", True),
        ("http://[::1]:80", True),
        ("http://localhost:1", True),
        ("https://gateway.example.com", False),
        ("http://10.0.0.5:8080", False),
    ],
)
def test_loopback_targets(url: str, local: bool) -> None:
    assert is_loopback_url(url) is local


async def test_calls_run_at_the_planned_concurrency_and_are_measured(
    gateway: RunningGateway, lines: CallerLines
) -> None:
    plan = LoadPlan(calls=3, concurrency=2, seed=3)
    mix = ScenarioMix.parse("conversation", turns=1, think_ms=200)
    run = LoadRun(plan, Target(gateway.url), mix, lines)
    result = await run.run()
    summary: dict[str, Any] = summarize(result)
    assert summary["calls"]["attempted"] == 3
    assert summary["calls"]["completed"] == 3, summary["calls"]["failures"]
    assert result.peak_concurrency == 2
    assert summary["samples"]["setup"] == 3
    assert summary["samples"]["response"] == 3  # one answered question per call
    assert summary["latency_ms"]["response"]["p50"] > 100  # at least the model's latency
    gateway_figures = summary["gateway"]
    assert gateway_figures is not None  # /metrics was scraped before and after
    assert gateway_figures["cpu_seconds"] > 0
    assert gateway_figures["rss_mb"] > 10
    assert gateway_figures["added_latency_ms"]["inbound_p99"] is not None
    assert gateway_figures["added_latency_ms"]["outbound_p99"] is not None
    progress = run.progress()
    assert progress.started == 3 and progress.completed == 3 and progress.active == 0


async def test_a_refusing_gateway_fails_calls_with_a_reason(
    gateway: RunningGateway, lines: CallerLines
) -> None:
    # A number the gateway has no webhook for at this path: every call fails the same way.
    plan = LoadPlan(calls=2, concurrency=2)
    target = Target(gateway.url, webhook_path="/no/such/webhook")
    result = await LoadRun(plan, target, ScenarioMix.parse("listen"), lines).run()
    summary = summarize(result)
    assert summary["calls"]["failed"] == 2
    assert summary["calls"]["failures"] == {"webhook_http_404": 2}
    assert summary["calls"]["established"] == 0


async def test_nothing_listening_is_a_connect_failure_not_a_crash(lines: CallerLines) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nobody listens there
    plan = LoadPlan(calls=2, concurrency=1, rate=50.0)
    result = await LoadRun(
        plan, Target(f"http://127.0.0.1:{port}"), ScenarioMix.parse("listen"), lines
    ).run()
    summary = summarize(result)
    assert summary["calls"]["failures"] == {"webhook_error": 2}
    assert summary["gateway"] is None
    assert summary["note"] == "the gateway's /metrics was not reachable"


async def test_duration_stops_new_arrivals(gateway: RunningGateway, lines: CallerLines) -> None:
    plan = LoadPlan(calls=None, duration_s=1.0, concurrency=1, rate=2.0)
    result = await LoadRun(plan, Target(gateway.url), ScenarioMix.parse("listen"), lines).run()
    # arrivals at 0 s and 0.5 s only if the first call has ended; with concurrency 1 the first
    # call (greeting ~2 s) holds the slot past the 1 s limit, so exactly one call starts
    assert len(result.records) == 1
    assert result.records[0].result.ok, result.records[0].result.failure_detail


@pytest.mark.parametrize(
    ("carrier", "path"),
    [("twilio", "/twilio/voice"), ("telnyx", "/telnyx/voice"), ("plivo", "/plivo/answer")],
)
def test_a_target_for_a_carrier_calls_its_webhook_route(carrier: str, path: str) -> None:
    target = Target.for_carrier("http://127.0.0.1:8080/", carrier, numbers=("+1555",))
    assert target.webhook_url == "http://127.0.0.1:8080" + path
    assert target.carrier == carrier and target.numbers == ("+1555",)
