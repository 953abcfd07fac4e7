"""Usage parsing and cost: the GA usage shape, malformed usages, prices and snapshot names."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.records.pricing import DEFAULT_PRICES, ModelPrice, PriceTable, Usage

# The GA response.done.response.usage object, as OpenAI documents it and the emulator emits it
# (gateway/emulator/engine.py _usage): cached counts are a part of the input counts.
GA_USAGE: dict[str, Any] = {
    "total_tokens": 1690,
    "input_tokens": 1350,
    "output_tokens": 340,
    "input_token_details": {
        "text_tokens": 1100,
        "audio_tokens": 250,
        "image_tokens": 0,
        "cached_tokens": 1000,
        "cached_tokens_details": {"text_tokens": 900, "audio_tokens": 100, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 40, "audio_tokens": 300},
}


def test_ga_usage_is_read_field_by_field() -> None:
    assert Usage.from_realtime(GA_USAGE) == Usage(
        text_in=1100,
        text_in_cached=900,
        audio_in=250,
        audio_in_cached=100,
        image_in=0,
        image_in_cached=0,
        text_out=40,
        audio_out=300,
    )


def test_usage_without_details_is_counted_as_audio() -> None:
    # The service may send only the totals: the unexplained tokens are priced as audio, the
    # dearest modality, so the cost is an upper bound rather than an understatement.
    u = Usage.from_realtime({"input_tokens": 120, "output_tokens": 80})
    assert u == Usage(audio_in=120, audio_out=80)
    partial = {
        "input_tokens": 100,
        "output_tokens": 50,
        "input_token_details": {"text_tokens": 30, "cached_tokens": 20},
        "output_token_details": {"text_tokens": 10},
    }
    # cached_tokens without a per-modality breakdown is not discounted (upper bound).
    assert Usage.from_realtime(partial) == Usage(text_in=30, audio_in=70, text_out=10, audio_out=40)


@pytest.mark.parametrize(
    "usage",
    [
        None,
        "usage",
        42,
        [],
        {},
        {"input_tokens": None, "output_tokens": "12"},
        {"input_token_details": None, "output_token_details": []},
        {"input_token_details": {"text_tokens": True, "audio_tokens": -5, "image_tokens": 1.5}},
        {"input_token_details": {"cached_tokens_details": "x"}},
        {"input_tokens": float("nan"), "output_tokens": float("inf")},
    ],
)
def test_malformed_usage_never_raises(usage: Any) -> None:
    u = Usage.from_realtime(usage)
    assert all(v >= 0 for v in u.as_dict().values())


def test_garbage_counts_are_zero_and_cached_is_clipped() -> None:
    u = Usage.from_realtime(
        {
            "input_token_details": {
                "text_tokens": 10,
                "audio_tokens": "20",
                "cached_tokens_details": {"text_tokens": 50, "audio_tokens": 5},
            },
            "output_token_details": {"text_tokens": None, "audio_tokens": 7.0},
        }
    )
    assert u == Usage(text_in=10, text_in_cached=10, audio_out=7)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "input_tokens",
                    "output_tokens",
                    "input_token_details",
                    "output_token_details",
                    "cached_tokens_details",
                    "text_tokens",
                    "audio_tokens",
                    "image_tokens",
                    "cached_tokens",
                ]
            ),
            inner,
            max_size=6,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_any_json_value_parses_to_a_consistent_usage(value: Any) -> None:
    u = Usage.from_realtime(value)
    assert all(isinstance(v, int) and v >= 0 for v in u.as_dict().values())
    assert u.text_in_cached <= u.text_in
    assert u.audio_in_cached <= u.audio_in
    assert u.image_in_cached <= u.image_in
    cost = PriceTable.default().cost_usd("gpt-realtime", u)
    assert cost is not None and math.isfinite(cost) and cost >= 0


def test_an_absurd_token_count_is_clamped_so_the_cost_stays_finite() -> None:
    # found by the fuzz test above: counts near 1e307 made the cost infinite
    u = Usage.from_realtime(
        {"input_tokens": 5.6e306, "input_token_details": {"audio_tokens": 1e300}}
    )
    cost = PriceTable.default().cost_usd("gpt-realtime", u)
    assert cost is not None and math.isfinite(cost)


def test_usage_adds_and_sums() -> None:
    a = Usage(text_in=1, audio_out=2)
    b = Usage(text_in=10, audio_in=5, audio_in_cached=3)
    assert a + b == Usage(text_in=11, audio_in=5, audio_in_cached=3, audio_out=2)
    assert sum([a, b], Usage()) == a + b
    assert sum([a, b]) == a + b
    assert Usage() + Usage() == Usage()
    assert Usage.from_dict((a + b).as_dict()) == a + b


def test_cost_arithmetic_on_gpt_realtime() -> None:
    u = Usage(
        text_in=1000,
        text_in_cached=400,
        audio_in=2000,
        audio_in_cached=500,
        image_in=100,
        image_in_cached=0,
        text_out=300,
        audio_out=1000,
    )
    expected = (
        600 * 4.0 + 400 * 0.40 + 1500 * 32.0 + 500 * 0.40 + 100 * 5.0 + 300 * 16.0 + 1000 * 64.0
    ) / 1e6
    cost = PriceTable.default().cost_usd("gpt-realtime", u)
    assert cost == pytest.approx(expected, rel=1e-12)
    assert cost == pytest.approx(0.12006)


def test_emulator_shaped_usage_costs_what_the_price_list_says() -> None:
    cost = PriceTable.default().cost_usd("gpt-realtime-mini", Usage.from_realtime(GA_USAGE))
    expected = (200 * 0.60 + 900 * 0.06 + 150 * 10.0 + 100 * 0.30 + 40 * 2.40 + 300 * 20.0) / 1e6
    assert cost == pytest.approx(expected, rel=1e-12)


def test_cached_images_without_a_cached_price_pay_the_full_image_price() -> None:
    price = ModelPrice(
        text_input=1,
        text_cached_input=1,
        text_output=1,
        audio_input=1,
        audio_cached_input=1,
        audio_output=1,
        image_input=8,
    )
    assert price.cost_usd(Usage(image_in=1_000_000, image_in_cached=1_000_000)) == 8.0
    cheaper = price.model_copy(update={"image_cached_input": 0.5})
    assert cheaper.cost_usd(Usage(image_in=1_000_000, image_in_cached=1_000_000)) == 0.5


def test_default_prices_are_the_published_ones() -> None:
    # Guards against typos in the table (figures from OpenAI's model pages, see pricing.py).
    def figures(model: str) -> tuple[float, ...]:
        p = DEFAULT_PRICES[model]
        return (
            p.text_input,
            p.text_cached_input,
            p.text_output,
            p.audio_input,
            p.audio_cached_input,
            p.audio_output,
        )

    assert figures("gpt-realtime") == (4.0, 0.40, 16.0, 32.0, 0.40, 64.0)
    assert DEFAULT_PRICES["gpt-realtime"].image_input == 5.0
    assert figures("gpt-realtime-mini") == (0.60, 0.06, 2.40, 10.0, 0.30, 20.0)
    assert figures("gpt-4o-realtime-preview") == (5.0, 2.50, 20.0, 40.0, 2.50, 80.0)
    assert figures("gpt-4o-mini-realtime-preview") == (0.60, 0.30, 2.40, 10.0, 0.30, 20.0)


@pytest.mark.parametrize(
    ("model", "base"),
    [
        ("gpt-realtime", "gpt-realtime"),
        ("gpt-realtime-2025-08-28", "gpt-realtime"),
        ("gpt-realtime-mini-2025-10-06", "gpt-realtime-mini"),
        ("gpt-realtime-mini-2025-12-15", "gpt-realtime-mini"),
        ("gpt-4o-realtime-preview-2024-12-17", "gpt-4o-realtime-preview"),
        ("gpt-4o-mini-realtime-preview-2024-12-17", "gpt-4o-mini-realtime-preview"),
        ("GPT-Realtime-2025-08-28", "gpt-realtime"),
        ("gpt-realtime-2", "gpt-realtime-2"),
    ],
)
def test_snapshots_are_priced_as_their_base_model(model: str, base: str) -> None:
    assert PriceTable.default().price_for(model) is DEFAULT_PRICES[base]


@pytest.mark.parametrize(
    "model", ["", "my-own-model", "gpt-realtime-3", "gpt-realtime-nano-2025-01-01", "gpt-4o"]
)
def test_unknown_model_has_no_price(model: str) -> None:
    table = PriceTable.default()
    assert table.price_for(model) is None
    assert table.cost_usd(model, Usage(text_in=1000)) is None


def test_overrides_lay_over_the_defaults() -> None:
    table = PriceTable.default(
        {
            "gpt-realtime": {"audio_output": 50.0},
            "acme-voice": {
                "text_input": 1,
                "text_cached_input": 0.1,
                "text_output": 2,
                "audio_input": 3,
                "audio_cached_input": 0.3,
                "audio_output": 4,
            },
            "gpt-realtime-mini": DEFAULT_PRICES["gpt-4o-mini-realtime-preview"],
        }
    )
    rt = table.price_for("gpt-realtime-2025-08-28")
    assert rt is not None and rt.audio_output == 50.0 and rt.text_output == 16.0
    assert table.cost_usd("acme-voice-2026-01-01", Usage(audio_out=1_000_000)) == 4.0
    assert table.price_for("gpt-realtime-mini") == DEFAULT_PRICES["gpt-4o-mini-realtime-preview"]
    # the defaults themselves are untouched
    assert PriceTable.default().price_for("gpt-realtime") == DEFAULT_PRICES["gpt-realtime"]


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"new-model": {"text_input": 1}}, ["new-model", "audio_output", "Field required"]),
        ({"gpt-realtime": {"text_input": -1}}, ["gpt-realtime", "text_input"]),
        ({"gpt-realtime": {"text_inptu": 1}}, ["gpt-realtime", "text_inptu"]),
        ({"gpt-realtime": 4.0}, ["gpt-realtime", "object"]),
        ({"gpt-realtime": {"audio_output": float("inf")}}, ["gpt-realtime", "audio_output"]),
        (["gpt-realtime"], ["prices", "object"]),
    ],
)
def test_bad_overrides_name_the_model_and_field(override: Any, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        PriceTable.default(override)
    for word in words:
        assert word in str(info.value)


def test_model_price_is_frozen_and_strict() -> None:
    price = DEFAULT_PRICES["gpt-realtime"]
    with pytest.raises(ValueError):
        price.text_input = 1.0
    with pytest.raises(ValueError):
        ModelPrice.model_validate({**price.model_dump(), "surcharge": 1})
