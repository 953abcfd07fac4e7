"""``gateway call --csv``: place a list of calls through a running gateway, paced, resumable.

The input is a CSV file with a header: a ``number`` column (E.164) and any other columns,
which become the call's variables (empty cells are left out). The results file is a journal:
a row is appended (and flushed) the moment a number's call is placed — before anything else
can go wrong — and again when its call ends; at the end of a run it is rewritten with one row
per number, its last state. A run that is stopped (Ctrl-C, a crash, a reboot) is resumed by
running the same command: every number already in the results file is skipped, so nobody is
called twice, and calls left unfinished are looked up (``GET /calls/{id}``) to finish their row.

Pacing is the gateway's: past a profile's ``calls_per_second`` or ``max_concurrent`` (or the
gateway's capacity) ``POST /calls`` answers 429/503 with ``Retry-After``, and the batch waits
that long and asks again. ``concurrency`` bounds the calls this batch has in progress.
"""

from __future__ import annotations

import asyncio
import csv
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

from gateway.numbers import E164

__all__ = ["RESULT_FIELDS", "BatchRow", "Outcome", "read_numbers", "read_results", "run_batch"]

RESULT_FIELDS: Final = ("number", "id", "call_sid", "status", "answered_by", "error")
FINAL: Final = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
POLL_S: Final = 1.0
MAX_RETRY_WAIT_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class BatchRow:
    """One number of the input and its variables."""

    number: str
    variables: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Outcome:
    """A number's result row."""

    number: str
    id: str = ""
    call_sid: str = ""
    status: str = ""
    answered_by: str = ""
    error: str = ""

    @property
    def over(self) -> bool:
        """Nothing more will change: an ended call, or a number that was never called."""
        return self.status in FINAL or self.status in ("invalid", "refused")

    def row(self) -> dict[str, str]:
        return {name: str(getattr(self, name)) for name in RESULT_FIELDS}


def read_numbers(path: Path) -> list[BatchRow]:
    """The input rows; raises ``ValueError`` naming the line when the file is not usable."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        names = [n.strip() for n in reader.fieldnames or []]
        if "number" not in names:
            raise ValueError(f"{path}: the header must have a 'number' column (has {names})")
        rows = []
        for raw in reader:
            clean = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            number = clean.pop("number")
            rows.append(BatchRow(number, {k: v for k, v in clean.items() if k and v}))
    return rows


def read_results(path: Path) -> dict[str, Outcome]:
    """The last row of each number in a results journal (empty when there is none)."""
    if not path.exists():
        return {}
    last: dict[str, Outcome] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            number = raw.get("number") or ""
            if number:
                last[number] = Outcome(**{k: raw.get(k) or "" for k in RESULT_FIELDS})
    return last


class _Journal:
    def __init__(self, path: Path, known: dict[str, Outcome]) -> None:
        self.path = path
        self.known = known
        fresh = not path.exists() or path.stat().st_size == 0
        self._file = path.open("a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=RESULT_FIELDS)
        if fresh:
            self._writer.writeheader()

    def write(self, outcome: Outcome) -> None:
        self.known[outcome.number] = outcome
        self._writer.writerow(outcome.row())
        self._file.flush()
        os.fsync(self._file.fileno())  # a placed call must be on disk before the next one

    def compact(self, order: Iterable[str]) -> None:
        """Rewrite the file with one row per number, in input order (atomically)."""
        self._file.close()
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
            writer.writeheader()
            for number in dict.fromkeys(order):  # a number listed twice has one row
                if number in self.known:
                    writer.writerow(self.known[number].row())
        tmp.replace(self.path)


async def run_batch(
    http: httpx.AsyncClient,
    rows: list[BatchRow],
    results: Path,
    *,
    from_number: str,
    profile: str,
    concurrency: int = 1,
    on_progress: Callable[[Outcome], None] = lambda _o: None,
    poll_s: float = POLL_S,
) -> dict[str, Outcome]:
    """Call every number not yet in ``results``; returns every number's outcome.

    ``http`` has the gateway's base URL and the admin bearer. ``on_progress`` is called once
    per number as it is over (including the ones finished in an earlier run, at the start).
    """
    known = read_results(results)
    journal = _Journal(results, known)
    try:
        for outcome in list(known.values()):
            if not outcome.over and outcome.id:
                await _refresh(http, journal, outcome)
        for outcome in known.values():
            on_progress(outcome)
        todo: asyncio.Queue[BatchRow] = asyncio.Queue()
        seen: set[str] = set(known)
        for row in rows:
            if row.number in seen:
                continue  # called before (or listed twice): never again
            seen.add(row.number)
            todo.put_nowait(row)

        async def worker() -> None:
            while not todo.empty():
                row = todo.get_nowait()
                outcome = await _call_one(http, journal, row, from_number, profile, poll_s)
                on_progress(outcome)

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    finally:
        journal.compact([r.number for r in rows])
    return journal.known


async def _call_one(
    http: httpx.AsyncClient,
    journal: _Journal,
    row: BatchRow,
    from_number: str,
    profile: str,
    poll_s: float,
) -> Outcome:
    if not E164.match(row.number):
        outcome = Outcome(row.number, status="invalid", error="not an E.164 number")
        journal.write(outcome)
        return outcome
    body: dict[str, Any] = {
        "to": row.number,
        "from": from_number,
        "profile": profile,
        "variables": row.variables,
    }
    while True:
        resp = await http.post("/calls", json=body)
        if resp.status_code in (429, 503) and "retry-after" in resp.headers:
            wait = min(MAX_RETRY_WAIT_S, float(resp.headers["retry-after"]))
            await asyncio.sleep(wait)  # the gateway's pacing: ask again when it says
            continue
        break
    if resp.status_code != 201:
        outcome = Outcome(row.number, status="refused", error=_error(resp))
        journal.write(outcome)
        return outcome
    placed = resp.json()
    outcome = Outcome(row.number, placed["id"], placed["call_sid"] or "", "placed")
    journal.write(outcome)
    while not outcome.over:
        await asyncio.sleep(poll_s)
        await _refresh(http, journal, outcome, write=False)
    journal.write(outcome)
    return outcome


async def _refresh(
    http: httpx.AsyncClient, journal: _Journal, outcome: Outcome, *, write: bool = True
) -> None:
    """Bring an unfinished row up to date from the gateway; a call it no longer knows (it
    restarted) is marked ``failed`` with that reason — and is still never called again."""
    resp = await http.get(f"/calls/{outcome.id}")
    if resp.status_code == 404:
        outcome.status, outcome.error = "failed", "the gateway no longer knows this call"
    elif resp.status_code == 200:
        view = resp.json()
        outcome.status = view["status"]
        outcome.answered_by = view.get("answered_by") or ""
        outcome.error = view.get("error") or ""
    if write and outcome.over:
        journal.write(outcome)


def _error(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return f"HTTP {resp.status_code}: {resp.text[:200]}"
    if isinstance(body, dict):
        return f"HTTP {resp.status_code}: {body.get('error') or body.get('detail') or body}"
    return f"HTTP {resp.status_code}"
