"""What an operator's log pipeline and trace collector receive from a real call.

A simulated caller -> the real gateway -> the embedded emulator, with JSON logs captured from
the process-wide handler and traces exported over OTLP/HTTP to a collector on loopback.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.loadtest.caller import CallOptions, Say, SimulatedCall, WaitForAnswer
from gateway.observability import configure_logging, mask_number
from gateway.service import running_gateway
from gateway.settings import Settings
from tests import support
from tests.support import wait_all_ended
from tests.test_tracing import attributes, collector, hex_id

pytestmark = pytest.mark.timeout(90)

CALLER = "+15557654321"
DIALLED = "+15551230001"


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The process's logging as `gateway serve` sets it up in a container, into a buffer."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buf = io.StringIO()
    configure_logging("info", "auto", stream=buf)  # not a terminal: JSON
    try:
        yield buf
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


async def _one_call(settings: Settings) -> Any:
    async with running_gateway(settings, port=0, emulator_options={"latency_ms": 100.0}) as gw:
        result = await SimulatedCall(
            [WaitForAnswer(), Say.from_text("What are your hours?"), WaitForAnswer()],
            CallOptions(
                webhook_url=f"{gw.url}/twilio/voice", from_number=CALLER, to_number=DIALLED
            ),
        ).run()
        await wait_all_ended(gw)
    return result


async def test_call_log_lines_are_json_and_carry_the_call_ids(json_logs: io.StringIO) -> None:
    result = await _one_call(support.settings(records_url="off"))
    assert result.ok, result.failure_detail
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]  # all JSON
    mine = [line for line in lines if line.get("call_sid") == result.call_sid]
    assert len(mine) >= 3, lines
    for line in mine:
        assert line["stream_sid"] == result.stream_sid
        assert line["number"] == "default"
        assert {"timestamp", "level", "logger", "message"} <= set(line)
    ended = next(line for line in mine if line["message"].startswith("call ended"))
    assert ended["upstream_call_id"].startswith("rtc_")
    text = json_logs.getvalue()
    assert CALLER not in text  # masked wherever it is logged


async def test_one_trace_per_call_through_the_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    with collector() as col:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", col.url)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        result = await _one_call(support.settings(records_url="off"))
        spans = [span for _, span in col.spans()]
        blob = b"".join(col.bodies())
    assert result.ok, result.failure_detail
    by_name: dict[str, list[Any]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    [webhook] = by_name["twilio.webhook"]
    [call] = by_name["gateway.call"]
    [setup] = by_name["realtime.setup"]
    # The stream's span continues the webhook's trace: the traceparent rode in the TwiML.
    assert call.parent_span_id == webhook.span_id
    assert len({hex_id(s.trace_id) for s in spans}) == 1
    phases = {s.name for s in spans if s.parent_span_id == setup.span_id}
    assert {"realtime.sdp_exchange", "realtime.ice_dtls", "realtime.data_channel"} <= phases
    turns = by_name["realtime.response"]
    assert len(turns) >= 2 and all(t.parent_span_id == call.span_id for t in turns)
    call_attrs = attributes(call.attributes)
    assert call_attrs["twilio.call_sid"] == result.call_sid
    assert CALLER.encode() not in blob and DIALLED.encode() not in blob
    assert mask_number(DIALLED).encode() in blob
