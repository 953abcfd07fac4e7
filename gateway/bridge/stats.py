"""What one call reports: counters, transcript and latency, for the record and the admin API."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from gateway.observability import LATENCY_BUCKETS, bucket_quantile, percentile


@dataclass
class CallStats:
    """What the call record and the admin API report about one call."""

    started_at: float = 0.0
    setup_ms: float | None = None
    turns: int = 0
    barge_ins: int = 0
    frames_in: int = 0
    frames_out: int = 0
    setup_attempts: int = 0
    reconnects: int = 0
    rotations: int = 0
    dropped_setup_frames: int = 0
    muted_frames: int = 0
    carrier_errors: int = 0
    keypad_coalesced: int = 0
    """Keypad entries folded into a response already requested instead of asking for another."""
    upstream_errors: dict[str, int] = field(default_factory=dict)
    transcript: list[dict[str, Any]] = field(default_factory=list)
    """``{speaker, text, at_ms}`` per finished utterance, ms since the stream started."""
    actions: list[dict[str, Any]] = field(default_factory=list)
    """Call-control steps (tool calls, wrap-ups, hang-up, transfer) with ``at_ms``."""
    dtmf: str = ""
    answer_ms: list[float] = field(default_factory=list)
    """The caller's last voiced frame (as the gateway received it) to the first answer frame
    written to the carrier: what the caller waits for an answer, less the carrier's network and
    playout."""
    response_ms: list[float] = field(default_factory=list)
    """The server VAD's ``speech_stopped`` to the first answer frame written: the model's time to
    answer once it has decided the turn is over (no VAD silence in it), plus the gateway."""
    outbound_added: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    """Counts of model->caller gateway-added latency per /metrics bucket (cheap per frame)."""

    def observe_outbound_added(self, seconds: float) -> None:
        self.outbound_added[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def latency_summary(self) -> dict[str, float | None]:
        """Per-call latency percentiles as measured at the gateway (ms, nearest rank)."""
        return {
            "answer_ms_p50": _ms(percentile(self.answer_ms, 0.5)),
            "answer_ms_p95": _ms(percentile(self.answer_ms, 0.95)),
            "answer_ms_max": _ms(percentile(self.answer_ms, 1.0)),
            # key names kept from before the core split: stored records and dashboards use them
            "response_ms_p50": _ms(percentile(self.response_ms, 0.5)),
            "response_ms_p95": _ms(percentile(self.response_ms, 0.95)),
            "response_ms_max": _ms(percentile(self.response_ms, 1.0)),
            "outbound_added_ms_p50": _bucketed_ms(self.outbound_added, 0.5),
            "outbound_added_ms_p99": _bucketed_ms(self.outbound_added, 0.99),
        }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _bucketed_ms(counts: list[int], q: float) -> float | None:
    cumulative, total = [], 0
    for bound, n in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
        total += n
        cumulative.append((bound, float(total)))
    value = bucket_quantile(cumulative, q)
    return None if value is None else round(value * 1000, 2)
