"""Specification of the data-quality rules: every removed or repaired row is counted."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from catalog.quality import (
    DataQualityError,
    QualityPolicy,
    QualityReport,
    clean_funding,
    clean_ohlcv,
    inspect_funding,
    inspect_ohlcv,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
T0 = pd.Timestamp("2025-01-01", tz="UTC")
STEP = pd.Timedelta(minutes=5)


def bars(n: int = 6, start: pd.Timestamp = T0, step: pd.Timedelta = STEP) -> pd.DataFrame:
    dates = pd.Series([start + i * step for i in range(n)]).astype("datetime64[ns, UTC]")
    base = np.arange(n, dtype="float64") + 100.0
    return pd.DataFrame(
        {"date": dates, "open": base, "high": base + 2, "low": base - 1, "close": base + 1, "volume": base}
    )


def assert_invariants(out: pd.DataFrame, report: QualityReport) -> None:
    assert report.rows_in == report.rows_out + report.dropped + report.duplicates_dropped
    assert report.rows_out == len(out)
    assert str(out["date"].dtype) == "datetime64[ns, UTC]"
    assert (out["date"].diff().dropna() > pd.Timedelta(0)).all()
    assert not out.isna().any().any()
    prices = out[["open", "high", "low", "close"]]
    assert (prices > 0).all().all() and (out["volume"] >= 0).all()
    top, bottom = out[["open", "close"]].max(axis=1), out[["open", "close"]].min(axis=1)
    assert (out["high"] >= top).all() and (top >= bottom).all() and (bottom >= out["low"]).all()


def clean(df: pd.DataFrame, **policy) -> tuple[pd.DataFrame, QualityReport]:
    out, report = clean_ohlcv(df, "5m", "BTCUSDT", policy=QualityPolicy(**policy))
    assert_invariants(out, report)
    return out, report


# --------------------------------------------------------------------------- clean data


def test_clean_input_passes_through_unchanged():
    df = bars()
    out, report = clean(df)
    pd.testing.assert_frame_equal(out, df)
    assert report.ok() and report.rows_in == report.rows_out == 6
    assert (report.first, report.last) == (T0, T0 + 5 * STEP)
    assert report.gaps == report.missing_bars == 0 and report.largest_gap is None


def test_input_frame_is_never_modified():
    df = bars()
    df.loc[2, "high"] = 50.0
    before = df.copy()
    clean(df)
    pd.testing.assert_frame_equal(df, before)


# --------------------------------------------------------------------------- order and duplicates


def test_out_of_order_rows_are_sorted_and_counted():
    df = bars(6).iloc[[0, 1, 4, 2, 3, 5]]  # one row (index 4) moved earlier
    out, report = clean(df)
    pd.testing.assert_frame_equal(out, bars(6))
    assert report.out_of_order == 1 and not report.ok()


def test_exact_duplicates_are_dropped_and_counted():
    df = pd.concat([bars(4), bars(4).iloc[[1, 2]]], ignore_index=True)
    out, report = clean(df)
    pd.testing.assert_frame_equal(out, bars(4))
    assert report.duplicates_dropped == 2 and report.dropped == 0
    assert report.out_of_order == 2  # the repeats came after later rows


def test_conflicting_duplicates_are_refused_with_a_clear_error():
    other = bars(4).iloc[[2]].assign(close=999.0)
    df = pd.concat([bars(4), other], ignore_index=True)
    with pytest.raises(DataQualityError) as info:
        clean(df)
    message = str(info.value)
    assert "BTCUSDT" in message and "1 timestamp" in message and "different values" in message
    assert str(T0 + 2 * STEP) in message
    assert info.value.rule.startswith("one row per timestamp") and info.value.count == 1


def test_conflicting_duplicates_keep_last_when_the_policy_says_so():
    df = pd.concat([bars(4), bars(4).iloc[[2]].assign(close=103.5)], ignore_index=True)
    out, report = clean(df, on_conflicting_duplicates="keep_last")
    assert out.loc[2, "close"] == 103.5 and len(out) == 4
    assert report.conflicting_duplicates == 1 and report.dropped == 1


# --------------------------------------------------------------------------- invalid rows


@pytest.mark.parametrize(
    ("column", "value", "counter"),
    [
        ("close", np.nan, "nan_rows"),
        ("volume", np.inf, "nan_rows"),
        ("low", 0.0, "nonpositive_rows"),
        ("open", -1.0, "nonpositive_rows"),
        ("volume", -5.0, "nonpositive_rows"),
    ],
)
def test_invalid_rows_are_dropped_and_counted(column, value, counter):
    df = bars(5)
    df.loc[3, column] = value
    out, report = clean(df)
    assert T0 + 3 * STEP not in set(out["date"])
    assert getattr(report, counter) == 1 and report.dropped == 1
    # Dropping a bar leaves a hole, which is reported, not filled.
    assert (report.gaps, report.missing_bars) == (1, 1)


def test_missing_date_is_an_invalid_row():
    df = bars(4)
    df["date"] = df["date"].astype(object)
    df.loc[1, "date"] = None
    out, report = clean(df)
    assert report.nan_rows == 1 and len(out) == 3


def test_zero_volume_is_valid():
    _, report = clean(bars(4).assign(volume=0.0))
    assert report.ok()


@pytest.mark.parametrize(("column", "value", "rule"), [("close", np.nan, "NaN"), ("high", 0.0, "prices > 0")])
def test_invalid_rows_refused_under_error_policy(column, value, rule):
    df = bars(5)
    df.loc[[1, 3], column] = value
    with pytest.raises(DataQualityError, match=rule) as info:
        clean(df, on_invalid_rows="error")
    assert info.value.count == 2 and "BTCUSDT" in str(info.value)
    assert info.value.timestamps[:2] == [str(T0 + STEP), str(T0 + 3 * STEP)]


# --------------------------------------------------------------------------- high / low


def broken_high_low() -> pd.DataFrame:
    df = bars(4)
    df.loc[1, ["high", "low"]] = [95.0, 110.0]  # high < low: swapped columns
    df.loc[2, "high"] = 102.5  # below close (103)
    return df


def test_high_low_violations_are_repaired_and_counted():
    out, report = clean(broken_high_low())
    assert (report.high_low_violations, report.repaired, report.dropped) == (2, 2, 0)
    assert out.loc[1, ["high", "low"]].tolist() == [110.0, 95.0]
    assert out.loc[2, ["high", "low"]].tolist() == [103.0, 101.0]
    assert not report.ok()


def test_high_low_violations_dropped_or_refused_per_policy():
    out, report = clean(broken_high_low(), on_high_low="drop")
    assert (report.high_low_violations, report.dropped, report.repaired, len(out)) == (2, 2, 0, 2)
    with pytest.raises(DataQualityError, match=r"high >= max\(open, close\)") as info:
        clean(broken_high_low(), on_high_low="error")
    assert info.value.count == 2


# --------------------------------------------------------------------------- gaps and alignment


def test_gap_is_reported_with_missing_bar_count_and_not_filled():
    df = bars(10).drop(index=[3, 4, 5, 8]).reset_index(drop=True)
    out, report = clean(df)
    assert len(out) == 6
    assert (report.gaps, report.missing_bars) == (2, 4)
    assert report.largest_gap == 3 * STEP
    assert report.ok()  # gaps alone are not a defect: exchanges have outages


def test_misaligned_bars_are_counted_not_changed():
    df = bars(4)
    df.loc[3, "date"] = df.loc[3, "date"] + pd.Timedelta(minutes=2)
    out, report = clean(df)
    assert report.misaligned == 1 and not report.ok()
    assert out.loc[3, "date"] == T0 + 3 * STEP + pd.Timedelta(minutes=2)


def test_weekly_bars_align_on_mondays():
    monday = pd.Timestamp("2025-01-06", tz="UTC")
    _, report = clean_ohlcv(bars(3, start=monday, step=pd.Timedelta(weeks=1)), "1w", "BTCUSDT")
    assert report.misaligned == 0


# --------------------------------------------------------------------------- everything at once


def test_messy_input_obeys_every_invariant():
    rng = np.random.default_rng(7)
    df = bars(200)
    df = pd.concat([df, df.sample(20, random_state=1)], ignore_index=True)  # exact duplicates
    df.loc[rng.choice(len(df), 5, replace=False), "close"] = np.nan
    df.loc[rng.choice(len(df), 5, replace=False), "open"] = -1.0
    df.loc[rng.choice(len(df), 5, replace=False), "high"] = 1.0
    df = df.sample(frac=1.0, random_state=2)  # shuffle
    out, report = clean(df, on_conflicting_duplicates="keep_last")
    assert report.out_of_order > 0 and report.duplicates_dropped > 0
    assert report.dropped == report.nan_rows + report.nonpositive_rows + report.conflicting_duplicates
    assert report.repaired == report.high_low_violations > 0


def test_report_to_dict_is_json_ready():
    _, report = clean(bars(10).drop(index=[4]))
    data = report.to_dict()
    json.dumps(data)
    assert data["first"] == T0.isoformat() and data["largest_gap_s"] == 300.0 and data["ok"] is True
    assert data["missing_bars"] == 1 and data["symbol"] == "BTCUSDT" and data["interval"] == "5m"


def test_inspect_reports_without_changing_or_raising():
    df = pd.concat([broken_high_low(), broken_high_low().iloc[[0]].assign(close=101.5)], ignore_index=True)
    before = df.copy()
    report = inspect_ohlcv(df, "5m", "BTCUSDT")
    pd.testing.assert_frame_equal(df, before)
    assert report.high_low_violations == 2 and report.conflicting_duplicates == 1 and not report.ok()


def test_policy_values_are_checked():
    with pytest.raises(ValueError, match="on_high_low"):
        QualityPolicy(on_high_low="ignore")


# --------------------------------------------------------------------------- funding


def funding(rates: list[float]) -> pd.DataFrame:
    dates = pd.Series([T0 + i * pd.Timedelta(hours=8) for i in range(len(rates))]).astype(
        "datetime64[ns, UTC]"
    )
    return pd.DataFrame({"date": dates, "rate": rates})


def test_funding_nan_dropped_and_counted():
    out, report = clean_funding(funding([0.0001, np.nan, -0.0002]), "BTCUSDT")
    assert out["rate"].tolist() == [0.0001, -0.0002]
    assert (report.nan_rows, report.dropped, report.rows_out, report.interval) == (1, 1, 2, "8h")
    assert report.rows_in == report.rows_out + report.dropped + report.duplicates_dropped


def test_funding_rate_beyond_five_percent_is_an_error():
    with pytest.raises(DataQualityError, match=r"\|funding rate\| <= 0.05") as info:
        clean_funding(funding([0.0001, 0.2, 0.0001]), "BTCUSDT")
    assert info.value.timestamps == [str(T0 + pd.Timedelta(hours=8))]


def test_funding_interval_switch_is_not_a_gap_but_a_missing_time_is():
    # 8h funding, then the symbol moves to 4h funding; one 4h funding time is missing.
    dates = [T0 + pd.Timedelta(hours=h) for h in (0, 8, 16, 24, 28, 32, 40, 44, 48)]
    df = pd.DataFrame({"date": pd.Series(dates).astype("datetime64[ns, UTC]"), "rate": 0.0001})
    out, report = clean_funding(df, "BTCUSDT")
    assert (report.gaps, report.missing_bars, report.largest_gap) == (1, 1, pd.Timedelta(hours=4))
    fixed = inspect_funding(df, "BTCUSDT", interval="4h")
    assert (fixed.gaps, fixed.interval) == (4, "4h")  # with a fixed 4h yardstick every 8h step is a gap


def test_funding_duplicates_follow_the_same_rules():
    df = pd.concat([funding([0.0001, 0.0002]), funding([0.0001, 0.0003])], ignore_index=True)
    with pytest.raises(DataQualityError, match="different values"):
        clean_funding(df, "BTCUSDT")
    out, report = clean_funding(df, "BTCUSDT", policy=QualityPolicy(on_conflicting_duplicates="keep_last"))
    assert out["rate"].tolist() == [0.0001, 0.0003]
    assert (report.duplicates_dropped, report.conflicting_duplicates) == (1, 1)


def test_funding_stamped_a_few_ms_after_the_hour_is_on_the_hour_and_has_no_gaps():
    # Binance's fundingTime is 1-5 ms after the hour it settles (e.g. 1735689600003).
    late = funding([0.0001] * 7)
    late["date"] += pd.to_timedelta([1, 5, 2, 4, 1, 3, 5], unit="ms")
    out, report = clean_funding(late, "BTCUSDT")
    assert out["date"].tolist() == funding([0.0001] * 7)["date"].tolist()
    assert (report.snapped_to_hour, report.gaps, report.missing_bars, report.interval) == (7, 0, 0, "8h")
    assert report.ok()


def test_a_funding_time_a_second_or_more_off_the_hour_is_kept_as_stamped():
    off = funding([0.0001] * 3)
    off.loc[1, "date"] += pd.Timedelta(seconds=1)
    out, report = clean_funding(off, "BTCUSDT")
    assert out["date"].iloc[1] == T0 + pd.Timedelta(hours=8, seconds=1)
    assert report.snapped_to_hour == 0


def test_two_stamps_of_one_funding_time_are_duplicates_after_snapping():
    twice = pd.concat([funding([0.0001, 0.0002]), funding([0.0001])], ignore_index=True)
    twice.loc[2, "date"] += pd.Timedelta(milliseconds=3)
    out, report = clean_funding(twice, "BTCUSDT")
    assert out["rate"].tolist() == [0.0001, 0.0002]
    assert (report.snapped_to_hour, report.duplicates_dropped) == (1, 1)


# --------------------------------------------------------------------------- real shared data


@pytest.mark.slow
def test_real_shared_data_is_clean():
    if not (SHARED_DATA / "binance").is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it is not part of a user's clone)")
    from catalog.readers import read_paths

    for sf in read_paths([SHARED_DATA / "binance"]):
        if sf.kind == "funding":
            out, report = clean_funding(sf.frame, sf.symbol)
        else:
            out, report = clean_ohlcv(sf.frame, sf.interval, sf.symbol, sf.kind)
            pd.testing.assert_frame_equal(out, sf.frame, obj=sf.source)
        assert report.ok() and report.gaps == 0, report.to_dict()
