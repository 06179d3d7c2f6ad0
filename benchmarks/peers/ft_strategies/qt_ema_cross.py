"""The EMA 12/26 cross for freqtrade, as the peer benchmark runs it (benchmarks/bench_peers.py).

Enter long when the fast EMA crosses above the slow one, short when it crosses below; the cross exits the
other side and enters on the same candle. A stopped-out pair waits for the next cross, so trades = crosses,
as with `qt backtest`'s EmaCross. Stop 2% (leverage 1, so 2% of price), no ROI, no trailing. The EMAs are the recursive kind Nautilus'
ExponentialMovingAverage computes (alpha 2/(n+1), seeded with the first close). This file runs inside
freqtrade's own venv: it imports nothing from the project.
"""

from freqtrade.strategy import IStrategy
from pandas import DataFrame

FAST, SLOW = 12, 26


class QtEmaCross(IStrategy):
    INTERFACE_VERSION = 3
    timeframe = "5m"
    can_short = True
    minimal_roi = {"0": 100.0}  # never
    stoploss = -0.02
    trailing_stop = False
    use_exit_signal = True
    exit_profit_only = False
    process_only_new_candles = True
    startup_candle_count = SLOW

    def populate_indicators(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        dataframe["fast"] = dataframe["close"].ewm(span=FAST, adjust=False).mean()
        dataframe["slow"] = dataframe["close"].ewm(span=SLOW, adjust=False).mean()
        return dataframe

    def populate_entry_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        up = dataframe["fast"] > dataframe["slow"]
        crossed = up != up.shift(1)
        dataframe.loc[up & crossed, "enter_long"] = 1
        dataframe.loc[~up & crossed, "enter_short"] = 1
        return dataframe

    def populate_exit_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        up = dataframe["fast"] > dataframe["slow"]
        dataframe.loc[~up, "exit_long"] = 1
        dataframe.loc[up, "exit_short"] = 1
        return dataframe

    def leverage(self, pair: str, current_time, current_rate, proposed_leverage, max_leverage, entry_tag, side, **kwargs) -> float:  # fmt: skip
        return 1.0
