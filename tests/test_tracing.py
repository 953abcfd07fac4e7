"""Tracing as an operator's collector sees it.

The end-to-end test points ``OTEL_EXPORTER_OTLP_ENDPOINT`` at a real HTTP server on loopback,
runs a real :class:`RealtimeSession` against the emulator, and decodes what arrives as OTLP
protobuf: one trace from the webhook through the call, its setup phases and its response, with
no key or unmasked number anywhere in the bytes. The other tests pin the configuration rules,
the disabled path's cost, and the span semantics with a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.errors import ConfigError
from gateway.observability import mask_number
from gateway.realtime import events as rt
from gateway.realtime.session import RealtimeSession
from gateway.tracing import CallTrace, Tracing
from tests.emulator.emulator_support import KEY, SESSION, running

pytestmark = pytest.mark.timeout(60)

DIALLED = "+15551230001"
CALLER = "+15557654321"


# ------------------------------------------------------------------ a local OTLP/HTTP collector


@dataclass
class Collector:
    """Every POST it received: (path, headers, body); ``spans()`` decodes the OTLP requests."""

    url: str
    posts: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self) -> list[bytes]:
        with self.lock:
            return [body for _, _, body in self.posts]

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) for every span of every request."""
        out: list[tuple[dict[str, Any], Any]] = []
        for body in self.bodies():
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    out.extend((resource, span) for span in scope_spans.spans)
        return out


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


@contextlib.contextmanager
def collector() -> Iterator[Collector]:
    """A threaded HTTP server on a free loopback port answering OTLP/HTTP trace exports."""
    posts: list[tuple[str, dict[str, str], bytes]] = []
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                posts.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the test output clean

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="otlp-collector", daemon=True
    )
    thread.start()
    try:
        yield Collector(f"http://127.0.0.1:{server.server_address[1]}", posts, lock)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def hex_id(raw: bytes) -> str:
    return raw.hex()


# ------------------------------------------------------------------ end to end


async def _one_response(session: RealtimeSession, tracing_call: CallTrace) -> dict[str, Any]:
    """Ask for a short spoken answer; report response.created/done to the trace as the call
    runner does; return the response.done event."""
    session.send(rt.response_create('Say "Hi."'))
    async with asyncio.timeout(20):
        async for ev in session.events():
            if ev.type == "response.created" and ev.response_id:
                tracing_call.turn_started(ev.response_id, time.monotonic())
            elif ev.type == "response.done" and ev.response_id:
                tracing_call.turn_done(ev.response_id, ev.status, ev.usage, time.monotonic())
                return ev.raw
    raise AssertionError("the session ended before response.done")


async def test_one_trace_from_webhook_to_response_reaches_an_otlp_collector() -> None:
    with collector() as col:
        tracing = Tracing.from_environ(
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": col.url,
                "OTEL_EXPORTER_OTLP_HEADERS": "x-collector-token=tok-123",
                "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,team=voice%20ops",
            }
        )
        assert tracing.enabled
        assert f"{col.url}/v1/traces" in tracing.description
        assert "tok-123" not in tracing.description

        # replica A answers the webhook ...
        with tracing.webhook("CA0123456789abcdef0123456789abcdef", DIALLED) as traceparent:
            assert traceparent is not None and traceparent.startswith("00-")
        # ... replica B (here the same process) takes the stream
        call = tracing.call("CA0123456789abcdef0123456789abcdef", "MZ42", DIALLED, traceparent)
        assert call.recording and call.trace_id == traceparent.split("-")[1]
        async with running() as emu:
            session = RealtimeSession(emu.config(auth="ephemeral"), SESSION)
            await session.open()
            try:
                call.setup_phases(session.phase_spans, upstream_call_id=session.call_id)
                done = await _one_response(session, call)
                call.event("barge_in", source="server", note=f"caller {CALLER} spoke")
            finally:
                await session.close()
        call.end("completed", f"carrier hung up on {CALLER}")
        await asyncio.to_thread(tracing.shutdown)

    assert col.posts, "nothing was exported"
    for path, headers, _ in col.posts:
        assert path == "/v1/traces"
        assert headers["content-type"] == "application/x-protobuf"
        assert headers["x-collector-token"] == "tok-123"
    # Nothing secret or identifying in any byte sent to the collector.
    blob = b"".join(col.bodies())
    for secret in (KEY, CALLER, DIALLED):
        assert secret.encode() not in blob, f"{secret[:6]}... was exported"
    assert mask_number(CALLER).encode() in blob

    spans = col.spans()
    resource = spans[0][0]
    assert resource["service.name"] == "gateway"
    assert resource["deployment.environment"] == "test" and resource["team"] == "voice ops"
    by_name: dict[str, list[Any]] = {}
    for _, span in spans:
        by_name.setdefault(span.name, []).append(span)
    assert len({hex_id(span.trace_id) for _, span in spans}) == 1  # one trace
    assert hex_id(spans[0][1].trace_id) == traceparent.split("-")[1]

    [webhook] = by_name["twilio.webhook"]
    [call_span] = by_name["gateway.call"]
    [setup] = by_name["realtime.setup"]
    [turn] = by_name["realtime.response"]
    assert webhook.parent_span_id == b""  # the root
    assert call_span.parent_span_id == webhook.span_id
    assert setup.parent_span_id == call_span.span_id
    assert turn.parent_span_id == call_span.span_id

    webhook_attrs = attributes(webhook.attributes)
    assert webhook_attrs == {
        "twilio.call_sid": "CA0123456789abcdef0123456789abcdef",
        "gateway.number": mask_number(DIALLED),
    }
    call_attrs = attributes(call_span.attributes)
    assert call_attrs["twilio.stream_sid"] == "MZ42"
    assert call_attrs["realtime.call_id"] == session.call_id
    assert call_attrs["gateway.call.outcome"] == "completed"
    assert call_attrs["gateway.call.end_reason"] == f"carrier hung up on {mask_number(CALLER)}"
    [barge_in] = call_span.events
    assert barge_in.name == "barge_in"
    assert attributes(barge_in.attributes) == {
        "source": "server",
        "note": f"caller {mask_number(CALLER)} spoke",
    }

    # One child per setup phase, as long as the session measured it, in order, inside setup.
    expected = [name for name, _, _ in session.phase_spans]
    assert expected == [
        "offer",
        "client_secret",
        "sdp_exchange",
        "ice_dtls",
        "data_channel",
        "session_created",
        "session_updated",
    ]
    phases = sorted(
        (
            s
            for s in by_name
            if s.startswith("realtime.") and s.removeprefix("realtime.") in expected
        ),
        key=lambda s: by_name[s][0].start_time_unix_nano,
    )
    assert [p.removeprefix("realtime.") for p in phases] == expected
    first_start = session.phase_spans[0][1]
    for name, start, _ in session.phase_spans:
        [span] = by_name[f"realtime.{name}"]
        assert span.parent_span_id == setup.span_id
        assert span.trace_id == setup.trace_id
        duration = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e9
        assert duration == pytest.approx(session.setup_timings[name], abs=2e-6)
        offset = (span.start_time_unix_nano - setup.start_time_unix_nano) / 1e9
        assert offset == pytest.approx(start - first_start, abs=2e-6)
        assert setup.start_time_unix_nano <= span.start_time_unix_nano
        assert span.end_time_unix_nano <= setup.end_time_unix_nano
    client, internal = ProtoSpan.SpanKind.SPAN_KIND_CLIENT, ProtoSpan.SpanKind.SPAN_KIND_INTERNAL
    assert by_name["realtime.client_secret"][0].kind == by_name["realtime.sdp_exchange"][0].kind
    assert by_name["realtime.sdp_exchange"][0].kind == client
    assert by_name["realtime.ice_dtls"][0].kind == internal
    assert webhook.kind == call_span.kind == ProtoSpan.SpanKind.SPAN_KIND_SERVER
    assert call_span.start_time_unix_nano <= setup.start_time_unix_nano
    assert setup.end_time_unix_nano <= turn.start_time_unix_nano <= turn.end_time_unix_nano
    assert turn.end_time_unix_nano <= call_span.end_time_unix_nano

    usage = done["response"]["usage"]
    turn_attrs = attributes(turn.attributes)
    assert turn_attrs["realtime.response_id"] == done["response"]["id"]
    assert turn_attrs["realtime.response.status"] == "completed"
    assert turn_attrs["gen_ai.usage.input_tokens"] == usage["input_tokens"]
    assert turn_attrs["gen_ai.usage.output_tokens"] == usage["output_tokens"] > 0
    assert turn_attrs["realtime.usage.total_tokens"] == usage["total_tokens"]
    assert (
        turn_attrs["realtime.usage.output_token_details.audio_tokens"]
        == usage["output_token_details"]["audio_tokens"]
    )


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_SERVICE_NAME": "gateway"},  # naming a service asks for no exporter
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "COLLECTOR"},
        {"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "otlp,console"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "COLLECTOR"},
    ],
)
async def test_disabled_configs_export_nothing(environ: dict[str, str]) -> None:
    with collector() as col:
        env = {k: v.replace("COLLECTOR", col.url) for k, v in environ.items()}
        threads = threading.active_count()
        tracing = Tracing.from_environ(env)
        assert not tracing.enabled and tracing.description == "off"
        assert threading.active_count() == threads  # no exporter thread
        with tracing.webhook("CA1", DIALLED) as traceparent:
            assert traceparent is None
        call = tracing.call("CA1", "MZ1", DIALLED, traceparent)
        assert not call.recording and call.trace_id is None
        call.setup_phases([("offer", 0.0, 0.1)])
        call.turn_started("resp_1", 0.2)
        call.turn_done("resp_1", "completed", {"output_tokens": 3}, 0.3)
        call.event("barge_in", source="local")
        call.end("completed", "carrier hung up")
        assert tracing.force_flush()
        tracing.shutdown()
    assert col.posts == []


def test_disabled_tracing_is_one_shared_no_op() -> None:
    """Off, every call gets the same do-nothing trace: no span, no allocation per call.
    What that costs per call is measured by tests/benchmarks/tracing.py."""
    tracing = Tracing.from_environ({})
    with tracing.webhook("CA1", DIALLED) as traceparent:
        assert traceparent is None
    first = tracing.call("CA1", "MZ1", DIALLED, traceparent)
    second = tracing.call("CA2", "MZ2", DIALLED, "00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    assert first is second and type(first) is CallTrace
    assert not first.recording and first.trace_id is None


def test_disabled_tracing_does_not_import_the_sdk() -> None:
    code = (
        "import sys\n"
        "from gateway.tracing import Tracing\n"
        "t = Tracing.from_environ({'OTEL_SDK_DISABLED': 'true', 'OTEL_TRACES_EXPORTER': 'otlp'})\n"
        "with t.webhook('CA1', '+15551230001') as tp: pass\n"
        "t.call('CA1', 'MZ1', None, tp).end('completed')\n"
        "t.shutdown()\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_console_exporter_writes_the_spans() -> None:
    out = io.StringIO()
    tracing = Tracing.from_environ(
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "gw-east"}, console=out
    )
    assert tracing.description.startswith("console;")
    with tracing.webhook("CA77", DIALLED) as traceparent:
        pass
    call = tracing.call("CA77", "MZ77", DIALLED, traceparent)
    call.turn_started("resp_7")
    call.turn_done("resp_7", "completed", {"output_tokens": 5})
    call.end("completed")
    tracing.shutdown()
    # ConsoleSpanExporter writes one indented JSON object per span
    text = out.getvalue()
    decoder, spans, pos = json.JSONDecoder(), [], 0
    while text[pos:].strip():
        span, end = decoder.raw_decode(text, pos + len(text[pos:]) - len(text[pos:].lstrip()))
        spans.append(span)
        pos = end
    assert sorted(s["name"] for s in spans) == [
        "gateway.call",
        "realtime.response",
        "twilio.webhook",
    ]
    assert {s["resource"]["attributes"]["service.name"] for s in spans} == {"gw-east"}
    assert len({s["context"]["trace_id"] for s in spans}) == 1
    assert DIALLED not in text


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "only the OTLP http/protobuf exporter is installed",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
            },
            "OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not available",
        ),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "unsupported exporter zipkin"),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "sometimes"}, "sometimes"),
        (
            {
                "OTEL_TRACES_EXPORTER": "console",
                "OTEL_TRACES_SAMPLER": "traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "half",
            },
            "OTEL_TRACES_SAMPLER_ARG must be a number",
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "must be an http(s) URL"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"},
            "'zstd' is not none, gzip or deflate",
        ),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_RESOURCE_ATTRIBUTES": "team"}, "key=value"),
    ],
)
def test_unusable_settings_fail_with_a_clear_message(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        Tracing.from_environ(environ)
    assert message in str(err.value)


def test_an_always_off_sampler_records_nothing_but_still_propagates() -> None:
    out = io.StringIO()
    tracing = Tracing.from_environ(
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "always_off"}, console=out
    )
    assert "sampler always_off" in tracing.description
    with tracing.webhook("CA1", None) as traceparent:
        assert traceparent is not None
        assert int(traceparent.rsplit("-", 1)[1], 16) & 1 == 0  # propagated as not sampled
    call = tracing.call("CA1", "MZ1", None, traceparent)
    assert not call.recording
    call.end("completed")
    tracing.shutdown()
    assert out.getvalue() == ""


# ------------------------------------------------------------------ span semantics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _memory() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return Tracing.from_exporter(exporter, batch=False), exporter


def _named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def test_the_stream_continues_the_webhook_trace_on_another_replica() -> None:
    replica_a, spans_a = _memory()
    replica_b, spans_b = _memory()
    with replica_a.webhook("CA1", DIALLED) as traceparent:
        pass
    replica_b.call("CA1", "MZ1", DIALLED, traceparent).end("completed")
    [webhook] = spans_a.get_finished_spans()
    [call] = spans_b.get_finished_spans()
    assert webhook.context is not None and call.context is not None
    assert call.context.trace_id == webhook.context.trace_id
    assert call.parent is not None and call.parent.span_id == webhook.context.span_id
    assert call.parent.is_remote

    # a missing or mangled traceparent starts a trace of its own
    for bad in (None, "", "00-nothex-0000000000000000-01", "ff-" + "0" * 50):
        replica_b.call("CA2", "MZ2", None, bad).end("completed")
        last = spans_b.get_finished_spans()[-1]
        assert last.parent is None
    replica_a.shutdown()
    replica_b.shutdown()


def test_times_come_from_the_call_clock() -> None:
    tracing, exporter = _memory()
    clock = FakeClock()
    call = tracing.call("CA1", "MZ1", None, None, clock=clock)
    call.setup_phases(
        [("offer", 1000.010, 1000.015), ("sdp_exchange", 1000.015, 1000.215)],
        upstream_call_id="rtc_1",
    )
    call.turn_started("resp_1", at=1001.0)
    clock.now = 1002.5
    call.turn_done("resp_1", "completed", {"output_tokens": 7})  # at=None: the clock's now
    call.event("barge_in", at=1002.0)
    call.end("completed", at=1003.0)
    spans = exporter.get_finished_spans()
    [call_span] = _named(spans, "gateway.call")
    assert call_span.start_time is not None
    t0 = call_span.start_time  # the call clock's 1000.0

    def rel(ns: int | None) -> float:
        assert ns is not None
        return round((ns - t0) / 1e9, 6)

    [setup] = _named(spans, "realtime.setup")
    [offer] = _named(spans, "realtime.offer")
    [sdp] = _named(spans, "realtime.sdp_exchange")
    [turn] = _named(spans, "realtime.response")
    assert (rel(setup.start_time), rel(setup.end_time)) == (0.010, 0.215)
    assert (rel(offer.start_time), rel(offer.end_time)) == (0.010, 0.015)
    assert (rel(sdp.start_time), rel(sdp.end_time)) == (0.015, 0.215)
    assert (rel(turn.start_time), rel(turn.end_time)) == (1.0, 2.5)
    assert rel(call_span.events[0].timestamp) == 2.0
    assert rel(call_span.end_time) == 3.0
    assert sdp.kind.name == "CLIENT" and offer.kind.name == "INTERNAL"
    assert setup.attributes is not None and setup.attributes["realtime.call_id"] == "rtc_1"


def test_failures_unfinished_turns_and_calls_after_the_end() -> None:
    tracing, exporter = _memory()
    clock = FakeClock()
    call = tracing.call("CA1", "MZ1", None, None, clock=clock)
    call.setup_phases(
        [("offer", 1000.0, 1000.01), ("ice_dtls", 1000.2, 1001.7)], error="timeout_ice_dtls"
    )
    call.turn_done("resp_0", "cancelled", None, at=1002.0)  # created before we knew: a point
    call.turn_started("resp_1", at=1003.0)
    call.turn_started("resp_1", at=1003.5)  # a duplicate is ignored
    call.turn_done("resp_2", "failed", {"input_tokens": 3, "output_tokens": True}, at=1004.0)
    call.end(
        "upstream_error", "Realtime refused: sk-live-abcdefghijkl leaked?", error=True, at=1005.0
    )
    call.turn_started("resp_3", at=1006.0)
    call.event("late", at=1006.0)
    call.end("completed", at=1007.0)
    call.setup_phases([("offer", 1008.0, 1008.1)])
    spans = exporter.get_finished_spans()
    assert len(spans) == 7  # setup, 2 phases, 3 responses, the call: nothing after the end

    [setup] = _named(spans, "realtime.setup")
    [offer] = _named(spans, "realtime.offer")
    [ice] = _named(spans, "realtime.ice_dtls")
    assert setup.status.status_code.name == "ERROR"
    assert setup.status.description == "timeout_ice_dtls"
    assert ice.status.status_code.name == "ERROR" and offer.status.status_code.name == "UNSET"

    turns = {
        s.attributes["realtime.response_id"]: s
        for s in _named(spans, "realtime.response")
        if s.attributes
    }
    assert turns["resp_0"].start_time == turns["resp_0"].end_time
    assert turns["resp_0"].attributes is not None
    assert turns["resp_0"].attributes["realtime.response.status"] == "cancelled"
    assert turns["resp_1"].attributes is not None
    assert turns["resp_1"].attributes["realtime.response.status"] == "unfinished"
    failed = turns["resp_2"]
    assert failed.status.status_code.name == "ERROR" and failed.attributes is not None
    assert failed.attributes["gen_ai.usage.input_tokens"] == 3
    assert "gen_ai.usage.output_tokens" not in failed.attributes  # a bool is not a count

    [call_span] = _named(spans, "gateway.call")
    assert call_span.attributes is not None
    assert call_span.attributes["gateway.call.outcome"] == "upstream_error"
    reason = call_span.attributes["gateway.call.end_reason"]
    assert reason == "Realtime refused: [redacted] leaked?"
    assert call_span.status.status_code.name == "ERROR"
    assert not call_span.events
    tracing.shutdown()


def test_event_attributes_are_plain_values_only_and_open_turns_are_bounded() -> None:
    tracing, exporter = _memory()
    call = tracing.call("CA1", "MZ1", None, None)
    call.event(
        "tool_call",
        name="transfer",
        target=CALLER,
        audio=b"\x00\x01" * 100,  # type: ignore[arg-type]
        frames=[1, 2],  # type: ignore[arg-type]
        skipped=None,
        ok=True,
        ms=12.5,
    )
    for i in range(40):  # a misbehaving upstream: responses that never finish
        call.turn_started(f"resp_{i}")
    call.end("completed")
    spans = exporter.get_finished_spans()
    [call_span] = _named(spans, "gateway.call")
    assert dict(call_span.events[0].attributes or {}) == {
        "name": "transfer",
        "target": mask_number(CALLER),
        "ok": True,
        "ms": 12.5,
    }
    statuses = [
        (s.attributes or {}).get("realtime.response.status")
        for s in _named(spans, "realtime.response")
    ]
    assert len(statuses) == 40
    assert statuses.count("abandoned") == 40 - 16 and statuses.count("unfinished") == 16
    tracing.shutdown()


def test_a_webhook_that_raises_is_marked_failed() -> None:
    tracing, exporter = _memory()
    with pytest.raises(RuntimeError), tracing.webhook("CA1", DIALLED):
        raise RuntimeError("profile store broken")
    [span] = exporter.get_finished_spans()
    assert span.status.status_code.name == "ERROR"
    assert [e.name for e in span.events] == ["exception"]
    tracing.shutdown()
    tracing.shutdown()  # idempotent
    assert not tracing.enabled
