"""Logging as operators see it: JSON lines off a terminal, the readable line on one, call ids on
every call-scoped line (JSON keys or a text prefix), exceptions as one string field."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.observability import CallLogger, Metrics, configure_logging, wants_json

NOISY = ("aioice", "aiortc", "uvicorn.error")


class FakeTty(io.StringIO):
    """A captured stream that says it is a terminal, as stderr does in an interactive shell."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging is process-wide: give the root logger (and pytest's capture handlers)
    back as they were."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in NOISY}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in noisy.items():
        logging.getLogger(name).setLevel(lvl)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = stream.getvalue().splitlines()
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]


def test_json_lines_carry_time_level_logger_message_and_the_call_ids() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    log = CallLogger(
        logging.getLogger("gateway.call"), call_sid="CA123", stream_sid="MZ456", number="acme"
    )
    before = datetime.now(UTC)
    log.info("stream started (profile %s) — %d frames", "acme", 3)
    logging.getLogger("gateway.app").warning("not call-scoped")
    first, second = json_lines(out)

    assert first["message"] == "stream started (profile acme) — 3 frames"  # UTF-8, unprefixed
    assert first["level"] == "INFO" and first["logger"] == "gateway.call"
    assert first["call_sid"] == "CA123" and first["stream_sid"] == "MZ456"
    assert first["number"] == "acme"
    assert "upstream_call_id" not in first  # unknown yet: omitted, not null
    stamp = first["timestamp"]
    assert stamp.endswith("Z")
    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset() == timedelta(0)
    assert abs(parsed - before) < timedelta(seconds=5)
    assert list(first)[:4] == ["timestamp", "level", "logger", "message"]

    assert second["level"] == "WARNING" and second["message"] == "not call-scoped"
    assert not {"call_sid", "stream_sid", "number", "upstream_call_id"} & set(second)


def test_bind_adds_the_upstream_call_id_to_later_lines_only() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    log = CallLogger(logging.getLogger("gateway.call"), call_sid="CA1", stream_sid="MZ1")
    ready = log.bind(upstream_call_id="rtc_abc", number="acme")
    log.info("before")
    ready.info("after")
    ready.bind(number=None).info("number cleared")
    before, after, cleared = json_lines(out)
    assert "upstream_call_id" not in before and "number" not in before
    assert after["upstream_call_id"] == "rtc_abc" and after["number"] == "acme"
    assert after["call_sid"] == "CA1" and after["stream_sid"] == "MZ1"
    assert "number" not in cleared and cleared["upstream_call_id"] == "rtc_abc"
    assert ready.fields == {
        "call_sid": "CA1",
        "stream_sid": "MZ1",
        "number": "acme",
        "upstream_call_id": "rtc_abc",
    }


def test_the_older_mapping_form_still_works() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    base = logging.getLogger("gateway.call")
    CallLogger(base, {}).info("no ids yet")
    CallLogger(base, {"call": "CA9", "stream": "MZ9", "number": "acme"}).info("ids")
    bare, tagged = json_lines(out)
    assert "call_sid" not in bare
    assert (tagged["call_sid"], tagged["stream_sid"], tagged["number"]) == ("CA9", "MZ9", "acme")
    with pytest.raises(TypeError, match="no field 'caller'"):
        CallLogger(base, {"caller": "+15550001111"})


def test_per_line_extra_joins_the_call_ids() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    log = CallLogger(logging.getLogger("gateway.call"), call_sid="CA1")
    log.info("barge-in", extra={"reaction_ms": 12.5})
    (line,) = json_lines(out)
    assert line["reaction_ms"] == 12.5 and line["call_sid"] == "CA1"


def test_exception_is_one_string_field() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    log = CallLogger(logging.getLogger("gateway.call"), call_sid="CA1")
    try:
        raise ValueError("bad frame")
    except ValueError:
        log.exception("call failed with an internal error")
    (line,) = json_lines(out)
    assert line["level"] == "ERROR" and line["call_sid"] == "CA1"
    assert isinstance(line["exception"], str)
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert "ValueError: bad frame" in line["exception"]
    assert len(out.getvalue().splitlines()) == 1  # the traceback does not break the line


def test_a_terminal_gets_the_readable_line_with_the_call_prefix() -> None:
    tty = FakeTty()
    configure_logging("info", "auto", tty)
    log = CallLogger(
        logging.getLogger("gateway.call"), call_sid="CA1", stream_sid="MZ1", number="acme"
    ).bind(upstream_call_id="rtc_9", trace_id="0af7651916cd43dd8448eb211c80319c")
    log.info("upstream ready in %d ms", 180)
    logging.getLogger("gateway.app").info("plain line")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    lines = tty.getvalue().splitlines()
    assert lines[0].endswith(
        " INFO    gateway.call: [call=CA1 stream=MZ1 number=acme upstream=rtc_9] "
        "upstream ready in 180 ms"
    )
    assert "0af7651916cd43dd" not in lines[0]  # the trace id is for JSON consumers only
    assert lines[1].endswith(" INFO    gateway.app: plain line")
    assert lines[2].endswith(
        " ERROR   gateway.call: [call=CA1 stream=MZ1 number=acme upstream=rtc_9] failed"
    )
    assert lines[3] == "Traceback (most recent call last):"
    assert lines[-1] == "RuntimeError: boom"
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])


def test_auto_is_json_off_a_terminal_and_text_can_be_forced() -> None:
    assert wants_json("auto", io.StringIO())
    assert not wants_json("auto", FakeTty())
    assert wants_json("json", FakeTty())
    assert not wants_json("text", io.StringIO())
    closed = io.StringIO()
    closed.close()
    assert wants_json("auto", closed)
    with pytest.raises(ValueError, match="auto, json, text"):
        wants_json("yaml", io.StringIO())  # type: ignore[arg-type]

    out = io.StringIO()
    configure_logging("info", "text", out)
    logging.getLogger("gateway").info("hello")
    assert out.getvalue().rstrip().endswith("INFO    gateway: hello")


def test_level_applies_and_noisy_libraries_stay_at_warning_unless_debugging() -> None:
    out = io.StringIO()
    configure_logging("warning", "json", out)
    logging.getLogger("gateway").info("hidden")
    logging.getLogger("gateway").warning("shown")
    assert [line["message"] for line in json_lines(out)] == ["shown"]

    configure_logging("info", "json", out)
    assert all(logging.getLogger(n).level == logging.WARNING for n in NOISY)
    configure_logging("debug", "json", out)
    assert all(logging.getLogger(n).level == logging.NOTSET for n in NOISY)  # not held back


def test_call_ids_travel_as_record_attributes_not_in_the_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Other handlers (pytest's, a user's) see the plain message and the ids as attributes."""
    caplog.set_level(logging.INFO)
    CallLogger(logging.getLogger("gateway.call"), call_sid="CA1", number="acme").info("hi")
    (record,) = caplog.records
    assert record.getMessage() == "hi"
    assert record.__dict__["call_sid"] == "CA1" and record.__dict__["number"] == "acme"
    assert "stream_sid" not in record.__dict__


def test_a_live_gauge_is_read_at_each_scrape_in_one_process() -> None:
    metrics = Metrics()
    assert metrics.multiprocess_dir is None
    value = [3.0]
    metrics.live(metrics.open_connections, lambda: value[0])
    assert b"gateway_open_connections 3.0" in metrics.render()
    value[0] = 5.0
    metrics.refresh()  # nothing to copy in one process
    assert b"gateway_open_connections 5.0" in metrics.render()
