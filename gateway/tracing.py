"""Optional OpenTelemetry tracing of calls, configured by the standard ``OTEL_*`` variables only.

One trace per phone call, even when the webhook and the media stream land on different replicas:

``twilio.webhook`` (SERVER)
    the incoming-call webhook; :meth:`Tracing.webhook` yields its W3C ``traceparent``, which the
    webhook puts into the ``<Stream>`` as a custom parameter.
``gateway.call`` (SERVER, child of the webhook through that ``traceparent``)
    the media stream, from :meth:`Tracing.call` to :meth:`CallTrace.end`; outcome, end reason,
    and events (barge-in, tool actions, reconnects) on it.
``realtime.setup`` with one child per phase (``realtime.offer``, ``realtime.client_secret``,
``realtime.sdp_exchange``, ``realtime.ice_dtls``, ``realtime.data_channel``,
``realtime.session_created``, ``realtime.session_updated``)
    drawn afterwards from the start and end times the session recorded
    (:attr:`~gateway.realtime.session.RealtimeSession.phase_spans`), once per upstream session.
``realtime.response``
    one per assistant response, ``response.created`` to ``response.done``: status and token
    counts.

Tracing is on when ``OTEL_SDK_DISABLED`` is not ``true`` and an exporter is asked for:
``OTEL_TRACES_EXPORTER`` set to anything but ``none`` (``otlp``, ``console`` or both,
comma-separated), or an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) with no exporter named, which means ``otlp``. OTLP is
``http/protobuf`` only (the gRPC exporter is not installed). The resource comes from
``OTEL_SERVICE_NAME`` (default ``gateway``) and ``OTEL_RESOURCE_ATTRIBUTES``; the sampler from
``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` (default ``parentbased_always_on``); the
batch processor from ``OTEL_BSP_*``; the exporter from ``OTEL_EXPORTER_OTLP_[TRACES_]*``
(endpoint, headers, timeout in seconds as this SDK reads it, compression, certificates). All of
it is read from the mapping given to :meth:`Tracing.from_environ`, so a test can pass its own; a
value that cannot be used raises :class:`~gateway.errors.ConfigError` naming the variable.

Each :class:`Tracing` owns its ``TracerProvider``; the global provider is never set, so several
gateways in one process (tests, the load tester) keep their spans apart. Disabled, every method
is a constant-time no-op and the SDK is not even imported.

Attributes hold identifiers, names, statuses and counts only: no audio, no transcripts, no
secrets, and numbers masked (:func:`~gateway.observability.mask_number`); string attributes are
scrubbed of anything shaped like a phone number or an API key as a second line of defence.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any, Final
from urllib.parse import unquote, urlsplit

from opentelemetry import trace as otel
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.errors import ConfigError
from gateway.observability import mask_number

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler

__all__ = ["TRACEPARENT_PARAM", "CallTrace", "Tracing"]

log = logging.getLogger("gateway.tracing")

TRACEPARENT_PARAM: Final = "traceparent"
"""Name of the ``<Stream>`` custom parameter that carries the webhook's trace context."""

Attr = str | int | float | bool

_SCOPE: Final = "gateway"
_PROPAGATOR: Final = TraceContextTextMapPropagator()
_MAX_OPEN_TURNS: Final = 16  # responses never finished are ended as "abandoned" past this
_MAX_STR_ATTR: Final = 256
_MAX_USAGE_ATTRS: Final = 32
# Second line of defence for free-text attributes (end reasons, event details).
# Twilio gives numbers in E.164; ids (CA…, MZ…, resp_…) are not scrubbed, only bounded.
_PHONE_RE: Final = re.compile(r"\+\d{7,15}\b")
_KEY_RE: Final = re.compile(r"\b(?:sk|ek|rk)[-_][A-Za-z0-9_-]{6,}|\bBearer\s+\S+", re.IGNORECASE)
# HTTP phases of the setup: client spans (the others wait on the peer).
_CLIENT_PHASES: Final = frozenset({"client_secret", "sdp_exchange"})

_SAMPLERS: Final = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
_PROTOCOL_HINT: Final = (
    "only the OTLP http/protobuf exporter is installed: set OTEL_EXPORTER_OTLP_PROTOCOL="
    "http/protobuf and point the endpoint at the collector's HTTP port (usually 4318)"
)


class CallTrace:
    """The spans of one call; this base class records nothing (tracing off, or not sampled).

    Times (``at``) are readings of the clock given to :meth:`Tracing.call` — the call
    runner's ``time.monotonic`` — and default to now. Every method is safe to call in any
    order and after :meth:`end` (then it does nothing), so call code need not guard them.
    """

    @property
    def recording(self) -> bool:
        """Whether spans of this call are recorded (and exported)."""
        return False

    @property
    def trace_id(self) -> str | None:
        """The 32-hex-digit trace id, to put on the call's log lines; None when not recording."""
        return None

    def setup_phases(
        self,
        phases: Iterable[tuple[str, float, float]],
        *,
        upstream_call_id: str | None = None,
        error: str | None = None,
    ) -> None:
        """Record one upstream session's setup: a ``realtime.setup`` span over ``phases``
        (``(name, start, end)`` in the call's clock, as
        :attr:`RealtimeSession.phase_spans <gateway.realtime.session.RealtimeSession.phase_spans>`
        gives them) with one child per phase. ``error`` (the failure's code or message) marks
        the setup and its last phase as failed. Call it once per session opened or attempted.
        """

    def turn_started(self, response_id: str, at: float | None = None) -> None:
        """The assistant began response ``response_id`` (``response.created``)."""

    def turn_done(
        self,
        response_id: str,
        status: str | None,
        usage: Mapping[str, Any] | None = None,
        at: float | None = None,
    ) -> None:
        """Response ``response_id`` finished (``response.done``) with ``status`` and ``usage``
        (the event's ``response.usage``: its integer counts become attributes)."""

    def event(self, name: str, /, *, at: float | None = None, **attrs: Attr | None) -> None:
        """A point in the call: ``barge_in``, ``tool_call``, ``reconnect``, ``dtmf``, ...
        Attribute values must be plain values (others, e.g. bytes, are left out, as are
        ``None`` ones); any attribute name but ``at`` may be used."""

    def end(
        self, outcome: str, reason: str | None = None, error: bool = False, at: float | None = None
    ) -> None:
        """End the call span (and any response still open); ``error`` marks it failed."""


_OFF: Final = CallTrace()


class _RecordingCallTrace(CallTrace):
    """A :class:`CallTrace` backed by SDK spans."""

    def __init__(
        self, tracer: otel.Tracer, span: otel.Span, clock: Callable[[], float], start_ns: int
    ) -> None:
        self._tracer = tracer
        self._span = span
        self._context = otel.set_span_in_context(span)
        self._clock = clock
        # The call's clock and the span's wall clock at the same instant: converts every `at`.
        self._anchor = clock()
        self._anchor_ns = start_ns
        self._turns: dict[str, otel.Span] = {}
        self._ended = False

    @property
    def recording(self) -> bool:
        return True

    @property
    def trace_id(self) -> str | None:
        return otel.format_trace_id(self._span.get_span_context().trace_id)

    def _ns(self, at: float | None) -> int:
        t = self._clock() if at is None else at
        return self._anchor_ns + round((t - self._anchor) * 1e9)

    def setup_phases(
        self,
        phases: Iterable[tuple[str, float, float]],
        *,
        upstream_call_id: str | None = None,
        error: str | None = None,
    ) -> None:
        spans = list(phases)
        if self._ended or not spans:
            return
        start = min(s for _, s, _ in spans)
        end = max(e for _, _, e in spans)
        attrs: dict[str, Attr] = {"realtime.setup.phases": len(spans)}
        if upstream_call_id:
            attrs["realtime.call_id"] = _ident(upstream_call_id)
            self._span.set_attribute("realtime.call_id", _ident(upstream_call_id))
        setup = self._tracer.start_span(
            "realtime.setup", self._context, attributes=attrs, start_time=self._ns(start)
        )
        context = otel.set_span_in_context(setup)
        for i, (name, s, e) in enumerate(spans):
            kind = otel.SpanKind.CLIENT if name in _CLIENT_PHASES else otel.SpanKind.INTERNAL
            phase = self._tracer.start_span(
                f"realtime.{name}", context, kind=kind, start_time=self._ns(s)
            )
            if error is not None and i == len(spans) - 1:
                phase.set_status(otel.Status(otel.StatusCode.ERROR, _clean(error)))
            phase.end(end_time=self._ns(e))
        if error is not None:
            setup.set_status(otel.Status(otel.StatusCode.ERROR, _clean(error)))
        setup.end(end_time=self._ns(end))

    def turn_started(self, response_id: str, at: float | None = None) -> None:
        if self._ended or response_id in self._turns:
            return
        if len(self._turns) >= _MAX_OPEN_TURNS:
            oldest = next(iter(self._turns))
            self._finish_turn(oldest, "abandoned", None, at)
        self._turns[response_id] = self._tracer.start_span(
            "realtime.response",
            self._context,
            attributes={"realtime.response_id": _ident(response_id)},
            start_time=self._ns(at),
        )

    def turn_done(
        self,
        response_id: str,
        status: str | None,
        usage: Mapping[str, Any] | None = None,
        at: float | None = None,
    ) -> None:
        if self._ended:
            return
        if response_id not in self._turns:  # created before tracing started: a point span
            self.turn_started(response_id, at)
        self._finish_turn(response_id, status, usage, at)

    def _finish_turn(
        self,
        response_id: str,
        status: str | None,
        usage: Mapping[str, Any] | None,
        at: float | None,
    ) -> None:
        span = self._turns.pop(response_id)
        span.set_attribute("realtime.response.status", _clean(status or "unknown"))
        if usage:
            span.set_attributes(_usage_attributes(usage))
        if status == "failed":
            span.set_status(otel.Status(otel.StatusCode.ERROR, "response failed"))
        span.end(end_time=self._ns(at))

    def event(self, name: str, /, *, at: float | None = None, **attrs: Attr | None) -> None:
        if self._ended:
            return
        self._span.add_event(name, _attributes(attrs), timestamp=self._ns(at))

    def end(
        self, outcome: str, reason: str | None = None, error: bool = False, at: float | None = None
    ) -> None:
        if self._ended:
            return
        for response_id in list(self._turns):
            self._finish_turn(response_id, "unfinished", None, at)
        self._ended = True
        self._span.set_attribute("gateway.call.outcome", _clean(outcome))
        if reason:
            self._span.set_attribute("gateway.call.end_reason", _clean(reason))
        if error:
            self._span.set_status(otel.Status(otel.StatusCode.ERROR, _clean(reason or outcome)))
        self._span.end(end_time=self._ns(at))


class Tracing:
    """The process's tracing: a private ``TracerProvider``, or nothing (:meth:`disabled`).

    Build it with :meth:`from_environ` at start-up and :meth:`shutdown` it at exit (that
    flushes; it blocks on the exporter, so call it from a thread or after the event loop).
    """

    def __init__(self, provider: TracerProvider | None, description: str = "off") -> None:
        self._provider = provider
        self._tracer = provider.get_tracer(_SCOPE) if provider is not None else None
        self.description = description
        """What was configured, for a start-up log line (exporters, endpoint, sampler; no
        headers)."""

    @classmethod
    def disabled(cls) -> Tracing:
        return cls(None)

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] = os.environ, *, console: IO[str] | None = None
    ) -> Tracing:
        """Tracing as the ``OTEL_*`` variables in ``environ`` ask (see the module docstring).

        ``console`` is where the ``console`` exporter writes (default ``sys.stdout``). Raises
        :class:`ConfigError` for a value that cannot be used, e.g. the ``grpc`` protocol.
        """
        if _get(environ, "OTEL_SDK_DISABLED").lower() == "true":
            return cls.disabled()
        names = [n.strip().lower() for n in _get(environ, "OTEL_TRACES_EXPORTER").split(",")]
        names = [n for n in names if n]
        endpoint_set = bool(
            _get(environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or _get(environ, "OTEL_EXPORTER_OTLP_ENDPOINT")
        )
        if "none" in names or (not names and not endpoint_set):
            return cls.disabled()
        names = names or ["otlp"]
        unknown = sorted(set(names) - {"otlp", "console"})
        if unknown:
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER: unsupported exporter {', '.join(unknown)} "
                "(otlp, console or none)"
            )
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporters: list[SpanExporter] = []
        described: list[str] = []
        for name in dict.fromkeys(names):
            if name == "otlp":
                exporter, url = _otlp_exporter(environ)
                exporters.append(exporter)
                described.append(f"otlp http/protobuf to {url}")
            else:
                exporters.append(
                    ConsoleSpanExporter(out=console if console is not None else sys.stdout)
                )
                described.append("console")
        sampler, sampler_name = _sampler(environ)
        resource = _resource(environ)
        description = (
            f"{' and '.join(described)}; sampler {sampler_name}; "
            f"service {resource.attributes.get('service.name')}"
        )
        return cls(_provider(environ, exporters, sampler, resource), description)

    @classmethod
    def from_exporter(
        cls, exporter: SpanExporter, *, service_name: str = "gateway", batch: bool = True
    ) -> Tracing:
        """Tracing to one given exporter, always sampling: for tests (an in-memory exporter,
        ``batch=False`` to export each span as it ends) and embedding."""
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON

        provider = TracerProvider(
            sampler=ALWAYS_ON, resource=Resource.create({"service.name": service_name})
        )
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        provider.add_span_processor(processor)
        return cls(provider, f"{type(exporter).__name__}; sampler always_on")

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def webhook(
        self, call_sid: str, number: str | None
    ) -> contextlib.AbstractContextManager[str | None]:
        """A ``twilio.webhook`` span around the incoming-call webhook.

        Yields the ``traceparent`` to hand to the media stream (a ``<Stream>`` custom parameter
        named :data:`TRACEPARENT_PARAM`), or None when tracing is off. An exception leaving the
        block marks the span failed. ``number`` (the number dialled) is recorded masked.
        """
        if self._tracer is None:
            return contextlib.nullcontext(None)
        return self._webhook(self._tracer, call_sid, number)

    @staticmethod
    @contextlib.contextmanager
    def _webhook(tracer: otel.Tracer, call_sid: str, number: str | None) -> Iterator[str | None]:
        attrs: dict[str, Attr] = {"twilio.call_sid": _ident(call_sid)}
        if number:
            attrs["gateway.number"] = mask_number(number)
        span = tracer.start_span("twilio.webhook", kind=otel.SpanKind.SERVER, attributes=attrs)
        try:
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier, context=otel.set_span_in_context(span))
            yield carrier.get(TRACEPARENT_PARAM)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(otel.Status(otel.StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()

    def call(
        self,
        call_sid: str | None,
        stream_sid: str | None,
        number: str | None,
        traceparent: str | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> CallTrace:
        """Start the ``gateway.call`` span of one media stream, continuing the webhook's trace
        when ``traceparent`` (the ``<Stream>`` parameter) is valid, a new trace otherwise.

        ``clock`` is the call's clock: every ``at`` given to the :class:`CallTrace`, and the
        session's :attr:`phase_spans`, must be readings of it. ``number`` is recorded masked.
        """
        if self._tracer is None:
            return _OFF
        parent = _PROPAGATOR.extract({TRACEPARENT_PARAM: traceparent}) if traceparent else None
        attrs: dict[str, Attr] = {}
        if call_sid:
            attrs["twilio.call_sid"] = _ident(call_sid)
        if stream_sid:
            attrs["twilio.stream_sid"] = _ident(stream_sid)
        if number:
            attrs["gateway.number"] = mask_number(number)
        span = self._tracer.start_span(
            "gateway.call", parent, kind=otel.SpanKind.SERVER, attributes=attrs
        )
        start_ns = getattr(span, "start_time", None)
        if not span.is_recording() or not isinstance(start_ns, int):
            span.end()
            return _OFF
        return _RecordingCallTrace(self._tracer, span, clock, start_ns)

    def force_flush(self, timeout_s: float = 5.0) -> bool:
        """Export every ended span now; False if the exporter did not finish in time."""
        if self._provider is None:
            return True
        return self._provider.force_flush(int(timeout_s * 1000))

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Flush (at most ``timeout_s``) and stop the exporter thread; idempotent. Blocking."""
        if self._provider is None:
            return
        provider, self._provider, self._tracer = self._provider, None, None
        if not provider.force_flush(int(timeout_s * 1000)):
            log.warning("tracing: spans not exported within %.1f s at shutdown", timeout_s)
        provider.shutdown()


# ---------------------------------------------------------------------------- attributes


def _clean(text: str) -> str:
    """A string attribute: bounded, with phone numbers masked and key-shaped tokens removed."""
    text = _KEY_RE.sub("[redacted]", text[: _MAX_STR_ATTR * 2])
    text = _PHONE_RE.sub(lambda m: mask_number(m.group()), text)
    return text[:_MAX_STR_ATTR]


def _ident(value: str) -> str:
    """An identifier attribute (call SID, response id): bounded, otherwise as given."""
    return value[:_MAX_STR_ATTR]


def _attributes(attrs: Mapping[str, object]) -> dict[str, Attr]:
    out: dict[str, Attr] = {}
    for key, value in attrs.items():
        if isinstance(value, str):
            out[key] = _clean(value)
        elif isinstance(value, bool | int | float):
            out[key] = value
        elif value is not None:  # bytes, arrays, objects: never exported
            log.debug("tracing: attribute %s of type %s left out", key, type(value).__name__)
    return out


def _usage_attributes(usage: Mapping[str, Any]) -> dict[str, Attr]:
    """Integer leaves of a Realtime ``usage`` object as ``realtime.usage.<path>``, plus the
    GenAI semantic-convention ``gen_ai.usage.input_tokens`` / ``output_tokens``."""
    out: dict[str, Attr] = {}

    def walk(value: object, path: str) -> None:
        if len(out) >= _MAX_USAGE_ATTRS:
            return
        if isinstance(value, Mapping):
            for key, sub in value.items():
                if isinstance(key, str):
                    walk(sub, f"{path}.{key}")
        elif isinstance(value, int) and not isinstance(value, bool):
            out[path] = value

    walk(usage, "realtime.usage")
    for kind in ("input_tokens", "output_tokens"):
        value = usage.get(kind)
        if isinstance(value, int) and not isinstance(value, bool):
            out[f"gen_ai.usage.{kind}"] = value
    return out


# ---------------------------------------------------------------------------- configuration


def _get(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name, "").strip()


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = _get(environ, name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {raw!r}")
    return value


def _sampler(environ: Mapping[str, str]) -> tuple[Sampler, str]:
    from opentelemetry.sdk.trace import sampling

    name = _get(environ, "OTEL_TRACES_SAMPLER").lower() or "parentbased_always_on"
    if name not in _SAMPLERS:
        raise ConfigError(f"OTEL_TRACES_SAMPLER: unknown sampler {name!r} ({', '.join(_SAMPLERS)})")
    if name.endswith("traceidratio"):
        ratio = _number(environ, "OTEL_TRACES_SAMPLER_ARG", 1.0)
        if ratio > 1.0:
            raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG must be within 0..1, got {ratio:g}")
        if name == "traceidratio":
            return sampling.TraceIdRatioBased(ratio), f"{name} {ratio:g}"
        return sampling.ParentBasedTraceIdRatio(ratio), f"{name} {ratio:g}"
    fixed: dict[str, Sampler] = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "parentbased_always_on": sampling.DEFAULT_ON,
        "parentbased_always_off": sampling.DEFAULT_OFF,
    }
    return fixed[name], name


def _resource(environ: Mapping[str, str]) -> Resource:
    from opentelemetry.sdk.resources import (
        Resource,
        ServiceInstanceIdResourceDetector,
    )

    attrs: dict[str, str] = {}
    raw = _get(environ, "OTEL_RESOURCE_ATTRIBUTES")
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"OTEL_RESOURCE_ATTRIBUTES: expected key=value, got {item!r}")
        attrs[key.strip()] = unquote(value.strip())
    attrs["service.name"] = _get(environ, "OTEL_SERVICE_NAME") or attrs.get(
        "service.name", "gateway"
    )
    base = Resource(
        {
            "telemetry.sdk.language": "python",
            "telemetry.sdk.name": "opentelemetry",
            "telemetry.sdk.version": _sdk_version(),
        }
    )
    return base.merge(ServiceInstanceIdResourceDetector().detect()).merge(Resource(attrs))


def _sdk_version() -> str:
    from opentelemetry.sdk.version import __version__

    return str(__version__)


def _otlp_exporter(environ: Mapping[str, str]) -> tuple[SpanExporter, str]:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.util.re import parse_env_headers

    def pick(name: str) -> str:
        return _get(environ, f"OTEL_EXPORTER_OTLP_TRACES_{name}") or _get(
            environ, f"OTEL_EXPORTER_OTLP_{name}"
        )

    protocol = pick("PROTOCOL").lower() or "http/protobuf"
    if protocol != "http/protobuf":
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not available: {_PROTOCOL_HINT}"
        )
    url = _get(environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not url:
        base = _get(environ, "OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
        url = f"{base.rstrip('/')}/v1/traces"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"OTLP traces endpoint must be an http(s) URL, got {url!r}")
    compression_name = pick("COMPRESSION").lower() or "none"
    try:
        compression = Compression(compression_name)
    except ValueError:
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_COMPRESSION: {compression_name!r} is not none, gzip or deflate"
        ) from None
    timeout_name = (
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"
        if _get(environ, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
        else "OTEL_EXPORTER_OTLP_TIMEOUT"
    )
    exporter = OTLPSpanExporter(
        endpoint=url,
        certificate_file=pick("CERTIFICATE") or None,
        client_key_file=pick("CLIENT_KEY") or None,
        client_certificate_file=pick("CLIENT_CERTIFICATE") or None,
        headers=dict(parse_env_headers(pick("HEADERS"), liberal=True)),
        timeout=_number(environ, timeout_name, 10.0),
        compression=compression,
    )
    # The endpoint without credentials or query, for the start-up line.
    shown = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
    return exporter, shown


def _provider(
    environ: Mapping[str, str],
    exporters: list[SpanExporter],
    sampler: Sampler,
    resource: Resource,
) -> TracerProvider:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(sampler=sampler, resource=resource)
    for exporter in exporters:
        provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                max_queue_size=int(_number(environ, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)) or 2048,
                schedule_delay_millis=_number(environ, "OTEL_BSP_SCHEDULE_DELAY", 5000),
                max_export_batch_size=int(_number(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512))
                or 512,
                export_timeout_millis=_number(environ, "OTEL_BSP_EXPORT_TIMEOUT", 30000),
            )
        )
    return provider
