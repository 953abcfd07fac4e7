"""Metrics (Prometheus, no per-call labels) and logging (JSON lines or text, call-scoped).

Each app gets its own :class:`Metrics` on its own registry, so tests and embedded emulators can
run several apps in one process without colliding. Under ``gateway serve --workers N`` each
worker process has ``PROMETHEUS_MULTIPROC_DIR`` set (by the supervisor, before anything imports
prometheus_client): its values live in files there, and whichever worker answers ``/metrics``
renders the totals of every worker (prometheus_client's multiprocess mode). Logging is process-wide
(:func:`configure_logging`); call code logs through a :class:`CallLogger`, whose call ids become
keys of the JSON line or a prefix of the text one.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import IO, Any, Final, Literal

import pythonjsonlogger.core
import pythonjsonlogger.json
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

# Gateway-added latency is small (a resampler's delay and a queue hop): fine buckets.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25,
)  # fmt: skip
_SETUP_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0)


MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# What a multiprocess scrape shows of each worker's process metrics: CPU adds up (dead workers'
# seconds included, so the total never goes back), the rest is the sum over live workers.
_PROCESS_TOTALS = ("process_resident_memory_bytes", "process_open_fds")


class Metrics:
    """Every metric the gateway exports; names are the reference in docs/metrics.md.

    Gauges whose value is read when scraped are bound with :meth:`live`. With
    ``PROMETHEUS_MULTIPROC_DIR`` set (sibling workers), :meth:`render` is the sum over every
    worker; a worker's read-when-scraped gauges and process metrics reach the others through
    :meth:`refresh`, which the serving process calls about once a second and before rendering.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = os.environ.get(MULTIPROC_DIR_ENV) or None
        r = self.registry
        self._process = ProcessCollector(registry=r)
        self._live: list[tuple[Gauge, Callable[[], float]]] = []
        self._cpu_seen = 0.0
        self._cpu: Counter | None = None
        self._process_gauges: dict[str, Gauge] = {}
        if self.multiprocess_dir is not None:
            # Unregistered here: a multiprocess scrape reads them from the workers' files.
            self._cpu = Counter(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds, every worker",
                registry=None,
            )
            self._process_gauges = {
                name: Gauge(
                    name,
                    f"{name}, summed over live workers",
                    registry=None,
                    multiprocess_mode="livesum",
                )
                for name in _PROCESS_TOTALS
            }
        self.active_calls = Gauge(
            "gateway_active_calls",
            "Calls with a live media stream",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.calls = Counter("gateway_calls", "Finished calls by outcome", ["outcome"], registry=r)
        self.webhooks = Counter(
            "gateway_webhooks", "Incoming-call webhooks by result", ["result"], registry=r
        )
        self.setup_seconds = Histogram(
            "gateway_call_setup_seconds",
            "Stream start to upstream session ready",
            buckets=_SETUP_BUCKETS,
            registry=r,
        )
        self.setup_queue_seconds = Histogram(
            "gateway_setup_queue_seconds",
            "Time an admitted call's webhook answer waited for its setup turn "
            "(GATEWAY_MAX_SETUP_RATE); 0 for a call that did not wait",
            buckets=(0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0),
            registry=r,
        )
        self.added_latency = Histogram(
            "gateway_added_latency_seconds",
            "Time audio spends inside the gateway: inbound = carrier frame received to handed "
            "to the WebRTC track; outbound = decoded upstream frame to carrier message written",
            ["direction"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.event_loop_lag = Histogram(
            "gateway_event_loop_lag_seconds",
            "How late the serving event loop woke for a timer (sampled every 20 ms): what a "
            "burst of work makes every call's audio wait",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.barge_in_seconds = Histogram(
            "gateway_barge_in_reaction_seconds",
            "Caller-speech event received to carrier clear written",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.barge_ins = Counter("gateway_barge_ins", "Barge-ins by source", ["source"], registry=r)
        self.dropped_frames = Counter(
            "gateway_dropped_frames",
            "Audio frames dropped (queue full, muted after barge-in, setup overflow)",
            ["direction", "reason"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Realtime error events and failures by code", ["code"],
            registry=r,
        )  # fmt: skip
        self.carrier_rejects = Counter(
            "gateway_carrier_messages_rejected",
            "Carrier messages rejected or ignored by reason",
            ["reason"],
            registry=r,
        )
        self.profile_reloads = Counter(
            "gateway_profile_reloads", "Profile reloads by result", ["result"], registry=r
        )
        self.call_actions = Counter(
            "gateway_call_actions",
            "Call-control requests to the carrier API (hang_up, transfer) by result",
            ["kind", "result"],
            registry=r,
        )
        self.upstream_tokens = Counter(
            "gateway_upstream_tokens",
            "Realtime tokens billed, from response.done usage, by kind (text_in, audio_out, ...)",
            ["kind"],
            registry=r,
        )
        self.upstream_cost = Counter(
            "gateway_upstream_cost_usd",
            "Realtime cost in USD at the configured prices (calls of unpriced models excluded)",
            registry=r,
        )
        self.call_records = Counter(
            "gateway_call_records",
            "Call records by result: written, or failed (logged in full at ERROR instead)",
            ["result"],
            registry=r,
        )
        self.recordings = Counter(
            "gateway_recordings", "Call recordings by result (saved, failed)", ["result"],
            registry=r,
        )  # fmt: skip
        self.open_connections = Gauge(
            "gateway_open_connections",
            "Client connections open on the gateway's port (HTTP and websocket)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connections_dropped = Counter(
            "gateway_connections_dropped",
            "Client connections closed before a complete request: over a connection limit, or "
            "too slow to send the request head or body",
            ["reason"],
            registry=r,
        )
        # Leak detectors: both return to their idle value when every call has ended.
        self.peer_connections = Gauge(
            "gateway_peer_connections",
            "Upstream WebRTC peer connections not closed",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.event_loop_tasks = Gauge(
            "gateway_event_loop_tasks",
            "Asyncio tasks alive in the serving event loop",
            registry=r,
            multiprocess_mode="livesum",
        )

    def live(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """Make ``gauge`` report ``read()``: at each scrape in one process, at each
        :meth:`refresh` with sibling workers (their scrape cannot call into this process)."""
        if self.multiprocess_dir is None:
            gauge.set_function(read)
        else:
            self._live.append((gauge, read))

    def refresh(self) -> None:
        """Copy this worker's read-when-scraped values into its multiprocess files (a no-op in
        one process, where a scrape reads them directly)."""
        if self.multiprocess_dir is None:
            return
        for gauge, read in self._live:
            gauge.set(read())
        for family in self._process.collect():
            for sample in family.samples:
                if sample.name == "process_cpu_seconds_total" and self._cpu is not None:
                    self._cpu.inc(max(0.0, sample.value - self._cpu_seen))
                    self._cpu_seen = max(self._cpu_seen, sample.value)
                elif sample.name in self._process_gauges:
                    self._process_gauges[sample.name].set(sample.value)

    def render(self) -> bytes:
        """The Prometheus text exposition: this process's registry, or with sibling workers
        the totals over every worker's files."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        self.refresh()
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(merged)


# Call-scoped fields: the JSON key each is emitted as, and the tag the text format shows it under
# (None: JSON only). Order is the order of the text prefix.
_CALL_FIELDS: Final = (
    ("call_sid", "call"),
    ("stream_sid", "stream"),
    ("number", "number"),
    ("upstream_call_id", "upstream"),
    ("trace_id", None),
)
_FIELD_NAMES: Final = frozenset(name for name, _ in _CALL_FIELDS)
# The keys of the mapping form ``CallLogger(log, {"call": ..., "stream": ..., "number": ...})``.
_SHORT_NAMES: Final = {tag: name for name, tag in _CALL_FIELDS if tag is not None}


class _Keep(enum.Enum):
    """Marks a :meth:`CallLogger.bind` argument that was not given (``None`` clears a field)."""

    KEEP = enum.auto()


_KEEP: Final = _Keep.KEEP


class CallLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger whose lines carry the call's identifiers as record attributes.

    The fields travel in ``extra``, so :func:`configure_logging`'s JSON format emits them as keys
    (``call_sid``, ``stream_sid``, ``number``, ``upstream_call_id``, ``trace_id``) and its text
    format prefixes ``[call=… stream=… number=… upstream=…]``; a field that is unknown (``None``
    or empty) is left out of both. The message itself stays unprefixed, so log processors and
    tests see what the code logged.

    ``CallLogger(log, {"call": …, "stream": …, "number": …})`` (the short keys, or the field
    names) is the older form and still accepted.
    """

    def __init__(
        self,
        logger: logging.Logger,
        fields: Mapping[str, str | None] | None = None,
        /,
        *,
        call_sid: str | None = None,
        stream_sid: str | None = None,
        number: str | None = None,
        upstream_call_id: str | None = None,
        trace_id: str | None = None,
    ) -> None:
        given: dict[str, str | None] = {}
        for key, value in (fields or {}).items():
            name = _SHORT_NAMES.get(key, key)
            if name not in _FIELD_NAMES:
                raise TypeError(f"CallLogger has no field {key!r}")
            given[name] = value
        keywords = {
            "call_sid": call_sid,
            "stream_sid": stream_sid,
            "number": number,
            "upstream_call_id": upstream_call_id,
            "trace_id": trace_id,
        }
        given.update({k: v for k, v in keywords.items() if v is not None})
        self._fields: dict[str, str] = {
            name: str(given[name]) for name, _ in _CALL_FIELDS if given.get(name)
        }
        super().__init__(logger, self._fields)

    @property
    def fields(self) -> dict[str, str]:
        """The known call-scoped fields, by JSON key."""
        return dict(self._fields)

    def bind(
        self,
        *,
        call_sid: str | _Keep | None = _KEEP,
        stream_sid: str | _Keep | None = _KEEP,
        number: str | _Keep | None = _KEEP,
        upstream_call_id: str | _Keep | None = _KEEP,
        trace_id: str | _Keep | None = _KEEP,
    ) -> CallLogger:
        """A new adapter on the same logger with the given fields changed (``None`` clears one).

        The call runner binds what it learns as the call goes on, e.g. the upstream call id
        once the Realtime session is open; lines already logged keep what they had.
        """
        changes = {
            "call_sid": call_sid,
            "stream_sid": stream_sid,
            "number": number,
            "upstream_call_id": upstream_call_id,
            "trace_id": trace_id,
        }
        merged: dict[str, str | None] = dict(self._fields)
        merged.update({k: v for k, v in changes.items() if not isinstance(v, _Keep)})
        return CallLogger(self.logger, merged)

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = kwargs.get("extra")
        kwargs["extra"] = {**self._fields, **extra} if extra else self._fields
        return msg, kwargs


def call_tags(record: logging.LogRecord) -> str:
    """``call=… stream=… number=… upstream=…`` from a record's call-scoped attributes ("" if
    it has none): the prefix of the text format."""
    attrs = record.__dict__
    return " ".join(
        f"{tag}={attrs[name]}" for name, tag in _CALL_FIELDS if tag is not None and attrs.get(name)
    )


def mask_number(number: str | None) -> str:
    """Keep the country code and the last two digits: ``+1*******67``."""
    if not number:
        return ""
    if len(number) <= 5:
        return "*" * len(number)
    return number[:2] + "*" * (len(number) - 4) + number[-2:]


LogFormat = Literal["auto", "json", "text"]
LOG_FORMATS: Final[tuple[LogFormat, ...]] = ("auto", "json", "text")

_TEXT_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# Libraries that log every packet or connection at INFO/DEBUG: held at WARNING unless debugging.
_NOISY: Final = ("aioice", "aiortc", "uvicorn.error")


class TextFormatter(logging.Formatter):
    """The readable one-line format for a terminal: time, level, logger, then the message,
    prefixed with ``[call=… stream=… number=… upstream=…]`` for call-scoped lines."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        tags = call_tags(record)
        if not tags:
            return super().formatMessage(record)
        values = {**record.__dict__, "message": f"[{tags}] {record.message}"}
        return _TEXT_FORMAT % values


class JsonFormatter(pythonjsonlogger.json.JsonFormatter):
    """One JSON object per line for log collectors.

    Keys: ``timestamp`` (ISO 8601 UTC, ``Z``), ``level``, ``logger``, ``message``, then any
    ``extra`` attributes — for call-scoped lines ``call_sid``, ``stream_sid``, ``number``,
    ``upstream_call_id`` (each only when known) — and ``exception`` / ``stack`` as strings
    when the record has them. Non-ASCII text is written as is (UTF-8), not ``\\u`` escaped.
    """

    def __init__(self) -> None:
        super().__init__(
            ["levelname", "name", "message"],
            rename_fields={
                "levelname": "level",
                "name": "logger",
                "exc_info": "exception",
                "stack_info": "stack",
            },
            # uvicorn adds an ANSI-coloured copy of some messages; it is noise in JSON.
            reserved_attrs=[*pythonjsonlogger.core.RESERVED_ATTRS, "color_message"],
            json_ensure_ascii=False,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        # First, so every line starts with its time.
        log_data["timestamp"] = (
            datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z")
        )
        super().add_fields(log_data, record, message_dict)


def wants_json(fmt: LogFormat, stream: IO[str]) -> bool:
    """Whether ``fmt`` means JSON lines on ``stream``: ``auto`` is JSON unless it is a TTY."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    if fmt != "auto":
        return fmt == "json"
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return True


def configure_logging(
    level: str = "info", fmt: LogFormat = "auto", stream: IO[str] | None = None
) -> None:
    """Process-wide logging for the CLI commands: one line per record on ``stream`` (stderr).

    ``fmt="auto"`` writes JSON lines (:class:`JsonFormatter`) when the stream is not a terminal
    — a container, a service manager, a pipe — and the readable :class:`TextFormatter` on a
    terminal; ``"json"`` and ``"text"`` force one. Call-scoped lines carry their call ids
    through :class:`CallLogger`. Noisy libraries (aioice, aiortc's RTP internals, uvicorn's
    per-connection lines) are held at WARNING unless ``level`` is ``debug``. Calling it again
    replaces the previous configuration.
    """
    out: IO[str] = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if wants_json(fmt, out) else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    debug = level.lower() == "debug"
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.NOTSET if debug else logging.WARNING)


def histogram_quantile(
    registry: CollectorRegistry, name: str, q: float, labels: dict[str, str] | None = None
) -> float | None:
    """The ``q`` quantile of histogram ``name`` from its buckets, as PromQL estimates it.

    Linear interpolation inside the bucket that holds the rank; ``None`` without observations.
    Used by the demo and the admin API to report p99s without a Prometheus server.
    """
    want = labels or {}
    buckets: list[tuple[float, float]] = []
    for family in registry.collect():
        if family.name != name:
            continue
        for sample in family.samples:
            if not sample.name.endswith("_bucket"):
                continue
            if any(sample.labels.get(k) != v for k, v in want.items()):
                continue
            buckets.append((float(sample.labels["le"]), sample.value))
    return bucket_quantile(buckets, q)


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile (0 < q <= 1) of ``values`` by nearest rank; ``None`` without values.

    The one definition used by call records, the demo and the load tester, so a call's p50
    reads the same wherever it is printed: the smallest sample with at least ``q`` of all
    samples at or below it (``q=1`` is the maximum).
    """
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def bucket_quantile(buckets: Iterable[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile from cumulative ``(le, count)`` pairs, as PromQL's
    ``histogram_quantile`` estimates it; ``None`` without observations.

    Shared by :func:`histogram_quantile` (this process's registry) and the load tester (a
    difference of two scrapes of a gateway's ``/metrics``).
    """
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower  # beyond the last finite bucket: its bound is all we know
            span = count - below
            return lower + (upper - lower) * ((rank - below) / span if span > 0 else 1.0)
        lower, below = upper, count
    return lower
