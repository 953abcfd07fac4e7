"""Scenarios and their mix: parsing, the scripts they build, caller audio from WAV files."""

from __future__ import annotations

import random
import wave
from pathlib import Path

import numpy as np
import pytest

from gateway.loadtest.caller import BargeIn, Pause, Say, WaitForAnswer
from gateway.loadtest.scenarios import CallerLines, Scenario, ScenarioMix, build_script, read_wav


def _say(text: str) -> Say:
    t = np.arange(1600) / 8000
    return Say.from_pcm16((8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16), text=text)


LINES = CallerLines(questions=(_say("a"), _say("b"), _say("c")), interruption=_say("stop"))


def test_mix_parses_names_and_weights() -> None:
    mix = ScenarioMix.parse("conversation=3, barge-in=1,listen", turns=2)
    assert [(s.name, w) for s, w in mix.entries] == [
        ("conversation", 3.0),
        ("barge-in", 1.0),
        ("listen", 1.0),
    ]
    assert all(s.turns == 2 for s, _ in mix.entries)
    assert mix.describe() == "conversation 60%, barge-in 20%, listen 20%"


def test_mix_picks_by_weight_reproducibly() -> None:
    mix = ScenarioMix.parse("conversation=9,listen=1")
    picks = [mix.pick(random.Random(7)).name for _ in range(3)]
    assert picks == [picks[0]] * 3  # same seed, same choice
    rng = random.Random(1)
    names = [mix.pick(rng).name for _ in range(2000)]
    assert 0.85 < names.count("conversation") / 2000 < 0.95


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("chat", "unknown scenario 'chat'"),
        ("listen=x", "weight of 'listen' is not a number"),
        ("listen=0", "weights must be positive"),
        ("", "the scenario mix is empty"),
    ],
)
def test_bad_mixes_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScenarioMix.parse(text)


def test_listen_waits_for_the_greeting_only() -> None:
    script = build_script(Scenario("listen"), LINES, random.Random(1))
    assert script == [WaitForAnswer(timeout_ms=15_000)]


def test_conversation_asks_each_question_and_waits_for_its_answer() -> None:
    script = build_script(Scenario("conversation", turns=4, think_ms=300), LINES, random.Random(1))
    assert isinstance(script[0], WaitForAnswer)
    body = script[1:]
    assert len(body) == 12
    assert body[0::3] == [Pause(300)] * 4
    assert all(isinstance(s, Say) for s in body[1::3])
    assert all(isinstance(s, WaitForAnswer) for s in body[2::3])
    asked = [s for s in body[1::3] if isinstance(s, Say)]
    assert {s.text for s in asked[:3]} == {"a", "b", "c"}  # every line before a repeat


def test_barge_in_talks_over_the_answer() -> None:
    scenario = Scenario("barge-in", barge_in_after_ms=900)
    script = build_script(scenario, LINES, random.Random(1))
    barge = [s for s in script if isinstance(s, BargeIn)]
    assert len(barge) == 1
    assert barge[0].after_ms == 900 and barge[0].say.text == "stop"
    assert isinstance(script[-1], WaitForAnswer)


def _write_wav(path: Path, samples: np.ndarray, rate: int, channels: int, width: int = 2) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())


def test_wav_at_any_rate_becomes_8k_caller_speech(tmp_path: Path) -> None:
    t = np.arange(16000) / 16000
    tone = (6000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    path = tmp_path / "caller.wav"
    _write_wav(path, np.stack([tone, tone], axis=1), 16000, channels=2)
    samples, rate = read_wav(path)
    assert rate == 16000 and samples.shape == (16000,)
    lines = CallerLines.from_wav(path)
    assert lines.questions[0].duration_ms == pytest.approx(1000, abs=20)
    assert lines.questions[0].text == "caller.wav"


def test_unusable_wavs_are_refused_with_a_reason(tmp_path: Path) -> None:
    eight_bit = tmp_path / "8bit.wav"
    _write_wav(eight_bit, np.full(8000, 128, dtype=np.uint8), 8000, channels=1, width=1)
    with pytest.raises(ValueError, match="8-bit samples"):
        read_wav(eight_bit)
    silent = tmp_path / "silent.wav"
    _write_wav(silent, np.zeros(8000, dtype="<i2"), 8000, channels=1)
    with pytest.raises(ValueError, match="silent"):
        CallerLines.from_wav(silent)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not a wav")
    with pytest.raises(ValueError, match="not a PCM WAV"):
        read_wav(junk)


def test_a_conversation_can_interrupt_every_nth_answer() -> None:
    scenario = Scenario("conversation", turns=4, barge_in_every=2)
    script = build_script(scenario, LINES, random.Random(1))
    kinds = [type(s).__name__ for s in script]
    assert kinds.count("BargeIn") == 2
    # turn 2 and turn 4: question, then the interruption, then the answer to it
    assert kinds[-4:] == ["Pause", "Say", "BargeIn", "WaitForAnswer"]
    with pytest.raises(ValueError, match="negative"):
        Scenario("conversation", barge_in_every=-1)
