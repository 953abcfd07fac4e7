"""A load run's figures: the JSON summary, pass/fail thresholds, the text report and a CSV.

Latency percentiles are exact over the run (nearest rank over every sample, no bucketing):

``setup``         websocket open -> first assistant audio heard (the greeting), per call;
``response``      end of caller speech -> first assistant audio heard, per answered turn;
``barge_in_stop`` caller speech onset -> the assistant audio playing then stops, per barge-in;
``gap``           each playout underrun > 40 ms inside assistant speech.

A :class:`Threshold` reads ``response.p95<=1500`` (ms), ``failed<=0`` (calls),
``failure_rate<=0.01`` or ``added_inbound_p99<=10`` (gateway-added latency, ms); any breach
makes ``gateway loadtest`` exit 1, so CI can gate on it.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from gateway.loadtest.carrier import Histogram
from gateway.loadtest.runner import LoadResult
from gateway.observability import percentile

__all__ = [
    "LATENCIES",
    "Threshold",
    "ThresholdOutcome",
    "check",
    "percentiles",
    "render",
    "summarize",
    "write_csv",
]

LATENCIES: Final = ("setup", "response", "barge_in_stop", "gap")
STATS: Final = ("p50", "p90", "p95", "p99", "max")
_QUANTILES: Final = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99, "max": 1.0}
PACING_TRUST_MS: Final = 10.0
"""Above this p99 pacing lateness the tool itself was overloaded: figures are suspect."""


def percentiles(values: Iterable[float]) -> dict[str, float | None]:
    """p50/p90/p95/p99/max by nearest rank (``None`` each when there are no samples)."""
    samples = list(values)
    found = {name: percentile(samples, q) for name, q in _QUANTILES.items()}
    return {name: None if x is None else round(x, 1) for name, x in found.items()}


def summarize(result: LoadResult) -> dict[str, Any]:
    """The JSON report (the shape documented in docs/load-testing.md)."""
    records = result.records
    results = [r.result for r in records]
    established = [r for r in results if r.setup_ms is not None]  # the assistant was heard
    failures = Counter(r.failure or "unknown" for r in results if not r.ok)
    pacing = Histogram(resolution_ms=0.1, max_ms=500)
    for r in results:
        pacing.merge(r.pacing)
    samples: dict[str, list[float]] = {
        "setup": [r.setup_ms for r in results if r.setup_ms is not None],
        "response": [x for r in results for x in r.response_latencies_ms],
        "barge_in_stop": [x for r in results for x in r.barge_in_stop_ms],
        "gap": [x for r in results for x in r.gaps_ms],
    }
    scenarios = Counter(r.scenario for r in records)
    plan = result.plan
    call_minutes = sum(r.duration_ms for r in results) / 60_000
    summary: dict[str, Any] = {
        "target": result.target.base_url,
        "plan": {
            "calls": plan.calls,
            "concurrency": plan.concurrency,
            "rate": plan.rate,
            "duration_s": plan.duration_s,
            "ramp_up_s": plan.ramp_up_s,
            "seed": plan.seed,
            "mix": result.mix,
        },
        "wall_s": round(result.wall_s, 1),
        "calls": {
            "attempted": len(results),
            "established": len(established),
            "completed": sum(1 for r in results if r.ok),
            "failed": sum(failures.values()),
            "failures": dict(failures.most_common()),
            "by_scenario": dict(scenarios),
        },
        "call_minutes": round(call_minutes, 2),
        "latency_ms": {name: percentiles(values) for name, values in samples.items()},
        "samples": {name: len(values) for name, values in samples.items()},
        "peak_concurrency": result.peak_concurrency,
        "pacing_lateness_ms": {
            "p50": round(pacing.quantile(0.5), 2),
            "p99": round(pacing.quantile(0.99), 2),
            "max": round(pacing.max, 2),
        },
        "audio": {
            "frames_received": round(sum(r.frames_received for r in results)),
            "frames_played": round(sum(r.frames_played for r in results)),
            "gaps": len(samples["gap"]),
        },
        "gateway": result.gateway.to_dict() if result.gateway is not None else None,
    }
    if result.note:
        summary["note"] = result.note
    if result.extra:
        summary.update(result.extra)
    return summary


# --- thresholds ---------------------------------------------------------------------------------

_THRESHOLD: Final = re.compile(r"^\s*([a-z_0-9]+)(?:\.(p50|p90|p95|p99|max))?\s*<=\s*([0-9.]+)\s*$")
_SCALARS: Final = ("failed", "failure_rate", "added_inbound_p99", "added_outbound_p99")


@dataclass(frozen=True, slots=True)
class Threshold:
    """``metric[.stat] <= limit``."""

    metric: str
    stat: str | None
    limit: float

    @classmethod
    def parse(cls, text: str) -> Threshold:
        match = _THRESHOLD.match(text)
        if match is None:
            raise ValueError(
                f"threshold {text!r} is not of the form METRIC.STAT<=LIMIT "
                "(e.g. response.p95<=1500, failed<=0)"
            )
        metric, stat, limit = match.group(1), match.group(2), float(match.group(3))
        if metric in LATENCIES:
            if stat is None:
                raise ValueError(f"threshold {text!r}: say which statistic, e.g. {metric}.p95")
        elif metric in _SCALARS:
            if stat is not None:
                raise ValueError(f"threshold {text!r}: {metric} has no .{stat}")
        else:
            known = ", ".join((*LATENCIES, *_SCALARS))
            raise ValueError(f"threshold {text!r}: unknown metric {metric!r} (known: {known})")
        return cls(metric, stat, limit)

    def __str__(self) -> str:
        name = f"{self.metric}.{self.stat}" if self.stat else self.metric
        return f"{name} <= {self.limit:g}"


@dataclass(frozen=True, slots=True)
class ThresholdOutcome:
    threshold: Threshold
    value: float | None
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": str(self.threshold), "value": self.value, "passed": self.passed}


def _value(summary: dict[str, Any], t: Threshold) -> float | None:
    calls = summary["calls"]
    if t.metric == "failed":
        return float(calls["failed"])
    if t.metric == "failure_rate":
        return calls["failed"] / calls["attempted"] if calls["attempted"] else None
    if t.metric.startswith("added_"):
        gateway = summary.get("gateway") or {}
        value = (gateway.get("added_latency_ms") or {}).get(t.metric.removeprefix("added_"))
        return None if value is None else float(value)
    value = summary["latency_ms"][t.metric][t.stat]
    return None if value is None else float(value)


def check(summary: dict[str, Any], thresholds: Sequence[Threshold]) -> list[ThresholdOutcome]:
    """Each threshold against the summary. A metric without samples fails: a gate that asked
    for a figure the run could not produce must not pass silently."""
    outcomes = []
    for t in thresholds:
        value = _value(summary, t)
        outcomes.append(ThresholdOutcome(t, value, value is not None and value <= t.limit))
    return outcomes


# --- text and CSV -------------------------------------------------------------------------------


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.0f}{unit}" if value >= 100 else f"{value:.1f}{unit}"


def render(summary: dict[str, Any], outcomes: Sequence[ThresholdOutcome]) -> list[str]:
    """The end-of-run report: thresholds first, then calls, latencies and the gateway's cost."""
    lines: list[str] = []
    if outcomes:
        verdict = "PASS" if all(o.passed for o in outcomes) else "FAIL"
        lines.append(f"thresholds: {verdict}")
        for o in outcomes:
            mark = "ok  " if o.passed else "FAIL"
            shown = "no samples" if o.value is None else f"{o.value:g}"
            lines.append(f"  {mark} {o.threshold}  (measured {shown})")
        lines.append("")
    calls = summary["calls"]
    lines.append(
        f"calls: {calls['attempted']} attempted, {calls['established']} established, "
        f"{calls['completed']} completed, {calls['failed']} failed "
        f"({summary['plan']['mix']}; peak concurrency {summary['peak_concurrency']}, "
        f"{summary['wall_s']:.0f} s, {summary['call_minutes']:.1f} call-minutes)"
    )
    for reason, count in calls["failures"].items():
        lines.append(f"  failed: {reason} x{count}")
    lines.append("")
    lines.append(f"{'latency (ms)':<28}" + "".join(f"{s:>8}" for s in STATS) + f"{'n':>8}")
    labels = {
        "setup": "setup (open -> greeting)",
        "response": "response (as heard)",
        "barge_in_stop": "barge-in stop",
        "gap": "gaps > 40 ms",
    }
    for name in LATENCIES:
        row = summary["latency_ms"][name]
        lines.append(
            f"{labels[name]:<28}"
            + "".join(f"{_fmt(row[s]):>8}" for s in STATS)
            + f"{summary['samples'][name]:>8}"
        )
    pacing = summary["pacing_lateness_ms"]
    trust = "" if pacing["p99"] <= PACING_TRUST_MS else "  <- the load tester fell behind: suspect"
    lines.append("")
    lines.append(
        f"load tester pacing lateness: p50 {pacing['p50']:.2f} ms, p99 {pacing['p99']:.2f} ms, "
        f"max {pacing['max']:.1f} ms{trust}"
    )
    audio = summary["audio"]
    lines.append(
        f"assistant audio: {audio['frames_received']} frames received, "
        f"{audio['frames_played']} played, {audio['gaps']} gap(s)"
    )
    gateway = summary.get("gateway")
    if gateway:
        added = gateway["added_latency_ms"]
        lines.append(
            f"gateway: {_fmt(gateway['cpu_seconds_per_call_minute'])} CPU s per call-minute, "
            f"RSS {_fmt(gateway['rss_mb'])} MB, added latency p99 "
            f"inbound {_fmt(added.get('inbound_p99'))} ms, "
            f"outbound {_fmt(added.get('outbound_p99'))} ms"
        )
    elif summary.get("note"):
        lines.append(f"gateway: {summary['note']}")
    return lines


CSV_FIELDS: Final = (
    "index",
    "scenario",
    "started_s",
    "call_sid",
    "outcome",
    "failure",
    "failure_detail",
    "webhook_ms",
    "connect_ms",
    "setup_ms",
    "duration_ms",
    "turns",
    "response_ms",
    "barge_in_stop_ms",
    "gaps",
    "frames_received",
    "frames_played",
    "marks_received",
    "marks_echoed",
    "pacing_p99_ms",
    "close_code",
)


def write_csv(result: LoadResult, path: Path) -> None:
    """One row per call; list-valued figures are ``;``-separated."""
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for record in result.records:
            r = record.result
            writer.writerow(
                {
                    "index": record.index,
                    "scenario": record.scenario,
                    "started_s": f"{record.started_s:.2f}",
                    "call_sid": r.call_sid,
                    "outcome": r.outcome,
                    "failure": r.failure or "",
                    "failure_detail": r.failure_detail,
                    "webhook_ms": _cell(r.webhook_ms),
                    "connect_ms": _cell(r.connect_ms),
                    "setup_ms": _cell(r.setup_ms),
                    "duration_ms": _cell(r.duration_ms),
                    "turns": len(r.turns),
                    "response_ms": ";".join(_cell(x) for x in r.response_latencies_ms),
                    "barge_in_stop_ms": ";".join(_cell(x) for x in r.barge_in_stop_ms),
                    "gaps": len(r.gaps_ms),
                    "frames_received": f"{r.frames_received:.0f}",
                    "frames_played": f"{r.frames_played:.0f}",
                    "marks_received": r.marks_received,
                    "marks_echoed": r.marks_echoed,
                    "pacing_p99_ms": _cell(r.pacing.quantile(0.99)),
                    "close_code": "" if r.close_code is None else r.close_code,
                }
            )


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"
