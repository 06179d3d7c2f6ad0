"""Specification of the kline archive downloader, against a local stand-in for data.binance.vision."""

import csv
import hashlib
import io
import threading
import time
import zipfile
from datetime import date
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from catalog.download import (
    DEFAULT_BASE_URL,
    ArchiveRef,
    DownloadError,
    DownloadResult,
    download_klines,
    plan_archives,
)

HEADER = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore"
FAST = {"progress": False, "backoff": 0.0, "timeout": 5.0}


# --------------------------------------------------------------------------- fake site


class FakeSite:
    """A temp directory laid out like data.binance.vision, served over HTTP on 127.0.0.1."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        self.failures: dict[str, list[int]] = {}  # path -> status codes to answer before serving
        self.delays: dict[str, float] = {}
        self.base_url = ""

    def add(self, ref: ArchiveRef, header: bool = True, checksum: str | None = None) -> bytes:
        """Publish `ref` with a small CSV inside; `checksum` overrides the correct sha256."""
        body = _zip_bytes(ref, header)
        path = self.root / ref.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        digest = checksum or hashlib.sha256(body).hexdigest()
        path.with_name(path.name + ".CHECKSUM").write_text(f"{digest}  {ref.filename}\n")
        return body

    def fail(self, ref: ArchiveRef, *codes: int) -> None:
        self.failures["/" + ref.path] = list(codes)

    def count(self, ref: ArchiveRef) -> int:
        return self.requests.count("/" + ref.path)


def _zip_bytes(ref: ArchiveRef, header: bool) -> bytes:
    t0 = 1_735_689_600_000  # 2025-01-01T00:00Z in ms
    rows = [
        [t0 + i * 300_000, "100.0", "101.0", "99.5", "100.5", "12.3", t0 + (i + 1) * 300_000 - 1]
        + ["1236.15", "42", "6.1", "613.0", "0"]
        for i in range(3)
    ]
    text = io.StringIO()
    if header:
        text.write(HEADER + "\n")
    csv.writer(text, lineterminator="\n").writerows(rows)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(ref.filename.replace(".zip", ".csv"), text.getvalue())
    return buf.getvalue()


class _Handler(SimpleHTTPRequestHandler):
    site: FakeSite

    def do_GET(self):
        self.site.requests.append(self.path)
        if delay := self.site.delays.get(self.path):
            time.sleep(delay)
        codes = self.site.failures.get(self.path)
        if codes:
            self.send_error(codes.pop(0))
            return
        super().do_GET()

    def log_message(self, *args):  # keep pytest output clean
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # clients hanging up on purpose (timeout tests) are expected


@pytest.fixture
def site(tmp_path):
    site = FakeSite(tmp_path / "site")
    site.root.mkdir()
    handler = type("Handler", (_Handler,), {"site": site})
    server = _QuietServer(("127.0.0.1", 0), partial(handler, directory=str(site.root)))
    # A short poll interval keeps shutdown (and so each test) fast.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    site.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    yield site
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def dest(tmp_path):
    return tmp_path / "data"


def monthly(symbol: str, year: int, month: int, market: str = "futures") -> ArchiveRef:
    return ArchiveRef(symbol, "5m", market, "monthly", date(year, month, 1))


def daily(symbol: str, day: date, market: str = "futures") -> ArchiveRef:
    return ArchiveRef(symbol, "5m", market, "daily", day)


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


# --------------------------------------------------------------------------- planning


def test_plan_uses_monthly_for_whole_months_and_daily_for_partial_ones():
    refs = plan_archives("BTCUSDT", "5m", date(2025, 1, 15), date(2025, 4, 10), today=date(2025, 6, 1))
    names = [r.filename for r in refs]
    assert names[:17] == [f"BTCUSDT-5m-2025-01-{d:02d}.zip" for d in range(15, 32)]
    assert names[17:19] == ["BTCUSDT-5m-2025-02.zip", "BTCUSDT-5m-2025-03.zip"]
    assert names[19:] == [f"BTCUSDT-5m-2025-04-{d:02d}.zip" for d in range(1, 11)]


def test_plan_urls_follow_the_site_layout():
    fut, spot = (
        plan_archives("ETHUSDT", "1h", date(2024, 2, 1), date(2024, 2, 29), market=m, today=date(2025, 1, 1))
        for m in ("futures", "spot")
    )
    assert fut[0].url() == (
        f"{DEFAULT_BASE_URL}/data/futures/um/monthly/klines/ETHUSDT/1h/ETHUSDT-1h-2024-02.zip"
    )
    assert spot[0].url("http://x/") == "http://x/data/spot/monthly/klines/ETHUSDT/1h/ETHUSDT-1h-2024-02.zip"
    day = plan_archives("ETHUSDT", "1h", date(2024, 2, 3), date(2024, 2, 3), today=date(2025, 1, 1))
    assert day[0].path == "data/futures/um/daily/klines/ETHUSDT/1h/ETHUSDT-1h-2024-02-03.zip"


def test_plan_current_month_goes_daily_and_stops_before_today():
    # Today's archive is only published tomorrow, so the plan ends yesterday.
    refs = plan_archives("BTCUSDT", "5m", date(2025, 3, 1), date(2025, 3, 31), today=date(2025, 3, 15))
    assert [r.period for r in refs] == ["daily"] * 14
    assert refs[-1].day == date(2025, 3, 14)


def test_plan_just_finished_month_stays_daily_until_its_monthly_file_is_published():
    refs = plan_archives("BTCUSDT", "5m", date(2025, 2, 1), date(2025, 2, 28), today=date(2025, 3, 2))
    assert len(refs) == 28 and {r.period for r in refs} == {"daily"}
    later = plan_archives("BTCUSDT", "5m", date(2025, 2, 1), date(2025, 2, 28), today=date(2025, 3, 10))
    assert [r.filename for r in later] == ["BTCUSDT-5m-2025-02.zip"]


def test_plan_entirely_in_the_future_is_empty():
    assert plan_archives("BTCUSDT", "5m", date(2025, 3, 15), date(2025, 4, 1), today=date(2025, 3, 15)) == []


# --------------------------------------------------------------------------- downloading


def publish_range(site: FakeSite, symbol: str) -> list[ArchiveRef]:
    """Feb 2024 monthly (with header) + two daily files of March 2024 (without header)."""
    refs = [monthly(symbol, 2024, 2), daily(symbol, date(2024, 3, 1)), daily(symbol, date(2024, 3, 2))]
    for i, ref in enumerate(refs):
        site.add(ref, header=i == 0)
    return refs


def test_download_writes_verified_archives_under_market_symbol_interval(site, dest):
    btc, eth = publish_range(site, "BTCUSDT"), publish_range(site, "ETHUSDT")
    result = download_klines(
        ["BTCUSDT", "ETHUSDT"], date(2024, 2, 1), date(2024, 3, 2), dest, base_url=site.base_url, **FAST
    )
    expected = [ref.local_path(dest) for ref in btc + eth]
    assert result == DownloadResult(downloaded=expected, skipped=[], missing=[])
    assert expected[0] == dest / "futures" / "BTCUSDT" / "5m" / "BTCUSDT-5m-2024-02.zip"
    for ref in btc + eth:
        assert ref.local_path(dest).read_bytes() == (site.root / ref.path).read_bytes()
    assert files_under(dest) == sorted(expected)  # no temp files left over
    with zipfile.ZipFile(expected[0]) as zf:
        assert zf.read("BTCUSDT-5m-2024-02.csv").decode().startswith("open_time,")


def test_dates_may_be_iso_strings_and_symbols_lower_case(site, dest):
    ref = daily("BTCUSDT", date(2024, 3, 1))
    site.add(ref)
    result = download_klines("btcusdt", "2024-03-01", "2024-03-01", dest, base_url=site.base_url, **FAST)
    assert result.downloaded == [ref.local_path(dest)]


def test_second_run_skips_verified_files_without_downloading_them_again(site, dest):
    refs = publish_range(site, "BTCUSDT")
    args = (["BTCUSDT"], date(2024, 2, 1), date(2024, 3, 2), dest)
    download_klines(*args, base_url=site.base_url, **FAST)
    again = download_klines(*args, base_url=site.base_url, **FAST)
    assert again.downloaded == [] and again.missing == []
    assert again.skipped == [ref.local_path(dest) for ref in refs]
    assert all(site.count(ref) == 1 for ref in refs)


def test_local_file_that_fails_its_checksum_is_downloaded_again(site, dest):
    ref = daily("BTCUSDT", date(2024, 3, 1))
    body = site.add(ref)
    target = ref.local_path(dest)
    target.parent.mkdir(parents=True)
    target.write_bytes(body[:-10])  # e.g. truncated by a crash outside this tool
    result = download_klines(
        ["BTCUSDT"], date(2024, 3, 1), date(2024, 3, 1), dest, base_url=site.base_url, **FAST
    )
    assert result.downloaded == [target] and target.read_bytes() == body


def test_checksum_mismatch_retries_then_raises_and_keeps_nothing(site, dest):
    ref = daily("BTCUSDT", date(2024, 3, 1))
    site.add(ref, checksum="0" * 64)
    with pytest.raises(DownloadError, match=r"checksum mismatch for BTCUSDT-5m-2024-03-01\.zip"):
        download_klines(
            ["BTCUSDT"], date(2024, 3, 1), date(2024, 3, 1), dest, base_url=site.base_url, retries=2, **FAST
        )
    assert site.count(ref) == 3
    assert files_under(dest) == []


def test_archives_the_server_lacks_are_reported_missing(site, dest):
    # Listed mid-March: January and February are not on the server.
    ref = daily("NEWUSDT", date(2024, 3, 20))
    site.add(ref)
    result = download_klines(
        ["NEWUSDT"], date(2024, 1, 1), date(2024, 3, 20), dest, base_url=site.base_url, **FAST
    )
    assert result.downloaded == [ref.local_path(dest)]
    assert result.missing[:2] == [monthly("NEWUSDT", 2024, m).url(site.base_url) for m in (1, 2)]
    assert len(result.missing) == 2 + 19  # plus March 1..19


def test_symbol_with_no_archives_at_all_is_an_error(site, dest):
    btc = publish_range(site, "BTCUSDT")
    with pytest.raises(DownloadError, match="no futures 5m archives found for BTCUSDTT") as err:
        download_klines(
            ["BTCUSDT", "BTCUSDTT"], date(2024, 2, 1), date(2024, 3, 2), dest, base_url=site.base_url, **FAST
        )
    # What did exist is kept and reported, so fixing the typo and re-running resumes.
    assert err.value.result.downloaded == [ref.local_path(dest) for ref in btc]


def test_a_failed_request_is_retried(site, dest):
    ref = daily("BTCUSDT", date(2024, 3, 1))
    site.add(ref)
    site.fail(ref, 500)
    result = download_klines(
        ["BTCUSDT"], date(2024, 3, 1), date(2024, 3, 1), dest, base_url=site.base_url, **FAST
    )
    assert result.downloaded == [ref.local_path(dest)]
    assert site.count(ref) == 2


def test_persistent_server_errors_raise_naming_the_url(site, dest):
    ref = daily("BTCUSDT", date(2024, 3, 1))
    site.add(ref)
    site.fail(ref, 503, 503, 503)
    with pytest.raises(DownloadError, match=r"BTCUSDT-5m-2024-03-01\.zip: HTTP 503 .*after 3 attempts"):
        download_klines(
            ["BTCUSDT"], date(2024, 3, 1), date(2024, 3, 1), dest, base_url=site.base_url, retries=2, **FAST
        )
    assert files_under(dest) == []


def test_client_errors_other_than_404_fail_at_once(site, dest):
    ref = daily("BTCUSDT", date(2024, 3, 1))
    site.add(ref)
    site.fail(ref, 403)
    with pytest.raises(DownloadError, match="HTTP 403"):
        download_klines(["BTCUSDT"], date(2024, 3, 1), date(2024, 3, 1), dest, base_url=site.base_url, **FAST)
    assert site.count(ref) == 1


def test_timeouts_are_retried_then_raise(site, dest):
    ref = daily("BTCUSDT", date(2024, 3, 1))
    site.add(ref)
    site.delays["/" + ref.path] = 1.0
    with pytest.raises(DownloadError, match=r"BTCUSDT-5m-2024-03-01\.zip: .*timed out.*after 2 attempts"):
        download_klines(
            ["BTCUSDT"], "2024-03-01", "2024-03-01", dest, base_url=site.base_url, retries=1, progress=False,
            backoff=0.0, timeout=0.2,
        )  # fmt: skip
    assert files_under(dest) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": date(2024, 3, 2), "end": date(2024, 3, 1)}, "start 2024-03-02 is after end 2024-03-01"),
        ({"start": "2024-13-01"}, "start '2024-13-01' is not a date; use YYYY-MM-DD"),
        ({"symbols": ["BTC-USDT"]}, "symbol 'BTC-USDT' is not a Binance symbol"),
        ({"symbols": []}, "symbols is empty"),
        ({"interval": "7m"}, "interval '7m' is not supported; choose one of: 1m, 3m, 5m, 15m"),
        ({"market": "margin"}, "market 'margin' is not supported; choose one of: futures, spot"),
        ({"retries": -1}, "retries must be >= 0"),
        ({"start": date(2999, 1, 1), "end": date(2999, 1, 2)}, "start 2999-01-01 is not before today"),
    ],
)
def test_bad_arguments_are_rejected_before_any_request(site, dest, kwargs, message):
    args = {"symbols": ["BTCUSDT"], "start": date(2024, 3, 1), "end": date(2024, 3, 1), "dest": dest}
    with pytest.raises(ValueError, match=message):
        download_klines(**(args | kwargs), base_url=site.base_url, **FAST)
    assert site.requests == []


def test_progress_bar_reports_to_stderr(site, dest, capsys):
    site.add(daily("BTCUSDT", date(2024, 3, 1)))
    download_klines(["BTCUSDT"], "2024-03-01", "2024-03-01", dest, base_url=site.base_url, backoff=0.0)
    assert "1/1" in capsys.readouterr().err
