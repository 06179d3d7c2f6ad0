"""Runs `freqtrade backtesting` offline and records its trade loop's time; runs inside freqtrade's own venv.

    python freqtrade_launch.py MARKETS_JSON RESULT_JSON -- <freqtrade arguments>

Freqtrade loads the exchange's markets over the network even to backtest. This machine may not reach
Binance, so the markets come from MARKETS_JSON instead (ccxt market dicts written by bench_peers.py from the
catalog's instruments); leverage tiers come from freqtrade's own bundled Binance file, as in any dry run.
`Backtesting.backtest` (the trade loop, after the indicators and signals) is timed and its trades (those
left open at the end included, force-exited) and simulated orders (entry and exit; a backtest's stoploss is
no order) counted into RESULT_JSON. Imports nothing from the project.
"""

import json
import sys
import time


def main() -> int:
    markets_path, result_path, sep, *ft_args = sys.argv[1:]
    assert sep == "--", __doc__
    with open(markets_path) as f:
        markets = json.load(f)

    from freqtrade.exchange import Exchange
    from freqtrade.optimize.backtesting import Backtesting
    from freqtrade.persistence import LocalTrade

    def load_markets_offline(self, reload: bool = False) -> None:
        self._api_async.set_markets(markets)

    Exchange._load_async_markets = load_markets_offline

    backtest = Backtesting.backtest
    result: dict = {}

    def timed_backtest(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = backtest(self, *args, **kwargs)
        result["run_s"] = time.perf_counter() - t0
        result["trades"] = len(out["results"])
        result["left_open"] = (
            int((out["results"]["exit_reason"] == "force_exit").sum()) if result["trades"] else 0
        )
        result["orders"] = sum(len(t.orders) for t in LocalTrade.bt_trades)
        return out

    Backtesting.backtest = timed_backtest

    from freqtrade import __version__
    from freqtrade.main import main as freqtrade_main

    result["version"] = __version__
    try:
        freqtrade_main(ft_args)
    except SystemExit as exit_:
        code = exit_.code or 0
    else:
        code = 0
    with open(result_path, "w") as f:
        json.dump(result, f)
    return int(code) if "run_s" in result else 1


if __name__ == "__main__":
    sys.exit(main())
