"""`qt parity RUN_DIR`: replay a recorded live session as a backtest and compare what both decided.

A session recorded with `record:` (live/record.py) holds the bars it received (warm-up history included), its
instruments, start balance and leverage, its config, its Signals and its order intents. Parity:

1. builds a catalog (RUN_DIR/parity/catalog) from exactly those bars and instruments: the history before the
   first live bar, the live bars from it on;
2. derives a backtest config from the recorded live config through the shared component schema
   (quantum_trader/components.py): the same `strategies:`, `actors:`, `exit_profile` and `risk_profile`
   entries, the values the node injects (`live.node.live_injections`: `warmup_bars`, the model registry, no
   liquidation guard), the period from the first live bar to the last, the recorded start balance and
   leverage, fills at the bar close with no slippage (the fake venue fills market orders at the last close),
   no funding (the session recorded none);
3. runs it with the same recorder (RUN_DIR/parity/replay) and compares the two records: the bars first (a
   sanity check of the replay), then the Signals, then the order intents. It prints a fingerprint for each
   side and IDENTICAL, or the first difference (which record, which field, live vs backtest).

What is compared, and what is not:
- Signals: bar close (on the minute grid), instrument, direction, confidence, prob_up, forecast, each model's
  vote, model ids, feature hash. Numbers are compared at 9 significant digits (the fingerprint too); the
  first difference shows both full values.
- Intents: the bar after whose close the order was sent, strategy, instrument, side, type, quantity,
  reduce-only, trigger and limit price, time in force, tags (the role: ENTRY, SL, TP1, BREAKEVEN, TIME, ...,
  and the decision's trace id `trace:<id>`, quantum_trader/trace.py, which both sides derive from the bar close).
  They are compared instrument by instrument, each in submission order (live, the klines of one close arrive
  one by one, so symbols may be decided in another order than the backtest's universe order).
  An order placed in reaction to a venue event rather than decided on a bar (the Exit Brain's stop and
  take-profits after the entry fills, the break-even stop after TP1 fills, the liquidation guard, emergency
  exits; every role outside `BAR_DECISIONS`) may be one bar apart: Binance, and the fake, deliver the fill of
  a resting order hit during bar N before bar N's closing kline, while a Nautilus backtest matches it while
  processing bar N and delivers it after bar N reached the strategies. Such an intent's bar is compared
  within one interval and left out of the fingerprint; everything else about it is compared exactly.
- Not compared: fills and PnL. Live fills come from the venue (the fake: market orders at the last close,
  stops at their trigger or the bar's open), the backtest's from Nautilus' matching engine; where a later
  decision depends on a fill (the Exit Brain's levels are set from the entry price, sizing from the balance)
  a fill that differs shows up as the first intent that differs. Intents sent after the node was asked to
  stop (the flatten of `flatten_on_stop`) are listed but not compared: a backtest does not stop that way.
- Not compared either: the `ts_init` of every row (the node clock's time of a bar's receipt, a signal's
  scoring, an intent's creation); `latency()` reads the live side's from them, printed as `latency:`.
- Time-based rules run on the node's wall clock live and on bar time in the backtest (the ensemble's
  `cooldown_seconds`, the Exit Brain's time stop measured from the fill time, the emergency stop's timers).
  Against Binance, which delivers bars in real time, they agree; against a fake venue replaying faster than
  real time they do not, so a parity check there should not depend on them.
"""

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from nautilus_trader.model.data import BarType
from nautilus_trader.model.instruments import CryptoPerpetual

from catalog.instruments import instrument_id
from catalog.store import CatalogStore, interval_seconds
from live.config import LiveConfig, load_live_config
from live.record import RECORD_FILES, SessionRecorder, SessionRecorderConfig
from quantum_trader.config import ConfigError

SIGNIFICANT = 9
DEFAULT_BALANCE = 10_000.0
SIGNAL_FIELDS = (
    "close", "instrument_id", "direction", "confidence", "prob_up", "forecast", "votes", "model_ids",
    "features_hash",
)  # fmt: skip
INTENT_FIELDS = (
    "bar", "strategy_id", "instrument_id", "side", "type", "quantity", "reduce_only", "trigger_price", "price",
    "time_in_force", "tags",
)  # fmt: skip
BAR_FIELDS = ("bar_type", "close", "open", "high", "low", "close_px", "volume")
# Roles decided on a bar close (entries, strategy exits, time stops, trailing steps, manual closes). Every
# other role is placed in reaction to a fill or an event, and its bar may be one interval apart (see above).
BAR_DECISIONS = frozenset({"ENTRY", "STRATEGY", "TIME", "TRAILING", "MANUAL"})


def reacts_to_venue(intent: dict) -> bool:
    return not set(intent.get("tags") or ()) & BAR_DECISIONS


@dataclass
class Recorded:
    """One side's records, canonical (sorted and rounded) and ready to compare."""

    bars: list[dict]
    signals: list[dict]
    intents: list[dict]
    stop_intents: list[dict] = field(default_factory=list)

    def fingerprint(self) -> str:
        intents = [i | {"bar": None} if reacts_to_venue(i) else i for i in self.intents]
        body = json.dumps({"signals": self.signals, "intents": intents}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]


@dataclass
class ParityResult:
    live: Recorded
    backtest: Recorded
    difference: str | None  # None: identical
    bars_note: str
    replay_dir: Path
    notes: list[str] = field(default_factory=list)
    latency: str | None = None  # the live side's, from the recorded ts_init (see latency())

    @property
    def identical(self) -> bool:
        return self.difference is None

    def lines(self) -> list[str]:
        def side(name: str, r: Recorded) -> str:
            extra = f" (+{len(r.stop_intents)} sent at stop, not compared)" if r.stop_intents else ""
            return (
                f"{name:<9} fingerprint {r.fingerprint()}  {len(r.signals)} signals, {len(r.intents)} intents"
                f"{extra}"
            )

        out = [side("live", self.live), side("backtest", self.backtest), f"bars: {self.bars_note}"]
        if self.latency:
            out.append(f"latency: {self.latency}")
        out += [f"note: {note}" for note in self.notes]
        out.append("IDENTICAL" if self.identical else f"DIFFERENT: {self.difference}")
        return out


# ---- reading a run folder ------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _round(value):
    if isinstance(value, float):
        return float(f"{value:.{SIGNIFICANT}g}")
    if isinstance(value, dict):
        return {k: _round(v) for k, v in sorted(value.items())}
    return value


def read_recorded(folder: Path) -> Recorded:
    bars = {}
    for row in read_jsonl(folder / "bars.jsonl"):
        bars.setdefault((row["bar_type"], row["close"]), {k: row[k] for k in BAR_FIELDS})
    signals = [{k: _round(row.get(k)) for k in SIGNAL_FIELDS} for row in read_jsonl(folder / "signals.jsonl")]
    signals.sort(key=lambda r: (r["close"], r["instrument_id"]))
    run, stop = [], []
    for row in read_jsonl(folder / "intents.jsonl"):
        (stop if row.get("phase") == "stop" else run).append({k: row.get(k) for k in INTENT_FIELDS})
    run.sort(key=lambda r: r["instrument_id"])  # stable: each instrument's intents in submission order
    return Recorded(sorted(bars.values(), key=lambda r: (r["close"], r["bar_type"])), signals, run, stop)


def _check_run_dir(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise ConfigError(f"no run folder at {run_dir}")
    missing = [
        n
        for n in ("config.yaml", "instruments.json", "session.json", *RECORD_FILES)
        if not (run_dir / n).exists()
    ]
    if missing:
        raise ConfigError(f"{run_dir} is not a recorded session (missing {', '.join(missing)}); record one "
                          "with `record: DIR` in the live config")  # fmt: skip


# ---- the replay ----------------------------------------------------------------------------------------
def build_replay_catalog(run_dir: Path, cfg: LiveConfig, path: Path) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The recorded instruments and bars as a catalog; returns the replay period (first live bar close, last
    live bar close + one interval)."""
    rows = read_jsonl(run_dir / "bars.jsonl")
    history = {(r["bar_type"], r["close"]) for r in rows if r["source"] == "history"}
    live_closes = [
        r["close"] for r in rows if r["source"] == "live" and (r["bar_type"], r["close"]) not in history
    ]
    if not live_closes:
        raise ConfigError(f"{run_dir}: the session recorded no live bar; nothing to replay")
    if path.exists():
        shutil.rmtree(path)
    store = CatalogStore(path, create=True)
    instruments = {}
    for data in json.loads((run_dir / "instruments.json").read_text()):
        inst = CryptoPerpetual.from_dict(data)
        store.write_instrument(inst)
        instruments[str(inst.id)] = inst
    step = interval_seconds(cfg.interval) * 1_000_000_000
    frame = pd.DataFrame(rows).drop_duplicates(subset=["bar_type", "close"], keep="first")
    for bar_type_str, bars in frame.groupby("bar_type", sort=False):
        bar_type = BarType.from_str(bar_type_str)
        inst = instruments.get(str(bar_type.instrument_id))
        if inst is None:
            raise ConfigError(f"{run_dir}: bars of {bar_type} but no such instrument in instruments.json")
        bars = bars.sort_values("close")
        store.write_bars(
            inst,
            pd.DataFrame(
                {
                    "date": pd.to_datetime(bars["close"].to_numpy() - step, utc=True),
                    "open": bars["open"].astype(float).to_numpy(),
                    "high": bars["high"].astype(float).to_numpy(),
                    "low": bars["low"].astype(float).to_numpy(),
                    "close": bars["close_px"].astype(float).to_numpy(),
                    "volume": bars["volume"].astype(float).to_numpy(),
                }
            ),
            bar_type,
        )
    return pd.Timestamp(min(live_closes), tz="UTC"), pd.Timestamp(max(live_closes) + step, tz="UTC")


def replay_config(cfg: LiveConfig, session: dict, catalog: Path, start, end):
    """The backtest that replays the session: same components and profiles, the live node's injections."""
    from backtests.config import parse_backtest_config

    leverage = {}
    for sym in cfg.symbols:
        recorded = session.get("leverage", {}).get(str(instrument_id(sym)))
        leverage[sym] = float(recorded or cfg.leverage.per_symbol.get(sym, cfg.leverage.default))
    balance = session.get("balance_usdt") or DEFAULT_BALANCE
    data = {
        "name": f"parity-{cfg.name}",
        "catalog": str(catalog),
        "universe": {"select": "symbols", "symbols": list(cfg.symbols), "market": "futures", "interval": cfg.interval},
        "period": {"start": start.isoformat(), "end": end.isoformat()},
        "venue": {
            "starting_balance": balance,
            "default_leverage": float(cfg.leverage.default),
            "leverage": leverage,
            "fill_timing": "bar_close",
            "slippage_bps": 0.0,
            "funding": False,
            "liquidation": False,
            "max_order_rate": cfg.max_order_rate,
        },
        "strategies": [c.model_dump() for c in cfg.strategies],
        "actors": [c.model_dump() for c in cfg.actors],
        "exit_profile": cfg.exit_profile,
        "risk_profile": cfg.risk_profile,
        "report": {"tearsheet": False},
    }  # fmt: skip
    return parse_backtest_config(data, f"the backtest derived from {cfg.name}'s live config")


def run_parity(run_dir: str | Path, out: str | Path | None = None) -> ParityResult:
    from backtests.runner import run_backtest
    from live.node import bar_types, live_injections

    run_dir = Path(run_dir)
    _check_run_dir(run_dir)
    cfg = load_live_config(run_dir / "config.yaml")
    session = json.loads((run_dir / "session.json").read_text())
    out = Path(out) if out else run_dir / "parity"
    out.mkdir(parents=True, exist_ok=True)
    start, end = build_replay_catalog(run_dir, cfg, out / "catalog")
    backtest = replay_config(cfg, session, out / "catalog", start, end)
    replay_dir = out / "replay"
    if replay_dir.exists():
        shutil.rmtree(replay_dir)
    recorder = SessionRecorder(
        SessionRecorderConfig(
            run_dir=str(replay_dir),
            bar_types=tuple(str(bt) for bt in bar_types(cfg)),
            write_session=False,
            component_id="SessionRecorder-replay",
        )
    )
    injected = live_injections(cfg)
    run_backtest(backtest, progress=False, injected=injected, actors=[recorder])
    recorder.close()
    (out / "backtest.yaml").write_text(_yaml(backtest.model_dump(mode="json")))
    result = compare(run_dir, replay_dir, interval_seconds(cfg.interval) * 1_000_000_000)
    result.latency = latency(run_dir)
    if not session.get("balance_usdt"):
        result.notes.append(
            f"the session recorded no start balance; the replay started from {DEFAULT_BALANCE:,.0f} USDT"
        )
    return result


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


# ---- latency -------------------------------------------------------------------------------------------
def latency(run_dir: str | Path) -> str | None:
    """How long the live node took, on its own clock, from a close's first kline arriving (the bars' receipt
    `ts_init`) to its decisions (the Signals' `ts_init`) and to the orders decided on that close (entries and
    other bar decisions; reactions to fills are left out). None for a record without those times."""
    run_dir = Path(run_dir)
    bars = read_jsonl(run_dir / "bars.jsonl")
    history = {row["close"] for row in bars if row.get("source") == "history"}  # decided during the warm-up
    first_receipt: dict[int, int] = {}
    for row in bars:
        if row.get("source") == "live" and row.get("ts_init") is not None and row["close"] not in history:
            close = row["close"]
            first_receipt[close] = min(first_receipt.get(close, row["ts_init"]), row["ts_init"])
    signals = [
        row["ts_init"] - first_receipt[row["close"]]
        for row in read_jsonl(run_dir / "signals.jsonl")
        if row.get("ts_init") is not None and row["close"] in first_receipt
    ]
    intents = [
        row["ts_init"] - first_receipt[row["bar"]]
        for row in read_jsonl(run_dir / "intents.jsonl")
        if row.get("ts_init") is not None and row.get("phase") != "stop" and not reacts_to_venue(row)
        and row.get("bar") in first_receipt
    ]  # fmt: skip

    def ms(values: list[int]) -> str:
        p50, p99 = pd.Series(values).quantile([0.5, 0.99]) / 1e6
        return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(values) / 1e6:.1f} ms"

    parts = [f"-> signal {ms(signals)} ({len(signals)} signals)"] if signals else []
    if intents:
        parts.append(f"-> order decided on it {ms(intents)} ({len(intents)} orders)")
    return "first kline of a close " + "; ".join(parts) if parts else None


# ---- comparing -----------------------------------------------------------------------------------------
def compare(live_dir: Path, replay_dir: Path, interval_ns: int) -> ParityResult:
    live, backtest = read_recorded(Path(live_dir)), read_recorded(Path(replay_dir))
    difference = first_difference("signals", live.signals, backtest.signals, SIGNAL_FIELDS)
    if difference is None:
        difference = first_difference(
            "intents", live.intents, backtest.intents, INTENT_FIELDS, bar_tolerance_ns=interval_ns
        )
    bars_difference = first_difference("bars", live.bars, backtest.bars, BAR_FIELDS)
    bars_note = f"{len(live.bars)} recorded, " + (
        "the backtest saw the same"
        if bars_difference is None
        else f"the backtest's differ: {bars_difference}"
    )
    return ParityResult(live, backtest, difference, bars_note, Path(replay_dir))


def first_difference(
    kind: str, live: list[dict], backtest: list[dict], fields: tuple[str, ...], bar_tolerance_ns: int = 0
) -> str | None:
    for i, (a, b) in enumerate(zip(live, backtest, strict=False)):
        for name in fields:
            x, y = a.get(name), b.get(name)
            if x == y:
                continue
            venue_bar = name == "bar" and None not in (x, y) and reacts_to_venue(a) and reacts_to_venue(b)
            if venue_bar and abs(x - y) <= bar_tolerance_ns:
                continue
            return f"{kind} #{i} ({_describe(a)}): {name} live {x!r} vs backtest {y!r}"
    if len(live) != len(backtest):
        i = min(len(live), len(backtest))
        more, side = (live, "live") if len(live) > len(backtest) else (backtest, "the backtest")
        other = "the backtest" if side == "live" else "live"
        return (
            f"{kind} #{i} ({_describe(more[i])}): {side} has it, {other} has no more {kind} "
            f"({len(live)} live, {len(backtest)} backtest)"
        )
    return None


def _describe(row: dict) -> str:
    when = row.get("close", row.get("bar"))
    at = pd.Timestamp(when, tz="UTC").isoformat() if when is not None else "before the first live bar"
    what = row.get("instrument_id") or row.get("bar_type")
    tags = row.get("tags")
    return f"{at}, {what}" + (f", {row.get('type')} {','.join(tags)}" if tags else "")
