"""What the caller has actually heard: a ledger of outbound audio and the marks that confirm it.

Carriers buffer the audio we send and play it in order; a mark sent after some audio comes back
when that audio has played, and a ``clear`` makes every pending mark come back at once, meaning
"not played" (PROTOCOLS.md B4). The ledger turns that into numbers the bridge decides with:

- :attr:`MarkLedger.buffered_ms` — audio sent but neither confirmed played nor cleared: the
  carrier's playout depth. Keep it shallow so a barge-in has little to flush.
- :meth:`MarkLedger.played_ms_for` — a lower bound of what the caller heard of one response: the
  most a ``conversation.item.truncate`` may claim. Audio sent is the upper bound.

Pure bookkeeping: no clock, no I/O. One ledger per stream::

    name = ledger.sent(len(ulaw), response_id)   # after sending the audio
    if name is not None:
        send(PlayMark(name))
    ...
    ledger.on_mark(mark.name)                    # for every mark the carrier echoes
    ledger.on_clear()                            # right after sending ClearAudio
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Final

__all__ = ["MarkLedger"]

_BYTES_PER_MS: Final = 8  # 8 kHz μ-law: one byte per sample


class MarkLedger:
    """Tracks outbound audio per response through send, mark echo and clear.

    ``mark_every_ms`` sets the mark granularity: ``0`` asks for a mark after every chunk sent
    (the bridge sends 20 ms chunks, so every frame); a larger value marks once that much
    unmarked audio has accumulated, and the caller must then call :meth:`flush` when a
    response's audio ends, or its tail would never be confirmed.
    """

    def __init__(
        self,
        *,
        mark_every_ms: float = 0.0,
        name_prefix: str = "gw",
        max_cleared_names: int = 4096,
    ) -> None:
        if mark_every_ms < 0:
            raise ValueError(f"mark_every_ms={mark_every_ms} must be >= 0")
        self.mark_every_ms = mark_every_ms
        self.name_prefix = name_prefix
        self._mark_every_bytes = max(1, math.ceil(mark_every_ms * _BYTES_PER_MS))
        self._max_cleared = max_cleared_names
        self._seq = 0
        # audio sent since the last mark, as (response_id, bytes) runs in send order
        self._unmarked: list[tuple[str | None, int]] = []
        self._unmarked_bytes = 0
        # marks sent and not yet echoed, oldest first, each with the audio it confirms
        self._pending: OrderedDict[str, tuple[tuple[str | None, int], ...]] = OrderedDict()
        self._pending_bytes = 0
        # marks flushed by a clear: their echo means "not played"
        self._cleared: OrderedDict[str, None] = OrderedDict()
        self._sent_bytes = 0
        self._played_bytes = 0
        self._dropped_bytes = 0
        self._sent_by: dict[str | None, int] = {}
        self._played_by: dict[str | None, int] = {}
        self.marks_sent = 0
        self.marks_played = 0
        """Marks echoed because their audio played (not after a clear)."""
        self.marks_cleared = 0
        """Echoes of marks that a clear flushed: their audio was not played."""
        self.unknown_marks = 0
        """Echoes of names this ledger never issued (or forgot); ignored."""
        self.clears = 0

    # --- inputs ---------------------------------------------------------------------------------

    def sent(self, n_bytes: int, response_id: str | None) -> str | None:
        """Record ``n_bytes`` of μ-law just sent for ``response_id``.

        Returns the name of a mark to send right after that audio, or ``None`` when the
        granularity does not call for one yet.
        """
        if n_bytes < 0:
            raise ValueError(f"n_bytes={n_bytes} must be >= 0")
        if n_bytes == 0:
            return None
        self._sent_bytes += n_bytes
        self._sent_by[response_id] = self._sent_by.get(response_id, 0) + n_bytes
        if self._unmarked and self._unmarked[-1][0] == response_id:
            self._unmarked[-1] = (response_id, self._unmarked[-1][1] + n_bytes)
        else:
            self._unmarked.append((response_id, n_bytes))
        self._unmarked_bytes += n_bytes
        if self._unmarked_bytes >= self._mark_every_bytes:
            return self._issue()
        return None

    def flush(self) -> str | None:
        """A mark name covering audio sent since the last mark, or ``None`` if there is none.

        Call it when a response's audio ends (with ``mark_every_ms > 0``) and send the mark.
        """
        return self._issue() if self._unmarked_bytes else None

    def on_mark(self, name: str) -> bool:
        """Record an echoed mark. Returns ``True`` if it confirmed audio as played.

        Carriers play in order, so an echo also confirms every older pending mark.
        """
        if name in self._pending:
            while True:
                older, runs = self._pending.popitem(last=False)
                for response_id, n in runs:
                    self._played_by[response_id] = self._played_by.get(response_id, 0) + n
                    self._played_bytes += n
                    self._pending_bytes -= n
                self.marks_played += 1
                if older == name:
                    return True
        if name in self._cleared:
            del self._cleared[name]
            self.marks_cleared += 1
            return False
        self.unknown_marks += 1
        return False

    def on_clear(self) -> None:
        """Record that ``clear`` was sent: everything not yet confirmed counts as not played."""
        self.clears += 1
        for name in self._pending:
            self._cleared[name] = None
        while len(self._cleared) > self._max_cleared:
            self._cleared.popitem(last=False)
        self._dropped_bytes += self._pending_bytes + self._unmarked_bytes
        self._pending.clear()
        self._pending_bytes = 0
        self._unmarked.clear()
        self._unmarked_bytes = 0

    # --- figures --------------------------------------------------------------------------------

    @property
    def sent_ms(self) -> float:
        """All audio sent so far."""
        return self._sent_bytes / _BYTES_PER_MS

    @property
    def played_ms(self) -> float:
        """Audio confirmed played by mark echoes (a lower bound of what was heard)."""
        return self._played_bytes / _BYTES_PER_MS

    @property
    def cleared_ms(self) -> float:
        """Audio sent but flushed by a clear before any echo confirmed it."""
        return self._dropped_bytes / _BYTES_PER_MS

    @property
    def buffered_ms(self) -> float:
        """Audio sent, not confirmed played and not cleared: the carrier's playout depth.

        An upper bound: the carrier may have played some of it since the last echo.
        """
        return (self._pending_bytes + self._unmarked_bytes) / _BYTES_PER_MS

    @property
    def unmarked_ms(self) -> float:
        """Audio sent since the last mark (no echo can ever confirm it without a new mark)."""
        return self._unmarked_bytes / _BYTES_PER_MS

    @property
    def pending_marks(self) -> int:
        return len(self._pending)

    def sent_ms_for(self, response_id: str | None) -> float:
        """Audio sent for ``response_id``: the upper bound of what the caller heard of it."""
        return self._sent_by.get(response_id, 0) / _BYTES_PER_MS

    def played_ms_for(self, response_id: str | None) -> int:
        """Whole milliseconds of ``response_id`` confirmed played: the most a truncate may claim."""
        return self._played_by.get(response_id, 0) // _BYTES_PER_MS

    # --- internals ------------------------------------------------------------------------------

    def _issue(self) -> str:
        self._seq += 1
        name = f"{self.name_prefix}{self._seq}"
        self._pending[name] = tuple(self._unmarked)
        self._pending_bytes += self._unmarked_bytes
        self._unmarked.clear()
        self._unmarked_bytes = 0
        self.marks_sent += 1
        return name
