"""Call recordings on disk: the writer, the file names, retention.

The I/O half of recordings. The pure half, :class:`gateway.audio.recording.RecordingTimeline`,
decides what the caller heard and hands out final stereo samples; this module puts them in
files:

- :class:`RecordingWriter` appends those samples to ``<name>.wav.partial`` on a background
  thread, so the event loop never waits for a disk, and renames the file to ``<name>.wav`` when
  the call ends. A disk error abandons the recording, never the call.
- :func:`recording_path` and :func:`sweep_recordings` name the files (one folder per UTC day)
  and enforce retention.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import re
import stat
import threading
import wave
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from gateway.audio.recording import RECORDING_CHANNELS, RECORDING_SAMPLE_RATE

__all__ = ["RecordingWriter", "recording_path", "sweep_recordings"]

_log = logging.getLogger("gateway.recording")

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


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
