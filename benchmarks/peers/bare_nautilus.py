"""A bare Nautilus backtest of the EMA 12/26 cross: the yardstick for what the engine itself costs.

    python bare_nautilus.py CATALOG START END RESULT_JSON [HEDGING|NETTING]

Nothing of the project runs here, only Nautilus 1.231: the catalog's instruments and 5m LAST bars of every
perpetual, read with Nautilus' own ParquetDataCatalog (bars closing in [START, END]); one Strategy for all
symbols that goes long when EMA(12) crosses above EMA(26) and short when it crosses below (and on the first
bar both are ready), closing the open position at market first; 1,000 USDT per entry, and a 2% stop-market
placed on each new position, reduce-only, cancelled at the flip. A stopped-out symbol waits for the next
cross, so trades = crosses, as with `qt backtest`'s EmaCross (which has no stop and flips at each cross).
Venue: OmsType.HEDGING (or NETTING, the OMS `qt backtest` and the live node use), MARGIN account, 100,000 USDT, leverage 5, bar_execution with the same
adaptive high/low ordering as `qt backtest`, Nautilus' default fees and fills (no slippage, no funding).
Logging bypassed, `run_analysis=False`, and the portfolio analyzer's per-trade record (a pd.concat per
closed position, quadratic in trades) is switched off. Times `engine.run` (the caller times the process).
"""

import json
import sys
import time
from decimal import Decimal
from pathlib import Path

import pandas as pd
from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
from nautilus_trader.config import LoggingConfig, StrategyConfig
from nautilus_trader.indicators import ExponentialMovingAverage
from nautilus_trader.model.currencies import USDT
from nautilus_trader.model.data import Bar, BarType
from nautilus_trader.model.enums import AccountType, OmsType, OrderSide, PositionSide
from nautilus_trader.model.events import PositionClosed, PositionOpened
from nautilus_trader.model.identifiers import TraderId, Venue
from nautilus_trader.model.objects import Money
from nautilus_trader.persistence.catalog import ParquetDataCatalog
from nautilus_trader.trading.strategy import Strategy

STOP = 0.02


class BareEmaConfig(StrategyConfig, frozen=True):
    bar_types: tuple[str, ...] = ()
    fast: int = 12
    slow: int = 26
    notional: float = 1000.0


class BareEma(Strategy):
    def __init__(self, config: BareEmaConfig):
        super().__init__(config)
        self.emas: dict = {}
        self.trend: dict = {}  # instrument -> the side the EMAs last said
        self.held: dict = {}  # instrument -> (position id, stop order) of the open position

    def on_start(self) -> None:
        for text in self.config.bar_types:
            bar_type = BarType.from_str(text)
            fast, slow = (
                ExponentialMovingAverage(self.config.fast),
                ExponentialMovingAverage(self.config.slow),
            )
            self.register_indicator_for_bars(bar_type, fast)
            self.register_indicator_for_bars(bar_type, slow)
            self.emas[bar_type.instrument_id] = (fast, slow)
            self.subscribe_bars(bar_type)

    def on_bar(self, bar: Bar) -> None:
        iid = bar.bar_type.instrument_id
        fast, slow = self.emas[iid]
        if not slow.initialized:
            return
        want = PositionSide.LONG if fast.value > slow.value else PositionSide.SHORT
        if self.trend.get(iid) == want:
            return  # no cross (a stopped-out position stays flat until the next one)
        self.trend[iid] = want
        held = self.held.pop(iid, None)
        if held is not None:
            position_id, stop = held
            if not stop.is_closed:
                self.cancel_order(stop)
            position = self.cache.position(position_id)
            if position is not None and position.is_open:
                self.close_position(position)
        qty = self.cache.instrument(iid).make_qty(self.config.notional / bar.close.as_double())
        entry_side = OrderSide.BUY if want == PositionSide.LONG else OrderSide.SELL
        self.submit_order(self.order_factory.market(iid, entry_side, qty))

    def on_position_opened(self, event: PositionOpened) -> None:
        instrument = self.cache.instrument(event.instrument_id)
        long = event.side == PositionSide.LONG
        trigger = event.avg_px_open * (1 - STOP if long else 1 + STOP)
        stop = self.order_factory.stop_market(
            event.instrument_id,
            OrderSide.SELL if long else OrderSide.BUY,
            event.quantity,
            trigger_price=instrument.make_price(trigger),
            reduce_only=True,
        )
        self.held[event.instrument_id] = (event.position_id, stop)
        self.submit_order(stop, position_id=event.position_id)

    def on_position_closed(self, event: PositionClosed) -> None:
        held = self.held.get(event.instrument_id)
        if held is not None and held[0] == event.position_id:  # stopped out
            del self.held[event.instrument_id]


def main() -> None:
    catalog_dir, start, end, result_path = sys.argv[1:5]
    oms = OmsType[sys.argv[5] if len(sys.argv) > 5 else "HEDGING"]
    catalog = ParquetDataCatalog(catalog_dir)
    names = sorted(p.name for p in (Path(catalog_dir) / "data" / "bar").iterdir())
    bar_types = [b for b in names if b.endswith("-PERP.BINANCE-5-MINUTE-LAST-EXTERNAL")]
    lo, hi = pd.Timestamp(start, tz="UTC"), pd.Timestamp(end, tz="UTC")
    bars = catalog.bars(bar_types, start=lo, end=hi)
    ids = {BarType.from_str(b).instrument_id for b in bar_types}
    instruments = [i for i in catalog.instruments() if i.id in ids]

    engine = BacktestEngine(
        BacktestEngineConfig(
            trader_id=TraderId("BARE-001"),
            logging=LoggingConfig(log_level="ERROR", bypass_logging=True),
            run_analysis=False,
        )
    )
    engine.portfolio.analyzer.record_trade = lambda *args, **kwargs: None
    if oms == OmsType.NETTING:
        # The same stand-in `qt backtest` installs; without it Nautilus' Portfolio unpickles every closed
        # cycle's snapshot again on each position event (quadratic; 380 s instead of 91 s on 90 days).
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from quantum_trader.snapshot_memo import memoize_position_snapshots

        memoize_position_snapshots()
    engine.add_venue(
        venue=Venue("BINANCE"),
        oms_type=oms,
        account_type=AccountType.MARGIN,
        base_currency=None,
        starting_balances=[Money(100_000, USDT)],
        default_leverage=Decimal(5),
        bar_execution=True,
        bar_adaptive_high_low_ordering=True,
    )
    for instrument in instruments:
        engine.add_instrument(instrument)
    engine.add_data(bars)
    engine.add_strategy(BareEma(BareEmaConfig(bar_types=tuple(bar_types))))
    t0 = time.perf_counter()
    engine.run(start=lo, end=hi)
    run_s = time.perf_counter() - t0
    cache = engine.kernel.cache
    result = {
        "run_s": run_s,
        "bars": len(bars),
        # NETTING reuses one position id per instrument: its closed cycles are the snapshots.
        "trades": len(cache.positions_closed()) + len(cache.position_snapshots()),
        "orders": len(cache.orders()),
    }
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
