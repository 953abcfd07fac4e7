"""CallerAudioTrack pacing and queueing, RemoteAudioReader conversion, and both over a real
aiortc peer pair on loopback (Opus and PCMU)."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
from collections.abc import AsyncIterator, Callable

import numpy as np
import numpy.typing as npt
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, Packet

from gateway.errors import AudioFormatError
from gateway.realtime.tracks import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    CallerAudioTrack,
    RemoteAudioReader,
)


class FakeTime:
    """A monotonic clock that moves only when the track waits (or the test says so).

    ``call_later`` stands in for the event loop's: it records the wait, moves the clock to the
    deadline and runs the callback on the next loop iteration.
    """

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.Handle:
        self.sleeps.append(round(delay, 6))
        self.now += delay
        return asyncio.get_running_loop().call_soon(callback)


def tone(n_frames: int, freq: float = 440.0, rate: int = SAMPLE_RATE) -> npt.NDArray[np.int16]:
    t = np.arange(n_frames * rate // 50) / rate
    return (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def frames_of(pcm: npt.NDArray[np.int16], size: int = FRAME_SAMPLES) -> list[npt.NDArray[np.int16]]:
    return [pcm[i : i + size] for i in range(0, pcm.size - size + 1, size)]


def numbered(i: int) -> npt.NDArray[np.int16]:
    """A loud frame (speech, never skipped as quiet) that :func:`label` reads back as ``i``."""
    return np.full(FRAME_SAMPLES, 1000 * i, dtype=np.int16)


def label(frame: AudioFrame) -> int:
    """Which :func:`numbered` frame this is (0: silence)."""
    return int(samples_of(frame)[0]) // 1000


def samples_of(frame: AudioFrame) -> npt.NDArray[np.int16]:
    return frame.to_ndarray().reshape(-1).astype(np.int16)


def paced_track(ft: FakeTime, **kwargs: object) -> CallerAudioTrack:
    """A track on the fake clock; ``grace=0`` unless a test says otherwise, so that silence goes
    out exactly at each due time and the pacing arithmetic stays readable."""
    kwargs.setdefault("grace", 0.0)
    return CallerAudioTrack(clock=ft.clock, call_later=ft.call_later, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------ caller track, unit


async def test_frames_come_out_in_order_with_contiguous_timestamps() -> None:
    ft = FakeTime()
    track = paced_track(ft)
    for i in range(1, 3):
        track.push(numbered(i))
    frames = [await track.recv() for _ in range(4)]
    assert [label(f) for f in frames] == [1, 2, 0, 0]  # then silence
    assert [f.pts for f in frames] == [0, 480, 960, 1440]
    for f in frames:
        assert f.sample_rate == SAMPLE_RATE
        assert f.samples == FRAME_SAMPLES
        assert f.layout.name == "mono"
        assert f.format.name == "s16"
    assert track.stats.audio_frames == 2
    assert track.stats.silence_frames == 2
    assert track.stats.frames_sent == 4


async def test_paced_every_20_ms_by_timestamp() -> None:
    ft = FakeTime()
    track = paced_track(ft, target_frames=2)
    for _ in range(5):
        await track.recv()  # silence: one frame per 20 ms, the first at once
    assert ft.sleeps == [0.02] * 4


async def test_a_pushed_frame_goes_out_at_once_not_at_the_next_tick() -> None:
    ft = FakeTime()
    seen: list[float] = []
    track = paced_track(ft, on_handoff=seen.append)
    await track.recv()  # silence at 100.000; the next frame is due at 100.020
    ft.now += 0.005  # the carrier's frame arrives 5 ms later (any phase)
    track.push(numbered(7))
    frame = await track.recv()
    assert label(frame) == 7
    assert ft.sleeps == []  # not held back 15 ms for the tick
    assert seen == [0.0]
    assert frame.pts == 480  # timestamps stay contiguous


async def test_frames_never_run_more_than_one_frame_ahead() -> None:
    ft = FakeTime()
    track = paced_track(ft, target_frames=50)  # no catch-up: plain real-time pacing
    for i in range(1, 5):
        track.push(numbered(i))  # a burst of four frames at 100.000
    out = [label(await track.recv()) for _ in range(4)]
    assert out == [1, 2, 3, 4]
    # 1 is due now and 2 may lead it by a frame; 3 and 4 wait for their turn
    assert ft.sleeps == [0.02, 0.02]


class _StoppedClock:
    """``call_later`` that never fires: only a push (or stop) can end the wait."""

    def __init__(self) -> None:
        self.handles: list[asyncio.TimerHandle] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        handle = asyncio.get_running_loop().call_later(3600, callback)
        self.handles.append(handle)
        return handle


async def test_a_waiting_recv_wakes_when_a_frame_is_pushed() -> None:
    clock = _StoppedClock()
    track = CallerAudioTrack(clock=lambda: 100.0, call_later=clock.call_later, grace=0.0)
    await asyncio.wait_for(track.recv(), 5)  # silence; the next is due on a clock that never moves
    pending = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    assert not pending.done()  # waiting for the due time
    track.push(numbered(3))
    frame = await asyncio.wait_for(pending, 5)
    assert label(frame) == 3
    assert all(h.cancelled() for h in clock.handles)  # no timer left behind
    waiting = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    track.stop()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(waiting, 5)


async def test_a_frame_a_little_late_still_gets_its_slot() -> None:
    ft = FakeTime()
    track = paced_track(ft, grace=0.02)
    track.push(numbered(1))
    await track.recv()  # at 100.000; frame 2 is due at 100.020
    ft.now += 0.030  # it arrives 10 ms late: within the grace, no silence was inserted
    track.push(numbered(2))
    assert label(await track.recv()) == 2
    assert track.stats.silence_frames == 0


async def test_silence_fills_a_slot_only_after_the_grace() -> None:
    ft = FakeTime()
    track = paced_track(ft, grace=0.02)
    track.push(numbered(1))
    await track.recv()  # 100.000; the next is due at 100.020
    assert label(await track.recv()) == 0  # nothing by 100.040: silence fills the slot
    assert ft.now == pytest.approx(100.04)
    assert track.stats.silence_frames == 1


async def test_a_quiet_frame_wins_back_a_slot_given_to_silence() -> None:
    # With no lead, frames pushed before their due time wait for it: that models the clock
    # being a frame ahead of the carrier after a hiccup.
    ft = FakeTime()
    track = paced_track(ft, lead=0.0)
    track.push(numbered(1))
    await track.recv()  # audio at 100.000
    assert label(await track.recv()) == 0  # 100.020: the carrier is late, silence fills in
    track.push(np.full(FRAME_SAMPLES, 20, dtype=np.int16))  # quiet: the caller is not speaking
    track.push(numbered(3))
    frame = await track.recv()
    assert label(frame) == 3  # the quiet frame gave the slot back
    assert ft.now == pytest.approx(100.04)
    assert track.stats.quiet_skipped == 1
    track.push(np.full(FRAME_SAMPLES, 20, dtype=np.int16))  # the debt is paid: kept
    assert label(await track.recv()) == 0 and track.stats.quiet_skipped == 1


async def test_audio_pushed_ahead_without_a_hiccup_is_never_altered() -> None:
    ft = FakeTime()
    track = paced_track(ft, lead=0.0)
    for _ in range(10):
        await track.recv()  # idle silence before the caller's audio starts: no debt
    quiet = np.full(FRAME_SAMPLES, 20, dtype=np.int16)
    for frame in (numbered(1), quiet, quiet, numbered(2)):
        track.push(frame)  # a producer that runs ahead of real time
    out = [int(samples_of(await track.recv())[0]) for _ in range(4)]
    assert out == [1000, 20, 20, 2000]
    assert track.stats.quiet_skipped == 0


async def test_speech_is_never_skipped_to_catch_up() -> None:
    ft = FakeTime()
    track = paced_track(ft, grace=0.0, target_frames=50)
    for i in range(1, 5):
        track.push(numbered(i))
    out = [label(await track.recv()) for _ in range(4)]
    assert out == [1, 2, 3, 4]  # loud frames wait for their slot; nothing is lost
    assert track.stats.quiet_skipped == 0


async def test_no_drift_when_the_caller_is_a_little_late() -> None:
    ft = FakeTime()
    track = paced_track(ft)
    await track.recv()
    ft.now += 0.025  # the sender came back 25 ms later (due was +20 ms)
    await track.recv()  # late by 5 ms: no sleep
    await track.recv()  # next due at +40 ms, now is +25 ms: sleeps 15 ms, not 20
    assert ft.sleeps == [0.015]


async def test_stall_resyncs_instead_of_bursting() -> None:
    ft = FakeTime()
    track = paced_track(ft, max_lateness=0.06)
    await track.recv()
    ft.now += 0.5  # event loop stalled for half a second
    await track.recv()
    await track.recv()
    assert track.stats.late_resyncs == 1
    assert ft.sleeps == [0.02]  # the next frame is paced normally, no burst of 25 frames


async def test_backlog_is_drained_faster_than_real_time_then_paced() -> None:
    ft = FakeTime()
    track = paced_track(ft, target_frames=2, catch_up=2.0)
    for i in range(1, 7):
        track.push(numbered(i))  # six frames queued (a setup backlog)
    out = [label(await track.recv()) for _ in range(6)]
    assert out == [1, 2, 3, 4, 5, 6]  # nothing lost
    # 1 goes at once, 2 and 3 may lead the clock by a frame; while the queue holds more than
    # 2 the clock advances 10 ms per frame (4 after 10 ms), then 20 ms per frame
    assert ft.sleeps == [0.01, 0.02, 0.02]
    assert track.stats.catch_up_frames == 3


async def test_full_queue_drops_oldest_and_counts() -> None:
    ft = FakeTime()
    drops: list[None] = []
    track = paced_track(ft, max_frames=3, target_frames=1, on_drop=lambda: drops.append(None))
    for i in range(1, 6):
        track.push(numbered(i))
    assert track.queued_frames == 3
    assert track.stats.dropped == 2
    assert len(drops) == 2  # reported as they happen (the gateway counts them in a metric)
    out = [label(await track.recv()) for _ in range(3)]
    assert out == [3, 4, 5]


async def test_clear_drops_queued_audio_and_sends_silence() -> None:
    ft = FakeTime()
    track = paced_track(ft)
    for i in range(1, 4):
        track.push(numbered(i))
    assert track.clear() == 3
    assert track.stats.cleared == 3
    assert not samples_of(await track.recv()).any()


async def test_handoff_latency_is_reported_per_audio_frame() -> None:
    ft = FakeTime()
    seen: list[float] = []
    track = paced_track(ft, on_handoff=seen.append)
    track.push(numbered(1), received_at=ft.now - 0.005)
    await track.recv()
    await track.recv()  # silence: no report
    assert seen == [pytest.approx(0.005)]


async def test_push_rejects_wrong_frames() -> None:
    track = CallerAudioTrack()
    with pytest.raises(AudioFormatError, match="480 int16"):
        track.push(np.zeros(160, dtype=np.int16))
    with pytest.raises(AudioFormatError, match="float32"):
        track.push(np.zeros(480, dtype=np.float32))
    track.stop()


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="max_frames"):
        CallerAudioTrack(max_frames=0)
    with pytest.raises(ValueError, match="target_frames"):
        CallerAudioTrack(max_frames=2, target_frames=3)
    with pytest.raises(ValueError, match="catch_up"):
        CallerAudioTrack(catch_up=0.5)


async def test_stopped_track_ends_recv_and_ignores_pushes() -> None:
    track = CallerAudioTrack()
    track.push(numbered(1))
    track.stop()
    assert track.queued_frames == 0
    track.push(numbered(2))
    assert track.queued_frames == 0
    with pytest.raises(MediaStreamError):
        await track.recv()


# ------------------------------------------------------------------ remote reader, unit


class _FrameSource(MediaStreamTrack):
    kind = "audio"

    def __init__(self, frames: list[AudioFrame]) -> None:
        super().__init__()
        self._frames = list(frames)

    async def recv(self) -> AudioFrame:
        if not self._frames:
            raise MediaStreamError
        return self._frames.pop(0)


def make_frame(pcm: npt.NDArray[np.int16], rate: int, channels: int) -> AudioFrame:
    layout = "stereo" if channels == 2 else "mono"
    frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout=layout)
    frame.sample_rate = rate
    return frame


def dominant_hz(pcm: npt.NDArray[np.int16], rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(pcm.size)))
    return float(np.argmax(spectrum) * rate / pcm.size)


def test_opus_shaped_48k_stereo_becomes_24k_mono_frames() -> None:
    reader = RemoteAudioReader(_FrameSource([]))
    mono48 = tone(10, rate=48000)
    stereo = np.repeat(mono48, 2)  # interleaved L, R
    out: list[npt.NDArray[np.int16]] = []
    for chunk in frames_of(stereo, 960 * 2):
        out += reader.convert(make_frame(chunk, 48000, 2))
    assert len(out) == 10
    assert all(f.shape == (FRAME_SAMPLES,) and f.dtype == np.int16 for f in out)
    joined = np.concatenate(out)
    assert dominant_hz(joined) == pytest.approx(440, abs=5)
    # level kept through downmix and resampling (8000 peak sine -> ~5657 RMS)
    assert np.sqrt(np.mean(joined[100:].astype(np.float64) ** 2)) == pytest.approx(5657, rel=0.03)


def test_pcmu_shaped_8k_mono_becomes_24k_frames() -> None:
    reader = RemoteAudioReader(_FrameSource([]))
    pcm8 = tone(5, rate=8000)
    out: list[npt.NDArray[np.int16]] = []
    for chunk in frames_of(pcm8, 160):
        got = reader.convert(make_frame(chunk, 8000, 1))
        assert len(got) == 1  # one 20 ms frame in, one out, from the first frame on
        out += got
    assert dominant_hz(np.concatenate(out)) == pytest.approx(440, abs=5)


def test_odd_frame_durations_are_reframed_without_loss() -> None:
    one = RemoteAudioReader(_FrameSource([]))
    split = RemoteAudioReader(_FrameSource([]))
    stereo = np.repeat(tone(6, rate=48000), 2)
    whole = np.concatenate(one.convert(make_frame(stereo, 48000, 2)))
    parts: list[npt.NDArray[np.int16]] = []
    for chunk in frames_of(stereo, 480 * 2):  # 10 ms Opus frames
        parts += split.convert(make_frame(chunk, 48000, 2))
    assert all(p.shape == (FRAME_SAMPLES,) for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_format_change_switches_resampler() -> None:
    reader = RemoteAudioReader(_FrameSource([]))
    reader.convert(make_frame(np.zeros(1920, np.int16), 48000, 2))
    out = reader.convert(make_frame(np.zeros(160, np.int16), 8000, 1))
    assert len(out) == 1
    assert reader.stats.format_changes == 1


def test_24k_mono_passes_through_unchanged() -> None:
    reader = RemoteAudioReader(_FrameSource([]))
    pcm = tone(2)
    out = reader.convert(make_frame(pcm, SAMPLE_RATE, 1))
    np.testing.assert_array_equal(np.concatenate(out), pcm)


def test_non_s16_is_refused() -> None:
    reader = RemoteAudioReader(_FrameSource([]))
    frame = AudioFrame.from_ndarray(np.zeros((1, 480), np.float32), format="flt", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    with pytest.raises(AudioFormatError, match="flt"):
        reader.convert(frame)


async def test_reader_iterates_until_the_track_ends() -> None:
    frames = [make_frame(np.zeros(1920, np.int16), 48000, 2) for _ in range(3)]
    ticks = iter([1.0, 2.0, 3.0])
    reader = RemoteAudioReader(_FrameSource(frames), clock=lambda: next(ticks))
    got = [(f.shape, at) async for f, at in reader]
    assert got == [((FRAME_SAMPLES,), 1.0), ((FRAME_SAMPLES,), 2.0), ((FRAME_SAMPLES,), 3.0)]


# ------------------------------------------------------------------ over a real peer pair


@contextlib.asynccontextmanager
async def peer_pair(
    track: CallerAudioTrack, codec: str | None = None
) -> AsyncIterator[MediaStreamTrack]:
    """Connect a sender carrying ``track`` to a receiver; yield the receiver's remote track."""
    sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    receiver = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        remote: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

        @receiver.on("track")
        def on_track(t: MediaStreamTrack) -> None:
            if not remote.done():
                remote.set_result(t)

        transceiver = sender.addTransceiver(track, direction="sendonly")
        if codec is not None:
            caps = RTCRtpSender.getCapabilities("audio")
            transceiver.setCodecPreferences([c for c in caps.codecs if c.mimeType == codec])
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        yield await asyncio.wait_for(remote, 10)
    finally:
        await sender.close()
        await receiver.close()


async def collect_tone(reader: RemoteAudioReader, want: int) -> npt.NDArray[np.int16]:
    """Read frames until ``want`` consecutive loud frames arrived; return them."""
    loud: list[npt.NDArray[np.int16]] = []
    async for frame, _ in reader:
        if np.abs(frame).max() > 2000:
            loud.append(frame)
            if len(loud) == want:
                break
        elif loud:
            loud.clear()
    return np.concatenate(loud)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("codec", "decoded"), [(None, (48000, 2)), ("audio/PCMU", (8000, 1))])
async def test_audio_crosses_a_real_peer_connection(
    codec: str | None, decoded: tuple[int, int]
) -> None:
    track = CallerAudioTrack()
    async with peer_pair(track, codec) as remote:
        reader = RemoteAudioReader(remote)
        for frame in frames_of(tone(25, 440.0)):
            track.push(frame)  # half a second at once: drained at twice real time, none lost
        got = await asyncio.wait_for(collect_tone(reader, 15), 20)
        assert dominant_hz(got) == pytest.approx(440, abs=10)
        assert reader.decoded_format == decoded
        assert track.stats.dropped == 0
        assert track.stats.audio_frames + track.queued_frames == 25
    assert track.readyState == "ended"


@pytest.mark.timeout(30)
async def test_empty_queue_sends_silence_over_the_wire() -> None:
    track = CallerAudioTrack()
    async with peer_pair(track) as remote:
        reader = RemoteAudioReader(remote)
        got = 0
        async for frame, _ in reader:
            assert np.abs(frame).max() < 50
            got += 1
            if got == 10:
                break
        assert track.stats.silence_frames >= 10
        assert track.stats.audio_frames == 0


@pytest.mark.timeout(30)
async def test_reader_ends_when_the_connection_closes() -> None:
    track = CallerAudioTrack()
    async with peer_pair(track) as remote:
        reader = RemoteAudioReader(remote)
        frames = aiter(reader)
        await asyncio.wait_for(anext(frames), 10)
    # both peers are closed now: the remote track ends and so does iteration
    with pytest.raises(StopAsyncIteration):
        while True:
            await asyncio.wait_for(anext(frames), 10)


# ------------------------------------------------------------------ caller track, G.711 leg


async def test_a_g711_track_hands_aiortc_the_pushed_bytes_as_packets_on_an_8k_clock() -> None:
    ft = FakeTime()
    track = paced_track(ft, codec="pcmu")
    frames = [bytes([i]) * 160 for i in (1, 2)]
    for f in frames:
        track.push(f)
    out = [await track.recv() for _ in range(3)]
    assert all(isinstance(p, Packet) for p in out)
    assert [bytes(p) for p in out] == [*frames, b"\xff" * 160]  # then μ-law silence
    assert [p.pts for p in out] == [0, 160, 320]
    assert all(p.time_base == fractions.Fraction(1, 8000) for p in out)
    assert track.stats.audio_frames == 2 and track.stats.silence_frames == 1
    alaw = paced_track(FakeTime(), codec="pcma")
    assert bytes(await alaw.recv()) == b"\xd5" * 160  # A-law silence
    with pytest.raises(AudioFormatError, match="160 bytes"):
        track.push(b"\xff" * 80)
    with pytest.raises(AudioFormatError, match="480 int16"):
        paced_track(FakeTime()).push(b"\xff" * 160)  # bytes on an Opus leg


async def test_a_quiet_g711_frame_wins_back_a_slot_given_to_silence() -> None:
    # as the PCM test above: no lead models the clock a frame ahead of the carrier
    ft = FakeTime()
    track = paced_track(ft, lead=0.0, codec="pcmu")
    loud, quiet = b"\x10" * 160, b"\xfe" * 160  # μ-law: 0x10 is loud, 0xfe is almost zero
    track.push(loud)
    await track.recv()
    assert bytes(await track.recv()) == b"\xff" * 160  # the carrier is late: silence
    track.push(quiet)
    track.push(loud)
    assert bytes(await track.recv()) == loud and track.stats.quiet_skipped == 1


async def test_an_opus_track_encodes_itself_once_told_the_leg_is_opus() -> None:
    from aiortc.codecs.opus import OpusDecoder
    from aiortc.jitterbuffer import JitterFrame

    ft = FakeTime()
    track = paced_track(ft)
    track.encode_opus()
    pcm = tone(10, 440.0)
    for f in frames_of(pcm):
        track.push(f)
    out = [await track.recv() for _ in range(10)]
    assert all(isinstance(p, Packet) for p in out)
    assert [p.pts for p in out] == [960 * i for i in range(10)]  # Opus's 48 kHz RTP clock
    assert all(p.time_base == fractions.Fraction(1, 48000) for p in out)
    decoder = OpusDecoder()  # what the far end does with them
    decoded = [
        f.to_ndarray().reshape(-1)[::2]  # left channel of 48 kHz stereo
        for i, p in enumerate(out)
        for f in decoder.decode(JitterFrame(bytes(p), 960 * i))
    ]
    assert dominant_hz(np.concatenate(decoded[3:]).astype(np.int16), 48000) == pytest.approx(
        440, abs=10
    )
    with pytest.raises(ValueError, match=r"G\.711"):
        paced_track(FakeTime(), codec="pcmu").encode_opus()


def test_the_rtp_timeline_finds_losses_and_ignores_discontinuities() -> None:
    from gateway.realtime.tracks import RtpTimeline

    t = RtpTimeline(8000)
    assert t.lost_before(1000, 160) == 0
    assert t.lost_before(1160, 160) == 0  # in sequence
    assert t.lost_before(1640, 160) == 320  # two 20 ms packets missing
    assert t.lost_before(1800 + 8000, 160) == 0  # a second's jump: a new spurt, not a loss
    assert t.lost_before((2**32 - 80) & 0xFFFFFFFF, 160) == 0  # far behind: not a loss either
    assert t.lost_before(80, 160) == 0  # across the 32-bit wrap, in sequence
    assert t.lost_ticks == 320


@pytest.mark.parametrize("codec", ["opus", "pcmu"])
def test_the_rtp_decoder_decodes_at_the_codecs_rate_and_fills_losses(codec: str) -> None:
    from gateway.audio.g711 import array_to_ulaw
    from gateway.realtime.tracks import RtpDecoder

    decoder = RtpDecoder(codec)  # type: ignore[arg-type]
    if codec == "opus":
        track = paced_track(FakeTime())
        track.encode_opus()
        pcm = tone(6, 440.0)
        payloads = []
        for f in frames_of(pcm):
            track.push(f)
        payloads = [bytes(p) for p in [asyncio.run(track.recv()) for _ in range(6)]]
        ticks = 960
    else:
        pcm8k = tone(6, 440.0, rate=8000)
        payloads = [array_to_ulaw(pcm8k[i : i + 160]) for i in range(0, 960, 160)]
        ticks = 160
    assert decoder.rate == (48000 if codec == "opus" else 8000)
    out = [decoder.decode(p, i * ticks) for i, p in enumerate(payloads) if i != 3]
    assert [x.size for x in out] == [ticks] * 3 + [2 * ticks, ticks]  # silence for packet 3
    assert not out[3][:ticks].any()
