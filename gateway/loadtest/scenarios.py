"""What simulated callers say and do: the load test's scenarios and their weighted mix.

A scenario turns into a :mod:`gateway.loadtest.script`. The caller's lines are real
speech — synthesized offline once per run, or cut from a WAV file the user gives — so the
gateway's VAD and the upstream's turn detection see what they would see on a phone line:

``listen``
    wait for the greeting, hang up (setup cost and greeting playout only);
``conversation``
    the greeting, then ``turns`` questions, each waiting for its answer (and, with
    ``barge_in_every=n``, talking over every n-th answer);
``barge-in``
    the greeting, one question, and the caller talks over the answer ``barge_in_after_ms``
    after it started being heard, then waits for the answer to the interruption.

A :class:`ScenarioMix` picks scenarios by weight from a seeded generator, so a run is
reproducible: ``ScenarioMix.parse("conversation=3,barge-in=1")``.
"""

from __future__ import annotations

import random
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from gateway.loadtest.script import BargeIn, Pause, Say, Step, WaitForAnswer

__all__ = [
    "SCENARIOS",
    "CallerLines",
    "Scenario",
    "ScenarioMix",
    "build_script",
    "read_wav",
]

SCENARIOS: Final = ("conversation", "barge-in", "listen")

QUESTIONS: Final = (
    "Hello. What are your opening hours on Saturday?",
    "Do you deliver to the city centre?",
    "How much does the large box cost?",
    "Can I change my order after I have paid?",
    "Is there parking near the shop?",
)
INTERRUPTION: Final = "Sorry to interrupt, one more question please."


@dataclass(frozen=True, slots=True)
class CallerLines:
    """The utterances callers pick from, built once per run and shared by every call.

    Synthesizing costs a few ms per second of speech and base64-framing happens in
    :class:`~gateway.loadtest.script.Say`, so build this before the calls start.
    """

    questions: tuple[Say, ...]
    interruption: Say

    @classmethod
    def synthesized(cls) -> CallerLines:
        """Offline speech (eSpeak NG) for the built-in questions."""
        return cls(
            questions=tuple(Say.from_text(q) for q in QUESTIONS),
            interruption=Say.from_text(INTERRUPTION),
        )

    @classmethod
    def from_wav(cls, path: Path) -> CallerLines:
        """Every caller line is the file's audio (any rate, mono or stereo; resampled to 8 kHz)."""
        samples, rate = read_wav(path)
        say = Say.from_pcm16(samples, rate, text=path.name)
        if say.voiced is None:
            raise ValueError(f"{path}: the audio is silent (no sample above about -40 dBFS)")
        return cls(questions=(say,), interruption=say)


def read_wav(path: Path) -> tuple[npt.NDArray[np.int16], int]:
    """Mono int16 samples and the rate of a 16-bit PCM WAV file (stereo is averaged).

    Raises ``ValueError`` with a readable reason for anything else (8-bit, float, compressed).
    """
    try:
        with wave.open(str(path), "rb") as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{path}: not a PCM WAV file ({exc})") from None
    if width != 2:
        raise ValueError(f"{path}: {8 * width}-bit samples; the load tester needs 16-bit PCM")
    samples = np.frombuffer(raw, dtype="<i2")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
    if samples.size < rate // 10:
        raise ValueError(f"{path}: shorter than 100 ms")
    return samples.astype(np.int16), rate


@dataclass(frozen=True, slots=True)
class Scenario:
    """How one simulated caller behaves."""

    name: str
    turns: int = 3
    """``conversation``: questions asked (each waits for its answer)."""
    think_ms: float = 500.0
    """Silence after an answer before the caller speaks again."""
    barge_in_after_ms: float = 1200.0
    """``barge-in``: how long into the answer the caller starts talking over it."""
    answer_timeout_ms: float = 15_000.0
    """An answer (or the greeting) not heard within this fails the call as ``no_answer``."""
    barge_in_every: int = 0
    """``conversation``: the caller talks over every n-th answer (0: never)."""

    def __post_init__(self) -> None:
        if self.name not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.name!r}; choose from {', '.join(SCENARIOS)}")
        if self.turns < 1:
            raise ValueError("a conversation needs at least one turn")
        if self.barge_in_every < 0:
            raise ValueError("barge_in_every cannot be negative")


def build_script(scenario: Scenario, lines: CallerLines, rng: random.Random) -> list[Step]:
    """The caller script for one call; questions are drawn from ``lines`` in a random order."""
    timeout = scenario.answer_timeout_ms
    script: list[Step] = [WaitForAnswer(timeout_ms=timeout)]
    if scenario.name == "listen":
        return script
    order = list(lines.questions)
    rng.shuffle(order)
    if scenario.name == "barge-in":
        script += [
            Pause(scenario.think_ms),
            order[0],
            BargeIn(lines.interruption, after_ms=scenario.barge_in_after_ms, timeout_ms=timeout),
            WaitForAnswer(timeout_ms=timeout),
        ]
        return script
    every = scenario.barge_in_every
    for i in range(scenario.turns):
        script += [Pause(scenario.think_ms), order[i % len(order)]]
        if every and (i + 1) % every == 0:
            after = scenario.barge_in_after_ms
            script.append(BargeIn(lines.interruption, after_ms=after, timeout_ms=timeout))
        script.append(WaitForAnswer(timeout_ms=timeout))
    return script


@dataclass(frozen=True, slots=True)
class ScenarioMix:
    """Scenarios with weights; :meth:`pick` draws one per call."""

    entries: tuple[tuple[Scenario, float], ...]

    def __post_init__(self) -> None:
        if not self.entries:
            raise ValueError("the scenario mix is empty")
        if any(w <= 0 for _, w in self.entries):
            raise ValueError("scenario weights must be positive")

    @classmethod
    def parse(
        cls,
        text: str,
        *,
        turns: int = 3,
        think_ms: float = 500.0,
        barge_in_after_ms: float = 1200.0,
        answer_timeout_ms: float = 15_000.0,
        barge_in_every: int = 0,
    ) -> ScenarioMix:
        """``"conversation"`` or ``"conversation=3,barge-in=1,listen=1"`` (weights optional)."""
        entries: list[tuple[Scenario, float]] = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            name, _, weight = part.partition("=")
            try:
                w = float(weight) if weight else 1.0
            except ValueError:
                raise ValueError(f"weight of {name!r} is not a number: {weight!r}") from None
            scenario = Scenario(
                name.strip(),
                turns=turns,
                think_ms=think_ms,
                barge_in_after_ms=barge_in_after_ms,
                answer_timeout_ms=answer_timeout_ms,
                barge_in_every=barge_in_every if name.strip() == "conversation" else 0,
            )
            entries.append((scenario, w))
        return cls(tuple(entries))

    def pick(self, rng: random.Random) -> Scenario:
        scenarios: Sequence[Scenario] = [s for s, _ in self.entries]
        return rng.choices(scenarios, weights=[w for _, w in self.entries])[0]

    def describe(self) -> str:
        total = sum(w for _, w in self.entries)
        return ", ".join(f"{s.name} {100 * w / total:.0f}%" for s, w in self.entries)
