"""The universe is chosen with what was known before the period starts, never with hindsight."""

import numpy as np
import pytest

from backtests.config import parse_backtest_config
from backtests.runner import select_universe
from catalog.instruments import symbol_of
from catalog.store import CatalogStore
from quantum_trader.config import ConfigError
from tests.conftest import build_catalog, candles

START = "2025-01-08"  # seven days of data before it


def universe_cfg(catalog, **universe):
    return parse_backtest_config(
        {
            "catalog": str(catalog),
            "universe": {"select": "top_volume", "size": 2, "ranking_days": 7, **universe},
            "period": {"start": START},
            "strategies": [{"path": "strategies.empty:Empty", "config": {}}],
        }
    )


def chosen(catalog, **universe) -> list[str]:
    u = select_universe(CatalogStore(catalog), universe_cfg(catalog, **universe))
    return [symbol_of(i.id) for i in u.instruments]


@pytest.fixture
def listed_late(tmp_path):
    """OLD1 and OLD2 trade before the start; NEW lists at the start with 1,000x their volume."""
    days = 12 * 288
    frames = {
        "OLD1USDT": candles(np.full(days, 100.0), volume=10.0),
        "OLD2USDT": candles(np.full(days, 100.0), volume=5.0),
        "NEWUSDT": candles(np.full(5 * 288, 100.0), start=START, volume=10_000.0),
    }
    return build_catalog(tmp_path / "late", frames).path


def test_a_symbol_with_no_history_before_the_start_ranks_with_zero_volume(listed_late):
    # With hindsight (its first days inside the period) NEW would rank first.
    assert chosen(listed_late) == ["OLD1USDT", "OLD2USDT"]
    assert chosen(listed_late, size=3) == ["OLD1USDT", "OLD2USDT", "NEWUSDT"]


def test_a_minimum_volume_leaves_out_a_symbol_with_no_history(listed_late):
    assert chosen(listed_late, select="all", min_quote_volume_24h=1.0) == ["OLD1USDT", "OLD2USDT"]


def test_the_report_says_which_symbols_had_no_history(listed_late):
    u = select_universe(CatalogStore(listed_late), universe_cfg(listed_late, size=3))
    assert (
        u.ranking_note == "ranked on the 7 days before start; no bars before start, so zero volume: NEWUSDT"
    )


def test_ranking_that_would_leave_symbols_out_is_refused_when_no_symbol_has_history(tmp_path):
    frames = {s: candles(np.full(288, 100.0), start=START) for s in ("AAAUSDT", "BBBUSDT")}
    catalog = build_catalog(tmp_path / "young", frames).path
    with pytest.raises(ConfigError, match="universe.select: top_volume .* no symbol has bars before"):
        chosen(catalog, size=1)
    assert chosen(catalog, size=2) == ["AAAUSDT", "BBBUSDT"]  # room for every symbol: nothing is ranked out
    assert chosen(catalog, select="all") == ["AAAUSDT", "BBBUSDT"]
