"""``gateway demo``: one phone call through the whole product, on this machine.

It starts a gateway (with the Realtime emulator embedded when no ``OPENAI_API_KEY`` is set —
the same code path ``gateway serve`` takes), then places a simulated Twilio call against it:
the webhook, the TwiML, the media stream, a caller who speaks synthesized sentences, waits for
answers and finally talks over the assistant. It prints the call's timeline as heard by the
caller and the figures that matter (setup, response latency, barge-in stop time), and can
write the conversation as a stereo WAV (caller left, assistant right).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.app import gateway_state
from gateway.loadtest.caller import (
    BargeIn,
    CallOptions,
    CallResult,
    Say,
    SimulatedCall,
    Step,
    TimelineEntry,
    WaitForAnswer,
)
from gateway.loadtest.dialects import dialect_named
from gateway.observability import histogram_quantile, percentile
from gateway.service import running_gateway
from gateway.settings import Settings

log = logging.getLogger("gateway.demo")

CALLER_LINES = (
    "Hello. What are your opening hours on Saturday?",
    "And can I bring my dog?",
)
BARGE_IN_LINE = "Sorry to interrupt, one more question please."


@dataclass(frozen=True, slots=True)
class DemoReport:
    """What the demo call did: as the caller heard it, as the gateway saw it, upstream."""

    result: CallResult
    upstream: str
    upstream_sessions: list[dict[str, Any]]
    number: str
    gateway_call: dict[str, Any] | None
    """The gateway's own summary of the call (transcripts, usage, setup)."""
    added_latency_ms: dict[str, float | None]
    """p99 of ``gateway_added_latency_seconds`` per direction, from the gateway's metrics."""

    @property
    def codec(self) -> str | None:
        """The Realtime leg's audio codec the gateway ran the call with."""
        codec = (self.gateway_call or {}).get("codec")
        return codec if isinstance(codec, str) else None

    def transcript(self) -> list[dict[str, Any]]:
        """Who said what, when (ms on the caller's media clock), in order."""
        return build_transcript(self.result, (self.gateway_call or {}).get("transcript", []))

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "ok": r.ok,
            "failure": r.failure,
            "upstream": self.upstream,
            "codec": self.codec,
            "number": self.number,
            "setup_ms": _r(r.setup_ms),
            "response_latency_ms": [_r(x) for x in r.response_latencies_ms],
            "response_latency_ms_p50": _r(percentile(r.response_latencies_ms, 0.5)),
            "barge_in_stop_ms": [_r(x) for x in r.barge_in_stop_ms],
            "turns": len(r.turns),
            "transcript": self.transcript(),
            "gateway_added_latency_ms": {
                "inbound_p99": _r(self.added_latency_ms.get("inbound")),
                "outbound_p99": _r(self.added_latency_ms.get("outbound")),
            },
            "call": r.to_dict(),
            "gateway_call": self.gateway_call,
            "upstream_sessions": self.upstream_sessions,
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def build_transcript(
    result: CallResult, assistant_lines: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Merge the caller's turns with the assistant's answers as heard.

    The assistant's audio heard between two caller turns is one answer; the upstream's
    transcripts (one per response, in order) name them in order. An answer that was never
    heard keeps its text with no times.
    """
    caller = [
        {
            "speaker": "caller",
            "text": t.text,
            "start_ms": _r(t.onset_ms),
            "end_ms": _r(t.end_ms),
        }
        for t in result.turns
    ]
    # windows of assistant audio between caller turns
    bounds = [(-1.0, 0.0)] + [(t.onset_ms or 0.0, t.end_ms or 0.0) for t in result.turns]
    windows: list[tuple[float, float]] = []
    for i, (_, end) in enumerate(bounds):
        nxt = bounds[i + 1][0] if i + 1 < len(bounds) else float("inf")
        spans = [s for s in result.assistant if end <= s.start_ms < nxt]
        if spans:
            windows.append((spans[0].start_ms, min(spans[-1].end_ms, nxt)))
    assistant: list[dict[str, Any]] = []
    for line in assistant_lines:
        if line.get("speaker") != "assistant":
            continue
        entry: dict[str, Any] = {
            "speaker": "assistant",
            "text": line["text"],
            "start_ms": None,
            "end_ms": None,
        }
        if len(assistant) < len(windows):
            start, end = windows[len(assistant)]
            entry["start_ms"], entry["end_ms"] = _r(start), _r(end)
        assistant.append(entry)
    merged = caller + assistant
    merged.sort(key=lambda e: (e["start_ms"] is None, e["start_ms"] or 0.0))
    return merged


def demo_script(turns: int = 2, barge_in: bool = True) -> list[Step]:
    """Greeting, then ``turns`` questions; with ``barge_in`` the caller talks over the answer
    to the last one, and that interruption is answered in turn."""
    script: list[Step] = [WaitForAnswer(timeout_ms=20_000)]
    for i in range(turns):
        script.append(Say.from_text(CALLER_LINES[i % len(CALLER_LINES)]))
        if barge_in and i == turns - 1:
            script.append(BargeIn(Say.from_text(BARGE_IN_LINE), after_ms=1200))
        script.append(WaitForAnswer())
    return script


def _demo_secret(settings: Settings, carrier: str) -> str | None:
    """What the simulated carrier signs with: the carrier's shared secret when it has one.
    Telnyx signs with a private key the gateway never holds: its demo calls go unsigned."""
    secret = {
        "twilio": settings.twilio_auth_token,
        "signalwire": settings.signalwire_signing_key,
        "plivo": settings.plivo_auth_token,
    }.get(carrier)
    return secret.get_secret_value() if secret is not None else None


async def run_demo(
    settings: Settings,
    *,
    number: str = "+15550100002",
    script: Sequence[Step] | None = None,
    record: Path | None = None,
    emulator_options: dict[str, object] | None = None,
    on_event: Callable[[TimelineEntry], None] | None = None,
    carrier: str = "twilio",
) -> DemoReport:
    """Start a gateway on a free loopback port, place one call, return what happened.

    The demo's call writes no call record: a demonstration (with the emulator's estimated
    costs) must not show up beside served calls in the operator's records and usage.
    """
    steps = list(script) if script is not None else demo_script()
    carriers = sorted({*settings.carriers, carrier} - {"twilio"})  # serve the demo's carrier
    settings = settings.model_copy(update={"records_url": "off", "carriers": carriers})
    async with running_gateway(
        settings, host="127.0.0.1", port=0, emulator_options=emulator_options
    ) as gw:
        options = CallOptions(
            webhook_url=f"{gw.url}{dialect_named(carrier).voice_path}",
            auth_token=_demo_secret(settings, carrier),
            carrier=carrier,
            to_number=number,
            record_audio=record is not None,
            max_duration_s=120,
        )
        result = await SimulatedCall(steps, options, on_event=on_event).run()
        state = gateway_state(gw.app)
        async with asyncio.timeout(10):
            await state.idle.wait()  # the gateway has finished the call and written its summary
        gateway_call = next((c for c in state.recent if c.get("call_sid") == result.call_sid), None)
        added = {
            d: _ms(
                histogram_quantile(
                    state.metrics.registry,
                    "gateway_added_latency_seconds",
                    0.99,
                    {"direction": d},
                )
            )
            for d in ("inbound", "outbound")
        }
        sessions: list[dict[str, Any]] = []
        if gw.emulator is not None:
            async with httpx.AsyncClient() as client:
                resp = await client.get(f"{gw.emulator.url}/emulator/sessions")
                resp.raise_for_status()
                sessions = resp.json()
    if record is not None:
        result.write_wav(record)
    upstream = "embedded emulator" if gw.emulator is not None else gw.upstream_base_url
    return DemoReport(
        result=result,
        upstream=upstream,
        upstream_sessions=sessions,
        number=number,
        gateway_call=gateway_call,
        added_latency_ms=added,
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def in_time_order(entries: Sequence[TimelineEntry]) -> list[TimelineEntry]:
    """The timeline sorted by when things happened: the caller learns that an assistant
    utterance has ended only when the next begins (or the call ends), so entries are emitted
    out of order."""
    return sorted(entries, key=lambda e: e.t_ms)


def format_entry(entry: TimelineEntry) -> str:
    """One timeline line as the caller experienced it."""
    labels = {
        "caller_start": "caller starts speaking",
        "caller_end": "caller stops speaking",
        "assistant_start": "assistant audio starts",
        "assistant_end": "assistant audio ends",
        "clear": "gateway clears the carrier buffer (barge-in)",
        "dtmf": "caller presses",
        "gap": "gap in assistant audio",
        "hangup": "caller hangs up",
        "closed": "stream closed",
        "failed": "CALL FAILED",
    }
    text = labels.get(entry.kind, entry.kind)
    detail = f"  {entry.detail}" if entry.detail else ""
    return f"{entry.t_ms / 1000:8.2f} s  {text}{detail}"


def summary_lines(report: DemoReport) -> list[str]:
    """The figures a person reads after the timeline."""
    r = report.result
    lines = [
        f"upstream: {report.upstream}; codec {report.codec or 'unknown'}; number {report.number}",
        f"outcome: {r.outcome}" + (f" ({r.failure}: {r.failure_detail})" if r.failure else ""),
    ]
    if r.setup_ms is not None:
        lines.append(f"setup (stream open -> greeting heard): {r.setup_ms:.0f} ms")
    for t in r.turns:
        n = t.index + 1  # counted from 1, as the emulator's answers count turns
        if t.barge_in:
            stop = t.barge_in_stop_ms
            lines.append(
                f"barge-in (turn {n}): assistant silent {stop:.0f} ms after the caller started"
                if stop is not None
                else f"barge-in (turn {n}): the assistant was not audible at the onset"
            )
        latency = t.response_latency_ms
        if latency is not None:
            lines.append(f"turn {n}: answer heard {latency:.0f} ms after the caller stopped")
    p50 = percentile(r.response_latencies_ms, 0.5)
    if p50 is not None:
        lines.append(f"response latency p50 (nearest rank, as heard): {p50:.0f} ms")
    lines.append(
        f"assistant audio: {r.frames_received:.0f} frames received, {r.frames_played:.0f} played, "
        f"{len(r.gaps_ms)} gap(s) > 40 ms; marks {r.marks_echoed}/{r.marks_received} echoed"
    )
    inbound, outbound = (
        report.added_latency_ms.get("inbound"),
        report.added_latency_ms.get("outbound"),
    )
    if inbound is not None or outbound is not None:
        lines.append(
            "gateway-added latency p99: caller->model "
            + (f"{inbound:.1f} ms" if inbound is not None else "n/a")
            + ", model->caller "
            + (f"{outbound:.1f} ms" if outbound is not None else "n/a")
        )
    transcript = report.transcript()
    if transcript:
        lines.append("transcript:")
        for e in transcript:
            at = f"{e['start_ms'] / 1000:6.2f} s" if e["start_ms"] is not None else "     -  "
            lines.append(f"  {at}  {e['speaker']:>9}: {e['text']}")
    for s in report.upstream_sessions:
        cfg = s.get("session", {})
        audio_out = cfg.get("audio", {}).get("output", {}) if isinstance(cfg, dict) else {}
        lines.append(
            f"upstream session {s.get('id')}: {s.get('state')}, voice {audio_out.get('voice')}, "
            f"{s.get('turns')} turn(s), {s.get('responses')} response(s), "
            f"{s.get('cancelled_responses')} cancelled"
        )
    return lines


def report_json(report: DemoReport) -> str:
    return json.dumps(report.to_dict(), indent=2)
