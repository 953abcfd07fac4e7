"""The recording files: the writer, the names, retention (gateway/recordings.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import wave
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.audio.recording import RecordingTimeline
from gateway.recordings import RecordingWriter, recording_path, sweep_recordings
from tests.audio.test_recording import FRAME, noise, pcm, zeros

# --- writer -------------------------------------------------------------------------------------


def read_wav(path: Path) -> tuple[tuple[int, int, int, int], npt.NDArray[np.int16]]:
    """(channels, sample width, rate, frames) and the samples as (n, 2)."""
    with wave.open(str(path), "rb") as w:
        params = (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes())
        frames = w.readframes(w.getnframes())
    return params, np.frombuffer(frames, dtype="<i2").astype(np.int16).reshape(-1, 2)


async def test_the_writer_produces_a_stereo_wav_of_what_was_heard(tmp_path: Path) -> None:
    caller = noise(100 * FRAME, 1)  # two seconds
    answer = noise(8000, 2)  # one second, sent in a burst at 500 ms
    path = recording_path(tmp_path, "CA" + "0f" * 16, datetime(2026, 12, 1, 9, 30, tzinfo=UTC))
    writer = RecordingWriter(path)
    tl = RecordingTimeline()
    for i in range(100):
        tl.caller(caller[i * FRAME : (i + 1) * FRAME], 20 * i)
        if i == 25:
            for k in range(0, 8000, FRAME):
                tl.assistant(answer[k : k + FRAME], 500)
        if i == 60:
            tl.cleared(1200)  # barge-in: 700 ms of the answer were heard
        writer.write(tl.take())
    writer.write(tl.finish(2000))
    assert await writer.close() == path
    assert path == tmp_path / "2026-12-01" / f"CA{'0f' * 16}.wav"
    assert path.exists() and not path.with_name(path.name + ".partial").exists()
    params, frames = read_wav(path)
    assert params == (2, 2, 8000, 16000) and writer.bytes_written == 16000 * 4
    assert np.array_equal(frames[:, 0], pcm(caller))
    expected_right = np.concatenate([zeros(4000), pcm(answer[:5600]), zeros(16000 - 9600)])
    assert np.array_equal(frames[:, 1], expected_right)


async def test_the_file_is_partial_until_close(tmp_path: Path) -> None:
    path = tmp_path / "day" / "CAx.wav"
    partial = tmp_path / "day" / "CAx.wav.partial"
    writer = RecordingWriter(path)
    writer.write(np.ones((800, 2), dtype=np.int16))
    for _ in range(200):  # the write happens on the I/O thread; wait for it, boundedly
        if writer.bytes_written:
            break
        await asyncio.sleep(0.01)
    assert writer.bytes_written == 3200
    assert partial.exists() and not path.exists()
    assert await writer.close() == path
    assert path.exists() and not partial.exists()
    assert await writer.close() == path  # idempotent
    writer.write(np.ones((800, 2), dtype=np.int16))  # after close: ignored
    assert read_wav(path)[0][3] == 800


async def test_a_call_without_audio_still_gets_a_valid_wav(tmp_path: Path) -> None:
    path = tmp_path / "CAempty.wav"
    writer = RecordingWriter(path)
    writer.write(np.zeros((0, 2), dtype=np.int16))
    assert await writer.close() == path
    params, frames = read_wav(path)
    assert params == (2, 2, 8000, 0) and frames.size == 0


async def test_an_existing_recording_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "CAsame.wav"
    first = RecordingWriter(path)
    first.write(np.ones((10, 2), dtype=np.int16))
    assert await first.close() == path
    second = RecordingWriter(path)
    second.write(np.ones((20, 2), dtype=np.int16))
    assert await second.close() == tmp_path / "CAsame-2.wav"
    assert second.path == tmp_path / "CAsame-2.wav"
    assert read_wav(path)[0][3] == 10 and read_wav(second.path)[0][3] == 20


async def test_an_unwritable_directory_is_logged_once_and_the_call_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the recordings folder should be")
    writer = RecordingWriter(blocker / "2026-12-01" / "CAx.wav")
    with caplog.at_level(logging.WARNING, logger="gateway.recording"):
        for _ in range(20):
            writer.write(np.ones((FRAME, 2), dtype=np.int16))  # must not raise
            await asyncio.sleep(0)
        assert await writer.close() is None
        writer.write(np.ones((FRAME, 2), dtype=np.int16))
    assert writer.abandoned
    abandoned = [r for r in caplog.records if "abandoned" in r.getMessage()]
    assert len(abandoned) == 1, caplog.text
    assert "not-a-dir" in abandoned[0].getMessage()
    assert blocker.read_text().startswith("a file")


async def test_a_disk_that_cannot_keep_up_abandons_instead_of_growing_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "CAslow.wav"
    stuck = tmp_path / "CAslow.wav.partial"
    os.mkfifo(stuck)  # a "disk" on which opening the file blocks until someone reads
    writer = RecordingWriter(path, max_backlog_bytes=1000)
    reader: int | None = None
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.recording"):
            for _ in range(3):  # 640 bytes each; the I/O thread is stuck with the first at most
                writer.write(np.ones((FRAME, 2), dtype=np.int16))
            assert writer.abandoned
            # let the disk go: the I/O thread, if it was stuck opening, writes what it held
            with contextlib.suppress(FileNotFoundError):  # it had not started: already gone
                reader = os.open(stuck, os.O_RDONLY | os.O_NONBLOCK)
            assert await writer.close() is None
        written = b""
        if reader is not None:
            with contextlib.suppress(BlockingIOError):
                written = os.read(reader, 1 << 16)
    finally:  # never leave the shared I/O thread blocked on the pipe, even when failing
        if reader is None:
            with contextlib.suppress(FileNotFoundError):
                reader = os.open(stuck, os.O_RDONLY | os.O_NONBLOCK)
        if reader is not None:
            os.close(reader)
    assert "not keeping up" in caplog.text
    assert len(written) <= 44 + 640  # the chunk in flight at most: the queue was dropped
    assert await asyncio.to_thread(os.listdir, tmp_path) == []


async def test_a_wrong_array_abandons_the_recording_without_raising(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = RecordingWriter(tmp_path / "CAx.wav")
    with caplog.at_level(logging.WARNING, logger="gateway.recording"):
        writer.write(np.ones(FRAME, dtype=np.int16))  # mono: a bug in the caller
    assert writer.abandoned and "expected (n, 2) int16" in caplog.text
    assert await writer.close() is None
    assert await asyncio.to_thread(os.listdir, tmp_path) == []


async def test_a_cancelled_close_still_finalises_the_file(tmp_path: Path) -> None:
    path = tmp_path / "CAcancel.wav"
    writer = RecordingWriter(path)
    writer.write(np.ones((FRAME, 2), dtype=np.int16))
    task = asyncio.create_task(writer.close())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await writer.close() == path
    assert read_wav(path)[0][3] == FRAME


def test_the_writer_wants_a_wav_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.wav"):
        RecordingWriter(tmp_path / "CAx.mp3")


# --- naming -------------------------------------------------------------------------------------

DAY = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_recordings_are_filed_by_utc_day_under_their_call_sid(tmp_path: Path) -> None:
    sid = "CA" + "a1" * 16
    assert recording_path(tmp_path, sid, DAY) == tmp_path / "2026-12-01" / f"{sid}.wav"
    new_york = timezone(timedelta(hours=-5))
    late = datetime(2026, 12, 1, 21, 0, tzinfo=new_york)  # 02:00 UTC the next day
    assert recording_path(tmp_path, sid, late).parent.name == "2026-12-02"


def test_a_naive_start_time_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        recording_path(tmp_path, "CAx", datetime(2026, 12, 1))


@pytest.mark.parametrize(
    "sid", ["../../etc/passwd", "..", ".", "", "a/b", "a\\b", "CA\x00x", "-rf", "名前", "x" * 300]
)
def test_hostile_call_sids_stay_in_their_folder(tmp_path: Path, sid: str) -> None:
    path = recording_path(tmp_path, sid, DAY)
    assert path.parent == tmp_path / "2026-12-01"
    assert path.suffix == ".wav" and path.name[0].isalnum() and len(path.name) < 80
    assert "/" not in path.name and "\\" not in path.name and "\x00" not in path.name


def test_sanitised_names_stay_unique(tmp_path: Path) -> None:
    names = {recording_path(tmp_path, s, DAY).name for s in ["a/b", "a_b", "a:b", "a b"]}
    assert len(names) == 4


@given(st.text(max_size=100))
def test_any_call_sid_gives_a_plain_file_name_in_the_day_folder(sid: str) -> None:
    base = Path("/recordings")
    path = recording_path(base, sid, DAY)
    assert path.parent == base / "2026-12-01"
    assert path.name.endswith(".wav") and path.name[0].isalnum()
    assert all(c.isascii() and (c.isalnum() or c in "_-.") for c in path.name)


# --- retention ----------------------------------------------------------------------------------

NOW = datetime(2026, 12, 31, 12, 0, tzinfo=UTC)


def make(path: Path, age: timedelta) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF")
    t = (NOW - age).timestamp()
    os.utime(path, (t, t))
    return path


def test_sweep_removes_old_recordings_stale_partials_and_empty_day_folders(tmp_path: Path) -> None:
    old = make(tmp_path / "2026-11-20" / "CAold.wav", timedelta(days=41))
    old_sibling = make(tmp_path / "2026-11-20" / "CAold2.wav", timedelta(days=40, hours=23))
    kept = make(tmp_path / "2026-12-10" / "CAkept.wav", timedelta(days=21))
    edge = make(tmp_path / "2026-12-01" / "CAedge.wav", timedelta(days=29, hours=23))
    stale = make(tmp_path / "2026-12-29" / "CAcrashed.wav.partial", timedelta(days=2))
    live = make(tmp_path / "2026-12-31" / "CAlive.wav.partial", timedelta(minutes=5))
    foreign = make(tmp_path / "2026-11-21" / "notes.txt", timedelta(days=60))
    other_dir = make(tmp_path / "exports" / "CAx.wav", timedelta(days=90))
    (tmp_path / "2026-12-30").mkdir()  # yesterday, empty: a writer may be about to use it

    assert sweep_recordings(tmp_path, 30, NOW) == 3
    assert not old.exists() and not old_sibling.exists() and not stale.exists()
    assert kept.exists() and edge.exists() and live.exists()
    assert foreign.exists() and other_dir.exists()
    assert not (tmp_path / "2026-11-20").exists()  # emptied: removed
    assert not (tmp_path / "2026-12-29").exists()
    assert (tmp_path / "2026-11-21").exists()  # holds a file that is not ours
    assert (tmp_path / "2026-12-30").exists() and (tmp_path / "2026-12-31").exists()
    assert sweep_recordings(tmp_path, 30, NOW) == 0  # nothing left to do


def test_sweep_respects_retention_to_the_hour(tmp_path: Path) -> None:
    inside = make(tmp_path / "2026-12-01" / "CAin.wav", timedelta(days=29, hours=23))
    outside = make(tmp_path / "2026-12-01" / "CAout.wav", timedelta(days=30, hours=1))
    assert sweep_recordings(tmp_path, 30, NOW) == 1
    assert inside.exists() and not outside.exists()


def test_sweep_does_not_follow_symlinks(tmp_path: Path) -> None:
    elsewhere = make(tmp_path / "elsewhere" / "2026-01-01" / "CAx.wav", timedelta(days=300))
    root = tmp_path / "recordings"
    root.mkdir()
    (root / "2026-01-01").symlink_to(elsewhere.parent)
    make(root / "2026-01-02" / "CAy.wav", timedelta(days=300))
    (root / "2026-01-02" / "CAlink.wav").symlink_to(elsewhere)
    assert sweep_recordings(root, 30, NOW) == 1
    assert elsewhere.exists()


def test_sweep_of_a_missing_folder_is_a_no_op(tmp_path: Path) -> None:
    assert sweep_recordings(tmp_path / "never-created", 30, NOW) == 0


@pytest.mark.parametrize("days", [0, -1, float("nan")])
def test_sweep_refuses_a_retention_that_would_delete_everything(
    tmp_path: Path, days: float
) -> None:
    with pytest.raises(ValueError, match="retention_days"):
        sweep_recordings(tmp_path, days, NOW)


def test_sweep_wants_an_aware_now(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        sweep_recordings(tmp_path, 30, datetime(2026, 12, 31))
