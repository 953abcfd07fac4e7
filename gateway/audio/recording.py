"""Optional per-call recordings: stereo WAV, caller left, assistant right, as the caller heard it.

Three pieces, split along the sans-I/O line:

- :class:`RecordingTimeline` (pure, no clock, no I/O) places both directions on one time axis,
  the stream's milliseconds since start, and hands out stereo samples once they are final.
- :class:`RecordingWriter` appends those samples to ``<name>.wav.partial`` on a background
  thread, so the event loop never waits for a disk, and renames the file to ``<name>.wav`` when
  the call ends. A disk error abandons the recording, never the call.
- :func:`recording_path` and :func:`sweep_recordings` name the files (one folder per UTC day)
  and enforce retention.

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

import asyncio
import functools
import hashlib
import logging
import math
import os
import re
import stat
import threading
import wave
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, Final

import numpy as np
import numpy.typing as npt

from gateway.audio.g711 import ulaw_to_array

__all__ = [
    "RECORDING_CHANNELS",
    "RECORDING_SAMPLE_RATE",
    "RecordingTimeline",
    "RecordingWriter",
    "recording_path",
    "sweep_recordings",
]

RECORDING_SAMPLE_RATE: Final = 8000
RECORDING_CHANNELS: Final = 2
"""Left: the caller. Right: the assistant."""

_PER_MS: Final = RECORDING_SAMPLE_RATE // 1000
_CALLER: Final = 0
_ASSISTANT: Final = 1
_INITIAL_ROWS: Final = RECORDING_SAMPLE_RATE  # one second; grows by doubling

_log = logging.getLogger("gateway.recording")

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


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


@functools.cache
def _io_executor() -> ThreadPoolExecutor:
    """The one thread every recording writes on: recordings are a few kB/s each, and one
    thread keeps the disk work of all calls in order and off the event loop."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="recording-io")


class RecordingWriter:
    """Writes one call's stereo WAV from :meth:`RecordingTimeline.take` output, off the loop.

    :meth:`write` only queues bytes and never blocks or raises; the file appears as
    ``<name>.wav.partial`` and becomes ``path`` when :meth:`close` has finalised its header.
    Always ``await close()`` once the call ends, also after errors, or the partial file stays
    behind (until :func:`sweep_recordings` removes it a day later).

    Any error (a full disk, a directory that cannot be created) is logged once and abandons
    the recording: queued audio is dropped, the partial file deleted, and later writes are
    ignored. So does a queue growing past ``max_backlog_bytes`` (the disk cannot keep up; at
    32 kB/s per call the default is about a minute), which bounds memory whatever the disk
    does. Write as you take, every frame or every few seconds; one write of any size is
    accepted when nothing is queued, so :meth:`RecordingTimeline.finish` output always fits.
    If ``path`` exists when the call ends, the recording gets the next free ``<name>-N.wav``
    rather than overwrite it.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_backlog_bytes: int = 2 * 1024 * 1024,
        log: Logger | None = None,
    ) -> None:
        if path.suffix != ".wav":
            raise ValueError(f"recording path {path} must end in .wav")
        self._path = path
        self._partial = path.with_name(path.name + ".partial")
        self._max_backlog = max_backlog_bytes
        self._log: Logger = log if log is not None else _log
        # shared between the loop and the I/O thread, under the lock
        self._lock = threading.Lock()
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._scheduled = False
        self._abandoned = False
        # touched only on the I/O thread (and read, as a plain int, by the property)
        self._file: BinaryIO | None = None
        self._wav: wave.Wave_write | None = None
        self._bytes_written = 0
        # loop side
        self._closing = False
        self._closed: asyncio.Future[Path | None] | None = None

    @property
    def path(self) -> Path:
        """Where the finished recording is (or will be, until :meth:`close` returns)."""
        return self._path

    @property
    def bytes_written(self) -> int:
        """Audio bytes on disk so far (not counting the 44-byte header)."""
        return self._bytes_written

    @property
    def abandoned(self) -> bool:
        """An error ended the recording; the call carries on without it."""
        return self._abandoned

    def write(self, samples: npt.NDArray[np.int16]) -> None:
        """Queue ``(n, 2)`` int16 stereo samples for the file. Never blocks, never raises."""
        if self._closing or self._abandoned or samples.size == 0:
            return
        if samples.dtype != np.int16 or samples.ndim != 2 or samples.shape[1] != 2:
            self._abandon(
                f"write() got a {samples.dtype} array of shape {samples.shape}, "
                "expected (n, 2) int16 from RecordingTimeline.take()"
            )
            return
        data = samples.astype("<i2", copy=False).tobytes()
        submit = False
        with self._lock:
            # one chunk of any size is fine (it was in memory already); a queue that keeps
            # growing past the limit is a disk that cannot keep up
            overflow = bool(self._queue) and self._queued_bytes + len(data) > self._max_backlog
            if not overflow:
                self._queue.append(data)
                self._queued_bytes += len(data)
                submit = not self._scheduled
                self._scheduled = True
        if overflow:
            self._abandon(
                f"the disk is not keeping up: over {self._max_backlog} bytes waiting to be written"
            )
            return
        if submit:
            try:
                _io_executor().submit(self._drain)
            except RuntimeError as exc:  # the interpreter is shutting down
                self._abandon(f"cannot schedule the write: {exc}")

    async def close(self) -> Path | None:
        """Write what is queued, finalise the header and rename the file into place.

        Returns the recording's path, or ``None`` if the recording was abandoned. Safe to call
        more than once, and to cancel: the file is still finalised.
        """
        if self._closed is None:
            self._closing = True
            loop = asyncio.get_running_loop()
            self._closed = loop.run_in_executor(_io_executor(), self._finalise)
        return await asyncio.shield(self._closed)

    # --- I/O thread -----------------------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch = list(self._queue)
                self._queue.clear()
                self._queued_bytes = 0
                if not batch or self._abandoned:
                    self._scheduled = False
            if self._abandoned:
                self._discard()
                return
            if not batch:
                return
            try:
                self._write_frames(batch)
            except Exception as exc:
                self._abandon("writing failed", exc)

    def _finalise(self) -> Path | None:
        with self._lock:
            batch = list(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
        if not self._abandoned:
            try:
                self._write_frames(batch)  # opens the file even for a call with no audio
                assert self._wav is not None and self._file is not None
                self._wav.close()
                self._wav = None
                self._file.close()
                self._file = None
                self._path = self._free_path()
                os.replace(self._partial, self._path)
                return self._path
            except Exception as exc:
                self._abandon("finalising failed", exc)
        self._discard()
        return None

    def _write_frames(self, batch: list[bytes]) -> None:
        if self._wav is None:
            self._partial.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._partial, "wb")  # closed by _finalise or _discard
            self._wav = wave.open(self._file, "wb")
            self._wav.setnchannels(RECORDING_CHANNELS)
            self._wav.setsampwidth(2)
            self._wav.setframerate(RECORDING_SAMPLE_RATE)
        for data in batch:
            # raw: the header is patched once, by close(), not after every chunk
            self._wav.writeframesraw(data)
            self._bytes_written += len(data)

    def _free_path(self) -> Path:
        path, n = self._path, 1
        while path.exists():
            n += 1
            path = self._path.with_name(f"{self._path.stem}-{n}.wav")
        return path

    def _discard(self) -> None:
        wav, file = self._wav, self._file
        self._wav = self._file = None
        for closer in (wav, file):
            if closer is not None:
                try:
                    closer.close()
                except (OSError, ValueError, wave.Error):
                    pass  # the file is going away; its header no longer matters
        try:
            self._partial.unlink(missing_ok=True)
        except OSError:
            pass  # sweep_recordings removes stale partial files

    # --- either thread --------------------------------------------------------------------------

    def _abandon(self, reason: str, exc: BaseException | None = None) -> None:
        with self._lock:
            if self._abandoned:
                return
            self._abandoned = True
            self._queue.clear()
            self._queued_bytes = 0
        if exc is None or isinstance(exc, OSError):
            detail = f"{reason}: {exc}" if exc is not None else reason
            self._log.warning("recording %s abandoned, the call goes on: %s", self._path, detail)
        else:  # not the disk: our own bug, worth a traceback
            self._log.error(
                "recording %s abandoned, the call goes on: %s", self._path, reason, exc_info=exc
            )


# --- files ----------------------------------------------------------------------------------

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_DAY_FOLDER = re.compile(r"\d{4}-\d{2}-\d{2}")


def _utc(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what}={moment!r} must be timezone-aware, e.g. datetime.now(UTC)")
    return moment.astimezone(UTC)


def recording_path(directory: Path, call_sid: str, started_at: datetime) -> Path:
    """``directory/<UTC date of started_at>/<call_sid>.wav``, e.g. ``…/2026-12-01/CA….wav``.

    A call SID of letters, digits, ``_`` and ``-`` (a Twilio ``CA`` + 32 hex digits, a UUID)
    is used as it is. Anything else is reduced to those characters and suffixed with a hash of
    the original, so the name stays unique and can never leave its folder (no ``/``, no ``..``).
    ``started_at`` must be timezone-aware.
    """
    day = _utc(started_at, "started_at").date().isoformat()
    if _SAFE_NAME.fullmatch(call_sid):
        name = call_sid
    else:
        digest = hashlib.sha256(call_sid.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        kept = re.sub(r"[^A-Za-z0-9_-]+", "_", call_sid)[:48].strip("_-")
        name = f"{kept}-{digest}" if kept else f"call-{digest}"
    return directory / day / f"{name}.wav"


def sweep_recordings(
    directory: Path, retention_days: float, now: datetime, *, log: Logger | None = None
) -> int:
    """Delete recordings older than ``retention_days`` and partial files older than a day.

    Blocking file-system work: run it in a thread (``asyncio.to_thread``), at start-up and
    then about daily. A recording's age is its file's modification time, i.e. when the call
    ended. Only files this module names are touched (``*.wav`` and ``*.wav.partial`` in
    ``YYYY-MM-DD`` folders, no symlinks); empty day folders older than yesterday are removed.
    A file that cannot be removed is logged and skipped. Returns the number of files deleted.
    """
    if not retention_days > 0:
        raise ValueError(f"retention_days={retention_days} must be > 0")
    log = log if log is not None else _log
    now = _utc(now, "now")
    recording_cutoff = (now - timedelta(days=retention_days)).timestamp()
    partial_cutoff = (now - timedelta(days=1)).timestamp()
    keep_folders_from = now.date() - timedelta(days=1)
    if not directory.is_dir():
        return 0
    removed = 0
    for folder in sorted(directory.iterdir()):
        if not _DAY_FOLDER.fullmatch(folder.name) or folder.is_symlink() or not folder.is_dir():
            continue
        try:
            day = date.fromisoformat(folder.name)
        except ValueError:
            continue
        for file in sorted(folder.iterdir()):
            if file.name.endswith(".wav.partial"):
                cutoff = partial_cutoff
            elif file.name.endswith(".wav"):
                cutoff = recording_cutoff
            else:
                continue
            try:
                info = file.lstat()
                if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                    file.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot remove old recording %s: %s", file, exc)
        if day < keep_folders_from and not any(folder.iterdir()):
            try:
                folder.rmdir()
            except OSError as exc:
                log.warning("cannot remove empty recordings folder %s: %s", folder, exc)
    return removed
