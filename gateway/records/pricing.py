"""Token usage and what it costs, per model.

The Realtime service bills every response by tokens of three modalities (text, audio, image),
with a lower price for the part of the input it served from its cache. ``response.done`` carries
the counts; :class:`Usage` holds them summed over a call, and :class:`PriceTable` turns them into
US dollars with the prices in force for the call's model.

Two rules keep the figure honest:

- A model without a known price has *no* cost (``None``), never a guessed one: the record then
  says "unknown price" and the operator adds the model to ``GATEWAY_PRICES``.
- A usage the service reports without its per-modality breakdown is read as an upper bound:
  tokens not attributed to a modality count as audio (the dearest), and cached tokens not
  attributed to a modality count as uncached. The cost may then be too high, never too low.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["DEFAULT_PRICES", "ModelPrice", "PriceTable", "Usage"]


MAX_TOKENS = 10**12
"""Beyond any real session (a 60-minute session is ~10^6 tokens): a larger count is a corrupt
field, clamped here so that a cost computed from it stays a finite number."""


def _count(value: Any) -> int:
    """A token count from an untrusted field: a non-negative int (at most :data:`MAX_TOKENS`),
    else 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if isinstance(value, float) and not math.isfinite(value):
        return 0
    return min(MAX_TOKENS, max(0, int(value)))


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one response or summed over a call.

    The ``*_cached`` counts are the cached *part* of the matching input count (as OpenAI reports
    ``cached_tokens``): ``text_in`` includes ``text_in_cached``. ``Usage()`` is zero and
    ``a + b`` adds field by field, so a call's usage is ``sum(responses, Usage())``.
    """

    text_in: int = 0
    text_in_cached: int = 0
    audio_in: int = 0
    audio_in_cached: int = 0
    image_in: int = 0
    image_in_cached: int = 0
    text_out: int = 0
    audio_out: int = 0

    def __add__(self, other: object) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __radd__(self, other: object) -> Usage:
        # sum() starts from 0; let it through so sum(usages) works without a start value.
        if other == 0:
            return self
        return NotImplemented

    @property
    def input_tokens(self) -> int:
        return self.text_in + self.audio_in + self.image_in

    @property
    def output_tokens(self) -> int:
        return self.text_out + self.audio_out

    @classmethod
    def from_realtime(cls, usage: Any) -> Usage:
        """Read a GA ``response.done.response.usage`` object; never raises.

        Missing, ``None`` or non-numeric fields count as 0; a cached count above its input count
        is clipped to it. When ``input_tokens``/``output_tokens`` exceed the sum of their
        per-modality details (details omitted), the rest is attributed to audio, the dearest
        modality, so the cost computed from it is an upper bound.
        """
        u = _obj(usage)
        ind = _obj(u.get("input_token_details"))
        cached = _obj(ind.get("cached_tokens_details"))
        outd = _obj(u.get("output_token_details"))

        text_in = _count(ind.get("text_tokens"))
        audio_in = _count(ind.get("audio_tokens"))
        image_in = _count(ind.get("image_tokens"))
        audio_in += max(0, _count(u.get("input_tokens")) - (text_in + audio_in + image_in))

        text_out = _count(outd.get("text_tokens"))
        audio_out = _count(outd.get("audio_tokens"))
        audio_out += max(0, _count(u.get("output_tokens")) - (text_out + audio_out))

        return cls(
            text_in=text_in,
            text_in_cached=min(text_in, _count(cached.get("text_tokens"))),
            audio_in=audio_in,
            audio_in_cached=min(audio_in, _count(cached.get("audio_tokens"))),
            image_in=image_in,
            image_in_cached=min(image_in, _count(cached.get("image_tokens"))),
            text_out=text_out,
            audio_out=audio_out,
        )

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Usage:
        """The inverse of :meth:`as_dict`; unknown keys are ignored, bad values count as 0."""
        d = _obj(data)
        return cls(**{f.name: _count(d.get(f.name)) for f in fields(cls)})


class ModelPrice(BaseModel):
    """US dollars per 1M tokens for one model.

    ``image_cached_input`` is optional: when unset, cached image tokens are billed at
    ``image_input`` (an upper bound), so leaving it out never makes a call look cheaper.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    text_input: float = Field(ge=0)
    text_cached_input: float = Field(ge=0)
    text_output: float = Field(ge=0)
    audio_input: float = Field(ge=0)
    audio_cached_input: float = Field(ge=0)
    audio_output: float = Field(ge=0)
    image_input: float = Field(default=0.0, ge=0)
    image_cached_input: float | None = Field(default=None, ge=0)

    def cost_usd(self, usage: Usage) -> float:
        """Uncached input at the input price, cached input at the cached price, outputs."""
        image_cached = self.image_cached_input
        if image_cached is None:
            image_cached = self.image_input
        micro = (
            (usage.text_in - usage.text_in_cached) * self.text_input
            + usage.text_in_cached * self.text_cached_input
            + (usage.audio_in - usage.audio_in_cached) * self.audio_input
            + usage.audio_in_cached * self.audio_cached_input
            + (usage.image_in - usage.image_in_cached) * self.image_input
            + usage.image_in_cached * image_cached
            + usage.text_out * self.text_output
            + usage.audio_out * self.audio_output
        )
        return micro / 1e6


# Checked 2026-12-01 against OpenAI's model pages (USD per 1M tokens):
#   https://developers.openai.com/api/docs/models/gpt-realtime-1.5
#   https://developers.openai.com/api/docs/models/gpt-realtime-2
#   https://developers.openai.com/api/docs/models/gpt-realtime-2.1
#   https://developers.openai.com/api/docs/models/gpt-realtime-2.1-mini  (its comparison table
#       lists GPT-Realtime Mini at the same rates)
#   https://developers.openai.com/api/docs/models/gpt-4o-realtime-preview
#   https://developers.openai.com/api/docs/models/gpt-4o-mini-realtime-preview
# gpt-realtime (gpt-realtime-2025-08-28) is priced as its successor gpt-realtime-1.5 lists:
# the same figures as at its launch. Prices change: operators override them with GATEWAY_PRICES.
_GPT_REALTIME = ModelPrice(
    text_input=4.0,
    text_cached_input=0.40,
    text_output=16.0,
    audio_input=32.0,
    audio_cached_input=0.40,
    audio_output=64.0,
    image_input=5.0,
    image_cached_input=0.50,
)
_GPT_REALTIME_2 = _GPT_REALTIME.model_copy(update={"text_output": 24.0})
_GPT_REALTIME_MINI = ModelPrice(
    text_input=0.60,
    text_cached_input=0.06,
    text_output=2.40,
    audio_input=10.0,
    audio_cached_input=0.30,
    audio_output=20.0,
    image_input=0.80,
    image_cached_input=0.08,
)

DEFAULT_PRICES: Mapping[str, ModelPrice] = {
    "gpt-realtime": _GPT_REALTIME,
    "gpt-realtime-1.5": _GPT_REALTIME,
    "gpt-realtime-2": _GPT_REALTIME_2,
    "gpt-realtime-2.1": _GPT_REALTIME_2,
    "gpt-realtime-mini": _GPT_REALTIME_MINI,
    "gpt-realtime-2.1-mini": _GPT_REALTIME_MINI,
    "gpt-4o-realtime-preview": ModelPrice(
        text_input=5.0,
        text_cached_input=2.50,
        text_output=20.0,
        audio_input=40.0,
        audio_cached_input=2.50,
        audio_output=80.0,
    ),
    "gpt-4o-mini-realtime-preview": ModelPrice(
        text_input=0.60,
        text_cached_input=0.30,
        text_output=2.40,
        audio_input=10.0,
        audio_cached_input=0.30,
        audio_output=20.0,
    ),
}

# A dated snapshot: ``<base>-YYYY-MM-DD``. Only this suffix falls back to the base name; a
# different model that merely shares a prefix (``gpt-realtime-3``) stays unknown rather than
# inheriting someone else's price.
_SNAPSHOT = re.compile(r"^(?P<base>.+)-\d{4}-\d{2}-\d{2}$")


class PriceTable:
    """Prices by model name, with dated snapshots priced as their base model."""

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        self._prices = {name.strip().lower(): price for name, price in prices.items()}

    @classmethod
    def default(
        cls, overrides: Mapping[str, ModelPrice | Mapping[str, Any]] | None = None
    ) -> PriceTable:
        """The built-in prices with ``overrides`` laid over them.

        An override is a :class:`ModelPrice` (replaces the model's price) or a mapping of
        fields: for a known model only the fields given change; a new model must give every
        required field. Raises ``ValueError`` naming the model and field at fault.
        """
        if overrides is not None and not isinstance(overrides, Mapping):
            raise ValueError("prices: expected an object mapping model names to prices")
        prices = dict(DEFAULT_PRICES)
        for name, override in (overrides or {}).items():
            key = name.strip().lower()
            if isinstance(override, ModelPrice):
                prices[key] = override
                continue
            if not isinstance(override, Mapping):
                raise ValueError(f"price for {name!r}: expected an object of USD per 1M tokens")
            base = prices.get(key)
            data = {**(base.model_dump() if base else {}), **override}
            try:
                prices[key] = ModelPrice.model_validate(data)
            except ValidationError as e:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
                )
                raise ValueError(f"price for {name!r}: {problems}") from None
        return cls(prices)

    @property
    def models(self) -> list[str]:
        return sorted(self._prices)

    def price_for(self, model: str) -> ModelPrice | None:
        """The exact model's price, else its base model's for a dated snapshot, else None."""
        key = model.strip().lower()
        if key in self._prices:
            return self._prices[key]
        m = _SNAPSHOT.match(key)
        if m:
            return self._prices.get(m["base"])
        return None

    def cost_usd(self, model: str, usage: Usage) -> float | None:
        """What ``usage`` cost on ``model`` in USD, or None when the model has no known price."""
        price = self.price_for(model)
        return None if price is None else price.cost_usd(usage)
