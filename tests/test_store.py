"""The catalog stores bars at candle CLOSE, round-trips exactly, and ingest is idempotent."""

import numpy as np
import pandas as pd
import pytest

from catalog.instruments import infer_precision, make_instrument
from catalog.store import INTERVALS, CatalogConflictError, CatalogStore, bar_type_for, interval_seconds
from tests.conftest import candles, random_walk


@pytest.fixture
def store(tmp_path):
    return CatalogStore(tmp_path / "cat", create=True)


@pytest.fixture
def inst():
    return make_instrument("TESTUSDT", 4, 3)


def test_every_allowed_interval_has_a_nautilus_bar_type(inst):
    assert [str(bar_type_for(inst.id, iv)).split("-", 2)[2] for iv in ("15m", "12h", "3d")] == [
        "15-MINUTE-LAST-EXTERNAL", "12-HOUR-LAST-EXTERNAL", "3-DAY-LAST-EXTERNAL"
    ]  # fmt: skip
    for interval in INTERVALS:
        bar_type_for(inst.id, interval)
    assert interval_seconds("4h") == 4 * 3600


@pytest.mark.parametrize("interval", ["7m", "45m", "60m", "5h", "24h", "0m", "1w", "5"])
def test_an_interval_without_a_bar_type_is_refused_with_the_allowed_ones(inst, interval):
    with pytest.raises(
        ValueError, match=rf"unsupported interval '{interval}'; allowed: 1m, 2m, .* 12h or whole days"
    ):
        bar_type_for(inst.id, interval)


def test_bars_are_stamped_at_the_candle_close(store, inst):
    frame = candles(random_walk(10, 1))
    bt = bar_type_for(inst.id, "5m")
    store.write_instrument(inst)
    store.write_bars(inst, frame, bt)
    bars = store.read_bars(bt)
    assert pd.Timestamp(bars[0].ts_event, tz="UTC") == frame["date"].iloc[0] + pd.Timedelta("5min")
    assert bars[0].ts_init == bars[0].ts_event


def test_frames_round_trip_exactly(store, inst):
    frame = candles(random_walk(500, 2))
    bt = bar_type_for(inst.id, "5m")
    store.write_bars(inst, frame, bt)
    back = store.read_bars_frame(bt)
    assert (back["date"] == frame["date"]).all()
    np.testing.assert_allclose(back[["open", "close", "volume"]], frame[["open", "close", "volume"]].round(4))


def test_writing_the_same_rows_twice_changes_nothing(store, inst):
    frame = candles(random_walk(300, 3))
    bt = bar_type_for(inst.id, "5m")
    first = store.write_bars(inst, frame, bt)
    files = sorted(p.name for p in store.bar_dir(bt).iterdir())
    again = store.write_bars(inst, frame, bt)
    assert (first.rows_new, again.rows_new, again.rows_already_present) == (300, 0, 300)
    assert sorted(p.name for p in store.bar_dir(bt).iterdir()) == files


def test_overlapping_writes_merge(store, inst):
    frame = candles(random_walk(300, 4))
    bt = bar_type_for(inst.id, "5m")
    store.write_bars(inst, frame.iloc[:200], bt)
    result = store.write_bars(inst, frame.iloc[150:], bt)
    assert (result.rows_new, result.rows_already_present, result.rows_total) == (100, 50, 300)
    assert len(store.read_bars(bt)) == 300


def test_rows_that_contradict_the_catalog_are_refused_not_overwritten(store, inst):
    frame = candles(random_walk(50, 5))
    bt = bar_type_for(inst.id, "5m")
    store.write_bars(inst, frame, bt)
    changed = frame.copy()
    changed.loc[10, "close"] += 1
    with pytest.raises(CatalogConflictError, match="1 rows differ"):
        store.write_bars(inst, changed, bt)
    assert store.read_bars_frame(bt)["close"].iloc[10] == pytest.approx(frame["close"].iloc[10])


def test_funding_round_trips_and_is_idempotent(store, inst):
    funding = pd.DataFrame(
        {"date": pd.date_range("2025-01-01", periods=9, freq="8h", tz="UTC"), "rate": 1e-4}
    )
    assert store.write_funding(inst.id, funding).rows_new == 9
    assert store.write_funding(inst.id, funding).rows_new == 0
    back = store.read_funding_frame(inst.id)
    assert back["rate"].tolist() == pytest.approx([1e-4] * 9)


def test_looking_up_an_instrument_ignores_a_file_another_worker_is_still_writing(store, inst):
    # Parallel ingest: while one worker writes its instrument, another looks up its own. A lookup that
    # read every instrument file met the half-written one ("Parquet file size is 4 bytes") and failed.
    store.write_instrument(inst)
    other = store.path / "data" / "crypto_perpetual" / "OTHERUSDT-PERP.BINANCE"
    other.mkdir(parents=True)
    (other / "1970-01-01T00-00-00-000000000Z_1970-01-01T00-00-00-000000000Z.parquet").write_bytes(b"PAR1")
    assert store.instrument(inst.id) == inst
    assert store.find_instrument("NOSUCHUSDT-PERP.BINANCE") is None


def test_instruments_follow_binances_live_adapter(inst):
    assert str(inst.id) == "TESTUSDT-PERP.BINANCE"
    assert float(inst.margin_init) == 1 and float(inst.margin_maint) == 1
    assert float(inst.maker_fee) == 0.0002 and float(inst.taker_fee) == 0.0005
    assert str(make_instrument("TESTUSDT", 2, 2, "spot").id) == "TESTUSDT.BINANCE"


@pytest.mark.parametrize("values, decimals", [([92759.3, 92819.7], 1), ([0.000123, 1.5], 6), ([5.0, 7.0], 0)])
def test_precision_is_inferred_from_the_data(values, decimals):
    assert infer_precision(np.array(values)) == decimals


def test_precision_looks_at_every_value_so_one_finer_value_is_never_rounded():
    # VET's low of 0.016099 among 0.0161s: a 20,000-value sample of 200,000 prices skipped it, and the
    # catalog stored 0.0161.
    prices = np.full(200_000, 0.0161)
    prices[12_345] = 0.016099
    assert infer_precision(prices) == 6


def test_precision_of_large_prices_is_not_raised_by_float_error():
    # 12345.6789012 * 10**7 is 1.5e-5 off an integer by float64's error alone; it has 7 decimals, not 8.
    assert infer_precision(np.array([12345.6789012, 92760.0574117, 92355.0])) == 7
