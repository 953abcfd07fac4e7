from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.audio.g711 import pcm16_to_ulaw, ulaw_to_pcm16
from gateway.audio.tts import CALLER_VOICE, synthesizer
from gateway.audio.vad import Hysteresis, LocalVad, VadEvent
from gateway.errors import AudioFormatError

Int16Array = npt.NDArray[np.int16]
START, STOP = VadEvent.SPEECH_STARTED, VadEvent.SPEECH_STOPPED


def reference_events(voiced: list[bool], onset: int, hangover: int) -> dict[int, VadEvent]:
    """Events by scanning runs: start at the onset-th frame of a voiced run while silent,
    stop at the hangover-th frame of an unvoiced run while speaking."""
    events: dict[int, VadEvent] = {}
    speaking = False
    run_start = 0
    for i, v in enumerate(voiced):
        if i == 0 or voiced[i - 1] != v:
            run_start = i
        length = i - run_start + 1
        if not speaking and v and length == onset:
            events[i], speaking = START, True
            run_start = i + 1  # a new state: counting starts again
        elif speaking and not v and length == hangover:
            events[i], speaking = STOP, False
            run_start = i + 1
    return events


@given(st.lists(st.booleans(), max_size=300), st.integers(1, 6), st.integers(1, 20))
def test_hysteresis_matches_the_run_based_definition(
    voiced: list[bool], onset: int, hangover: int
) -> None:
    h = Hysteresis(onset, hangover)
    got = {}
    for i, v in enumerate(voiced):
        event = h.update(v)
        if event is not None:
            got[i] = event
        assert h.speaking == (list(got.values())[-1] == START if got else False)
    assert got == reference_events(voiced, onset, hangover)
    assert list(got.values()) == [START, STOP] * (len(got) // 2) + [START] * (len(got) % 2)


def test_hysteresis_ignores_blips_shorter_than_onset_and_gaps_shorter_than_hangover() -> None:
    h = Hysteresis(onset_frames=3, hangover_frames=5)
    assert [h.update(v) for v in [True, True, False, True, True, False]] == [None] * 6
    assert [h.update(v) for v in [True, True, True]] == [None, None, START]
    gap = [False] * 4 + [True]
    assert [h.update(v) for v in gap] == [None] * 5 and h.speaking
    assert [h.update(False) for _ in range(5)] == [None] * 4 + [STOP]
    assert not h.speaking


def test_hysteresis_reset() -> None:
    h = Hysteresis(1, 1)
    assert h.update(True) == START
    h.reset()
    assert not h.speaking
    assert h.update(True) == START


@pytest.mark.parametrize(("onset", "hangover"), [(0, 1), (1, 0), (-1, 3)])
def test_hysteresis_needs_at_least_one_frame(onset: int, hangover: int) -> None:
    with pytest.raises(ValueError):
        Hysteresis(onset, hangover)


def frames(pcm: Int16Array, frame: int = 160) -> list[bytes]:
    return [pcm[i : i + frame].tobytes() for i in range(0, pcm.size - frame + 1, frame)]


def run(vad: LocalVad, pcm: Int16Array) -> dict[int, VadEvent]:
    out = {}
    for i, f in enumerate(frames(pcm, vad.frame_bytes // 2)):
        event = vad.process(f)
        if event is not None:
            out[i] = event
    return out


@pytest.fixture(scope="module")
def sentence() -> Int16Array:
    return synthesizer().synthesize(
        "Hello, thanks for calling. How can I help you?", CALLER_VOICE, 8000
    )


def voiced_span(pcm: Int16Array, frame: int = 160) -> tuple[int, int]:
    """First and last frame with audible energy."""
    rms = np.array(
        [
            np.sqrt(np.mean(np.square(f.astype(np.float64))))
            for f in (pcm[i : i + frame] for i in range(0, pcm.size - frame + 1, frame))
        ]
    )
    loud = np.nonzero(rms > 30)[0]  # about -60 dBFS
    return int(loud[0]), int(loud[-1])


def test_a_sentence_gives_one_start_and_one_stop(sentence: Int16Array) -> None:
    pcm = np.concatenate((np.zeros(8000, np.int16), sentence, np.zeros(8000, np.int16)))
    first, last = voiced_span(pcm)
    vad = LocalVad()  # 60 ms onset, 300 ms hangover: 3 and 15 frames
    events = run(vad, pcm)
    assert list(events.values()) == [START, STOP]
    start, stop = events
    assert first + 2 <= start <= first + 5  # the third voiced frame, give or take the edge
    # 15 frames of hangover after the last voiced frame, plus the WebRTC VAD's own overhang
    assert last + 14 <= stop <= last + 25
    assert not vad.speaking


def test_a_pause_longer_than_the_hangover_splits_the_turn(sentence: Int16Array) -> None:
    gap = np.zeros(8000, np.int16)  # 1 s
    pcm = np.concatenate((gap, sentence, gap, sentence, gap))
    assert list(run(LocalVad(), pcm).values()) == [START, STOP, START, STOP]
    long_hangover = LocalVad(hangover_ms=1500)
    pcm = np.concatenate((pcm, gap, gap))
    assert list(run(long_hangover, pcm).values()) == [START, STOP]


def test_speaking_flag_follows_the_events(sentence: Int16Array) -> None:
    pcm = np.concatenate((np.zeros(4000, np.int16), sentence, np.zeros(8000, np.int16)))
    vad = LocalVad()
    states = []
    for f in frames(pcm):
        event = vad.process(f)
        states.append((event, vad.speaking))
    started = next(i for i, (e, _) in enumerate(states) if e == START)
    stopped = next(i for i, (e, _) in enumerate(states) if e == STOP)
    assert all(s for _, s in states[started:stopped]) and not any(s for _, s in states[:started])


def test_silence_and_line_noise_at_call_start_never_start_speech() -> None:
    rng = np.random.default_rng(11)
    noise = np.rint(rng.standard_normal(8000 * 5) * 30).astype(np.int16)  # about -60 dBFS
    for aggressiveness in range(4):
        assert run(LocalVad(aggressiveness), np.zeros(8000 * 5, np.int16)) == {}
        assert run(LocalVad(aggressiveness), noise) == {}
    # Without the warm-up the WebRTC VAD's first frames of noise pass for speech.
    assert list(run(LocalVad(warmup_ms=0), noise).values()) == [START, STOP]


def test_a_longer_onset_rejects_a_noise_onset_mid_call() -> None:
    rng = np.random.default_rng(12)
    noise = np.rint(rng.standard_normal(8000 * 2) * 100).astype(np.int16)
    pcm = np.concatenate((np.zeros(8000, np.int16), noise))
    assert run(LocalVad(onset_ms=100), pcm) == {}


def test_speech_right_at_the_start_is_detected_after_the_warm_up(sentence: Int16Array) -> None:
    pcm = np.concatenate((sentence, np.zeros(8000, np.int16)))
    events = run(LocalVad(warmup_ms=100), pcm)
    assert list(events.values()) == [START, STOP]
    assert 5 <= min(events) <= 8  # 5 warm-up frames, then 3 voiced frames


def test_speech_after_mu_law_is_detected(sentence: Int16Array) -> None:
    pcm = np.concatenate((np.zeros(4000, np.int16), sentence, np.zeros(8000, np.int16)))
    decoded = np.frombuffer(ulaw_to_pcm16(pcm16_to_ulaw(pcm.tobytes())), dtype=np.int16)
    assert list(run(LocalVad(), decoded).values()) == [START, STOP]


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_each_webrtc_frame_size_works(frame_ms: int, sentence: Int16Array) -> None:
    vad = LocalVad(frame_ms=frame_ms)
    assert vad.frame_bytes == 8000 * frame_ms // 1000 * 2
    pcm = np.concatenate((np.zeros(4000, np.int16), sentence, np.zeros(8000, np.int16)))
    assert list(run(vad, pcm).values()) == [START, STOP]


@pytest.mark.parametrize("size", [0, 160, 318, 322, 480, 640])
def test_wrong_frame_sizes_are_audio_format_errors(size: int) -> None:
    vad = LocalVad()
    with pytest.raises(AudioFormatError, match="320 bytes"):
        vad.process(bytes(size))


def test_bytes_like_frames() -> None:
    vad = LocalVad()
    assert vad.process(bytearray(320)) is None
    assert vad.process(memoryview(bytes(320))) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"aggressiveness": 4},
        {"aggressiveness": -1},
        {"frame_ms": 15},
        {"onset_ms": -20},
        {"hangover_ms": -1},
        {"warmup_ms": -1},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        LocalVad(**kwargs)


def test_onset_and_hangover_round_up_to_whole_frames(sentence: Int16Array) -> None:
    pcm = np.concatenate((np.zeros(8000, np.int16), sentence, np.zeros(8000, np.int16)))
    fast = run(LocalVad(onset_ms=0, hangover_ms=1), pcm)  # one frame each
    slow = run(LocalVad(onset_ms=41), pcm)  # three frames
    assert min(fast) + 2 == min(slow)


def test_reset_forgets_speech(sentence: Int16Array) -> None:
    vad = LocalVad()
    for f in frames(sentence)[:30]:
        vad.process(f)
    assert vad.speaking
    vad.reset()
    assert not vad.speaking
    pcm = np.concatenate((np.zeros(4000, np.int16), sentence, np.zeros(8000, np.int16)))
    assert run(vad, pcm) == run(LocalVad(), pcm)
