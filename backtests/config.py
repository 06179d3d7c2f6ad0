"""The backtest config file: one YAML describes a whole run. See configs/backtests/*.yaml and the README."""

from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator, model_validator

from quantum_trader.components import (  # noqa: F401 (re-exported: the backtest config's component schema)
    ComponentConfig,
    ProfileFields,
    build_component_config,
    resolve_component,
)
from quantum_trader.config import StrictModel, load_config, parse_config
from strategies.order_budget import OrderRate

MEGACAPS = (
    "BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT", "ADAUSDT", "TRXUSDT", "AVAXUSDT",
    "LINKUSDT", "TONUSDT", "DOTUSDT", "BCHUSDT", "LTCUSDT", "SUIUSDT",
)  # fmt: skip
MAX_UNIVERSE = 200


class UniverseConfig(StrictModel):
    select: Literal["all", "symbols", "top_volume", "megacap"] = "top_volume"
    symbols: list[str] = Field(default_factory=list)
    size: int = Field(50, ge=1, le=MAX_UNIVERSE)
    min_quote_volume_24h: float = Field(0.0, ge=0)
    blacklist: list[str] = Field(default_factory=list)
    ranking_days: int = Field(7, ge=1, description="quote volume is ranked over this many days before start")
    market: Literal["futures", "spot"] = "futures"
    interval: str = "5m"

    @field_validator("interval")
    @classmethod
    def _catalog_interval(cls, v: str):
        from catalog.store import interval_seconds

        interval_seconds(v)
        return v

    @model_validator(mode="after")
    def _symbols_given(self):
        if self.select == "symbols" and not self.symbols:
            raise ValueError("select: symbols needs a non-empty `symbols` list")
        return self


class PeriodConfig(StrictModel):
    start: datetime | None = None
    end: datetime | None = None

    @model_validator(mode="after")
    def _ordered(self):
        if self.start and self.end and self.start >= self.end:
            raise ValueError(f"start {self.start} must be before end {self.end}")
        return self


class VenueConfig(StrictModel):
    starting_balance: float = Field(10_000.0, gt=0)
    default_leverage: float = Field(5.0, ge=1, le=125)
    leverage: dict[str, float] = Field(
        default_factory=dict, description="per-symbol leverage, e.g. BTCUSDT: 10"
    )
    maker_fee: float | None = Field(None, ge=-0.001, le=0.01)
    taker_fee: float | None = Field(None, ge=0, le=0.01)
    fill_timing: Literal["bar_close", "next_bar_close"] = "bar_close"
    slippage_bps: float = Field(2.0, ge=0, le=500)
    funding: bool = True
    liquidation: bool = True
    maintenance_margin_rate: float = Field(0.005, ge=0, lt=1)
    max_order_rate: OrderRate = Field(
        "200/00:00:10",
        description="orders the node may submit per interval (orders/HH:MM:SS), enforced by Nautilus' "
        "RiskEngine; Binance USDT-M allows 300 per 10 s and 1,200 per minute, and 200 per 10 s keeps both",
    )

    @field_validator("leverage")
    @classmethod
    def _leverage_range(cls, v: dict[str, float]):
        for sym, lev in v.items():
            if not 1 <= lev <= 125:
                raise ValueError(f"leverage for {sym} must be within [1, 125], got {lev}")
        return v


class ReportConfig(StrictModel):
    tearsheet: bool = True
    equity_sample_minutes: int = Field(60, ge=1)


class BacktestConfig(ProfileFields):
    """`exit_profile` and `risk_profile` (quantum_trader/components.py) are given to every component."""

    name: str = "backtest"
    catalog: str = "data/catalog"
    universe: UniverseConfig = UniverseConfig()
    period: PeriodConfig = PeriodConfig()
    venue: VenueConfig = VenueConfig()
    strategies: list[ComponentConfig] = Field(min_length=1)
    actors: list[ComponentConfig] = Field(default_factory=list)
    report: ReportConfig = ReportConfig()
    seed: int = 42
    stream_days: float = Field(
        1.0, gt=0, description="bars are handed to the engine this many days at a time (bounds memory)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "ERROR"
    run_local_registry: bool = Field(
        False,
        description="components work on a copy of their model registry inside the report folder "
        "(backtests/sandbox.py): a run that retrains and promotes never changes the user's models",
    )

    @model_validator(mode="after")
    def _spot_is_cash(self):
        if self.universe.market != "spot":
            return self
        levered = {s: x for s, x in self.venue.leverage.items() if x != 1}
        if "default_leverage" in self.venue.model_fields_set and self.venue.default_leverage != 1:
            levered["default_leverage"] = self.venue.default_leverage
        if levered:
            raise ValueError(
                f"venue.leverage / venue.default_leverage: spot trades from a cash account without leverage "
                f"(got {levered}); allowed: 1, or leave them out"
            )
        return self


def load_backtest_config(path) -> BacktestConfig:
    return load_config(BacktestConfig, path)


def parse_backtest_config(data: dict, source: str = "<dict>") -> BacktestConfig:
    return parse_config(BacktestConfig, data, source)
