"""Price paths: CSV with and without header, exact decimal conversion, the generated crash."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from riskd.replay import population, prices

BINANCE_ROWS = [  # Binance's 12-column monthly dump, as downloaded: no header
    "1584052740000,5807.97,5819.96,5801.01,5817.15,187.299,1584052799999,1088251.88,726,91.896,534125.2,0",
    "1584052800000,5816.51,5839.82,5806.22,5833.1,166.736,1584052859999,970976.64,597,105.025,611721.9,0",
]  # fmt: skip


def test_headerless_binance_dump_and_headed_csv_read_the_same(tmp_path: Path) -> None:
    bare = tmp_path / "bare.csv"
    bare.write_text("\n".join(BINANCE_ROWS) + "\n")
    headed = tmp_path / "headed.csv"
    headed.write_text(
        "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
        "taker_buy_volume,taker_buy_quote_volume,ignore\n" + "\n".join(BINANCE_ROWS) + "\n\n"
    )
    a, b = prices.read_klines(bare), prices.read_klines(headed)
    assert a == b
    assert a[0] == prices.Bar(
        1584052740000,
        Decimal("5807.97"),
        Decimal("5819.96"),
        Decimal("5801.01"),
        Decimal("5817.15"),
    )


def test_microsecond_and_second_timestamps_become_ms(tmp_path: Path) -> None:
    f = tmp_path / "us.csv"
    f.write_text("1735689600000000,100,101,99,100.5\n1735689660,100.5,102,100,101\n")
    assert [b.ts_ms for b in prices.read_klines(f)] == [1735689600000, 1735689660000]


def test_bad_rows_are_refused_with_their_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.csv"
    f.write_text("ts,open,high,low,close\n1,10,9,8,9\n")
    with pytest.raises(ValueError, match=r"bad\.csv:2"):
        prices.read_klines(f)


def test_prices_convert_exactly_to_the_tick() -> None:
    # BTC-USDT: 2 price decimals, tick 10 (0.10): half-even on the tick.
    assert prices.to_units(Decimal("5807.97"), 2, 10) == 580800
    assert prices.to_units(Decimal("5807.95"), 2, 10) == 580800  # 580795 → tie → even tick
    assert prices.to_units(Decimal("5807.85"), 2, 10) == 580780
    assert prices.to_units(Decimal("91522.33241304"), 2, 10) == 9152230
    assert prices.to_units(Decimal("0.00001"), 2, 10) == 10  # never below one tick


def test_marks_visit_the_wick_in_order() -> None:
    down = prices.Bar(0, Decimal(100), Decimal(101), Decimal(90), Decimal(95))
    up = prices.Bar(60_000, Decimal(95), Decimal(99), Decimal(94), Decimal(98))
    ms = prices.marks([down, up], 2, 1)
    assert [m.price for m in ms] == [10000, 10100, 9000, 9500, 9500, 9400, 9900, 9800]
    assert [m.ts_ms for m in ms] == [0, 15000, 30000, 45000, 60000, 75000, 90000, 105000]


def test_generated_crash_is_fixed_and_deep() -> None:
    a, b = prices.generated_crash(), prices.generated_crash()
    assert a == b
    low = min(x.low for x in a)
    assert low < a[0].open * Decimal("0.7")


def test_population_is_seeded_and_integer() -> None:
    kw: dict[str, Any] = {
        "price": 6_000_000, "bars": 100, "unit_value": 10, "scale": 10**6, "step": 1,
        "tiers": [population.Tier(0, 125), population.Tier(50_000 * 10**6, 100),
                  population.Tier(250_000 * 10**6, 50)],
        "leverage_mix": population.DEFAULT_LEVERAGE_MIX,
    }  # fmt: skip
    a = population.build(300, 7, **kw)
    assert a == population.build(300, 7, **kw)
    assert a != population.build(300, 8, **kw)
    sides = {t.side for t in a}
    assert sides == {1, -1}
    for t in a:
        notional = t.quantity * 6_000_000 * 10
        assert t.margin * t.leverage >= notional
        assert t.deposit >= t.margin and t.deposit % 10**6 == 0
        if notional >= 250_000 * 10**6:
            assert t.leverage <= 50
    with pytest.raises(ValueError):
        population.parse_leverage_mix("10x")
