"""The emulator's event log: every data-channel event of every call, as JSON lines."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

__all__ = ["EventLog"]


class EventLog:
    """Every event, both directions, one JSON object per line: ``ts``, ``call_id``,
    ``direction`` (``client`` or ``server``) and ``event`` (the raw text if it was not JSON).
    One per emulator process; :meth:`close` it at shutdown."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = path.open("a", encoding="utf-8", buffering=1)

    def write(self, call_id: str, direction: str, event: Any) -> None:
        if isinstance(event, str | bytes):
            try:
                event = json.loads(event)
            except (ValueError, UnicodeDecodeError):
                event = event.decode("utf-8", "replace") if isinstance(event, bytes) else event
        record = {"ts": time.time(), "call_id": call_id, "direction": direction, "event": event}
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._file.close()
