"""Call recording end to end: the gateway's stereo WAV holds what the caller said (left) and what
the caller heard (right), aligned, including a barge-in that cut the assistant off."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from gateway.app import gateway_state
from gateway.loadtest.caller import BargeIn, CallOptions, Say, SimulatedCall, WaitForAnswer
from gateway.numbers import ProfileStore
from gateway.service import running_gateway
from gateway.settings import Settings
from tests.support import wait_all_ended

pytestmark = pytest.mark.timeout(120)

PROFILES = """
default:
  greeting: "Say hello and tell the caller about our opening hours in three sentences."
numbers:
  "+15551230005":
    record: true
"""


def _read_wav(path: Path) -> npt.NDArray[np.int16]:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 8000)
        data = wav.readframes(wav.getnframes())
    return np.frombuffer(data, dtype="<i2").reshape(-1, 2)


def _envelope(x: npt.NDArray[np.float64], window: int = 800) -> npt.NDArray[np.float64]:
    n = len(x) // window
    return np.sqrt((x[: n * window].reshape(n, window) ** 2).mean(axis=1))


def _best_lag(
    a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], max_lag: int
) -> tuple[int, float]:
    """The shift of ``b`` against ``a`` with the highest normalised correlation."""
    best = (0, -1.0)
    for lag in range(-max_lag, max_lag + 1):
        x = a[max(0, lag) : len(a) + min(0, lag)]
        y = b[max(0, -lag) : len(b) + min(0, -lag)]
        n = min(len(x), len(y))
        x, y = x[:n], y[:n]
        denom = float(np.linalg.norm(x) * np.linalg.norm(y)) or 1.0
        score = float(np.dot(x, y)) / denom
        if score > best[1]:
            best = (lag, score)
    return best


async def test_the_recording_is_what_was_said_and_heard(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(PROFILES)
    recordings = tmp_path / "recordings"
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        profiles_file=profiles,
        recordings_dir=recordings,
        records_path=tmp_path / "calls.sqlite3",
    )
    script = [
        BargeIn(Say.from_text("Sorry to interrupt, are you open on Sunday?")),
        WaitForAnswer(),
    ]
    async with running_gateway(
        settings, port=0, emulator_options={"latency_ms": 100.0}, profiles=ProfileStore(profiles)
    ) as gw:
        plain = await SimulatedCall(
            [WaitForAnswer()], CallOptions(webhook_url=f"{gw.url}/twilio/voice")
        ).run()
        result = await SimulatedCall(
            script,
            CallOptions(
                webhook_url=f"{gw.url}/twilio/voice", to_number="+15551230005", record_audio=True
            ),
        ).run()
        await wait_all_ended(gw)
        state = gateway_state(gw.app)
        summaries = {s["call_sid"]: s for s in state.recent}
        metrics = state.metrics.render().decode()

    assert plain.ok and result.ok, result.failure_detail
    assert result.clears_received >= 1  # the barge-in cut the greeting off
    files = sorted(recordings.rglob("*.wav"))
    assert [f.name for f in files] == [f"{result.call_sid}.wav"]  # only the recording profile
    assert not list(recordings.rglob("*.partial"))
    assert 'gateway_recordings_total{result="saved"} 1.0' in metrics
    assert summaries[result.call_sid]["outcome"] == "completed"

    recorded = _read_wav(files[0]).astype(np.float64)
    heard = result.stereo_pcm16().astype(np.float64)
    # Left: the caller's audio, placed at its media timestamps: sample-exact.
    n = min(len(recorded), len(heard))
    assert np.array_equal(recorded[:n, 0], heard[:n, 0])
    # Right: the assistant as the caller heard it. The gateway places audio when it sends it;
    # the caller plays it when it arrives, through a playout buffer: the two agree on the
    # loudness envelope (100 ms windows) within a frame or two.
    env_heard, env_recorded = _envelope(heard[:, 1]), _envelope(recorded[:, 1])
    lag, score = _best_lag(env_heard, env_recorded, max_lag=3)
    assert score > 0.9 and abs(lag) <= 1, (lag, score)  # 0.975 measured
    # What the barge-in cleared was not heard, and is not in the recording: from the clear to
    # the next answer the right channel is silent.
    clear = next(e.t_ms for e in result.timeline if e.kind == "clear")
    answer = [e.t_ms for e in result.timeline if e.kind == "assistant_start"][1]
    cut = recorded[int((clear + 60) * 8) : int((answer - 60) * 8), 1]
    assert len(cut) > 8000 and int(np.abs(cut).max()) < 300
    before = recorded[int((clear - 300) * 8) : int(clear * 8), 1]
    assert int(np.abs(before).max()) > 1000  # and it was speaking right up to the clear
