"""Shared fixtures: small catalogs built from frames the tests construct, and the path to real data."""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from catalog.instruments import make_instrument
from catalog.store import CatalogStore, bar_type_for

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def real_data_or_skip() -> Path:
    if not (REAL_DATA / "binance" / "futures").is_dir():
        pytest.skip(f"real Binance data not found at {REAL_DATA} (only present on the team's machines)")
    return REAL_DATA


def service_or_skip(binary: str, package: str) -> str:
    """The path of a real service's binary. Skipped where it is missing, except under CI=true, where
    `.ci/run` installs it: there a missing service is a failure, so a test that needs it never silently skips."""
    path = shutil.which(binary)
    if path is None:
        reason = f"{binary} is not installed (Debian package {package}: apt-get install {package})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; .ci/run installs it, so under CI=true its absence fails the test")
        pytest.skip(reason)
    return path


def candles(closes, start="2025-01-01", spread=0.001, volume=100.0) -> pd.DataFrame:
    """5m candles whose open is the previous close; high/low a small spread around the bar."""
    closes = np.asarray(closes, dtype=float)
    opens = np.concatenate([[closes[0]], closes[:-1]])
    return pd.DataFrame(
        {
            "date": pd.date_range(start, periods=len(closes), freq="5min", tz="UTC"),
            "open": opens,
            "high": np.maximum(opens, closes) * (1 + spread),
            "low": np.minimum(opens, closes) * (1 - spread),
            "close": closes,
            "volume": np.full(len(closes), volume),
        }
    )


def random_walk(n: int, seed: int, start_price: float = 100.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round(start_price * np.exp(np.cumsum(rng.normal(0, 0.003, n))), 4)


def reverting_walk(n: int, seed: int, start_price: float = 100.0) -> np.ndarray:
    """A random walk plus a fast mean-reverting swing (AR(1), phi 0.9): the price's distance from its recent
    mean forecasts part of the next hour's return, so tiny models beat the zero forecast on validation
    (validation R2 about 0.07-0.10 on 3 x 1400 bars) and may vote, far below the leakage alarm."""
    rng = np.random.default_rng(seed)
    shocks = rng.normal(0, 0.003, n)
    swing = np.zeros(n)
    for t in range(1, n):
        swing[t] = 0.9 * swing[t - 1] + shocks[t]
    return np.round(start_price * np.exp(np.cumsum(rng.normal(0, 0.001, n)) + swing), 4)


SMALL_ENSEMBLE_SYMBOLS = ["AAAUSDT", "BBBUSDT", "CCCUSDT"]
SMALL_ENSEMBLE_MODELS = {
    "xgboost": {"params": {"n_estimators": 30}},
    "lightgbm": {"params": {"n_estimators": 30}},
    "nhits": {"params": {"max_epochs": 1}},
    "patchtst": {"params": {"max_epochs": 1}},
}


def train_small_ensemble(root: Path, bars: int = 1400, kinds: tuple[str, ...] | None = None):
    """A 3-symbol mean-reverting catalog (`reverting_walk`) at root/catalog and the models of `kinds` (default:
    all four) trained on it into root/models, registered and promoted. Each beats the zero forecast on
    validation (ml/skill.py), so every one of them votes. Returns ml.train's TrainResult."""
    from ml.train import TrainConfig, train

    frames = {s: candles(reverting_walk(bars, seed=10 + i)) for i, s in enumerate(SMALL_ENSEMBLE_SYMBOLS)}
    build_catalog(root / "catalog", frames)
    cfg = TrainConfig.model_validate(
        {
            "catalog": str(root / "catalog"),
            "universe": {"select": "all"},
            "dataset": {"max_train_rows": 2000, "max_eval_rows": 500},
            "models": {k: v for k, v in SMALL_ENSEMBLE_MODELS.items() if kinds is None or k in kinds},
            "registry": str(root / "models"),
        }
    )
    return train(cfg, root / "train", progress=False)


def build_catalog(
    path: Path, frames: dict[str, pd.DataFrame], funding: dict[str, pd.DataFrame] | None = None
):
    store = CatalogStore(path, create=True)
    for symbol, frame in frames.items():
        inst = make_instrument(symbol, 4, 3)
        store.write_instrument(inst)
        store.write_bars(inst, frame, bar_type_for(inst.id, "5m"))
        if funding and symbol in funding:
            store.write_funding(inst.id, funding[symbol])
    return store


@pytest.fixture
def walk_catalog(tmp_path) -> Path:
    frames = {f"T{i}USDT": candles(random_walk(1500, seed=i)) for i in range(3)}
    build_catalog(tmp_path / "catalog", frames)
    return tmp_path / "catalog"


def fills_of(engine) -> list[tuple]:
    """Every fill of a finished backtest as (ts, instrument, side, price, qty), sorted: what an actor that must
    not change the trading is compared on."""
    return sorted(
        (e.ts_event, str(e.instrument_id), str(e.order_side), e.last_px.as_double(), e.last_qty.as_double())
        for o in engine.cache.orders()
        for e in o.events
        if type(e).__name__ == "OrderFilled"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_port(tmp_path):
    """A real redis-server on a free loopback port, for one test; stopped after it."""
    service_or_skip("redis-server", package="redis-server")
    port = free_port()
    workdir = tmp_path / "redis"
    workdir.mkdir()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = subprocess.Popen(
        ["redis-server", *args, "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail(f"redis-server did not start on port {port}")
                time.sleep(0.05)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)
