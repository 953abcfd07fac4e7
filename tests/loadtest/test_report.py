"""Load report: exact percentiles, thresholds, the JSON summary, the text report and the CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from gateway.loadtest.caller import CallResult, Turn
from gateway.loadtest.gateway_metrics import GatewayUsage
from gateway.loadtest.report import Threshold, check, percentiles, render, summarize, write_csv
from gateway.loadtest.runner import CallRecord, LoadPlan, LoadResult, Target
from gateway.observability import percentile


def test_percentiles_are_nearest_rank_over_every_sample() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentiles(values) == {"p50": 50, "p90": 90, "p95": 95, "p99": 99, "max": 100}
    assert percentiles([7.0]) == {"p50": 7, "p90": 7, "p95": 7, "p99": 7, "max": 7}
    assert percentiles([]) == dict.fromkeys(("p50", "p90", "p95", "p99", "max"))


def test_percentiles_agree_with_the_call_records_definition() -> None:
    values = [812.0, 95.5, 301.25, 1204.0, 640.0, 77.0, 455.5]
    stats = percentiles(values)
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)):
        assert stats[name] == round(percentile(values, q) or 0.0, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("response<=10", "say which statistic"),
        ("failed.p95<=1", "failed has no .p95"),
        ("latency.p95<=1", "unknown metric 'latency'"),
        ("response.p95 < 10", "not of the form"),
    ],
)
def test_bad_thresholds_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Threshold.parse(text)


def _call(
    sid: str,
    *,
    ok: bool = True,
    setup: float | None = 500.0,
    answers: tuple[float, ...] = (),
    barge: float | None = None,
    gaps: tuple[float, ...] = (),
) -> CallResult:
    result = CallResult(call_sid=sid, stream_sid="MZ" + sid)
    result.outcome = "completed" if ok else "failed"
    result.failure = None if ok else "no_answer"
    result.setup_ms = setup
    result.duration_ms = 30_000.0
    for i, latency in enumerate(answers):
        result.turns.append(
            Turn(index=i, text="q", barge_in=False, end_ms=1000.0, answer_ms=1000.0 + latency)
        )
    if barge is not None:
        result.turns.append(
            Turn(index=9, text="b", barge_in=True, onset_ms=5000.0, stop_ms=5000.0 + barge)
        )
    result.gaps_ms.extend(gaps)
    result.pacing.extend([0.5] * 99 + [3.0])
    return result


def _result() -> LoadResult:
    calls = [
        _call("CA1", answers=(900.0, 1100.0)),
        _call("CA2", answers=(1000.0,), barge=200.0, gaps=(60.0,)),
        _call("CA3", ok=False, setup=None),
    ]
    records = [CallRecord(i, "conversation", i * 1.0, c) for i, c in enumerate(calls)]
    usage = GatewayUsage(
        cpu_seconds=3.0,
        cpu_seconds_per_call_minute=2.0,
        rss_mb=150.0,
        added_latency_ms={"inbound_p99": 4.0, "outbound_p99": 1.0},
    )
    return LoadResult(
        plan=LoadPlan(calls=3, concurrency=2),
        target=Target("http://127.0.0.1:1"),
        mix="conversation 100%",
        records=records,
        wall_s=40.0,
        peak_concurrency=2,
        gateway=usage,
    )


def test_summary_has_the_documented_shape() -> None:
    s = summarize(_result())
    assert s["calls"] == {
        "attempted": 3,
        "established": 2,
        "completed": 2,
        "failed": 1,
        "failures": {"no_answer": 1},
        "by_scenario": {"conversation": 3},
    }
    assert s["latency_ms"]["response"] == {
        "p50": 1000,
        "p90": 1100,
        "p95": 1100,
        "p99": 1100,
        "max": 1100,
    }
    assert s["latency_ms"]["setup"]["max"] == 500
    assert s["latency_ms"]["barge_in_stop"]["p50"] == 200
    assert s["latency_ms"]["gap"]["max"] == 60
    assert s["peak_concurrency"] == 2
    assert s["pacing_lateness_ms"]["p50"] == pytest.approx(0.5, abs=0.11)
    assert s["pacing_lateness_ms"]["p99"] == pytest.approx(0.5, abs=0.11)
    assert s["gateway"]["cpu_seconds_per_call_minute"] == 2.0
    assert s["gateway"]["added_latency_ms"] == {"inbound_p99": 4.0, "outbound_p99": 1.0}


def test_thresholds_pass_breach_and_fail_without_samples() -> None:
    s = summarize(_result())
    outcomes = check(
        s,
        [
            Threshold.parse("response.p95<=1200"),
            Threshold.parse("failed<=0"),
            Threshold.parse("added_inbound_p99<=10"),
            Threshold.parse("failure_rate<=0.5"),
        ],
    )
    assert [o.passed for o in outcomes] == [True, False, True, True]
    assert outcomes[1].value == 1
    s["latency_ms"]["barge_in_stop"] = dict.fromkeys(("p50", "p90", "p95", "p99", "max"))
    (missing,) = check(s, [Threshold.parse("barge_in_stop.p95<=500")])
    assert not missing.passed and missing.value is None


def test_text_report_puts_the_verdict_first() -> None:
    s = summarize(_result())
    lines = render(s, check(s, [Threshold.parse("failed<=0")]))
    assert lines[0] == "thresholds: FAIL"
    assert "FAIL failed <= 0  (measured 1)" in lines[1]
    text = "\n".join(lines)
    assert "failed: no_answer x1" in text
    assert "2.0 CPU s per call-minute" in text


def test_csv_has_a_row_per_call(tmp_path: Path) -> None:
    path = tmp_path / "calls.csv"
    write_csv(_result(), path)
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["call_sid"] for r in rows] == ["CA1", "CA2", "CA3"]
    assert rows[0]["response_ms"] == "900.0;1100.0"
    assert rows[2]["failure"] == "no_answer"
    assert rows[1]["barge_in_stop_ms"] == "200.0"
