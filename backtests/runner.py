"""Turns a BacktestConfig into a Nautilus BacktestEngine run and a report folder.

Fill timing (see README, "Truthful defaults"). Bars are the only prices, so a market order fills at the last
one: the close of the bar the decision was made on, plus `slippage_bps` (`fill_timing: bar_close`, the
default; a bot acting within a second of the close trades at about that price). `next_bar_close` makes every
strategy decision wait for the instrument's next bar (QTStrategy.decide), so it fills at that bar's close.
The venue has no latency model: Nautilus settles orders after each data point, so a latency would fill an
order for a symbol processed later in the same timestamp at its old price and the first one at its new
price: timing would depend on the symbol's place in the sort order.
"""

import gc
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
from nautilus_trader.backtest.models import MakerTakerFeeModel
from nautilus_trader.config import DataEngineConfig, LoggingConfig, RiskEngineConfig
from nautilus_trader.model.currencies import USDT
from nautilus_trader.model.enums import AccountType, OmsType
from nautilus_trader.model.identifiers import ClientId, TraderId
from nautilus_trader.model.instruments import Instrument
from nautilus_trader.model.objects import Money
from nautilus_trader.persistence.catalog import ParquetDataCatalog

from actors.equity_recorder import EquityRecorder, EquityRecorderConfig
from actors.event_recorder import EventRecorder
from actors.signal_recorder import SignalRecorder
from backtests.analyzer_fix import buffer_trade_records
from backtests.bar_feed import BarFeed
from backtests.config import MEGACAPS, BacktestConfig
from backtests.progress import ProgressActor, ProgressActorConfig
from backtests.simulation import BpsSlippageFillModel, FundingModule
from catalog.instruments import VENUE, instrument_id, symbol_of
from catalog.store import CatalogStore, bar_type_for
from quantum_trader.components import bind_risk_engine, bind_strategies, build_components
from quantum_trader.config import ConfigError
from quantum_trader.snapshot_memo import memoize_position_snapshots

log = logging.getLogger(__name__)
NS = 1_000_000_000
SIGNALS_CLIENT = ClientId("SIGNALS")


@dataclass
class Universe:
    instruments: list[Instrument]
    bar_types: list
    ranking_note: str


@dataclass
class RunArtifacts:
    engine: BacktestEngine
    config: BacktestConfig
    universe: Universe
    funding: FundingModule | None
    equity: EquityRecorder
    signals: SignalRecorder
    events: EventRecorder
    strategies: list
    start: pd.Timestamp
    end: pd.Timestamp
    wall_seconds: float
    bars: int


def utc(value) -> pd.Timestamp:
    """A config time as a UTC timestamp: naive times are UTC, zoned ones are converted."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def select_universe(store: CatalogStore, cfg: BacktestConfig) -> Universe:
    u = cfg.universe
    available = {
        symbol_of(bt.instrument_id): bt
        for bt in store.bar_types()
        if str(bt) == str(bar_type_for(bt.instrument_id, u.interval))
        and str(bt.instrument_id).endswith("-PERP.BINANCE") == (u.market == "futures")
    }
    if not available:
        raise ConfigError(
            f"catalog {store.path} holds no {u.market} {u.interval} bars; run `qt data ingest` first"
        )
    candidates = _candidates(u, available)
    ranked, note = _rank_by_quote_volume(store, [available[s] for s in candidates], cfg)
    chosen = ranked if u.select in ("all", "symbols") else ranked[: u.size]
    known = {str(i.id): i for i in store.instruments()}  # one catalog scan, not one per symbol
    instruments = [known.get(str(bt.instrument_id)) or store.instrument(bt.instrument_id) for bt in chosen]
    return Universe(instruments=instruments, bar_types=chosen, ranking_note=note)


def _candidates(u, available: dict) -> list[str]:
    if u.select == "symbols":
        unknown = [s for s in u.symbols if s not in available]
        if unknown:
            raise ConfigError(
                f"universe.symbols: {unknown} not in the catalog; available: {sorted(available)}"
            )
        pool = list(u.symbols)
    elif u.select == "megacap":
        pool = [s for s in MEGACAPS if s in available]
    else:
        pool = sorted(available)
    return [s for s in pool if s not in set(u.blacklist)]


def _rank_by_quote_volume(store: CatalogStore, bar_types: list, cfg: BacktestConfig):
    """Rank on the `ranking_days` BEFORE the period starts, so the universe is not chosen with hindsight.

    A symbol with no bars in that window (listed at or after the start) has a quote volume of zero there: it
    ranks after every symbol with history, and `min_quote_volume_24h` > 0 leaves it out. A ranked selection
    (`top_volume`, `megacap`) with no symbol that has bars before the start cannot be ranked without
    hindsight, so when it would have to leave symbols out it is refused. Symbols with no bars inside the
    period (listed later, or delisted) are not candidates.
    """
    u = cfg.universe
    start = utc(cfg.period.start) if cfg.period.start else None
    end = utc(cfg.period.end) if cfg.period.end else None
    scores = {}
    for bt in bar_types:
        df = store.read_bars_frame(bt)
        if not _trades_during(df["date"], start, end):
            continue
        scores[bt] = _daily_quote_volume_before(df, start, u.ranking_days)
    if not scores:
        raise ConfigError("universe: no symbol of the selection has bars inside the period")
    ranked_selection = u.select not in ("all", "symbols")
    if ranked_selection and not any(scores.values()) and len(scores) > u.size:
        raise ConfigError(
            f"universe.select: {u.select} ranks by quote volume over the {u.ranking_days} days before "
            f"period.start, but no symbol has bars before {start or 'the start of the data'}; set period.start "
            "at least universe.ranking_days after the data begins, or use select: all or symbols"
        )
    kept = [bt for bt in bar_types if bt in scores and scores[bt] >= u.min_quote_volume_24h]
    if not kept:
        raise ConfigError(
            f"universe.min_quote_volume_24h: no symbol traded {u.min_quote_volume_24h} a day before period.start"
        )
    if ranked_selection:
        kept.sort(key=lambda bt: (-scores[bt], str(bt)))
    unranked = sorted(symbol_of(bt.instrument_id) for bt in kept if scores[bt] == 0)
    note = f"ranked on the {u.ranking_days} days before start"
    if unranked:
        note += f"; no bars before start, so zero volume: {', '.join(unranked)}"
    return kept, note


def _daily_quote_volume_before(df: pd.DataFrame, start, days: int) -> float:
    """Mean daily quote volume over the `days` before `start` (bars closing before it); 0 without such bars."""
    if start is None:
        return 0.0
    window = df[(df["date"] < start) & (df["date"] >= start - pd.Timedelta(days=days))]
    return float((window["close"] * window["volume"]).sum() / days)


def _trades_during(dates: pd.Series, start, end) -> bool:
    inside = dates
    if start is not None:
        inside = inside[inside >= start]
    if end is not None:
        inside = inside[inside < end]
    return len(inside) > 0


def build_engine(cfg: BacktestConfig, store: CatalogStore, universe: Universe, start, end):
    engine = BacktestEngine(
        BacktestEngineConfig(
            trader_id=TraderId("QT-001"),
            logging=LoggingConfig(log_level=cfg.log_level, bypass_logging=cfg.log_level == "ERROR"),
            risk_engine=RiskEngineConfig(bypass=False, max_order_submit_rate=cfg.venue.max_order_rate),
            # Signals and risk events are published by our components under this client id.
            data_engine=DataEngineConfig(external_clients=[SIGNALS_CLIENT]),
        )
    )
    buffer_trade_records(engine.portfolio.analyzer)
    memoize_position_snapshots()
    v = cfg.venue
    spot = cfg.universe.market == "spot"
    leverages = {instrument_id(sym, cfg.universe.market): Decimal(str(x)) for sym, x in v.leverage.items()}
    funding = (
        _funding_module(store, universe, start, end)
        if v.funding and cfg.universe.market == "futures"
        else None
    )
    fill_model = BpsSlippageFillModel(v.slippage_bps, engine.kernel.clock)
    engine.add_venue(
        venue=VENUE,
        oms_type=OmsType.NETTING,
        # Spot is Binance's cash account: no leverage, no shorts (the strategies refuse them), no liquidation;
        # Nautilus checks a cash account's balance before every order.
        account_type=AccountType.CASH if spot else AccountType.MARGIN,
        base_currency=None,
        starting_balances=[Money(v.starting_balance, USDT)],
        default_leverage=Decimal(1 if spot else str(v.default_leverage)),
        leverages=leverages,
        fee_model=MakerTakerFeeModel(),
        fill_model=fill_model,
        modules=[funding] if funding else None,
        bar_execution=True,
        bar_adaptive_high_low_ordering=True,
    )
    for inst in universe.instruments:
        engine.add_instrument(_with_fees(inst, v))
    return engine, funding, fill_model


def _with_fees(inst: Instrument, v) -> Instrument:
    if v.maker_fee is None and v.taker_fee is None:
        return inst
    cls = type(inst)
    d = cls.to_dict(inst)
    d["maker_fee"] = str(v.maker_fee if v.maker_fee is not None else inst.maker_fee)
    d["taker_fee"] = str(v.taker_fee if v.taker_fee is not None else inst.taker_fee)
    return cls.from_dict(d)


def _funding_module(store: CatalogStore, universe: Universe, start, end) -> FundingModule:
    schedule = {}
    for inst in universe.instruments:
        f = store.read_funding_frame(inst.id)
        f = f[(f["date"] > start) & (f["date"] <= end)]
        schedule[inst.id] = (
            f["date"].to_numpy(dtype="datetime64[ns]").astype(np.int64),
            f["rate"].to_numpy(),
        )
    if not any(len(t) for t, _ in schedule.values()):
        log.warning("no funding rates in the catalog for this universe and period: funding is not charged")
    return FundingModule(schedule)


def resolve_period(store: CatalogStore, cfg: BacktestConfig, universe: Universe):
    frames = [store.read_bars_frame(bt)["date"] for bt in universe.bar_types]
    first = min(f.min() for f in frames)
    last = max(f.max() for f in frames)
    start = utc(cfg.period.start) if cfg.period.start else first
    end = utc(cfg.period.end) if cfg.period.end else last + pd.Timedelta(cfg.universe.interval)
    if start >= last:
        raise ConfigError(f"period.start {start} is after the last bar in the catalog ({last})")
    return start, end


def add_components(
    engine: BacktestEngine, cfg: BacktestConfig, universe: Universe, extra_injected: dict | None = None
) -> list:
    injected = (
        {
            "bar_types": tuple(str(bt) for bt in universe.bar_types),
            "liquidation_guard": cfg.venue.liquidation and cfg.universe.market == "futures",
            "maintenance_margin_rate": cfg.venue.maintenance_margin_rate,
            "execution_delay_bars": 1 if cfg.venue.fill_timing == "next_bar_close" else 0,
            "catalog": cfg.catalog,
        }
        | cfg.profile_injections()
        | (extra_injected or {})
    )
    strategies, actors = build_components(cfg.strategies, cfg.actors, injected)
    for strategy in strategies:
        engine.add_strategy(strategy)
    for actor in actors:
        engine.add_actor(actor)
    return strategies


def run_backtest(
    cfg: BacktestConfig, progress: bool = True, injected: dict | None = None, actors: list | None = None
) -> RunArtifacts:
    """`injected`: more values for the components' fields (what another runner gives them, e.g. `qt parity`
    replaying a live session passes the live node's); `actors`: extra actors, added before the configured ones
    (a recorder that must listen before the strategies start)."""
    store = CatalogStore(Path(cfg.catalog))
    universe = select_universe(store, cfg)
    start, end = resolve_period(store, cfg, universe)
    engine, funding, fill_model = build_engine(cfg, store, universe, start, end)
    feed = BarFeed.load(store, universe.bar_types, universe.instruments, start, end)
    bars = len(feed)
    if bars == 0:
        raise ConfigError(f"no bars between {start} and {end} for the selected universe")
    fill_model.set_gaps(feed.gaps())
    engine.add_data_iterator("bars", feed.slices(cfg.stream_days))
    for actor in actors or ():
        engine.add_actor(actor)
    strategies = add_components(engine, cfg, universe, injected)
    equity = EquityRecorder(EquityRecorderConfig(interval_minutes=cfg.report.equity_sample_minutes))
    engine.add_actor(equity)
    signals = SignalRecorder()
    engine.add_actor(signals)
    events = EventRecorder()
    engine.add_actor(events)
    _bind_risk_engine(engine)
    _attach_replayed_signals(strategies, cfg.catalog, start, end)
    _serve_warmup_from_catalog(engine, strategies, cfg.catalog, start)
    if progress:
        engine.add_actor(
            ProgressActor(ProgressActorConfig(start_ns=start.value, end_ns=end.value, bars=bars))
        )
    t0 = time.perf_counter()
    engine.sort_data()
    with rare_young_gc_passes():
        engine.run(start=start, end=end)
    wall = time.perf_counter() - t0
    return RunArtifacts(
        engine, cfg, universe, funding, equity, signals, events, strategies, start, end, wall, bars
    )


@contextmanager
def rare_young_gc_passes(threshold: int = 50_000) -> Iterator[None]:
    """Collect the youngest generation every `threshold` allocations instead of CPython's 700, for the run only.

    Nautilus keeps every order, event, account state and position of a run in its cache, and each young pass
    walks the survivors and promotes them. On 100 symbols x 12 days with 6,716 entries that took 3.6 s of a 42 s
    run; with 50,000 it took 1.0 s and the run 37-38 s, at the same peak memory, because the objects are freed by
    reference counting and almost none of them form cycles."""
    previous = gc.get_threshold()
    gc.set_threshold(threshold, *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)


def _bind_risk_engine(engine: BacktestEngine) -> None:
    bind_risk_engine([*engine.trader.actors(), *engine.trader.strategies()], engine.kernel.risk_engine)
    bind_strategies(engine.trader.actors(), engine.trader.strategies())


class HistoryCatalog(ParquetDataCatalog):
    """The catalog's bars closing before `before_ns` only: what a node started at that time could request.

    The BacktestEngine also streams a subscription's bars from a registered catalog when they were not added
    with `add_data` (ours come from a data iterator), which would feed every bar twice; the run's own bars
    are therefore out of this catalog's reach."""

    def __init__(self, path: str, before_ns: int) -> None:
        super().__init__(path)
        self.before_ns = before_ns

    def bars(self, bar_types=None, instrument_ids=None, **kwargs):
        start, end = kwargs.get("start"), kwargs.get("end")
        if start is not None and pd.Timestamp(start, tz="UTC").value >= self.before_ns:
            return []
        if end is None or pd.Timestamp(end, tz="UTC").value >= self.before_ns:
            kwargs["end"] = self.before_ns - 1
        return super().bars(bar_types=bar_types, instrument_ids=instrument_ids, **kwargs)


def _serve_warmup_from_catalog(engine: BacktestEngine, strategies: list, catalog: str, start) -> None:
    """A strategy with `warmup_bars` requests history at start, as it does live; here Nautilus' data engine
    answers from the catalog's bars before period.start, so a backtest warms up the way the node does."""
    if any(getattr(s.config, "warmup_bars", 0) for s in strategies):
        engine.kernel.data_engine.register_catalog(HistoryCatalog(catalog, start.value))


def _attach_replayed_signals(strategies: list, catalog: str, start, end) -> None:
    """Strategies with `signal_source: catalog` trade Signal events stored in the catalog (ml/research.py)."""
    replaying = [s for s in strategies if getattr(s.config, "signal_source", None) == "catalog"]
    if not replaying:
        return
    from ml.research import read_signal_table

    table = read_signal_table(catalog, start, end)
    if not len(table):
        raise ConfigError(
            f"signal_source: catalog, but {catalog} holds no Signal events between {start} and {end}; "
            "write them first with `qt signals CONFIG` (the same config with signal_source: models)"
        )
    for strategy in replaying:
        strategy.use_replayed_signals(table)
