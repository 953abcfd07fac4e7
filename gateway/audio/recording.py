"""Optional per-call recordings: stereo WAV, caller left, assistant right, as the caller heard it.

Three pieces, split along the sans-I/O line:

- :class:`RecordingTimeline` (pure, no clock, no I/O) places both directions on one time axis,
  the stream's milliseconds since start, and hands out stereo samples once they are final.
- The files are :mod:`gateway.recordings`' business (I/O, kept out of this pure package):
  :class:`~gateway.recordings.RecordingWriter` appends those samples to ``<name>.wav.partial``
  on a background thread and renames the file when the call ends;
  :func:`~gateway.recordings.recording_path` and :func:`~gateway.recordings.sweep_recordings`
  name the files (one folder per UTC day) and enforce retention.

What "as the caller heard it" means, per direction:

- Caller audio sits at its carrier media timestamp. A gap in the timestamps (lost frames) is
  silence; a frame that repeats or overlaps audio already placed adds only its new tail, so
  nothing is heard twice.
- Assistant audio is sent faster than real time and the carrier plays it back to back, so a
  chunk sent at ``at_ms`` starts at ``max(at_ms, end of the previous chunk)``. A barge-in
  ``clear`` discards what the carrier had not played: :meth:`RecordingTimeline.cleared` removes
  assistant audio scheduled after the clear, and hang-up truncates it the same way.

Wiring, one timeline and one writer per call (``t0`` anchors the gateway's monotonic clock to
the carrier's stream clock; anchoring it at the first media frame, rather than at ``start``,
cancels the ``start`` message's own transit time)::

    t0 = clock() - (first.timestamp_ms + len(first.payload) / 8) / 1000   # at the first Media
    timeline = RecordingTimeline()
    writer = RecordingWriter(recording_path(directory, call_sid, started_at))

    timeline.caller(media.payload, media.timestamp_ms)        # every Media
    writer.write(timeline.take())                             # as often as convenient
    timeline.assistant(ulaw, (clock() - t0) * 1000)           # after sending each PlayAudio
    timeline.cleared((clock() - t0) * 1000)                   # after sending ClearAudio

    writer.write(timeline.finish((clock() - t0) * 1000))      # at hang-up
    await writer.close()

A :class:`ValueError` from the timeline (a carrier timestamp jumping by more than
``max_gap_ms``, or a negative time) means the recording cannot be trusted: log it, stop
feeding the timeline and close the writer; the call goes on.

Alignment is as good as those two clocks agree. The carrier plays our audio one transit later
than we send it, so assistant audio lands up to one one-way delay early relative to the caller's
voice (tens of milliseconds on a healthy path); add an estimate to every assistant and clear
time alike if that matters.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt

from gateway.audio.format import CARRIER_RATE
from gateway.audio.g711 import ulaw_to_array

__all__ = [
    "RECORDING_CHANNELS",
    "RECORDING_SAMPLE_RATE",
    "RecordingTimeline",
]

RECORDING_SAMPLE_RATE: Final = CARRIER_RATE
RECORDING_CHANNELS: Final = 2
"""Left: the caller. Right: the assistant."""

_PER_MS: Final = RECORDING_SAMPLE_RATE // 1000
_CALLER: Final = 0
_ASSISTANT: Final = 1
_INITIAL_ROWS: Final = RECORDING_SAMPLE_RATE  # one second; grows by doubling


def _position(at_ms: float) -> int:
    """Sample index of a stream time; refuses times no correct caller can produce."""
    if not (math.isfinite(at_ms) and at_ms >= 0):
        raise ValueError(f"at_ms={at_ms} must be a finite time >= 0 since the stream started")
    return round(at_ms * _PER_MS)


class RecordingTimeline:
    """Both directions of one call on one axis, handed out as stereo once final.

    Samples are final up to the newest caller position: a later :meth:`cleared` can only
    remove audio after its own time, and that time is never earlier than the newest caller
    frame seen (the caller's frames arrive after they were spoken). :meth:`take` hands out
    final samples and forgets them, so memory holds only what is not final: the last caller
    frame's worth plus whatever assistant audio is queued ahead of the caller.

    Times are milliseconds since the stream started, as floats; the timeline rounds them to
    the nearest 8 kHz sample. A time that falls in audio already handed out is moved to the
    first sample not yet handed out: what was handed out is never rewritten.

    Audio placed more than ``max_gap_ms`` beyond everything placed so far raises
    :class:`ValueError` instead of filling the gap with silence: a carrier timestamp that jumps
    by hours (or a time computed from the wrong clock) would otherwise allocate that much
    memory and write that much silence. Stop recording the call when it happens.
    """

    def __init__(self, *, max_gap_ms: float = 60_000) -> None:
        if not (math.isfinite(max_gap_ms) and max_gap_ms >= 0):
            raise ValueError(f"max_gap_ms={max_gap_ms} must be a finite number >= 0")
        self._max_gap = round(max_gap_ms * _PER_MS)
        # rows [off, off + live) of buf hold absolute samples [base, base + live); every row
        # from off + live on is zero, so writing past the end leaves silence in any gap
        self._buf = np.zeros((_INITIAL_ROWS, RECORDING_CHANNELS), dtype=np.int16)
        self._off = 0
        self._base = 0
        self._caller_end = 0
        self._cursor = 0
        self._finished = False

    # --- figures --------------------------------------------------------------------------------

    @property
    def caller_ms(self) -> float:
        """The newest caller position: where the latest caller audio ends."""
        return self._caller_end / _PER_MS

    @property
    def assistant_ms(self) -> float:
        """The play cursor: where the assistant audio scheduled so far ends."""
        return self._cursor / _PER_MS

    @property
    def taken_ms(self) -> float:
        """Audio handed out by :meth:`take` so far."""
        return self._base / _PER_MS

    @property
    def buffered_ms(self) -> float:
        """Audio placed but not handed out yet (what the timeline holds in memory)."""
        return (self._live_end() - self._base) / _PER_MS

    # --- inputs ---------------------------------------------------------------------------------

    def caller(self, ulaw: bytes, at_ms: float) -> None:
        """Place one caller media payload (8 kHz μ-law) at its media timestamp."""
        self._check_open()
        start = _position(at_ms)
        if not ulaw:
            return
        end = start + len(ulaw)
        if end <= self._caller_end:
            return  # a repeat of audio already placed
        new = max(start, self._caller_end)
        self._check_gap(new, "caller", at_ms)
        self._reserve(end)
        row = self._off + new - self._base
        self._buf[row : row + end - new, _CALLER] = ulaw_to_array(ulaw[new - start :])
        self._caller_end = end

    def assistant(self, ulaw: bytes, at_ms: float) -> None:
        """Place assistant μ-law sent to the carrier at ``at_ms``, right after the previous
        chunk if that has not finished playing by then."""
        self._check_open()
        if not ulaw:
            return
        start = max(_position(at_ms), self._cursor, self._base)
        self._check_gap(start, "assistant", at_ms)
        end = start + len(ulaw)
        self._reserve(end)
        row = self._off + start - self._base
        self._buf[row : row + len(ulaw), _ASSISTANT] = ulaw_to_array(ulaw)
        self._cursor = end

    def cleared(self, at_ms: float) -> None:
        """The carrier was told to ``clear`` at ``at_ms``: drop assistant audio after it."""
        self._check_open()
        self._drop_assistant_after(_position(at_ms))

    # --- outputs --------------------------------------------------------------------------------

    def take(self, upto_ms: float | None = None) -> npt.NDArray[np.int16]:
        """Hand out the final samples not handed out yet (up to ``upto_ms`` if given).

        Returns an ``(n, 2)`` int16 array, possibly empty: row ``i`` is (caller, assistant),
        so the array's bytes are the WAV frames. Feed it to :meth:`RecordingWriter.write`.
        """
        self._check_open()
        end = self._caller_end
        if upto_ms is not None:
            end = min(end, max(self._base, _position(upto_ms)))
        n = end - self._base
        out = self._buf[self._off : self._off + n].copy()
        self._off += n
        self._base = end
        return out

    def finish(self, at_ms: float) -> npt.NDArray[np.int16]:
        """The call ended at ``at_ms``: hand out everything left, minus assistant audio the
        carrier had not played by then. The timeline cannot be used afterwards."""
        self._check_open()
        self._drop_assistant_after(_position(at_ms))
        n = self._live_end() - self._base
        out = self._buf[self._off : self._off + n].copy()
        self._base += n
        self._finished = True
        self._buf = np.zeros((0, RECORDING_CHANNELS), dtype=np.int16)
        self._off = 0
        return out

    # --- internals ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("the recording timeline is finished; finish() is the last call")

    def _check_gap(self, start: int, what: str, at_ms: float) -> None:
        gap = start - self._live_end()
        if gap > self._max_gap:
            raise ValueError(
                f"{what} audio at {at_ms:g} ms leaves a gap of {gap / _PER_MS:g} ms after "
                f"everything placed so far (max_gap_ms={self._max_gap / _PER_MS:g}); a carrier "
                "timestamp jumped, or the time is not milliseconds since the stream started"
            )

    def _live_end(self) -> int:
        return max(self._caller_end, self._cursor, self._base)

    def _drop_assistant_after(self, position: int) -> None:
        cut = max(position, self._base)
        if cut < self._cursor:
            row = self._off + cut - self._base
            self._buf[row : row + self._cursor - cut, _ASSISTANT] = 0
            self._cursor = cut

    def _reserve(self, end: int) -> None:
        """Make rows for absolute samples up to ``end``, keeping the all-zero tail invariant."""
        need = end - self._base
        rows = len(self._buf)
        if self._off + need <= rows:
            return
        live = self._live_end() - self._base
        if need <= rows // 2:
            # slide the live rows to the front; zero the stale rows they leave behind
            self._buf[:live] = self._buf[self._off : self._off + live]
            self._buf[live : self._off + live] = 0
        else:
            grown = np.zeros((max(2 * rows, need), RECORDING_CHANNELS), dtype=np.int16)
            grown[:live] = self._buf[self._off : self._off + live]
            self._buf = grown
        self._off = 0
