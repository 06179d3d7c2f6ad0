"""Freqtrade as a peer: its own venv under a cache dir, a minimal futures config, offline markets.

The venv is made with the running Python (3.12) and `pip install freqtrade`, once; later runs reuse it.
Config: USDT-M futures, isolated margin, leverage 1 (the strategy says so), 1,000 USDT stake per trade, so
1,000 USDT of notional per entry as in the Nautilus runs; a wallet large enough that no entry ever waits for
balance; the taker fee of the catalog's instruments on every fill; one open trade per pair (StaticPairList).
"""

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_VENV = Path.home() / ".cache" / "qt-bench" / "freqtrade-venv"
SPEC = "freqtrade"


def ensure_freqtrade(venv: Path) -> tuple[Path | None, str]:
    """(the venv's python, freqtrade's version) or (None, why it could not be installed)."""
    python = venv / "bin" / "python"
    version = _version(python)
    if version:
        return python, version
    log = venv.parent / "freqtrade-install.log"
    print(f"installing {SPEC} into {venv} (once; log {log}) ...", flush=True)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
        [str(python), "-m", "pip", "install", "-q", SPEC],
    ]
    try:
        venv.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            for step in steps:
                done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, timeout=1800)
                if done.returncode:
                    return None, f"`{' '.join(step[2:])}` failed (exit {done.returncode}): {_last_line(log)}"
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"cannot install into {venv}: {err}"
    version = _version(python)
    return (
        (python, version)
        if version
        else (None, f"freqtrade does not import after install: {_last_line(log)}")
    )


def _version(python: Path) -> str | None:
    if not python.exists():
        return None
    done = subprocess.run(
        [str(python), "-c", "import freqtrade; print(freqtrade.__version__)"], capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else None


def _last_line(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "(no output)"


def pair_of(symbol: str) -> str:
    """BTCUSDT -> BTC/USDT:USDT, freqtrade's (and ccxt's) name for the USDT-M perpetual."""
    return f"{symbol.removesuffix('USDT')}/USDT:USDT"


def market(instrument) -> dict:
    """A ccxt market dict for a catalog CryptoPerpetual (Binance counts precision in tick sizes)."""
    symbol = instrument.raw_symbol.value
    base = symbol.removesuffix("USDT")
    return {
        "id": symbol, "symbol": pair_of(symbol), "base": base, "quote": "USDT", "settle": "USDT",
        "baseId": base, "quoteId": "USDT", "settleId": "USDT", "type": "swap", "subType": "linear",
        "spot": False, "margin": False, "swap": True, "future": False, "option": False, "active": True,
        "contract": True, "linear": True, "inverse": False, "contractSize": 1.0,
        "taker": float(instrument.taker_fee), "maker": float(instrument.maker_fee),
        "precision": {
            "amount": instrument.size_increment.as_double(), "price": instrument.price_increment.as_double(),
        },
        "limits": {
            "amount": {"min": instrument.size_increment.as_double(), "max": None},
            "price": {"min": None, "max": None},
            "cost": {"min": 5.0, "max": None},
            "leverage": {"min": 1.0, "max": 125.0},
            "market": {"min": None, "max": None},
        },
        "info": {},
    }  # fmt: skip


def prepare(work: Path, instruments: list, stake: float = 1000.0) -> tuple[Path, Path]:
    """Writes the config and the markets; returns their paths."""
    pairs = [pair_of(i.raw_symbol.value) for i in instruments]
    # Binance futures tickers carry no price, so freqtrade insists on the order book (unused in backtests)
    pricing = {"price_side": "other", "use_order_book": True, "order_book_top": 1}
    config = {
        "trading_mode": "futures",
        "margin_mode": "isolated",
        "max_open_trades": len(pairs),
        "stake_currency": "USDT",
        "stake_amount": stake,
        "tradable_balance_ratio": 1.0,
        "dry_run": True,
        "dry_run_wallet": stake * len(pairs) * 100,
        "fee": max(float(i.taker_fee) for i in instruments),
        "timeframe": "5m",
        "exchange": {
            "name": "binance",
            "key": "",
            "secret": "",
            "pair_whitelist": pairs,
            "pair_blacklist": [],
        },
        "pairlists": [{"method": "StaticPairList"}],
        "entry_pricing": pricing,
        "exit_pricing": pricing,
        "user_data_dir": str(work / "user_data"),
        "dataformat_ohlcv": "feather",
        "bot_name": "qt-bench",
    }
    (work / "user_data").mkdir(parents=True, exist_ok=True)
    (work / "ft_config.json").write_text(json.dumps(config, indent=1))
    (work / "ft_markets.json").write_text(json.dumps([market(i) for i in instruments]))
    return work / "ft_config.json", work / "ft_markets.json"


def command(python: Path, work: Path, datadir: Path, timerange: str) -> list[str]:
    """The launcher's command line; it writes work/ft_result.json."""
    return [
        str(python), str(HERE / "freqtrade_launch.py"), str(work / "ft_markets.json"),
        str(work / "ft_result.json"), "--",
        "backtesting", "--config", str(work / "ft_config.json"), "--strategy", "QtEmaCross",
        "--strategy-path", str(HERE / "ft_strategies"), "--timerange", timerange,
        "--datadir", str(datadir), "--export", "none", "--cache", "none",
    ]  # fmt: skip
