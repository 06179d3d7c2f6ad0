"""What a session saw and did, written to a run folder, so `qt parity` can replay it as a backtest.

`SessionRecorder` is an actor. It runs in the live node (`record:` in the live config) and, with the same code,
in the parity backtest, so both sides of a comparison are written by one recorder:

- `bars.jsonl`: every bar of the universe it received, history included (`source` history | live). The
  history reaches no bar subscription (Nautilus hands it to the requesting strategy only), so QTStrategy
  publishes it on `WARMUP_TOPIC` when its warm-up completes.
- `signals.jsonl`: every decision published on the bus (BarCloseSignals and single Signals), one row each.
- `intents.jsonl`: every order a strategy submitted (QTStrategy.submit_order publishes it on `INTENT_TOPIC`):
  strategy, instrument, side, type, quantity, reduce-only, trigger and limit price, time in force, tags. No
  venue or client order ids (they carry dates and counters that differ between the two sides).
- live only: `instruments.json` (the node's instruments, as the venue defined them), `session.json` (start
  balance, leverage per instrument, when) and `config.yaml` (the live config; written by the node).

Times are normalised to the bar grid: a live bar's `ts_event` is the kline close time, 1 ms before the
boundary, converted through a float (`close_ms * 1e6 + 64` ns), while a backtest bar is stamped at the boundary.
So every record carries `close`, the bar close rounded to the nearest minute (ns since the epoch), never the raw
timestamp. An intent carries `bar`: the close of the last bar or decision the recorder saw before it was
submitted. A strategy acting on its own bar (EmaCross) acts right after the bar; the ensemble acts right after
publishing its decisions about a close, and live that can be after the next close's kline arrived (its batch
waits for the other symbols), so the decisions' close, not the newest bar, is what the entry belongs to.
Intents sent after the node was asked to stop (the flatten of `flatten_on_stop`) are marked `phase: stop`.

Latency: every row also carries `ts_init`, on the node's clock (ns) and never compared: a bar's is when the
node received it (the adapter stamps a kline at receipt; a history bar's, when its request was answered), a
signal's when its batch was scored, an intent's when the order was created. `live.parity.latency` reads them.

Each line is flushed when written, so a session that dies leaves its record up to that moment.
"""

import json
import math
from pathlib import Path

from nautilus_trader.common.actor import Actor
from nautilus_trader.config import ActorConfig
from nautilus_trader.core.data import Data
from nautilus_trader.model.currencies import USDT
from nautilus_trader.model.data import Bar, BarType, DataType
from nautilus_trader.model.identifiers import ClientId

from quantum_trader.events import DIRECTION_CODES, INTENT_TOPIC, WARMUP_TOPIC, BarCloseSignals, Signal
from quantum_trader.trace import bar_close_ns

RECORD_FILES = ("bars.jsonl", "signals.jsonl", "intents.jsonl")


class SessionRecorderConfig(ActorConfig, frozen=True):
    run_dir: str
    bar_types: tuple[str, ...] = ()
    client_id: str = "SIGNALS"
    write_session: bool = True  # instruments.json and session.json (live); the parity backtest needs none


class SessionRecorder(Actor):
    def __init__(self, config: SessionRecorderConfig):
        super().__init__(config)
        self.run_dir = Path(config.run_dir)
        self.bar_types = [BarType.from_str(b) for b in config.bar_types]
        self.stopping = False
        self.counts = dict.fromkeys(("bars", "signals", "intents"), 0)
        self._files: dict[str, object] = {}
        # of the last live bar or decision seen: what an intent belongs to
        self._last_close: int | None = None
        self._seen_history: set[tuple[str, int]] = set()

    # ---- lifecycle ---------------------------------------------------------------------------------
    def on_start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in RECORD_FILES:
            self._files[name] = (self.run_dir / name).open("a", encoding="utf-8")
        if self.config.write_session:
            self._write_session()
        for bar_type in self.bar_types:
            self.subscribe_bars(bar_type)
        client = ClientId(self.config.client_id)
        self.subscribe_data(DataType(BarCloseSignals), client_id=client)
        self.subscribe_data(DataType(Signal), client_id=client)
        self.msgbus.subscribe(topic=WARMUP_TOPIC, handler=self._on_history)
        self.msgbus.subscribe(topic=INTENT_TOPIC, handler=self._on_intent)

    def on_stop(self) -> None:
        for topic, handler in ((WARMUP_TOPIC, self._on_history), (INTENT_TOPIC, self._on_intent)):
            if self.msgbus.is_subscribed(topic=topic, handler=handler):
                self.msgbus.unsubscribe(topic=topic, handler=handler)
        self.close()

    def on_dispose(self) -> None:
        self.close()

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def mark_stopping(self) -> None:
        """Intents from now on belong to the stop (the flatten), not to the session's decisions."""
        self.stopping = True

    def _write(self, name: str, row: dict) -> None:
        f = self._files.get(name)
        if f is None:
            return
        f.write(json.dumps(row, separators=(",", ":")) + "\n")
        f.flush()

    def _write_session(self) -> None:
        instruments = []
        leverage = {}
        for bar_type in self.bar_types:
            inst = self.cache.instrument(bar_type.instrument_id)
            if inst is None:
                continue
            instruments.append(type(inst).to_dict(inst))
            account = self.portfolio.account(inst.id.venue)
            if account is not None and account.is_margin_account:
                lev = account.leverage(inst.id) or account.default_leverage
                leverage[str(inst.id)] = float(lev) if lev else None
        (self.run_dir / "instruments.json").write_text(json.dumps(instruments, indent=1))
        venue = self.bar_types[0].instrument_id.venue if self.bar_types else None
        account = self.portfolio.account(venue) if venue is not None else None
        balance = account.balance_total(USDT) if account is not None else None
        session = {
            "started_ns": self.clock.timestamp_ns(),
            "trader_id": str(self.trader_id),
            "balance_usdt": balance.as_double() if balance is not None else None,
            "leverage": leverage,
        }
        (self.run_dir / "session.json").write_text(json.dumps(session, indent=1))

    # ---- bars --------------------------------------------------------------------------------------
    def on_bar(self, bar: Bar) -> None:
        close = bar_close_ns(bar.ts_event)
        self._last_close = close
        self._write_bar(bar, close, "live")

    def _on_history(self, bars: list[Bar]) -> None:
        for bar in bars:
            close = bar_close_ns(bar.ts_event)
            key = (str(bar.bar_type), close)
            if key not in self._seen_history:  # two strategies on one bar type warm up on the same bars
                self._seen_history.add(key)
                self._write_bar(bar, close, "history")

    def _write_bar(self, bar: Bar, close: int, source: str) -> None:
        self.counts["bars"] += 1
        self._write(
            "bars.jsonl",
            {
                "bar_type": str(bar.bar_type),
                "close": close,
                "open": str(bar.open),
                "high": str(bar.high),
                "low": str(bar.low),
                "close_px": str(bar.close),
                "volume": str(bar.volume),
                "source": source,
                "ts_init": int(bar.ts_init),
            },
        )

    # ---- signals -----------------------------------------------------------------------------------
    def on_data(self, data: Data) -> None:
        if isinstance(data, Signal):
            data = BarCloseSignals.of(data)
        if not isinstance(data, BarCloseSignals):
            return
        close = bar_close_ns(data.ts_event)
        if self._last_close is not None:  # decisions on the warm-up history precede every live bar
            self._last_close = close
        for i, iid in enumerate(data.instrument_ids):
            self.counts["signals"] += 1
            self._write(
                "signals.jsonl",
                {
                    "close": close,
                    "instrument_id": str(iid),
                    "direction": DIRECTION_CODES[int(data.direction[i])],
                    "confidence": _num(data.confidence[i]),
                    "prob_up": _num(data.prob_up[i]),
                    "forecast": _num(data.forecast[i]),
                    "votes": {kind: _num(values[i]) for kind, values in sorted(data.votes.items())},
                    "model_ids": data.model_ids,
                    "features_hash": data.features_hash,
                    "ts_init": int(data.ts_init),
                },
            )

    # ---- intents -----------------------------------------------------------------------------------
    def _on_intent(self, msg) -> None:
        strategy_id, order = msg
        self.counts["intents"] += 1
        trigger = getattr(order, "trigger_price", None)
        price = getattr(order, "price", None) if order.has_price else None
        self._write(
            "intents.jsonl",
            {
                "bar": self._last_close,
                "strategy_id": str(strategy_id),
                "instrument_id": str(order.instrument_id),
                "side": order.side_string(),
                "type": order.type_string(),
                "quantity": str(order.quantity),
                "reduce_only": bool(order.is_reduce_only),
                "trigger_price": str(trigger) if trigger is not None else None,
                "price": str(price) if price is not None else None,
                "time_in_force": order.tif_string(),
                "tags": list(order.tags or []),
                "phase": "stop" if self.stopping else "run",
                "ts_init": int(order.ts_init),
            },
        )


def _num(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value
