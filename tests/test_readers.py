"""Specification of the market-data readers: every format our users have, one normalised frame."""

import gzip
import hashlib
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from catalog.readers import (
    DataFileError,
    SourceFrame,
    discover,
    infer_interval,
    normalize_symbol,
    read_file,
    read_paths,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HEADER = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore"
T0_MS = 1735689600000  # 2025-01-01 00:00 UTC
FIVE_MIN_MS = 300_000
OHLCV = ["date", "open", "high", "low", "close", "volume"]


# --------------------------------------------------------------------------- builders


def kline_rows(n: int = 3, start_ms: int = T0_MS, step_ms: int = FIVE_MIN_MS, scale: int = 1) -> list[str]:
    """Binance kline CSV lines; `scale=1000` writes microsecond timestamps like 2025 spot files."""
    rows = []
    for i in range(n):
        open_ms = start_ms + i * step_ms
        price = 100.0 + i
        rows.append(
            f"{open_ms * scale},{price},{price + 2},{price - 1},{price + 1},{10.0 + i},"
            f"{(open_ms + step_ms - 1) * scale},1000.0,42,5.0,500.0,0"
        )
    return rows


def write_zip(path: Path, csv_text: str, member: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member or path.with_suffix(".csv").name, csv_text)
    return path


def candles(n: int = 4, start: str = "2025-01-01", freq: str = "5min") -> pd.DataFrame:
    dates = pd.date_range(start, periods=n, freq=freq, tz="UTC").astype("datetime64[ns, UTC]")
    base = np.arange(n, dtype="float64") + 100.0
    return pd.DataFrame(
        {
            "date": dates,
            "open": base,
            "high": base + 2,
            "low": base - 1,
            "close": base + 1,
            "volume": base * 10,
        }
    )


def only(frames: list[SourceFrame]) -> SourceFrame:
    assert len(frames) == 1
    return frames[0]


def assert_normalised(frame: pd.DataFrame, columns: list[str]) -> None:
    assert list(frame.columns) == columns
    assert str(frame["date"].dtype) == "datetime64[ns, UTC]"
    assert all(frame[c].dtype == "float64" for c in columns[1:])


# --------------------------------------------------------------------------- Binance archives


@pytest.mark.parametrize("with_header", [True, False])
def test_binance_zip_with_or_without_header_reads_the_same(tmp_path, with_header):
    lines = ([HEADER] if with_header else []) + kline_rows(3)
    sf = only(read_file(write_zip(tmp_path / "BTCUSDT-5m-2025-01.zip", "\n".join(lines) + "\n")))

    assert (sf.symbol, sf.market, sf.kind, sf.interval) == ("BTCUSDT", "futures", "ohlcv", "5m")
    assert_normalised(sf.frame, OHLCV)
    assert sf.frame["date"].iloc[0] == pd.Timestamp("2025-01-01", tz="UTC")  # open time, not close
    assert sf.frame["open"].tolist() == [100.0, 101.0, 102.0]
    assert sf.frame["volume"].tolist() == [10.0, 11.0, 12.0]


def test_microsecond_and_millisecond_open_times_give_the_same_dates(tmp_path):
    ms = only(read_file(write_zip(tmp_path / "ms" / "BTCUSDT-5m-2025-01.zip", "\n".join(kline_rows(3)))))
    us = only(
        read_file(write_zip(tmp_path / "us" / "BTCUSDT-5m-2025-01.zip", "\n".join(kline_rows(3, scale=1000))))
    )
    pd.testing.assert_frame_equal(ms.frame, us.frame)


def test_daily_zip_name_and_bare_csv_are_recognised(tmp_path):
    daily = only(
        read_file(
            write_zip(tmp_path / "ETHUSDT-1h-2025-01-15.zip", "\n".join(kline_rows(2, step_ms=3600_000)))
        )
    )
    assert (daily.symbol, daily.interval) == ("ETHUSDT", "1h")

    csv_path = tmp_path / "1000PEPEUSDT-5m-2025-02.csv"
    csv_path.write_text(HEADER + "\n" + "\n".join(kline_rows(2)) + "\n")
    bare = only(read_file(csv_path))
    assert (bare.symbol, bare.interval, len(bare.frame)) == ("1000PEPEUSDT", "5m", 2)


def test_spot_path_component_sets_market_and_override_wins(tmp_path):
    text = "\n".join(kline_rows(2))
    spot = write_zip(tmp_path / "data" / "spot" / "BTCUSDT" / "5m" / "BTCUSDT-5m-2025-01.zip", text)
    assert only(read_file(spot)).market == "spot"
    assert only(read_file(spot, market="futures")).market == "futures"
    futures = write_zip(tmp_path / "data" / "futures" / "BTCUSDT" / "5m" / "BTCUSDT-5m-2025-01.zip", text)
    assert only(read_file(futures)).market == "futures"


def test_mark_price_archive_is_read_as_mark(tmp_path):
    path = write_zip(
        tmp_path / "markPriceKlines" / "BTCUSDT" / "5m" / "BTCUSDT-5m-2025-01.zip", "\n".join(kline_rows(2))
    )
    assert only(read_file(path)).kind == "mark"


def test_binance_funding_archive(tmp_path):
    text = "calc_time,funding_interval_hours,last_funding_rate\n"
    text += "".join(f"{T0_MS + i * 8 * 3600_000},8,0.0001\n" for i in range(3))
    sf = only(read_file(write_zip(tmp_path / "BTCUSDT-fundingRate-2025-01.zip", text)))
    assert (sf.symbol, sf.market, sf.kind, sf.interval) == ("BTCUSDT", "futures", "funding", "8h")
    assert_normalised(sf.frame, ["date", "rate"])
    assert sf.frame["rate"].tolist() == [0.0001] * 3


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"this is not a zip", "not a valid zip"),
        (None, "empty"),
        (b"PK\x03\x04 truncated", "not a valid zip"),
    ],
)
def test_broken_zip_names_the_file(tmp_path, content, problem):
    path = tmp_path / "BTCUSDT-5m-2025-01.zip"
    if content is None:
        zipfile.ZipFile(path, "w").close()
    else:
        path.write_bytes(content)
    with pytest.raises(DataFileError, match=problem) as info:
        read_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1735689600000,abc,1,1,1,1,0,0,0,0,0,0\n", "non-numeric value 'abc'"),
        ("1735689600000,1,2\n", "expected at least 6"),
        ("", "no rows"),
        ("open_time,open\n1735689600000,1\n", "missing columns"),
    ],
)
def test_unparsable_csv_in_zip_names_the_file_and_problem(tmp_path, text, problem):
    path = write_zip(tmp_path / "BTCUSDT-5m-2025-01.zip", text)
    with pytest.raises(DataFileError, match=problem) as info:
        read_file(path)
    assert str(path) in str(info.value)


def test_zip_with_several_csvs_is_refused(tmp_path):
    path = tmp_path / "BTCUSDT-5m-2025-01.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.csv", "\n".join(kline_rows(2)))
        archive.writestr("b.csv", "\n".join(kline_rows(2)))
    with pytest.raises(DataFileError, match="2 CSV files"):
        read_file(path)


def test_checksum_beside_the_zip_is_enforced(tmp_path):
    path = write_zip(tmp_path / "BTCUSDT-5m-2025-01.zip", "\n".join(kline_rows(2)))
    checksum = tmp_path / "BTCUSDT-5m-2025-01.zip.CHECKSUM"
    checksum.write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")
    assert len(only(read_file(path)).frame) == 2
    checksum.write_text(f"{'0' * 64}  {path.name}\n")
    with pytest.raises(DataFileError, match="does not match"):
        read_file(path)


def test_empty_cells_survive_as_nan_for_quality_to_count(tmp_path):
    rows = kline_rows(3)
    rows[1] = rows[1].replace(",101.0,", ",,", 1)
    sf = only(read_file(write_zip(tmp_path / "BTCUSDT-5m-2025-01.zip", "\n".join(rows))))
    assert sf.frame["open"].isna().tolist() == [False, True, False]


def test_rows_keep_file_order_and_duplicates(tmp_path):
    # Repair is quality's job: the reader returns what the file holds.
    rows = kline_rows(3)
    sf = only(
        read_file(write_zip(tmp_path / "BTCUSDT-5m-2025-01.zip", "\n".join([rows[2], rows[0], rows[0]])))
    )
    assert sf.frame["open"].tolist() == [102.0, 100.0, 100.0]


def test_file_whose_rows_do_not_match_its_interval_is_refused(tmp_path):
    path = write_zip(tmp_path / "BTCUSDT-1h-2025-01.zip", "\n".join(kline_rows(4)))  # rows 5m apart
    with pytest.raises(DataFileError, match="5m apart but the interval is 1h"):
        read_file(path)


def test_close_times_are_refused(tmp_path):
    path = tmp_path / "BTCUSDT-5m.csv"
    stamps = [T0_MS + FIVE_MIN_MS * (i + 1) - 1 for i in range(3)]
    path.write_text("timestamp,open,high,low,close,volume\n" + "".join(f"{t},1,2,1,1,1\n" for t in stamps))
    with pytest.raises(DataFileError, match="CLOSE times"):
        read_file(path)


def test_monthly_interval_is_refused(tmp_path):
    path = write_zip(tmp_path / "BTCUSDT-1M-2025-01.zip", "\n".join(kline_rows(2)))
    with pytest.raises(DataFileError, match="months are not supported"):
        read_file(path)


# --------------------------------------------------------------------------- freqtrade


def freqtrade_write(frame: pd.DataFrame, path: Path) -> Path:
    """Write the way freqtrade's data handlers do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    if name.endswith(".feather"):
        frame.to_feather(path)
    elif name.endswith(".parquet"):
        frame.to_parquet(path)
    else:
        data = frame.copy()
        data["date"] = data["date"].astype("datetime64[ns, UTC]").astype("int64") // 1000 // 1000
        data.to_json(path, orient="values", compression="gzip" if name.endswith(".gz") else None)
    return path


@pytest.mark.parametrize("ext", ["feather", "parquet", "json", "json.gz"])
def test_freqtrade_formats_round_trip(tmp_path, ext):
    frame = candles(6)
    path = freqtrade_write(frame, tmp_path / "binance" / f"BTC_USDT-5m.{ext}")
    sf = only(read_file(path))
    assert (sf.symbol, sf.market, sf.kind, sf.interval) == ("BTCUSDT", "spot", "ohlcv", "5m")
    assert_normalised(sf.frame, OHLCV)
    pd.testing.assert_frame_equal(sf.frame, frame)


def test_json_gz_is_really_gzip(tmp_path):
    path = freqtrade_write(candles(2), tmp_path / "BTC_USDT-5m.json.gz")
    assert len(json.loads(gzip.decompress(path.read_bytes()))) == 2


def test_freqtrade_futures_mark_and_funding(tmp_path):
    futures = tmp_path / "binance" / "futures"
    freqtrade_write(candles(3), futures / "BTC_USDT_USDT-5m-futures.feather")
    freqtrade_write(candles(3, freq="1h"), futures / "BTC_USDT_USDT-1h-mark.feather")
    funding = candles(3, freq="8h").assign(
        open=[0.0001, -0.0002, 0.0003], high=0.0, low=0.0, close=0.0, volume=0.0
    )
    freqtrade_write(funding, futures / "BTC_USDT_USDT-1h-funding_rate.feather")

    by_kind = {sf.kind: sf for sf in read_paths([tmp_path])}
    assert {k: (v.symbol, v.market, v.interval) for k, v in by_kind.items()} == {
        "ohlcv": ("BTCUSDT", "futures", "5m"),
        "mark": ("BTCUSDT", "futures", "1h"),
        # The name says 1h (freqtrade's download timeframe); funding happens every 8h.
        "funding": ("BTCUSDT", "futures", "8h"),
    }
    assert_normalised(by_kind["funding"].frame, ["date", "rate"])
    assert by_kind["funding"].frame["rate"].tolist() == [0.0001, -0.0002, 0.0003]


@pytest.mark.parametrize(
    ("name", "symbol", "market", "kind"),
    [
        ("BTC_USDT-5m.feather", "BTCUSDT", "spot", "ohlcv"),
        ("BTC_USDT_USDT-5m-futures.feather", "BTCUSDT", "futures", "ohlcv"),
        ("1000PEPE_USDT_USDT-1h-mark.feather", "1000PEPEUSDT", "futures", "mark"),
        ("1MBABYDOGE_USDT-5m.parquet", "1MBABYDOGEUSDT", "spot", "ohlcv"),
        ("BTCUSDT-5m.csv", "BTCUSDT", "futures", "ohlcv"),
        ("BTCUSDT_5m.parquet", "BTCUSDT", "futures", "ohlcv"),
    ],
)
def test_symbol_market_and_kind_from_file_names(tmp_path, name, symbol, market, kind):
    path = tmp_path / name
    frame = candles(3, freq="1h" if "-1h" in name else "5min")
    if name.endswith(".csv"):
        frame.to_csv(path, index=False)
    else:
        freqtrade_write(frame, path)
    sf = only(read_file(path))
    assert (sf.symbol, sf.market, sf.kind) == (symbol, market, kind)


@pytest.mark.parametrize(
    ("raw", "symbol"),
    [
        ("BTC/USDT:USDT", "BTCUSDT"),
        ("BTC_USDT_USDT", "BTCUSDT"),
        ("eth-usdt", "ETHUSDT"),
        ("SOLUSDT", "SOLUSDT"),
    ],
)
def test_normalize_symbol(raw, symbol):
    assert normalize_symbol(raw) == symbol


def test_unsupported_freqtrade_candle_type_is_refused(tmp_path):
    path = freqtrade_write(candles(3), tmp_path / "BTC_USDT_USDT-1h-premiumIndex.feather")
    with pytest.raises(DataFileError, match="unsupported candle type 'premiumIndex'"):
        read_file(path)


def test_funding_for_spot_is_refused(tmp_path):
    path = freqtrade_write(candles(3, freq="8h"), tmp_path / "BTC_USDT_USDT-1h-funding_rate.feather")
    with pytest.raises(DataFileError, match="only for futures"):
        read_file(path, market="spot")


# --------------------------------------------------------------------------- plain user files


@pytest.mark.parametrize(
    "to_time",
    [
        lambda d: d.astype("int64") // 10**9,  # epoch seconds
        lambda d: d.astype("int64") // 10**6,  # ms
        lambda d: d.astype("int64") // 10**3,  # µs
        lambda d: d.astype("int64"),  # ns
        lambda d: d.dt.strftime("%Y-%m-%dT%H:%M:%SZ"),  # ISO with zone
        lambda d: d.dt.strftime("%Y-%m-%d %H:%M:%S"),  # naive ISO means UTC
        lambda d: d.dt.tz_convert("America/New_York").dt.strftime("%Y-%m-%d %H:%M:%S%z"),  # offset
    ],
    ids=["s", "ms", "us", "ns", "iso-z", "iso-naive", "iso-offset"],
)
def test_plain_csv_time_encodings(tmp_path, to_time):
    frame = candles(4)
    user = frame.rename(columns=str.upper).assign(TIMESTAMP=to_time(frame["date"])).drop(columns="DATE")
    path = tmp_path / "BTCUSDT-5m.csv"
    user.to_csv(path, index=False)
    sf = only(read_file(path))
    pd.testing.assert_frame_equal(sf.frame, frame)


@pytest.mark.parametrize("column", ["date", "timestamp", "time", "open_time", "datetime"])
def test_plain_parquet_time_column_names(tmp_path, column):
    frame = candles(4)
    path = tmp_path / "ETHUSDT_5m.parquet"
    frame.rename(columns={"date": column}).to_parquet(path)
    pd.testing.assert_frame_equal(only(read_file(path)).frame, frame)


def test_parquet_with_date_index_and_naive_datetimes(tmp_path):
    frame = candles(4)
    path = tmp_path / "ETHUSDT-5m.parquet"
    frame.assign(date=frame["date"].dt.tz_localize(None)).set_index("date").to_parquet(path)
    pd.testing.assert_frame_equal(only(read_file(path)).frame, frame)


def test_unnamed_file_needs_a_symbol_and_infers_the_interval(tmp_path):
    path = tmp_path / "my export.csv"
    candles(5, freq="15min").to_csv(path, index=False)
    with pytest.raises(DataFileError, match="pass symbol="):
        read_file(path)
    sf = only(read_file(path, symbol="BTC/USDT"))
    assert (sf.symbol, sf.market, sf.interval) == ("BTCUSDT", "futures", "15m")


def test_interval_inferred_from_median_spacing_despite_a_gap():
    dates = pd.Series(pd.to_datetime([0, 3600, 7200, 36000, 39600], unit="s", utc=True))
    assert infer_interval(dates) == "1h"


def test_missing_time_column_is_explained(tmp_path):
    path = tmp_path / "BTCUSDT-5m.csv"
    candles(3).rename(columns={"date": "when"}).to_csv(path, index=False)
    with pytest.raises(DataFileError, match="no time column"):
        read_file(path)


def test_headerless_csv_with_iso_dates_uses_the_kline_layout(tmp_path):
    path = tmp_path / "BTCUSDT-5m.csv"
    candles(3).assign(date=lambda d: d["date"].dt.strftime("%Y-%m-%d %H:%M:%S")).to_csv(
        path, index=False, header=False
    )
    pd.testing.assert_frame_equal(only(read_file(path)).frame, candles(3))


# --------------------------------------------------------------------------- discovery and joining


def test_discover_is_recursive_sorted_and_skips_unknown_files(tmp_path, caplog):
    text = "\n".join(kline_rows(2))
    b = write_zip(tmp_path / "futures" / "ETHUSDT" / "5m" / "ETHUSDT-5m-2025-01.zip", text)
    a = write_zip(tmp_path / "futures" / "BTCUSDT" / "5m" / "BTCUSDT-5m-2025-01.zip", text)
    (tmp_path / "futures" / "BTCUSDT" / "5m" / "BTCUSDT-5m-2025-01.zip.CHECKSUM").write_text("x")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / ".hidden").mkdir()
    write_zip(tmp_path / ".hidden" / "XRPUSDT-5m-2025-01.zip", text)

    assert discover([tmp_path]) == [a, b]
    assert discover([tmp_path, a]) == [a, b]  # no repeats
    assert "config.json" in caplog.text  # skipped, but not silently
    with pytest.raises(DataFileError, match="no such file"):
        discover([tmp_path / "absent"])


def test_read_paths_joins_monthly_and_daily_archives_in_date_order(tmp_path):
    root = tmp_path / "futures" / "BTCUSDT" / "5m"
    feb = T0_MS + 31 * 86400_000
    write_zip(root / "BTCUSDT-5m-2025-02-01.zip", "\n".join(kline_rows(2, start_ms=feb)))
    write_zip(root / "BTCUSDT-5m-2025-01.zip", "\n".join(kline_rows(3)))
    write_zip(tmp_path / "futures" / "ETHUSDT" / "5m" / "ETHUSDT-5m-2025-01.zip", "\n".join(kline_rows(1)))

    frames = read_paths([tmp_path])
    assert [(f.symbol, len(f.frame)) for f in frames] == [("BTCUSDT", 5), ("ETHUSDT", 1)]
    dates = frames[0].frame["date"]
    assert dates.is_monotonic_increasing and dates.iloc[0] == pd.Timestamp("2025-01-01", tz="UTC")
    assert "2 files" in frames[0].source


def test_read_paths_overrides_apply_to_every_file(tmp_path):
    path = tmp_path / "export.csv"
    candles(3).to_csv(path, index=False)
    sf = only(read_paths([path], symbol="SOLUSDT", market="spot"))
    assert (sf.symbol, sf.market, sf.interval) == ("SOLUSDT", "spot", "5m")


# --------------------------------------------------------------------------- real shared data


@pytest.mark.slow
def test_every_shared_data_file_reads_unchanged():
    if not (SHARED_DATA / "binance").is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it is not part of a user's clone)")
    started = time.perf_counter()
    frames = read_paths([SHARED_DATA / "binance"])
    elapsed = time.perf_counter() - started

    files = sorted((SHARED_DATA / "binance").rglob("*.feather"))
    assert len(frames) == len(files)
    ohlcv = [f for f in frames if f.kind == "ohlcv"]
    assert len({f.symbol for f in ohlcv if f.market == "futures"}) == 19
    assert len({f.symbol for f in ohlcv if f.market == "spot"}) == 100
    assert (
        len([f for f in frames if f.kind == "funding"]) == len([f for f in frames if f.kind == "mark"]) == 20
    )
    for sf in frames:
        raw = pd.read_feather(sf.source)
        expected = raw.rename(columns={"open": "rate"})[["date", "rate"]] if sf.kind == "funding" else raw
        pd.testing.assert_frame_equal(sf.frame, expected, obj=sf.source)
        assert sf.interval in {"ohlcv": {"5m"}, "mark": {"1h"}, "funding": {"1h", "4h", "8h"}}[sf.kind]
    assert elapsed < 30, f"reading all shared data took {elapsed:.1f}s"
