"""The event log: one JSON object per event, whatever the event's text was."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.emulator.event_log import EventLog


def test_events_are_json_lines_and_non_json_is_kept_as_text(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "events.jsonl"  # the directory is created
    log = EventLog(path)
    log.write("rtc_1", "client", '{"type": "response.create"}')
    log.write("rtc_1", "server", {"type": "response.done"})
    log.write("rtc_1", "client", b"not json \xff")
    log.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["call_id"], r["direction"]) for r in records] == [
        ("rtc_1", "client"),
        ("rtc_1", "server"),
        ("rtc_1", "client"),
    ]
    assert records[0]["event"] == {"type": "response.create"}
    assert records[1]["event"] == {"type": "response.done"}
    assert records[2]["event"] == "not json \ufffd"
    assert all(isinstance(r["ts"], float) for r in records)
