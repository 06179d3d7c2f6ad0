"""Samples mark-to-market equity (balance + unrealised PnL) and gross exposure on a fixed clock.

Nautilus' account report only changes on fills and balance adjustments, so it hides drawdowns of open
positions. The report's equity curve, Sharpe, drawdown and exposure come from these samples instead.
"""

import pandas as pd
from nautilus_trader.common.actor import Actor
from nautilus_trader.config import ActorConfig
from nautilus_trader.model.currencies import USDT
from nautilus_trader.model.identifiers import Venue


def account_equity(portfolio, venue: Venue) -> float | None:
    """Mark-to-market equity of the venue's account in USDT, None without an account. A margin account's is its
    balance + unrealised PnL; a cash account (spot) paid for its coins, so its equity is its USDT + the coins'
    value (net exposure) at the last price."""
    account = portfolio.account(venue)
    if account is None:
        return None
    balance = account.balance_total(USDT)
    marks = portfolio.unrealized_pnls(venue) if account.is_margin_account else portfolio.net_exposures(venue)
    return (balance.as_double() if balance is not None else 0.0) + sum(m.as_double() for m in marks.values())


class EquityRecorderConfig(ActorConfig, frozen=True):
    venue: str = "BINANCE"
    interval_minutes: int = 60


class EquityRecorder(Actor):
    def __init__(self, config: EquityRecorderConfig):
        super().__init__(config)
        self.venue = Venue(config.venue)
        self.samples: list[tuple[int, float, float, float]] = []

    def on_start(self) -> None:
        self.clock.set_timer(
            "equity_sample",
            interval=pd.Timedelta(minutes=self.config.interval_minutes),
            callback=lambda _event: self.sample(),
        )

    def on_stop(self) -> None:
        self.sample()

    def sample(self) -> None:
        account = self.portfolio.account(self.venue)
        if account is None:
            return
        balance = account.balance_total(USDT).as_double()
        equity = account_equity(self.portfolio, self.venue)
        gross = 0.0
        for position in self.cache.positions_open(venue=self.venue):
            exposure = self.portfolio.net_exposure(position.instrument_id)
            gross += abs(exposure.as_double()) if exposure is not None else 0.0
        self.samples.append((self.clock.timestamp_ns(), balance, equity, gross))

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.samples, columns=["ts", "balance", "equity", "gross_exposure"])
        df["ts"] = pd.to_datetime(df["ts"], utc=True)
        return df.drop_duplicates("ts", keep="last").set_index("ts")
