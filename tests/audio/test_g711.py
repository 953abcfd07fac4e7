from __future__ import annotations

import numpy as np
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
from gateway.errors import AudioFormatError, CarrierError

# Independent reference: the CCITT/Sun G.711 μ-law algorithm on 14-bit magnitudes, as published
# (g711.c), written here from the specification rather than taken from the code under test.
_SEG_END_14 = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)


def ref_decode(code: int) -> int:
    u = ~code & 0xFF
    exponent = (u >> 4) & 0x07
    magnitude = ((((u & 0x0F) << 3) + 0x84) << exponent) - 0x84
    return -magnitude if u & 0x80 else magnitude


def ref_encode(sample: int) -> int:
    value = sample >> 2  # 16-bit to 14-bit, arithmetic shift
    mask = 0xFF
    if value < 0:
        value, mask = -value, 0x7F
    value = min(value, 8159) + 33
    for seg, end in enumerate(_SEG_END_14):
        if value <= end:
            return ((seg << 4) | ((value >> (seg + 1)) & 0x0F)) ^ mask
    return 0x7F ^ mask


def test_decoding_matches_the_reference_for_all_256_codes() -> None:
    pcm = np.frombuffer(ulaw_to_pcm16(bytes(range(256))), dtype="<i2")
    assert pcm.tolist() == [ref_decode(c) for c in range(256)]
    assert pcm.min() == -32124 and pcm.max() == 32124


def test_encoding_matches_the_reference_for_every_16_bit_value() -> None:
    samples = np.arange(-32768, 32768, dtype="<i2")
    codes = pcm16_to_ulaw(samples.tobytes())
    assert len(codes) == samples.size
    expected = bytes(ref_encode(int(s)) for s in samples)
    assert codes == expected


def test_silence() -> None:
    assert pcm16_to_ulaw(b"\x00\x00" * 160) == bytes([ULAW_SILENCE]) * 160
    assert ulaw_to_pcm16(bytes([ULAW_SILENCE, 0x7F])) == b"\x00\x00" * 2


@given(st.binary(max_size=2000))
def test_decode_then_encode_is_identity_except_negative_zero(codes: bytes) -> None:
    expected = codes.replace(b"\x7f", b"\xff")  # -0 decodes to 0, which encodes as +0
    assert pcm16_to_ulaw(ulaw_to_pcm16(codes)) == expected
    assert len(ulaw_to_pcm16(codes)) == 2 * len(codes)


@given(hnp.arrays(np.int16, st.integers(0, 1000)))
def test_encode_decode_error_stays_within_one_mu_law_step(samples: np.ndarray) -> None:
    back = np.frombuffer(ulaw_to_pcm16(pcm16_to_ulaw(samples.astype("<i2").tobytes())), "<i2")
    x = samples.astype(np.int64)
    y = back.astype(np.int64)
    in_range = np.abs(x) <= 32124
    # μ-law steps grow with the magnitude: 1/16 of a segment, i.e. about |x|/16 at most,
    # so rounding to the nearest code is off by at most |x|/32 plus the bias near zero.
    assert np.all(np.abs(y - x)[in_range] <= np.abs(x[in_range]) / 32 + 8)
    assert np.all(np.sign(y[x > 0]) >= 0) and np.all(np.sign(y[x < 0]) <= 0)
    assert np.all(np.abs(y[~in_range]) == 32124)  # beyond the range: clipped, never wrapped


@given(st.binary(max_size=600).map(lambda b: b[: len(b) // 2 * 2]), st.data())
def test_encoding_does_not_depend_on_the_split(pcm: bytes, data: st.DataObject) -> None:
    cut = 2 * data.draw(st.integers(0, len(pcm) // 2))
    assert pcm16_to_ulaw(pcm[:cut]) + pcm16_to_ulaw(pcm[cut:]) == pcm16_to_ulaw(pcm)


@settings(max_examples=50)
@given(st.binary(max_size=998).map(lambda b: b if len(b) % 2 else b + b"\x01"))
def test_odd_length_pcm_is_an_audio_format_error(pcm: bytes) -> None:
    with pytest.raises(AudioFormatError, match=rf"{len(pcm)} bytes"):
        pcm16_to_ulaw(pcm)


def test_audio_format_error_blames_the_carrier() -> None:
    with pytest.raises(CarrierError):
        pcm16_to_ulaw(b"\x00")


def test_bytes_like_inputs() -> None:
    codes = bytes(range(0, 256, 3))
    assert (
        ulaw_to_pcm16(bytearray(codes))
        == ulaw_to_pcm16(memoryview(codes))
        == (ulaw_to_pcm16(codes))
    )
    pcm = ulaw_to_pcm16(codes)
    assert pcm16_to_ulaw(bytearray(pcm)) == pcm16_to_ulaw(memoryview(pcm)) == pcm16_to_ulaw(pcm)
    assert ulaw_to_pcm16(b"") == b"" and pcm16_to_ulaw(b"") == b""


@given(st.binary(max_size=500))
def test_array_helpers_agree_with_the_byte_functions(codes: bytes) -> None:
    samples = ulaw_to_array(codes)
    assert samples.dtype == np.int16 and samples.shape == (len(codes),)
    assert samples.astype("<i2").tobytes() == ulaw_to_pcm16(codes)
    assert array_to_ulaw(samples) == pcm16_to_ulaw(ulaw_to_pcm16(codes))


def test_ulaw_to_array_is_writable_and_array_to_ulaw_takes_views() -> None:
    samples = ulaw_to_array(bytes(160))
    samples[0] = 1  # a fresh array the caller owns
    strided = np.arange(-1000, 1000, dtype=np.int16)[::4]
    assert array_to_ulaw(strided) == pcm16_to_ulaw(strided.astype("<i2").tobytes())


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(160, dtype=np.float32),
        np.zeros(160, dtype=np.int32),
        np.zeros((2, 80), dtype=np.int16),
    ],
    ids=["float32", "int32", "2-D"],
)
def test_array_to_ulaw_rejects_other_dtypes_and_shapes(bad: np.ndarray) -> None:
    with pytest.raises(AudioFormatError, match="1-D int16"):
        array_to_ulaw(bad)


def test_law_translation_equals_decode_then_encode_for_every_byte() -> None:
    from gateway.audio.g711 import (
        ALAW_SILENCE,
        alaw_to_ulaw,
        audioop,  # the reference the tables are checked against
        g711_peak,
        ulaw_to_alaw,
    )

    codes = bytes(range(256))
    assert ulaw_to_alaw(codes) == audioop.lin2alaw(audioop.ulaw2lin(codes, 2), 2)
    assert alaw_to_ulaw(codes) == audioop.lin2ulaw(audioop.alaw2lin(codes, 2), 2)
    assert ulaw_to_alaw(bytes([ULAW_SILENCE])) == bytes([ALAW_SILENCE])
    assert g711_peak(b"") == 0 and g711_peak(bytes([ULAW_SILENCE]) * 160) == 0
    assert g711_peak(bytes([ALAW_SILENCE]) * 160, alaw=True) == 8  # A-law has no exact zero
    assert g711_peak(bytes([0x00]) * 4) == 32124  # μ-law's loudest negative code
