from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway.audio.g711 import (
    ULAW_SILENCE,
    array_to_ulaw,
    pcm16_to_ulaw,
    ulaw_to_array,
    ulaw_to_pcm16,
)
from gateway.audio.resample import StreamResampler
from gateway.audio.transcoder import CallTranscoder
from gateway.audio.tts import resample_buffer
from gateway.errors import AudioFormatError

Int16Array = npt.NDArray[np.int16]


def split(data: st.DataObject, n: int) -> list[tuple[int, int]]:
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=15), label="cuts"))
    return list(zip([0, *cuts], [*cuts, n], strict=True))


def snr_db(ref: Int16Array, out: Int16Array) -> float:
    a, b = ref.astype(np.float64), out.astype(np.float64)
    return float(10 * np.log10(np.sum(a**2) / max(np.sum((b - a) ** 2), 1e-12)))


def test_frame_constants() -> None:
    assert CallTranscoder.FRAME_MS == 20
    assert CallTranscoder.CARRIER_FRAME_BYTES == 160
    assert CallTranscoder.MODEL_FRAME_SAMPLES == 480


def test_delays_are_within_the_live_budget() -> None:
    t = CallTranscoder()
    assert t.from_caller_delay_ms <= 3.0 and t.to_caller_delay_ms <= 3.0


@pytest.mark.timeout(60)
def test_each_carrier_frame_gives_one_model_frame_for_10000_frames(
    speech_8k: Int16Array,
) -> None:
    ulaw = pcm16_to_ulaw(np.resize(speech_8k, 10_000 * 160).astype("<i2").tobytes())
    t = CallTranscoder()
    out = []
    for i in range(0, len(ulaw), 160):
        frames = t.from_caller(ulaw[i : i + 160])
        assert len(frames) == 1 and frames[0].shape == (480,) and frames[0].dtype == np.int16
        out.append(frames[0])
        assert t.pending_from_caller_samples == 0
    expected = StreamResampler(8000, 24000).process(ulaw_to_array(ulaw))
    assert np.array_equal(np.concatenate(out), expected)


@pytest.mark.timeout(60)
def test_each_model_frame_gives_one_carrier_frame_for_10000_frames(
    speech_24k: Int16Array,
) -> None:
    pcm = np.resize(speech_24k, 10_000 * 480)
    t = CallTranscoder()
    out = []
    for i in range(0, pcm.size, 480):
        frames = t.to_caller(pcm[i : i + 480])
        assert len(frames) == 1 and len(frames[0]) == 160
        out.append(frames[0])
        assert t.pending_to_caller_samples == 0
    assert b"".join(out) == array_to_ulaw(StreamResampler(24000, 8000).process(pcm))


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=1200), data=st.data())
def test_from_caller_framing_does_not_depend_on_payload_sizes(
    payload: bytes, data: st.DataObject
) -> None:
    t = CallTranscoder()
    frames: list[Int16Array] = []
    for a, b in split(data, len(payload)):
        frames += t.from_caller(payload[a:b])
    assert all(f.shape == (480,) and f.dtype == np.int16 for f in frames)
    assert len(frames) == len(payload) // 160  # 3 samples out per byte in
    assert t.pending_from_caller_samples == len(payload) * 3 % 480
    whole = CallTranscoder().from_caller(payload)
    assert len(whole) == len(frames)
    assert all(np.array_equal(f, g) for f, g in zip(frames, whole, strict=True))


@settings(max_examples=60, deadline=None)
@given(pcm=hnp.arrays(np.int16, st.integers(0, 3000)), data=st.data())
def test_to_caller_framing_does_not_depend_on_chunk_sizes(
    pcm: Int16Array, data: st.DataObject
) -> None:
    t = CallTranscoder()
    frames: list[bytes] = []
    for a, b in split(data, pcm.size):
        frames += t.to_caller(pcm[a:b])
    narrow = -(-pcm.size // 3)
    assert all(len(f) == 160 for f in frames)
    assert len(frames) == narrow // 160
    assert t.pending_to_caller_samples == narrow % 160
    assert frames == CallTranscoder().to_caller(pcm)


@settings(max_examples=40, deadline=None)
@given(pcm=hnp.arrays(np.int16, st.integers(1, 2000)))
def test_flush_ends_the_response_as_if_silence_followed(pcm: Int16Array) -> None:
    t = CallTranscoder()
    frames = t.to_caller(pcm)
    last = t.flush_to_caller()
    assert last is not None and len(last) == 160
    # Reference: the same response followed by plenty of silence, cut after the same frame.
    padded = np.concatenate((pcm, np.zeros(480 * 3, dtype=np.int16)))
    expected = CallTranscoder().to_caller(padded)
    assert [*frames, last] == expected[: len(frames) + 1]
    assert t.pending_to_caller_samples == 0
    assert t.flush_to_caller() is None  # nothing left to end


def test_flush_with_nothing_sent_returns_none() -> None:
    t = CallTranscoder()
    assert t.flush_to_caller() is None
    t.to_caller(np.zeros(480, dtype=np.int16))  # silence leaves no tail
    assert t.flush_to_caller() is None


def test_flush_on_a_frame_boundary_still_delivers_the_filter_tail() -> None:
    t = CallTranscoder()
    loud = np.full(480, 20000, dtype=np.int16)
    assert len(t.to_caller(loud)) == 1 and t.pending_to_caller_samples == 0
    last = t.flush_to_caller()
    assert last is not None and len(last) == 160
    pcm = ulaw_to_array(last)
    assert pcm[0] > 5000  # the last ~2 ms of the response, still in the filter
    assert np.all(pcm[40:] == 0)  # then silence


def test_flush_pads_a_remainder_with_mu_law_silence() -> None:
    t = CallTranscoder()
    assert t.to_caller(np.full(150, 8000, dtype=np.int16)) == []
    assert t.pending_to_caller_samples == 50
    last = t.flush_to_caller()
    assert last is not None and len(last) == 160
    # the step's filter tail ends <= 33 samples after the audio; then μ-law silence
    assert last.endswith(bytes([ULAW_SILENCE]) * 70)


def test_flush_after_trailing_silence_pads_without_running_the_filter() -> None:
    pcm = np.concatenate((np.full(150, 8000, dtype=np.int16), np.zeros(300, dtype=np.int16)))
    t = CallTranscoder()
    assert t.to_caller(pcm) == []
    held = t.pending_to_caller_samples
    assert held == 150
    last = t.flush_to_caller()
    assert last is not None
    assert last == array_to_ulaw(StreamResampler(24000, 8000).process(pcm)) + bytes(
        [ULAW_SILENCE]
    ) * (160 - held)


def test_reset_to_caller_starts_the_next_response_clean(speech_24k: Int16Array) -> None:
    loud = np.argmax(np.abs(speech_24k))
    interrupted = speech_24k[loud - 1000 : loud + 250]  # cut mid-word, mid-frame
    nxt = speech_24k[loud + 5000 : loud + 5000 + 4800]
    t = CallTranscoder()
    t.to_caller(interrupted)
    assert t.pending_to_caller_samples > 0
    t.reset_to_caller()
    assert t.pending_to_caller_samples == 0
    fresh = CallTranscoder().to_caller(nxt)
    assert t.to_caller(nxt) == fresh  # bit for bit as if the call had just started
    # Without the reset the old response would leak into the new one's first frame.
    dirty = CallTranscoder()
    dirty.to_caller(interrupted)
    leaked = dirty.to_caller(nxt)
    assert leaked[0] != fresh[0]


def test_reset_to_caller_also_clears_the_48k_path() -> None:
    stereo = np.full(1900, 25000, dtype=np.int16)
    t = CallTranscoder()
    t.to_caller_48k(stereo, channels=2)
    t.reset_to_caller()
    assert t.flush_to_caller() is None
    quiet = (np.arange(1920, dtype=np.int16) % 64) * 8
    assert t.to_caller_48k(quiet, channels=2) == CallTranscoder().to_caller_48k(quiet, channels=2)


def test_to_caller_48k_is_the_direct_resampler_framed(speech_48k: Int16Array) -> None:
    stereo = np.stack([speech_48k, speech_48k // 2], axis=1).reshape(-1)
    t = CallTranscoder()
    frames = []
    for i in range(0, stereo.size, 1920):
        got = t.to_caller_48k(stereo[i : i + 1920], channels=2)
        assert [len(f) for f in got] == ([160] if i + 1920 <= stereo.size else [])
        frames += got
    direct = StreamResampler(48000, 8000, channels=2).process(stereo)
    assert b"".join(frames) == array_to_ulaw(direct[: len(frames) * 160])
    assert StreamResampler(48000, 8000, channels=2).delay_ms < (
        StreamResampler(48000, 24000, channels=2).delay_ms + t.to_caller_delay_ms
    )


def test_to_caller_48k_mono_and_stereo() -> None:
    t = CallTranscoder()
    assert len(t.to_caller_48k(np.zeros(960, dtype=np.int16), channels=1)) == 1
    assert len(t.to_caller_48k(np.zeros(1920, dtype=np.int16), channels=2)) == 1


def test_decoded_model_audio_goes_to_the_carrier_in_one_hop_whatever_its_rate() -> None:
    tone_8k = (6000 * np.sin(2 * np.pi * 440 * np.arange(160) / 8000)).astype(np.int16)
    # 8 kHz mono (PCMU/PCMA decoded): no resampling, the μ-law of the samples themselves
    assert CallTranscoder().to_caller_decoded(tone_8k, 8000, 1) == [array_to_ulaw(tone_8k)]
    # 48 kHz stereo (Opus decoded): the direct 48 -> 8 kHz filter, not 48 -> 24 -> 8
    stereo = np.zeros(1920, dtype=np.int16)
    direct = CallTranscoder().to_caller_48k(stereo, channels=2)
    assert CallTranscoder().to_caller_decoded(stereo, 48000, 2) == direct
    # 24 kHz mono as before
    mono24 = np.zeros(480, dtype=np.int16)
    assert CallTranscoder().to_caller_decoded(mono24, 24000, 1) == CallTranscoder().to_caller(
        mono24
    )
    with pytest.raises(AudioFormatError, match="at 16000 Hz"):
        CallTranscoder().to_caller_decoded(np.zeros(320, dtype=np.int16), 16000, 1)


def test_an_8k_response_flushes_its_remainder_padded_with_silence() -> None:
    t = CallTranscoder()
    assert t.to_caller_decoded(np.full(100, 3000, dtype=np.int16), 8000, 1) == []
    tail = t.flush_to_caller()
    assert tail is not None and len(tail) == 160 and tail[100:] == bytes([0xFF]) * 60


def test_transcoded_round_trip_keeps_speech_intelligible(
    bandlimited_speech_8k: Int16Array,
) -> None:
    x = bandlimited_speech_8k
    ulaw = pcm16_to_ulaw(x.astype("<i2").tobytes())
    t = CallTranscoder()
    wide = [f for i in range(0, len(ulaw), 160) for f in t.from_caller(ulaw[i : i + 160])]
    back = b"".join(f for w in wide for f in t.to_caller(w))
    y = np.frombuffer(ulaw_to_pcm16(back), "<i2")
    lag = round((t.from_caller_delay_ms + t.to_caller_delay_ms) * 8)
    assert lag == 32
    # Two μ-law codings bound this at ~35 dB; the resampling adds nothing measurable.
    assert snr_db(x[: y.size - lag], y[lag:]) >= 30


def test_from_caller_accepts_bytes_like_and_empty_payloads() -> None:
    t = CallTranscoder()
    assert t.from_caller(b"") == []
    payload = bytes(range(160))
    a = t.from_caller(memoryview(payload))
    b = CallTranscoder().from_caller(bytearray(payload))
    assert np.array_equal(a[0], b[0])


def test_from_caller_frames_are_independent_arrays() -> None:
    t = CallTranscoder()
    frames = t.from_caller(bytes(range(256)) + bytes(range(224)))  # 480 bytes: three frames
    assert len(frames) == 3
    frames[0][:] = 0
    assert np.any(frames[1])


def test_reset_from_caller_forgets_held_audio() -> None:
    t = CallTranscoder()
    t.from_caller(bytes(100))
    assert t.pending_from_caller_samples == 300
    t.reset_from_caller()
    assert t.pending_from_caller_samples == 0
    payload = bytes(range(160))
    assert np.array_equal(t.from_caller(payload)[0], CallTranscoder().from_caller(payload)[0])


@pytest.mark.parametrize(
    "bad",
    [np.zeros(480, dtype=np.float32), np.zeros((2, 240), dtype=np.int16)],
    ids=["float32", "2-D"],
)
def test_to_caller_rejects_bad_arrays(bad: np.ndarray) -> None:
    with pytest.raises(AudioFormatError):
        CallTranscoder().to_caller(bad)


def test_to_caller_48k_rejects_a_split_stereo_pair() -> None:
    with pytest.raises(AudioFormatError):
        CallTranscoder().to_caller_48k(np.zeros(1919, dtype=np.int16), channels=2)


def test_from_caller_equals_decoding_then_resampling(speech_8k: Int16Array) -> None:
    ulaw = pcm16_to_ulaw(speech_8k[1600:4800].astype("<i2").tobytes())  # the first words
    frames = CallTranscoder().from_caller(ulaw)
    decoded = np.frombuffer(ulaw_to_pcm16(ulaw), "<i2").astype(np.int16)
    reference = resample_buffer(decoded, 8000, 24000)  # soxr VHQ, zero delay
    got = np.concatenate(frames)
    assert snr_db(reference[: got.size - 48], got[48:]) > 45


def test_g711_legs_pass_bytes_through_framed_and_translated_without_resampling() -> None:
    from gateway.audio.g711 import alaw_to_ulaw, ulaw_to_alaw

    t = CallTranscoder()
    frame = bytes(range(160))
    assert t.from_caller_g711(frame, "pcmu")[0] is frame  # the steady state: the same object
    assert t.from_caller_g711(frame[:100], "pcmu") == []  # held until 160 bytes
    assert t.from_caller_g711(frame[100:] + frame[:40], "pcmu") == [frame]
    assert t.from_caller_g711(frame[40:] + frame[:40], "pcma") == [ulaw_to_alaw(frame)]
    t.reset_from_caller()
    assert t.from_caller_g711(frame, "pcmu") == [frame]

    out = t.to_caller_g711(frame * 2 + frame[:10], "pcmu")
    assert out == [frame, frame] and t.pending_to_caller_samples == 10
    tail = t.flush_to_caller()
    assert tail == frame[:10] + b"\xff" * 150  # padded with μ-law silence, no filter tail
    alaw = ulaw_to_alaw(frame)
    assert t.to_caller_g711(alaw, "pcma") == [alaw_to_ulaw(alaw)]
    t.to_caller_g711(frame[:30], "pcmu")
    t.reset_to_caller()
    assert t.pending_to_caller_samples == 0 and t.flush_to_caller() is None
    with pytest.raises(ValueError, match="pcmu/pcma"):
        t.from_caller_g711(frame, "opus")
