"""Where call records live: one table (and the outbound opt-out list), on SQLite (the
default) or PostgreSQL.

:class:`RecordStore` is the small interface the gateway uses; :func:`open_store` returns its one
implementation, on SQLAlchemy 2 Core (async), for either database:

- ``sqlite+aiosqlite:///path/calls.sqlite3`` (see :func:`sqlite_url`): one file, no server,
  WAL journal so the admin API can read while a call end writes, and a busy timeout so two
  writers wait for each other instead of failing.
- ``postgresql+psycopg://user:pass@host/db`` (``postgresql://`` and ``postgres://`` are taken
  to mean the same): for several replicas sharing one history. :meth:`open` may run on all of
  them at once; a transaction-scoped advisory lock makes the table creation happen once.

What is filtered or summed (start time, number, outcome, duration, tokens, cost) is a plain
column, so an operator can query the table with SQL; the free-form rest (latency percentiles,
tool actions, error counts) is JSON text and may grow without a migration.

Every failure surfaces as :class:`RecordStoreError` with a message an operator can act on. The
database URL in it has its password masked, and the driver's text is scrubbed of it too.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import Dialect, RowMapping, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from gateway.errors import GatewayError
from gateway.records.model import CallRecord, utc
from gateway.records.pricing import Usage

__all__ = [
    "OptOut",
    "RecordQuery",
    "RecordStore",
    "RecordStoreError",
    "SqlRecordStore",
    "UsageTotals",
    "mask_url",
    "open_store",
    "sqlite_url",
]

MAX_LIMIT = 1000


class RecordStoreError(GatewayError):
    """The call records database cannot be used; the message says which one and why."""


@dataclass(frozen=True, slots=True)
class RecordQuery:
    """Filters for :meth:`RecordStore.query`. ``since`` is inclusive, ``until`` exclusive, both
    on ``started_at``; ``limit`` is capped at 1000. Results are newest first."""

    number: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100
    direction: str | None = None

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")
        object.__setattr__(self, "limit", min(self.limit, MAX_LIMIT))
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, utc(value, name))


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Sums over the calls to one number. ``cost_usd`` sums the priced calls only; calls whose
    model had no known price are counted in ``unpriced_calls`` (their tokens are in ``usage``)."""

    number: str
    calls: int
    duration_s: float
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    unpriced_calls: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "calls": self.calls,
            "duration_s": self.duration_s,
            "usage": self.usage.as_dict(),
            "cost_usd": self.cost_usd,
            "unpriced_calls": self.unpriced_calls,
        }


class RecordStore(Protocol):
    """Storage of :class:`CallRecord` by ``call_sid``. Every method raises
    :class:`RecordStoreError` on failure, except :meth:`close`, which never raises."""

    async def open(self) -> None:
        """Create the table and indexes if missing. Idempotent, safe to race across replicas."""

    async def save(self, record: CallRecord) -> None:
        """Insert, or replace the record with the same ``call_sid``."""

    async def get(self, call_sid: str) -> CallRecord | None: ...

    async def query(self, q: RecordQuery) -> list[CallRecord]: ...

    async def totals(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        number: str | None = None,
        direction: str | None = None,
    ) -> list[UsageTotals]:
        """Per-number sums over calls started in [since, until), ordered by number; only the
        calls of one ``direction`` (``inbound``/``outbound``) when given."""

    async def opt_out(self, number: str, reason: str, at: datetime) -> None:
        """Never place a call to ``number`` again (idempotent: the first entry is kept)."""

    async def opted_out(self, number: str) -> bool: ...

    async def remove_opt_out(self, number: str) -> bool:
        """Take ``number`` off the list; False when it was not on it."""

    async def opt_outs(self) -> list[OptOut]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class OptOut:
    """A number that asked not to be called, since ``at`` and why (free text)."""

    number: str
    at: datetime
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "at": self.at.isoformat(), "reason": self.reason}


# --- URLs ------------------------------------------------------------------------------------


def sqlite_url(path: Path) -> str:
    """The store URL of a SQLite file at ``path``, creating its directory."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RecordStoreError(
            f"call records: cannot create directory {str(path.parent)!r}: {e.strerror or e}"
        ) from None
    return "sqlite+aiosqlite:///" + str(path.resolve())


def _split_password(url: str) -> tuple[str, str | None]:
    """``url`` with its password replaced by ``***``, and the password (None if none).

    Everything between the user name and the *last* ``@`` counts as the password, so a password
    with unescaped ``@``, ``/`` or ``:`` is still hidden (masking too much is the safe error).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url, None
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return url, None
    user, colon, password = userinfo.partition(":")
    if not colon or "/" in user:
        return url, None
    return f"{scheme}://{user}:***@{host}", password


def mask_url(url: str) -> str:
    """``url`` safe to show: the password, if any, is ``***`` (works on unparsable URLs too)."""
    return _split_password(url)[0]


def _normalize(url: str) -> str:
    """Map the accepted spellings to the two drivers this store ships with."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise RecordStoreError(
            f"call records URL {mask_url(url)!r} is not a database URL; use "
            "sqlite+aiosqlite:///path/calls.sqlite3 or postgresql://user:pass@host/db"
        )
    scheme = scheme.lower()
    if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
        return f"postgresql+psycopg://{rest}"
    if scheme in ("sqlite", "sqlite+aiosqlite"):
        return f"sqlite+aiosqlite://{rest}"
    raise RecordStoreError(
        f"call records URL {mask_url(url)!r}: unsupported scheme {scheme!r}; "
        "use sqlite+aiosqlite:// or postgresql:// (psycopg)"
    )


def open_store(
    url: str, *, connect_timeout_s: float = 5.0, busy_timeout_s: float = 5.0
) -> SqlRecordStore:
    """A store for ``url`` (not yet connected: call :meth:`~RecordStore.open`).

    Raises :class:`RecordStoreError` when the URL is malformed or names an unsupported driver.
    """
    return SqlRecordStore(url, connect_timeout_s=connect_timeout_s, busy_timeout_s=busy_timeout_s)


# --- schema ----------------------------------------------------------------------------------


class _UtcDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on both databases.

    PostgreSQL stores ``timestamptz``; SQLite has no time type, so the UTC wall time is stored
    as SQLAlchemy's fixed-width text, which sorts and compares correctly.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_TOKENS = tuple(f.name for f in fields(Usage))

_metadata = sa.MetaData()
_calls = sa.Table(
    "call_records",
    _metadata,
    sa.Column("call_sid", sa.String(), primary_key=True),
    sa.Column("started_at", _UtcDateTime(), nullable=False),
    sa.Column("ended_at", _UtcDateTime(), nullable=True),
    sa.Column("stream_sid", sa.String(), nullable=False, default=""),
    sa.Column("account_sid", sa.String(), nullable=False, default=""),
    sa.Column("number", sa.String(), nullable=False),
    sa.Column("profile", sa.String(), nullable=False, default=""),
    sa.Column("caller", sa.String(), nullable=False, default=""),
    sa.Column("upstream_call_id", sa.String(), nullable=False, default=""),
    sa.Column("model", sa.String(), nullable=False, default=""),
    sa.Column("duration_s", sa.Float(), nullable=False, default=0.0),
    sa.Column("outcome", sa.String(), nullable=False, default=""),
    sa.Column("end_reason", sa.Text(), nullable=False, default=""),
    sa.Column("turns", sa.Integer(), nullable=False, default=0),
    sa.Column("barge_ins", sa.Integer(), nullable=False, default=0),
    sa.Column("setup_ms", sa.Float(), nullable=True),
    *(sa.Column(name, sa.BigInteger(), nullable=False, default=0) for name in _TOKENS),
    sa.Column("cost_usd", sa.Float(), nullable=True),
    sa.Column("recording_path", sa.Text(), nullable=True),
    sa.Column("dtmf", sa.String(), nullable=False, default=""),
    sa.Column("latency", sa.Text(), nullable=False, default="{}"),
    sa.Column("actions", sa.Text(), nullable=False, default="[]"),
    sa.Column("errors", sa.Text(), nullable=False, default="{}"),
    sa.Column("direction", sa.String(), nullable=False, default="inbound"),
    sa.Column("answered_by", sa.String(), nullable=True),
    sa.Column("answered_by_ms", sa.Float(), nullable=True),
    sa.Column("voicemail_left", sa.Boolean(), nullable=True),
    sa.Index("ix_call_records_started_at", "started_at"),
    sa.Index("ix_call_records_number_started_at", "number", "started_at"),
    sa.Index("ix_call_records_outcome_started_at", "outcome", "started_at"),
)

_opt_outs = sa.Table(
    "opt_outs",
    _metadata,
    sa.Column("number", sa.String(), primary_key=True),
    sa.Column("at", _UtcDateTime(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False, default=""),
)

_ADDED_COLUMNS = {"direction": "'inbound'", "answered_by": None, "answered_by_ms": None}
_ADDED_COLUMNS["voicemail_left"] = None
"""Columns added after the table first shipped, with the default existing rows take: a table
created by an older gateway gains them on :meth:`SqlRecordStore.open`."""

# Any constant works; it only has to be the same on every replica (pg_advisory_xact_lock key).
_SCHEMA_LOCK = 0x6761_7465_7761_7931  # "gatewayl"


def _row(record: CallRecord) -> dict[str, Any]:
    return {
        "call_sid": record.call_sid,
        "started_at": record.started_at,
        "ended_at": record.ended_at,
        "stream_sid": record.stream_sid,
        "account_sid": record.account_sid,
        "number": record.number,
        "profile": record.profile,
        "caller": record.caller,
        "upstream_call_id": record.upstream_call_id,
        "model": record.model,
        "duration_s": float(record.duration_s),
        "outcome": record.outcome,
        "end_reason": record.end_reason,
        "turns": int(record.turns),
        "barge_ins": int(record.barge_ins),
        "setup_ms": record.setup_ms,
        **record.usage.as_dict(),
        "cost_usd": record.cost_usd,
        "recording_path": record.recording_path,
        "dtmf": record.dtmf,
        "latency": json.dumps(record.latency, default=str),
        "actions": json.dumps(record.actions, default=str),
        "errors": json.dumps(record.errors, default=str),
        "direction": record.direction,
        "answered_by": record.answered_by,
        "answered_by_ms": record.answered_by_ms,
        "voicemail_left": record.voicemail_left,
    }


def _json(text: Any, empty: Any) -> Any:
    """Parsed JSON of the expected kind, else ``empty`` (a hand-edited row must not break lists)."""
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return empty
    return value if isinstance(value, type(empty)) else empty


def _record(row: RowMapping) -> CallRecord:
    return CallRecord(
        call_sid=row["call_sid"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        stream_sid=row["stream_sid"],
        account_sid=row["account_sid"],
        number=row["number"],
        profile=row["profile"],
        caller=row["caller"],
        upstream_call_id=row["upstream_call_id"],
        model=row["model"],
        duration_s=float(row["duration_s"]),
        outcome=row["outcome"],
        end_reason=row["end_reason"],
        turns=int(row["turns"]),
        barge_ins=int(row["barge_ins"]),
        setup_ms=row["setup_ms"],
        latency=_json(row["latency"], {}),
        usage=Usage(**{name: int(row[name]) for name in _TOKENS}),
        cost_usd=row["cost_usd"],
        actions=[a for a in _json(row["actions"], []) if isinstance(a, dict)],
        errors=_json(row["errors"], {}),
        recording_path=row["recording_path"],
        dtmf=row["dtmf"],
        direction=row["direction"],
        answered_by=row["answered_by"],
        answered_by_ms=row["answered_by_ms"],
        voicemail_left=row["voicemail_left"],
    )


def _add_missing_columns(conn: sa.Connection) -> None:
    """ALTER an older gateway's table to today's columns (SQLite and PostgreSQL both add a
    column with a constant default in place)."""
    have = {c["name"] for c in sa.inspect(conn).get_columns(_calls.name)}
    for name, default in _ADDED_COLUMNS.items():
        if name in have:
            continue
        column = _calls.c[name]
        kind = column.type.compile(dialect=conn.dialect)
        ddl = f"ALTER TABLE {_calls.name} ADD COLUMN {name} {kind}"
        if default is not None:
            ddl += f" NOT NULL DEFAULT {default}"
        conn.execute(sa.text(ddl))


# --- the store -------------------------------------------------------------------------------


class SqlRecordStore:
    """:class:`RecordStore` on SQLAlchemy Core (async): SQLite via aiosqlite, PostgreSQL via
    psycopg 3. Construct with :func:`open_store`."""

    def __init__(
        self, url: str, *, connect_timeout_s: float = 5.0, busy_timeout_s: float = 5.0
    ) -> None:
        self.url = mask_url(url)
        """The URL as it may be shown (password masked)."""
        self._password = _split_password(url)[1]
        normalized = _normalize(url)
        try:
            parsed = make_url(normalized)
        except (ArgumentError, ValueError):
            raise RecordStoreError(
                f"call records URL {self.url!r} cannot be parsed; expected "
                "sqlite+aiosqlite:///path or postgresql://user:pass@host:port/db"
            ) from None
        self.dialect = parsed.get_backend_name()
        self._sqlite_file: Path | None = None
        options: dict[str, Any] = {}
        if self.dialect == "sqlite":
            memory = parsed.database in (None, "", ":memory:")
            if not memory:
                self._sqlite_file = Path(str(parsed.database))
            else:
                options["poolclass"] = StaticPool  # one connection, or each sees its own DB
            options["connect_args"] = {"timeout": busy_timeout_s}
        else:
            options["pool_pre_ping"] = True  # survive a database restart between calls
            options["connect_args"] = {"connect_timeout": max(1, round(connect_timeout_s))}
        try:
            self._engine: AsyncEngine = create_async_engine(parsed, **options)
        except (ArgumentError, NoSuchModuleError, ImportError) as e:
            raise RecordStoreError(
                f"call records URL {self.url!r}: {self._scrub(str(e))}"
            ) from None
        if self.dialect == "sqlite":
            busy_ms = int(busy_timeout_s * 1000)

            @sa.event.listens_for(self._engine.sync_engine, "connect")
            def _pragmas(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
                cursor.execute("PRAGMA synchronous=NORMAL")  # durable across crashes in WAL
                cursor.close()

    def __repr__(self) -> str:
        return f"SqlRecordStore({self.url!r})"

    def _scrub(self, text: str) -> str:
        if self._password:
            for secret in {self._password, quote(self._password, safe="")}:
                text = text.replace(secret, "***")
        return text

    def _error(self, action: str, exc: BaseException) -> RecordStoreError:
        if isinstance(exc, DBAPIError) and exc.orig is not None:
            reason = str(exc.orig)  # the driver's words, without SQL text and parameters
        elif isinstance(exc, SQLAlchemyError):
            reason = str(exc).split("\n(Background on this error", 1)[0]
        else:
            reason = str(exc) or type(exc).__name__
        reason = " ".join(self._scrub(reason).split())
        return RecordStoreError(f"call records at {self.url}: cannot {action}: {reason}")

    async def open(self) -> None:
        if self._sqlite_file is not None and not self._sqlite_file.parent.is_dir():
            # SQLite's own word for this is "unable to open database file": say which part.
            raise RecordStoreError(
                f"call records at {self.url}: directory {str(self._sqlite_file.parent)!r} "
                "does not exist (sqlite_url() creates it)"
            )
        attempts = 2 if self.dialect == "sqlite" else 1
        for attempt in range(attempts):
            try:
                async with self._engine.begin() as conn:
                    if self.dialect == "postgresql":
                        # Replicas starting together: the first creates, the rest then see it.
                        await conn.execute(
                            sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK}
                        )
                    await conn.run_sync(_metadata.create_all)
                    await conn.run_sync(_add_missing_columns)
                return
            except (SQLAlchemyError, OSError) as e:
                # SQLite has no such lock: a racing process may create the table between our
                # check and our CREATE; the second pass then finds it.
                if attempt + 1 == attempts:
                    raise self._error("create the call_records table", e) from None
                await asyncio.sleep(0.05)

    def _insert(self) -> Any:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(_calls)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(_calls)

    async def save(self, record: CallRecord) -> None:
        row = _row(record)
        stmt = self._insert().values(**row)
        stmt = stmt.on_conflict_do_update(
            index_elements=[_calls.c.call_sid],
            set_={name: stmt.excluded[name] for name in row if name != "call_sid"},
        )
        try:
            async with self._engine.begin() as conn:
                await conn.execute(stmt)
        except (SQLAlchemyError, OSError) as e:
            raise self._error(f"save call {record.call_sid}", e) from None

    async def get(self, call_sid: str) -> CallRecord | None:
        stmt = sa.select(_calls).where(_calls.c.call_sid == call_sid)
        try:
            async with self._engine.connect() as conn:
                row = (await conn.execute(stmt)).mappings().first()
        except (SQLAlchemyError, OSError) as e:
            raise self._error(f"read call {call_sid}", e) from None
        return None if row is None else _record(row)

    async def query(self, q: RecordQuery) -> list[CallRecord]:
        stmt = sa.select(_calls)
        if q.number is not None:
            stmt = stmt.where(_calls.c.number == q.number)
        if q.outcome is not None:
            stmt = stmt.where(_calls.c.outcome == q.outcome)
        if q.direction is not None:
            stmt = stmt.where(_calls.c.direction == q.direction)
        stmt = self._window(stmt, q.since, q.until)
        stmt = stmt.order_by(_calls.c.started_at.desc(), _calls.c.call_sid.desc()).limit(q.limit)
        try:
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).mappings().all()
        except (SQLAlchemyError, OSError) as e:
            raise self._error("list calls", e) from None
        return [_record(r) for r in rows]

    @staticmethod
    def _window(stmt: Any, since: datetime | None, until: datetime | None) -> Any:
        if since is not None:
            stmt = stmt.where(_calls.c.started_at >= utc(since, "since"))
        if until is not None:
            stmt = stmt.where(_calls.c.started_at < utc(until, "until"))
        return stmt

    async def totals(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        number: str | None = None,
        direction: str | None = None,
    ) -> list[UsageTotals]:
        c = _calls.c
        stmt = sa.select(
            c.number,
            sa.func.count().label("calls"),
            sa.func.coalesce(sa.func.sum(c.duration_s), 0.0).label("duration_s"),
            *(sa.func.coalesce(sa.func.sum(c[name]), 0).label(name) for name in _TOKENS),
            sa.func.coalesce(sa.func.sum(c.cost_usd), 0.0).label("cost_usd"),
            sa.func.sum(sa.case((c.cost_usd.is_(None), 1), else_=0)).label("unpriced_calls"),
        ).group_by(c.number)
        if number is not None:
            stmt = stmt.where(c.number == number)
        if direction is not None:
            stmt = stmt.where(c.direction == direction)
        stmt = self._window(stmt, since, until).order_by(c.number)
        try:
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).mappings().all()
        except (SQLAlchemyError, OSError) as e:
            raise self._error("sum calls", e) from None
        return [
            UsageTotals(
                number=r["number"],
                calls=int(r["calls"]),
                duration_s=float(r["duration_s"]),
                usage=Usage(**{name: int(r[name]) for name in _TOKENS}),
                cost_usd=float(r["cost_usd"]),
                unpriced_calls=int(r["unpriced_calls"] or 0),
            )
            for r in rows
        ]

    async def opt_out(self, number: str, reason: str, at: datetime) -> None:
        stmt = self._insert_opt_out().values(number=number, at=utc(at, "at"), reason=reason)
        stmt = stmt.on_conflict_do_nothing(index_elements=[_opt_outs.c.number])
        try:
            async with self._engine.begin() as conn:
                await conn.execute(stmt)
        except (SQLAlchemyError, OSError) as e:
            raise self._error(f"add {number} to the opt-out list", e) from None

    async def opted_out(self, number: str) -> bool:
        stmt = sa.select(_opt_outs.c.number).where(_opt_outs.c.number == number)
        try:
            async with self._engine.connect() as conn:
                return (await conn.execute(stmt)).first() is not None
        except (SQLAlchemyError, OSError) as e:
            raise self._error("read the opt-out list", e) from None

    async def remove_opt_out(self, number: str) -> bool:
        stmt = sa.delete(_opt_outs).where(_opt_outs.c.number == number)
        try:
            async with self._engine.begin() as conn:
                return bool((await conn.execute(stmt)).rowcount)
        except (SQLAlchemyError, OSError) as e:
            raise self._error(f"remove {number} from the opt-out list", e) from None

    async def opt_outs(self) -> list[OptOut]:
        stmt = sa.select(_opt_outs).order_by(_opt_outs.c.number)
        try:
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).mappings().all()
        except (SQLAlchemyError, OSError) as e:
            raise self._error("read the opt-out list", e) from None
        return [OptOut(r["number"], r["at"], r["reason"]) for r in rows]

    def _insert_opt_out(self) -> Any:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(_opt_outs)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(_opt_outs)

    async def close(self) -> None:
        try:
            await self._engine.dispose()
        except Exception:  # closing must not mask the reason we are closing
            pass
