"""Ingest: files of every format end in the catalog once, bad files are reported and lose nothing."""

import zipfile

import numpy as np
import pandas as pd
import pytest

from catalog.check import check_catalog
from catalog.ingest import ingest
from catalog.instruments import instrument_id
from catalog.store import CatalogStore, bar_type_for
from quantum_trader.cli import main
from tests.conftest import build_catalog, candles, random_walk, real_data_or_skip

BINANCE_COLUMNS = ["open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "count",
                   "taker_buy_volume", "taker_buy_quote_volume", "ignore"]  # fmt: skip


def binance_csv(frame: pd.DataFrame, header: bool, micros: bool = False) -> str:
    scale = 1_000 if micros else 1
    open_ms = frame["date"].astype("int64") // 1_000_000 * scale
    out = pd.DataFrame({
        "open_time": open_ms, "open": frame["open"], "high": frame["high"], "low": frame["low"],
        "close": frame["close"], "volume": frame["volume"], "close_time": open_ms + 300_000 * scale - 1,
        "quote_volume": frame["close"] * frame["volume"], "count": 10, "taker_buy_volume": 1.0,
        "taker_buy_quote_volume": 1.0, "ignore": 0,
    })  # fmt: skip
    return out.to_csv(index=False, header=header)


def write_zip(path, csv_name: str, text: str) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(csv_name, text)


@pytest.fixture
def archives(tmp_path):
    """Two monthly Binance archives for one symbol: the older without header, the newer with µs timestamps."""
    frame = candles(random_walk(600, 11), start="2025-01-31 00:00")
    jan, feb = frame[frame["date"] < "2025-02-01"], frame[frame["date"] >= "2025-02-01"]
    src = tmp_path / "src"
    src.mkdir()
    write_zip(src / "ABCUSDT-5m-2025-01.zip", "ABCUSDT-5m-2025-01.csv", binance_csv(jan, header=False))
    write_zip(
        src / "ABCUSDT-5m-2025-02.zip", "ABCUSDT-5m-2025-02.csv", binance_csv(feb, header=True, micros=True)
    )
    return src, frame


def test_binance_archives_land_in_the_catalog_as_close_stamped_bars(archives, tmp_path):
    src, frame = archives
    summary = ingest([src], tmp_path / "cat", workers=1, progress=False)
    assert not summary.errors
    store = CatalogStore(tmp_path / "cat")
    bars = store.read_bars(bar_type_for("ABCUSDT-PERP.BINANCE", "5m"))
    assert len(bars) == len(frame)
    assert pd.Timestamp(bars[0].ts_event, tz="UTC") == frame["date"].iloc[0] + pd.Timedelta("5min")


def test_ingesting_the_same_files_twice_gives_the_same_catalog(archives, tmp_path):
    src, _ = archives
    ingest([src], tmp_path / "cat", workers=1, progress=False)
    files = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "cat" / "data").rglob("*.parquet"))
    again = ingest([src], tmp_path / "cat", workers=1, progress=False)
    assert sum(r.rows for r in again.results) == 0
    assert (
        sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "cat" / "data").rglob("*.parquet")) == files
    )


def test_a_corrupt_zip_is_reported_and_the_other_symbols_still_ingest(archives, tmp_path):
    src, frame = archives
    (src / "BADUSDT-5m-2025-01.zip").write_bytes(b"this is not a zip file")
    summary = ingest([src], tmp_path / "cat", workers=1, progress=False)
    assert [r.symbol for r in summary.errors] == ["BADUSDT"]
    assert "BADUSDT-5m-2025-01.zip" in summary.errors[0].error
    assert len(CatalogStore(tmp_path / "cat").read_bars(bar_type_for("ABCUSDT-PERP.BINANCE", "5m"))) == len(
        frame
    )


def freqtrade_futures(folder, symbol: str, frame: pd.DataFrame, rates: list[float]) -> None:
    """A freqtrade futures slice: 5m candles and funding (the rate in `open`, the other columns 0)."""
    pair = f"{symbol.removesuffix('USDT')}_USDT_USDT"
    frame.to_feather(folder / f"{pair}-5m-futures.feather")
    dates = pd.date_range(frame["date"].iloc[0], periods=len(rates), freq="8h", tz="UTC")
    zeros = np.zeros(len(rates))
    funding = pd.DataFrame({"date": dates, "open": rates, "high": zeros, "low": zeros, "close": zeros})
    funding.assign(volume=zeros).to_feather(folder / f"{pair}-1h-funding_rate.feather")


def test_a_symbol_whose_funding_is_refused_is_not_ingested_and_the_others_are(tmp_path):
    src = tmp_path / "futures"
    src.mkdir()
    freqtrade_futures(src, "ABCUSDT", candles(random_walk(300, 1)), [1e-4, 0.5, 1e-4])  # 50%: a unit error
    freqtrade_futures(src, "XYZUSDT", candles(random_walk(300, 2)), [1e-4, 2e-4, 1e-4])
    summary = ingest([src], tmp_path / "cat", workers=1, progress=False)
    store = CatalogStore(tmp_path / "cat")
    assert [str(bt) for bt in store.bar_types(price_type=None)] == [
        "XYZUSDT-PERP.BINANCE-5-MINUTE-LAST-EXTERNAL"
    ]
    assert [str(i.id) for i in store.instruments()] == ["XYZUSDT-PERP.BINANCE"]
    assert store.read_funding_frame("ABCUSDT-PERP.BINANCE").empty
    assert store.read_funding_frame("XYZUSDT-PERP.BINANCE")["rate"].tolist() == [1e-4, 2e-4, 1e-4]
    (refused,) = summary.errors
    assert refused.symbol == "ABCUSDT"
    assert refused.error.startswith("not ingested, nothing written: DataQualityError: ABCUSDT funding")
    assert "|funding rate| <= 0.05" in refused.error


def test_a_symbol_whose_funding_contradicts_the_catalog_gets_no_new_bars(tmp_path):
    # Funding is written before the bars, so a funding write the catalog refuses stops the bars too.
    frame = candles(random_walk(600, 3))
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    freqtrade_futures(first, "ABCUSDT", frame.iloc[:300], [1e-4, 1e-4])
    freqtrade_futures(second, "ABCUSDT", frame, [1e-4, 3e-4, 1e-4])  # the 08:00 rate differs
    assert not ingest([first], tmp_path / "cat", workers=1, progress=False).errors
    (refused,) = ingest([second], tmp_path / "cat", workers=1, progress=False).errors
    bars = CatalogStore(tmp_path / "cat").read_bars_frame(bar_type_for("ABCUSDT-PERP.BINANCE", "5m"))
    assert len(bars) == 300
    assert refused.error.startswith("not ingested, nothing written: CatalogConflictError: ABCUSDT-PERP")


def test_repairs_drops_and_gaps_are_counted_not_hidden(tmp_path):
    frame = candles(random_walk(100, 12))
    frame.loc[10, "high"] = frame.loc[10, "low"] * 0.9  # high < low
    frame.loc[20, "close"] = np.nan
    frame = pd.concat([frame.drop(index=range(50, 55)), frame.iloc[[30]]])  # a gap and an exact duplicate
    src = tmp_path / "src"
    src.mkdir()
    (src / "QQQUSDT-5m.csv").write_text(frame.to_csv(index=False))
    summary = ingest([src], tmp_path / "cat", workers=1, progress=False)
    (q,) = summary.results[0].quality
    # the dropped NaN row leaves a one-bar gap of its own beside the five removed bars
    assert (q["repaired"], q["dropped"], q["duplicates_dropped"], q["gaps"], q["missing_bars"]) == (
        1,
        1,
        1,
        2,
        6,
    )
    assert q["rows_in"] == q["rows_out"] + q["dropped"] + q["duplicates_dropped"]
    report = check_catalog(tmp_path / "cat")
    row = report[report["kind"] == "ohlcv"].iloc[0]
    assert row["gaps"] == 2 and row["missing_bars"] == 6


def funding_stamped_ms_late(n: int) -> pd.DataFrame:
    """8-hourly funding as Binance's API stamps it: 1-5 ms after the hour."""
    on_the_hour = pd.date_range("2025-01-01", periods=n, freq="8h", tz="UTC")
    late = on_the_hour + pd.to_timedelta(np.arange(n) % 5 + 1, unit="ms")
    return pd.DataFrame({"date": late, "rate": 1e-4})


def test_funding_times_a_few_ms_after_the_hour_are_stored_on_the_hour(tmp_path):
    late = funding_stamped_ms_late(9)
    src = tmp_path / "src"
    src.mkdir()
    calc_time = (late["date"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
    pd.DataFrame(
        {"calc_time": calc_time, "funding_interval_hours": 8, "last_funding_rate": late["rate"]}
    ).to_csv(src / "ABCUSDT-fundingRate-2025-01.csv", index=False)
    summary = ingest([src], tmp_path / "cat", workers=1, progress=False)
    (q,) = summary.results[0].quality
    assert (q["snapped_to_hour"], q["gaps"]) == (9, 0)
    stored = CatalogStore(tmp_path / "cat").read_funding_frame("ABCUSDT-PERP.BINANCE")
    assert stored["date"].tolist() == list(pd.date_range("2025-01-01", periods=9, freq="8h", tz="UTC"))


def test_check_counts_no_funding_gaps_in_a_catalog_stamped_ms_after_the_hour(tmp_path):
    # A catalog ingested before funding times were snapped holds Binance's stamps as they came.
    cat = tmp_path / "cat"
    build_catalog(cat, {"ABCUSDT": candles(random_walk(300, 3))}, {"ABCUSDT": funding_stamped_ms_late(9)})
    row = check_catalog(cat).set_index("kind").loc["funding"]
    assert (row["interval"], row["rows"], row["gaps"], row["issues"]) == ("8h", 9, 0, "")
    assert main(["data", "check", "--catalog", str(cat), "--strict"]) == 0


def test_mark_prices_keep_their_own_decimals_not_the_trade_tick(tmp_path):
    # BTC trades on a 0.1 tick; its mark price is an index average quoted to 8 decimals.
    src = tmp_path / "futures"
    src.mkdir()
    trades = candles(np.round(random_walk(24, 4, start_price=92760.0), 1), spread=0.0)
    trades.to_feather(src / "BTC_USDT_USDT-5m-futures.feather")
    marks = [92760.05741135, 92875.4, 92355.0, 92424.41234567]
    mark = pd.DataFrame({
        "date": pd.date_range("2025-01-01", periods=4, freq="1h", tz="UTC"), "open": marks,
        "high": max(marks), "low": min(marks), "close": marks, "volume": 0.0,
    })  # fmt: skip
    mark.to_feather(src / "BTC_USDT_USDT-1h-mark.feather")
    summary = ingest([src], tmp_path / "cat", workers=1, progress=False)
    store = CatalogStore(tmp_path / "cat")
    stored = store.read_bars_frame(bar_type_for("BTCUSDT-PERP.BINANCE", "1h", "MARK"))
    np.testing.assert_allclose(stored["close"], marks, rtol=1e-14)
    assert store.instrument("BTCUSDT-PERP.BINANCE").price_precision == 1
    assert [w["values_rounded"] for w in summary.results[0].writes] == [0, 0]


def test_values_finer_than_the_catalog_keeps_are_rounded_counted_and_reported(tmp_path, capsys):
    frame = candles(random_walk(30, 5), spread=0.0)
    frame.loc[7, "high"] = 200.123456789  # 9 decimals; prices keep at most 8
    src = tmp_path / "src"
    src.mkdir()
    (src / "ABCUSDT-5m.csv").write_text(frame.to_csv(index=False))
    assert main(["data", "ingest", str(src), "--catalog", str(tmp_path / "cat"), "--workers", "1"]) == 0
    (write,) = CatalogStore(tmp_path / "cat").read_manifest()["ingests"][0]["symbols"][0]["writes"]
    assert (write["key"], write["values_rounded"]) == ("ABCUSDT-PERP.BINANCE-5-MINUTE-LAST-EXTERNAL", 1)
    assert "warning: ABCUSDT: ABCUSDT-PERP.BINANCE-5-MINUTE-LAST-EXTERNAL: 1 value(s) rounded" in (
        capsys.readouterr().err
    )


def test_check_reports_the_funding_of_a_symbol_with_no_trade_bars(tmp_path):
    # The shared data has 1000PEPE's mark prices and funding but no 5m candles, so no instrument.
    store = CatalogStore(tmp_path / "cat", create=True)
    store.write_funding(instrument_id("PEPEUSDT"), funding_stamped_ms_late(4))
    row = check_catalog(tmp_path / "cat").set_index("instrument").loc["PEPEUSDT-PERP.BINANCE"]
    assert (row["kind"], row["rows"], row["gaps"]) == ("funding", 4, 0)


def test_generated_markets_go_through_the_same_path(tmp_path):
    from catalog.ingest import write_generated

    summary = write_generated(3, 2, seed=1, catalog_dir=tmp_path / "cat", progress=False)
    assert not summary.errors and summary.results[0].rows > 0
    store = CatalogStore(tmp_path / "cat")
    assert len(store.instruments()) == 3
    assert len(store.read_funding_frame(store.instruments()[0].id)) >= 6


def test_the_shared_freqtrade_directory_ingests_unchanged(tmp_path):
    data = real_data_or_skip()
    futures = data / "binance" / "futures"
    files = sorted(futures.glob("BTC_USDT_USDT-*")) + sorted(futures.glob("ETH_USDT_USDT-*"))
    sub = tmp_path / "futures"
    sub.mkdir()
    for f in files:  # a two-symbol slice keeps the test fast; the benchmark ingests all of it
        (sub / f.name).symlink_to(f)
    summary = ingest([sub], tmp_path / "cat", workers=2, progress=False)
    assert not summary.errors
    store = CatalogStore(tmp_path / "cat")
    kinds = {(str(bt.instrument_id), str(bt.spec)) for bt in store.bar_types(price_type=None)}
    assert ("BTCUSDT-PERP.BINANCE", "5-MINUTE-LAST") in kinds and (
        "BTCUSDT-PERP.BINANCE",
        "1-HOUR-MARK",
    ) in kinds
    assert len(store.read_funding_frame("BTCUSDT-PERP.BINANCE")) > 1000
    source = pd.read_feather(futures / "BTC_USDT_USDT-5m-futures.feather")
    assert len(store.read_bars_frame(bar_type_for("BTCUSDT-PERP.BINANCE", "5m"))) == len(source)
