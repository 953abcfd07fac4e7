"""Keypad presses (DTMF) aggregated into entries: one sequence per thing the caller typed.

Carriers report each key on its own (Twilio: one ``dtmf`` message per key). An assistant that
says "press 1 for sales" or "type your account number, then pound" wants one conversation item
per *entry*, not one per key: "1", or "4711#", never "4", "7", "1", "1", "#" spread over five
model turns, each of which could trigger a response that talks over the rest of the typing.
:class:`DtmfCollector` groups keys the way an IVR does. A sequence ends when

- the terminator key is pressed (``#`` by default; the terminator is *kept* as the last
  character, so the text says exactly what the caller did: "1#" is "press 1 then pound", and a
  lone "#" is "pressed pound"),
- ``max_digits`` keys have been pressed (the terminator counts as a key), or
- ``inter_digit_timeout_ms`` passes after the last key with no new key.

Sans-I/O: no clock, no task. Every call takes ``now`` in seconds from the caller's monotonic
clock (the same clock for every call), and the asyncio layer owns the waiting::

    collector = DtmfCollector(inter_digit_timeout_ms=profile.dtmf_timeout_ms)
    ...
    entry = collector.press(msg.digit, clock())      # for every Dtmf message
    if entry is not None:
        send_to_model(entry)
    ...
    # a timer task: sleep until collector.deadline, then
    while (entry := collector.due(clock())) is not None:
        send_to_model(entry)

Every completed sequence comes out exactly once, in the order typed, from either
:meth:`press` or :meth:`due`. If a key arrives after the previous sequence's timeout but before
the timer ran :meth:`due` (the two run in different tasks), the stale sequence still comes out
first: :meth:`press` returns it and the new key's sequence waits for the next :meth:`press` or
:meth:`due`, with :attr:`deadline` already in the past so the timer wakes at once.
"""

from __future__ import annotations

from collections import deque
from typing import Final

__all__ = ["DTMF_KEYS", "DtmfCollector"]

DTMF_KEYS: Final = frozenset("0123456789*#ABCD")
"""The sixteen DTMF keys: the twelve of a phone keypad plus the military/network keys A-D."""


def _check_key(key: str, what: str) -> None:
    if key not in DTMF_KEYS:
        raise ValueError(
            f"{what} {key!r} is not a DTMF key: expected one of 0-9, *, #, A-D (one character)"
        )


class DtmfCollector:
    """Groups one call's keypresses into sequences; see the module docstring for the rules.

    ``terminator=None`` disables the terminator key: sequences then end only on
    ``max_digits`` or the timeout.
    """

    def __init__(
        self,
        *,
        inter_digit_timeout_ms: float = 1500,
        max_digits: int = 16,
        terminator: str | None = "#",
    ) -> None:
        if not inter_digit_timeout_ms > 0:
            raise ValueError(f"inter_digit_timeout_ms={inter_digit_timeout_ms} must be > 0")
        if max_digits < 1:
            raise ValueError(f"max_digits={max_digits} must be >= 1")
        if terminator is not None:
            _check_key(terminator, "terminator")
        self.inter_digit_timeout_ms = inter_digit_timeout_ms
        self.max_digits = max_digits
        self.terminator = terminator
        self._timeout_s = inter_digit_timeout_ms / 1000
        self._keys: list[str] = []
        self._last_at = 0.0
        # completed sequences not yet handed out, with the time each became complete
        self._ready: deque[tuple[float, str]] = deque()

    @property
    def pending(self) -> str:
        """Keys of the sequence being typed (not yet complete), in order; ``""`` if none."""
        return "".join(self._keys)

    @property
    def deadline(self) -> float | None:
        """When :meth:`due` will next return a sequence (same clock as ``now``), or ``None``.

        May lie in the past when a sequence is already complete; the timer should then call
        :meth:`due` at once. After each :meth:`press` or :meth:`due`, re-read it.
        """
        if self._ready:
            return self._ready[0][0]
        if self._keys:
            return self._last_at + self._timeout_s
        return None

    def press(self, digit: str, now: float) -> str | None:
        """Record one key. Returns a completed sequence, or ``None`` while the entry goes on.

        Raises :class:`ValueError` for anything but a single DTMF key; the call should log the
        carrier's message and carry on.
        """
        _check_key(digit, "DTMF digit")
        self._expire(now)
        self._keys.append(digit)
        self._last_at = now
        if digit == self.terminator or len(self._keys) >= self.max_digits:
            self._complete(now)
        return self._ready.popleft()[1] if self._ready else None

    def due(self, now: float) -> str | None:
        """The oldest completed sequence if one is due at ``now`` (the timeout has passed since
        its last key), else ``None``. Call it again until it returns ``None``."""
        self._expire(now)
        if self._ready and self._ready[0][0] <= now:
            return self._ready.popleft()[1]
        return None

    def flush(self) -> list[str]:
        """Every sequence not yet handed out, the unfinished one last, and forget them.

        For hang-up (to log or record what was typed) or when the entry no longer matters.
        """
        out = [text for _, text in self._ready]
        self._ready.clear()
        if self._keys:
            out.append(self.pending)
            self._keys.clear()
        return out

    def _expire(self, now: float) -> None:
        if self._keys and now >= self._last_at + self._timeout_s:
            self._complete(self._last_at + self._timeout_s)

    def _complete(self, at: float) -> None:
        self._ready.append((at, self.pending))
        self._keys.clear()
