"""Paper trading: live Binance market data, simulated execution (Nautilus' Sandbox client), no keys.

Why a subclass of `SandboxExecutionClient`. In Nautilus 1.231 the sandbox owns a `SimulatedExchange` (the
backtest's matching engines) and feeds it by subscribing its `on_data` to the message-bus pattern
`data.*.{venue}.*` (`adapters/sandbox/execution.py`, `connect`). Quote and trade topics match it
(`data.quotes.BINANCE.BTCUSDT-PERP`), but bar topics do not: a bar's topic is `data.bars.{bar_type}`, i.e.
`data.bars.BTCUSDT-PERP.BINANCE-5-MINUTE-LAST-EXTERNAL`, with no `.` after the venue. A node that only
subscribes bars therefore leaves every matching engine without a market, and each order is rejected with
"no market". The sandbox's `on_data` does handle bars (`exchange.process_bar`, with `bar_execution=True`
by default), so `PaperExecClient` additionally subscribes it to `data.bars.*.{venue}-*`, at a higher priority
than the strategies' handlers. Each closed Binance kline then moves the simulated market exactly as a bar
does in our backtests (O-H-L-C sweep, then orders at the close), before the strategies see the bar, so a
market order sent in `on_bar` fills at that bar's close, as in a backtest with `fill_timing: bar_close`.

The alternative, subscribing the node to bookTicker quotes, would also work and fill at the real touch, but
it adds one websocket stream per symbol and makes paper fills differ from the backtest's.

Limits: no fill before the first live bar (warm-up bars from `request_bars` go to `on_historical_data`,
not to the bars topic); no slippage model (Nautilus' default FillModel); the simulated account starts
from `paper_account.starting_balance` at every start (the sandbox reports no orders or positions to
reconcile, so a restarted paper node starts flat); no funding.

The node builder hands the portfolio only to a factory class named `SandboxLiveExecClientFactory`, so ours
has that name. The sandbox's `leverages` config field is typed `dict[str, float]`, but its `SimulatedExchange` wants
`dict[InstrumentId, Decimal]`; `PaperExecClient` converts it.
"""

from decimal import Decimal

import msgspec
from nautilus_trader.adapters.sandbox.config import SandboxExecutionClientConfig
from nautilus_trader.adapters.sandbox.execution import SandboxExecutionClient
from nautilus_trader.live.factories import LiveExecClientFactory
from nautilus_trader.model.identifiers import InstrumentId

BAR_PRIORITY = 10  # above the strategies' bar handlers (0) and QTStrategy._track_bar (5)


class PaperExecClient(SandboxExecutionClient):
    def __init__(self, loop, portfolio, msgbus, cache, clock, config: SandboxExecutionClientConfig):
        leverages = {InstrumentId.from_str(k): Decimal(str(v)) for k, v in (config.leverages or {}).items()}
        super().__init__(
            loop=loop,
            portfolio=portfolio,
            msgbus=msgbus,
            cache=cache,
            clock=clock,
            config=msgspec.structs.replace(config, leverages=leverages),
        )

    def connect(self) -> None:
        super().connect()
        self._msgbus.subscribe(f"data.bars.*.{self.venue}-*", handler=self.on_data, priority=BAR_PRIORITY)

    def disconnect(self) -> None:
        self._msgbus.unsubscribe(f"data.bars.*.{self.venue}-*", handler=self.on_data)
        super().disconnect()


class SandboxLiveExecClientFactory(LiveExecClientFactory):
    """Creates a `PaperExecClient`. The class must carry this very name: the 1.231 node builder passes the
    portfolio only to a factory whose `__name__` is "SandboxLiveExecClientFactory" (`live/node_builder.py`)."""

    @staticmethod
    def create(loop, name, config, portfolio, msgbus, cache, clock):  # type: ignore[override]
        return PaperExecClient(
            loop=loop, portfolio=portfolio, msgbus=msgbus, cache=cache, clock=clock, config=config
        )


PaperExecClientFactory = SandboxLiveExecClientFactory
