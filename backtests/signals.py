"""`qt signals CONFIG`: a backtest config's ensemble decisions, computed in batch and stored for replay.

The signals come from exactly the bars the backtest feeds the engine (same universe, period and rounding), so
a backtest of the same config with `signal_source: catalog` trades the same decisions as one that scores
online (tests/test_ensemble_strategy.py).
"""

from pathlib import Path

import pandas as pd

from backtests.bar_feed import BarFeed
from backtests.config import BacktestConfig
from backtests.runner import resolve_period, select_universe
from catalog.instruments import symbol_of
from catalog.store import CatalogStore
from ml.dataset import SymbolBars
from ml.ensemble import load_ensemble
from ml.research import read_signal_table, write_batch_signals
from quantum_trader.config import ConfigError
from strategies.ensemble import EnsembleStrategyConfig


def write_backtest_signals(
    cfg: BacktestConfig, replace: bool = False, progress: bool = True
) -> tuple[int, pd.Timestamp, pd.Timestamp]:
    """`qt signals CONFIG`: the Signals the config's EnsembleStrategy would publish over the config's universe and
    period, computed in batch from exactly the bars the backtest feeds, written into its catalog.

    Returns (signals written, start, end). Stored signals of the period are kept unless `replace`, which deletes
    each symbol's stored signals just before writing its new ones.
    """
    entries = [s for s in cfg.strategies if s.path.endswith(":EnsembleStrategy")]
    if len(entries) != 1:
        raise ConfigError(
            f"strategies: `qt signals` needs exactly one EnsembleStrategy, found {len(entries)}"
        )
    names = ("registry", "models", "weights", "flat_below", "batch_delay_ms")
    strategy = EnsembleStrategyConfig(**{k: v for k, v in entries[0].config.items() if k in names})
    store = CatalogStore(Path(cfg.catalog))
    universe = select_universe(store, cfg)
    start, end = resolve_period(store, cfg, universe)
    stored = read_signal_table(cfg.catalog, start, end)
    if len(stored) and not replace:
        raise ConfigError(
            f"{cfg.catalog} already holds {len(stored):,} Signal events between {start} and {end}; "
            "pass --replace to delete the stored signals of this universe's symbols first"
        )
    ensemble = load_ensemble(strategy.registry, strategy.models, strategy.weights, strategy.flat_below)
    feed = BarFeed.load(store, universe.bar_types, universe.instruments, start, end)
    bars, ids = [], []
    for bar_type, frame, close_time in feed.frames():
        bars.append(SymbolBars(symbol_of(bar_type.instrument_id), frame, close_time))
        ids.append(bar_type.instrument_id)
    count = write_batch_signals(
        cfg.catalog, ensemble, bars, ids, strategy.batch_delay_ms, end.value, progress, replace
    )
    return count, start, end
