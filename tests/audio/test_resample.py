from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway.audio.resample import MAX_DELAY_MS, StreamResampler
from gateway.audio.tts import resample_buffer
from gateway.errors import AudioFormatError

Int16Array = npt.NDArray[np.int16]

# (in_rate, out_rate, channels): the conversions the gateway uses.
PAIRS = [
    (8000, 24000, 1),
    (24000, 8000, 1),
    (48000, 24000, 1),
    (48000, 24000, 2),
    (48000, 8000, 1),
    (48000, 8000, 2),
]
PAIR_IDS = [f"{a // 1000}k-{b // 1000}k-{c}ch" for a, b, c in PAIRS]


def oracle(r: StreamResampler, x: Int16Array) -> Int16Array:
    """The textbook definition, computed the slow way: zero-stuff, convolve, decimate."""
    g = math.gcd(r.in_rate, r.out_rate)
    up, down = r.out_rate // g, r.in_rate // g
    mono = x.astype(np.float64).reshape(-1, r.channels).sum(axis=1)
    if mono.size == 0:
        return np.zeros(0, dtype=np.int16)
    stuffed = np.zeros(mono.size * up)
    stuffed[::up] = mono
    y = np.convolve(stuffed, r.taps / r.channels)[: stuffed.size : down]
    return np.clip(np.rint(y), -32768, 32767).astype(np.int16)


def in_frames(r: StreamResampler, x: Int16Array, frame: int) -> list[Int16Array]:
    step = frame * r.channels
    return [r.process(x[i : i + step]) for i in range(0, x.size, step)]


def snr_db(ref: npt.NDArray[np.float64], out: npt.NDArray[np.float64]) -> float:
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((out - ref) ** 2), 1e-12)))


def best_lag(ref: Int16Array, out: Int16Array, max_lag: int) -> int:
    a, b = ref.astype(np.float64), out.astype(np.float64)
    scores = [np.dot(a[: a.size - lag], b[lag : lag + a.size]) for lag in range(max_lag)]
    return int(np.argmax(scores))


@pytest.mark.parametrize(("in_rate", "out_rate", "channels"), PAIRS, ids=PAIR_IDS)
def test_delay_is_within_budget(in_rate: int, out_rate: int, channels: int) -> None:
    r = StreamResampler(in_rate, out_rate, channels=channels)
    assert 0 < r.delay_ms <= MAX_DELAY_MS <= 3.0
    assert r.delay_samples_out == pytest.approx(r.delay_ms * out_rate / 1000)
    assert r.attenuation_db >= 75


def test_chained_outbound_delay_is_within_budget() -> None:
    chain = (
        StreamResampler(48000, 24000, channels=2).delay_ms + StreamResampler(24000, 8000).delay_ms
    )
    assert chain <= 3.0
    assert StreamResampler(48000, 8000, channels=2).delay_ms < chain  # the direct path is shorter


@pytest.mark.parametrize(("in_rate", "out_rate", "channels"), PAIRS, ids=PAIR_IDS)
def test_every_20ms_frame_gives_one_20ms_frame_from_the_first(
    in_rate: int, out_rate: int, channels: int
) -> None:
    rng = np.random.default_rng(7)
    x = rng.integers(-20000, 20000, in_rate // 50 * 1000 * channels).astype(np.int16)
    r = StreamResampler(in_rate, out_rate, channels=channels)
    outputs = in_frames(r, x, in_rate // 50)
    assert [o.size for o in outputs] == [out_rate // 50] * 1000
    assert np.any(outputs[0])  # the first frame carries audio, not a silent placeholder
    whole = StreamResampler(in_rate, out_rate, channels=channels).process(x)
    assert np.array_equal(np.concatenate(outputs), whole)


@pytest.mark.timeout(60)
def test_10000_frames_round_trip_without_losing_or_inventing_a_sample(
    bandlimited_speech_8k: Int16Array,
) -> None:
    frames = 10_000
    x = np.resize(bandlimited_speech_8k, frames * 160)  # the speech, repeated
    up, down = StreamResampler(8000, 24000), StreamResampler(24000, 8000)
    back = []
    for i in range(frames):
        wide = up.process(x[i * 160 : (i + 1) * 160])
        assert wide.size == 480
        narrow = down.process(wide)
        assert narrow.size == 160
        back.append(narrow)
    y = np.concatenate(back)
    lag = round(up.delay_samples_out / 3 + down.delay_samples_out)
    assert lag == 32
    # Still aligned at the designed delay after 200 s: one dropped or repeated sample anywhere
    # would misalign everything after it and ruin the last second.
    tail = slice(x.size - 8000 - lag, x.size - lag)
    ref = x[tail].astype(np.float64)
    assert snr_db(ref, y[tail.start + lag : tail.stop + lag].astype(np.float64)) >= 60


@pytest.mark.timeout(60)
def test_round_trip_of_band_limited_speech_is_at_least_60_db(
    bandlimited_speech_8k: Int16Array,
) -> None:
    x = bandlimited_speech_8k
    up, down = StreamResampler(8000, 24000), StreamResampler(24000, 8000)
    y = np.concatenate([down.process(w) for w in in_frames(up, x, 160)])
    lag = best_lag(x, y, 200)
    assert lag == round(up.delay_samples_out / 3 + down.delay_samples_out)
    snr = snr_db(x[: x.size - lag].astype(np.float64), y[lag:].astype(np.float64))
    assert snr >= 60, f"round-trip SNR {snr:.1f} dB"


@pytest.mark.parametrize(("in_rate", "out_rate"), [(24000, 8000), (48000, 8000), (48000, 24000)])
def test_measured_delay_on_speech_matches_the_declared_delay(
    in_rate: int,
    out_rate: int,
    speech_48k: Int16Array,
    lowpass: Callable[..., Int16Array],
) -> None:
    # Speech band-limited inside the pass band, so soxr's whole-buffer (zero-delay) result is a
    # fair reference for what the output must be, shifted by exactly the declared delay.
    cutoff = 3200.0 if out_rate == 8000 else 9000.0
    x = lowpass(
        resample_buffer(speech_48k, 48000, 16000 if out_rate == 8000 else 24000),
        16000 if out_rate == 8000 else 24000,
        cutoff,
        cutoff + 400,
    )
    x = resample_buffer(x, 16000 if out_rate == 8000 else 24000, in_rate)
    ref = resample_buffer(x, in_rate, out_rate)
    r = StreamResampler(in_rate, out_rate)
    y = np.concatenate(in_frames(r, x, in_rate // 50))
    lag = best_lag(ref, y, 100)
    assert lag == r.delay_samples_out
    snr = snr_db(ref[: ref.size - lag].astype(np.float64), y[lag:].astype(np.float64))
    assert snr >= 55, f"SNR against soxr VHQ {snr:.1f} dB"


def _tone(rate: int, hz: float, n: int, amplitude: float, delay_s: float = 0.0) -> np.ndarray:
    t = np.arange(n) / rate - delay_s
    return np.asarray(amplitude * np.sin(2 * np.pi * hz * t + 0.3))


PASS_TONES = {
    (8000, 24000): [200, 1000, 2500, 3400],
    (24000, 8000): [200, 1000, 2500, 3400],
    (48000, 8000): [200, 1000, 3400],
    (48000, 24000): [200, 3000, 7000, 9600],
}


@pytest.mark.parametrize(("in_rate", "out_rate"), list(PASS_TONES))
def test_tones_pass_unchanged_and_without_clicks_at_frame_boundaries(
    in_rate: int, out_rate: int
) -> None:
    amplitude = 16000.0
    for hz in PASS_TONES[(in_rate, out_rate)]:
        r = StreamResampler(in_rate, out_rate)
        x = np.rint(_tone(in_rate, hz, in_rate // 2, amplitude)).astype(np.int16)
        y = np.concatenate(in_frames(r, x, in_rate // 50)).astype(np.float64)
        ideal = _tone(out_rate, hz, y.size, amplitude, r.delay_ms / 1000)
        settle = 2 * math.ceil(
            r.taps.size * out_rate / r.in_rate / (out_rate // math.gcd(in_rate, out_rate))
        )
        err = np.abs(y - ideal)[settle:]
        # pass-band ripple (designed <= 77 dB down) plus rounding; a click would be far larger
        assert err.max() <= amplitude * 1e-3 + 3, f"{hz} Hz: max error {err.max():.1f}"


STOP_TONES = {
    (24000, 8000): [4600, 6000, 9000, 11900],
    (48000, 8000): [4600, 7000, 13000, 23000],
    (48000, 24000): [14400, 18000, 23900],
}


@pytest.mark.parametrize(("in_rate", "out_rate"), list(STOP_TONES))
def test_stop_band_tones_do_not_alias(in_rate: int, out_rate: int) -> None:
    amplitude = 16000.0
    for hz in STOP_TONES[(in_rate, out_rate)]:
        r = StreamResampler(in_rate, out_rate)
        x = np.rint(_tone(in_rate, hz, in_rate // 2, amplitude)).astype(np.int16)
        y = np.concatenate(in_frames(r, x, in_rate // 50))[out_rate // 100 :]
        rms = float(np.sqrt(np.mean(y.astype(np.float64) ** 2)))
        assert 20 * np.log10(max(rms, 1e-9) / (amplitude / np.sqrt(2))) <= -70, f"{hz} Hz"


def test_upsampling_images_are_rejected() -> None:
    amplitude = 16000.0
    for hz in [300, 1000, 3400]:
        r = StreamResampler(8000, 24000)
        x = np.rint(_tone(8000, hz, 4000, amplitude)).astype(np.int16)
        y = np.concatenate(in_frames(r, x, 160)).astype(np.float64)[480:]
        ideal = _tone(24000, hz, y.size + 480, amplitude, r.delay_ms / 1000)[480:]
        residual = float(np.sqrt(np.mean((y - ideal) ** 2)))  # images at 8k +- f, 16k +- f
        assert 20 * np.log10(residual / (amplitude / np.sqrt(2))) <= -65, f"{hz} Hz"


@settings(max_examples=30, deadline=None)
@given(data=st.data())
@pytest.mark.parametrize(("in_rate", "out_rate", "channels"), PAIRS, ids=PAIR_IDS)
def test_any_split_gives_the_same_samples_as_the_definition(
    in_rate: int, out_rate: int, channels: int, data: st.DataObject
) -> None:
    n = data.draw(st.integers(0, 1500), label="samples per channel")
    x = data.draw(hnp.arrays(np.int16, n * channels), label="input")
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=12), label="cuts"))
    r = StreamResampler(in_rate, out_rate, channels=channels)
    parts = []
    for a, b in zip([0, *cuts], [*cuts, n], strict=True):
        parts.append(r.process(x[a * channels : b * channels]))
        total = sum(p.size for p in parts)
        assert total == -(-b * out_rate // in_rate)  # ceil: never late, never early
    y = np.concatenate(parts)
    assert y.dtype == np.int16
    assert np.array_equal(y, StreamResampler(in_rate, out_rate, channels=channels).process(x))
    assert np.array_equal(y, oracle(r, x))


def test_full_scale_overshoot_is_clipped_not_wrapped() -> None:
    square = np.repeat(np.tile(np.array([32767, -32768], dtype=np.int16), 20), 40)
    for in_rate, out_rate in [(8000, 24000), (24000, 8000)]:
        r = StreamResampler(in_rate, out_rate)
        y = r.process(square)
        g = math.gcd(in_rate, out_rate)
        stuffed = np.zeros(square.size * (out_rate // g))
        stuffed[:: out_rate // g] = square
        raw = np.convolve(stuffed, r.taps)[: stuffed.size : in_rate // g]
        assert raw.max() > 32767.5 and raw.min() < -32768.5  # Gibbs overshoot happens
        assert np.all(y[raw > 32767.5] == 32767)
        assert np.all(y[raw < -32768.5] == -32768)
        assert np.array_equal(y, oracle(r, square))


@pytest.mark.parametrize(("in_rate", "out_rate", "channels"), PAIRS, ids=PAIR_IDS)
def test_constant_input_comes_out_exact(in_rate: int, out_rate: int, channels: int) -> None:
    # Unit DC gain and round-to-nearest: a truncating or slightly-off gain would miss by one.
    for level in [-32768, -12345, 1, 32767]:
        r = StreamResampler(in_rate, out_rate, channels=channels)
        y = r.process(np.full(in_rate // 10 * channels, level, dtype=np.int16))
        assert np.all(y[out_rate // 50 :] == level)


def test_stereo_is_downmixed() -> None:
    rng = np.random.default_rng(3)
    left = rng.integers(-16000, 16000, 9600).astype(np.int16)
    for out_rate in [24000, 8000]:
        mono = StreamResampler(48000, out_rate).process(left).astype(np.int32)

        def stereo(right: Int16Array, rate: int = out_rate) -> npt.NDArray[np.int32]:
            pcm = np.stack([left, right], axis=1).reshape(-1)
            return StreamResampler(48000, rate, channels=2).process(pcm).astype(np.int32)

        assert np.abs(stereo(left) - mono).max() <= 1
        assert not np.any(stereo(-left))  # exact cancellation: L + R is summed as integers
        assert np.abs(stereo(np.zeros_like(left)) - mono / 2).max() <= 1


def test_aiortc_shaped_frames_are_accepted() -> None:
    # AudioFrame.to_ndarray() of packed s16 stereo has shape (1, samples * channels)
    pcm = np.arange(-960, 960, dtype=np.int16)
    a = StreamResampler(48000, 24000, channels=2).process(pcm.reshape(1, -1))
    b = StreamResampler(48000, 24000, channels=2).process(pcm)
    assert a.shape == (480,) and np.array_equal(a, b)


def test_reset_forgets_the_past() -> None:
    rng = np.random.default_rng(5)
    loud = rng.integers(-30000, 30000, 480).astype(np.int16)
    quiet = (np.arange(480, dtype=np.int16) % 50) * 10
    r = StreamResampler(24000, 8000)
    r.process(loud[:479])  # leaves a phase offset and a loud history
    assert r.has_tail
    dirty = StreamResampler(24000, 8000)
    dirty.process(loud[:479])
    r.reset()
    assert not r.has_tail
    fresh = StreamResampler(24000, 8000).process(quiet)
    assert np.array_equal(r.process(quiet), fresh)
    assert not np.array_equal(dirty.process(quiet), fresh)


@pytest.mark.parametrize(("in_rate", "out_rate", "channels"), PAIRS, ids=PAIR_IDS)
def test_input_for_output_pads_exactly(in_rate: int, out_rate: int, channels: int) -> None:
    r = StreamResampler(in_rate, out_rate, channels=channels)
    for done in range(7):  # every decimation phase
        r.reset()
        r.process(np.ones(done * channels, dtype=np.int16))
        for want in [0, 1, 17, 160]:
            need = r.input_for_output(want)
            probe = StreamResampler(in_rate, out_rate, channels=channels)
            probe.process(np.ones(done * channels, dtype=np.int16))
            got = probe.process(np.zeros(need * channels, dtype=np.int16)).size
            assert got >= want
            assert got - want < max(1, out_rate // in_rate)  # the fewest that suffice


def test_has_tail_clears_after_enough_silence() -> None:
    r = StreamResampler(24000, 8000)
    assert not r.has_tail
    r.process(np.full(10, 1000, dtype=np.int16))
    assert r.has_tail
    r.process(np.zeros(r.taps.size, dtype=np.int16))
    assert not r.has_tail


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(480, dtype=np.float32),
        np.zeros(480, dtype=np.int32),
        np.zeros((2, 240), dtype=np.int16),
        np.zeros((1, 2, 240), dtype=np.int16),
    ],
    ids=["float32", "int32", "planar", "3-D"],
)
def test_wrong_dtype_or_shape_is_an_audio_format_error(bad: np.ndarray) -> None:
    with pytest.raises(AudioFormatError):
        StreamResampler(24000, 8000).process(bad)


def test_odd_stereo_buffer_is_an_audio_format_error() -> None:
    with pytest.raises(AudioFormatError, match="2-channel"):
        StreamResampler(48000, 24000, channels=2).process(np.zeros(961, dtype=np.int16))


@pytest.mark.parametrize(
    ("in_rate", "out_rate", "channels"),
    [(8000, 11025, 1), (16000, 24000, 1), (8000, 8000, 1), (0, 8000, 1), (48000, 8000, 3)],
)
def test_unsupported_conversions_are_refused(in_rate: int, out_rate: int, channels: int) -> None:
    with pytest.raises(ValueError):
        StreamResampler(in_rate, out_rate, channels=channels)


def test_other_integer_ratios_work() -> None:
    r = StreamResampler(16000, 8000)
    assert r.delay_ms <= MAX_DELAY_MS
    assert r.process(np.zeros(320, dtype=np.int16)).size == 160
