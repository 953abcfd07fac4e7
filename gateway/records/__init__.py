"""Call records: one row per finished call, with its usage and cost, in SQLite or PostgreSQL.

- :mod:`~gateway.records.pricing` — token :class:`Usage` and :class:`PriceTable` (USD per model).
- :mod:`~gateway.records.model` — :class:`CallRecord`, the stored shape of one call.
- :mod:`~gateway.records.store` — :class:`RecordStore` and :func:`open_store` (SQLAlchemy Core).
- :mod:`~gateway.records.writer` — :class:`RecordWriter`, which saves records off the audio path.
"""

from gateway.records.model import CallRecord
from gateway.records.pricing import DEFAULT_PRICES, ModelPrice, PriceTable, Usage
from gateway.records.store import (
    RecordQuery,
    RecordStore,
    RecordStoreError,
    UsageTotals,
    open_store,
    sqlite_url,
)
from gateway.records.writer import RecordWriter

__all__ = [
    "DEFAULT_PRICES",
    "CallRecord",
    "ModelPrice",
    "PriceTable",
    "RecordQuery",
    "RecordStore",
    "RecordStoreError",
    "RecordWriter",
    "Usage",
    "UsageTotals",
    "open_store",
    "sqlite_url",
]
