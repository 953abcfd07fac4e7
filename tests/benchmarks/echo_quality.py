"""Round-trip speech quality per codec: PESQ of the caller's words echoed back through the gateway.

One demo call per codec (``gateway demo --reply echo``: the embedded emulator answers each turn
with the caller's own audio) carries a sentence caller -> gateway -> Realtime leg -> emulator
and back the same way. The caller's recording gives both ends on the carrier's 8 kHz clock:
the μ-law it sent (left) and the μ-law it heard (right). PESQ (ITU-T P.862, narrowband, MOS-LQO)
compares the sentence with its echo, so it scores both directions of the Realtime leg and the
emulator's own 8 ⇄ 24 kHz conversion together.

    PYTHONPATH=. .venv/bin/python tests/benchmarks/echo_quality.py --codec opus,pcmu [--json]

Needs ``pesq`` (``pip install pesq``; it builds from source, so it is not in any install extra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import wave
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.demo import run_demo
from gateway.loadtest.caller import Say, WaitForAnswer
from gateway.settings import Settings

SENTENCE = "Hello, I would like to book a table for two people tomorrow evening at seven."
RATE = 8000
LOUD = 300  # a sample above this is speech, not line silence
MARGIN = RATE // 4  # 250 ms of context either side of the sentence


def _span(x: npt.NDArray[np.int16], start: int = 0) -> tuple[int, int] | None:
    loud = np.flatnonzero(np.abs(x[start:].astype(np.int32)) > LOUD)
    if loud.size == 0:
        return None
    return start + int(loud[0]), start + int(loud[-1])


def score(path: Path) -> dict[str, Any]:
    """PESQ of the caller's sentence (left) against its echo (right) in a demo recording."""
    from pesq import pesq

    with wave.open(str(path)) as w:
        stereo = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    caller, heard = stereo[:, 0].astype(np.int16), stereo[:, 1].astype(np.int16)
    said = _span(caller)
    if said is None:
        raise RuntimeError("the recording has no caller speech")
    echo = _span(heard, said[1])  # the answer after the caller stopped
    if echo is None:
        raise RuntimeError("the recording has no echo after the caller's sentence")
    length = said[1] - said[0] + 2 * MARGIN
    ref = caller[max(0, said[0] - MARGIN) :][:length]
    deg = heard[max(0, echo[0] - MARGIN) :][:length]
    n = min(ref.size, deg.size)
    return {
        "pesq_nb": round(float(pesq(RATE, ref[:n], deg[:n], "nb")), 3),
        "sentence_s": round((said[1] - said[0]) / RATE, 2),
        "echo_after_ms": round((echo[0] - said[1]) / RATE * 1000),
    }


async def _one(codec: str, out: Path) -> dict[str, Any]:
    settings = Settings(_env_file=None, upstream_codec=codec)  # type: ignore[call-arg]
    script = [WaitForAnswer(timeout_ms=20_000), Say.from_text(SENTENCE), WaitForAnswer()]
    report = await run_demo(
        settings,
        script=script,
        record=out,
        emulator_options={"reply": "echo", "latency_ms": 300.0},
    )
    if not report.result.ok:
        raise RuntimeError(f"{codec}: the call failed: {report.result.failure}")
    return {"codec": report.codec, **score(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codec", default="opus,pcmu", help="codecs, comma separated")
    parser.add_argument("--runs", type=int, default=1, help="calls per codec (alternating)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    codecs = [c.strip() for c in args.codec.split(",") if c.strip()]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for codec in codecs:
                results.append(asyncio.run(_one(codec, Path(tmp) / f"{codec}-{run}.wav")))
                if not args.json:
                    print(results[-1], file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['codec']:>5}: PESQ-NB {r['pesq_nb']:.2f} ({r['sentence_s']} s sentence)")


if __name__ == "__main__":
    main()
