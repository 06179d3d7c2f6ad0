"""Download Binance's public kline archives (data.binance.vision) into a local folder.

Files land in `dest/{market}/{SYMBOL}/{interval}/` under their archive names, so `qt data ingest`
can read them later. Every zip is checked against the `.CHECKSUM` published next to it before it
is kept, which also makes re-runs cheap: files already present and verified are skipped.
Only the standard library does HTTP, so nothing beyond the project's dependencies is needed.
"""

from __future__ import annotations

import calendar
import hashlib
import http.client
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://data.binance.vision"
INTERVALS = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d")
MARKETS = {"futures": "data/futures/um", "spot": "data/spot"}
SYMBOL_RE = re.compile(r"^[A-Z0-9]+$")

# Binance publishes a month's archive a day or two after the month ends; until then the month
# is planned as daily files, which exist from the day after each day.
MONTHLY_PUBLISH_DELAY = timedelta(days=3)

_CHUNK = 1 << 20
_USER_AGENT = "quantum-trader/0.1 (+kline archive downloader)"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(RuntimeError):
    """A download that cannot complete. The message names the URL or file and what went wrong.

    `result` holds what was achieved before the failure, when there is something to report.
    """

    def __init__(self, message: str, result: DownloadResult | None = None):
        super().__init__(message)
        self.result = result


@dataclass
class DownloadResult:
    downloaded: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # already present with a valid checksum
    missing: list[str] = field(default_factory=list)  # URLs the server answered 404 for


@dataclass(frozen=True)
class ArchiveRef:
    """One archive on the server: a whole month (`day` is the 1st) or a single day."""

    symbol: str
    interval: str
    market: str
    period: Literal["monthly", "daily"]
    day: date

    @property
    def filename(self) -> str:
        stamp = self.day.strftime("%Y-%m") if self.period == "monthly" else self.day.isoformat()
        return f"{self.symbol}-{self.interval}-{stamp}.zip"

    @property
    def path(self) -> str:
        root = MARKETS[self.market]
        return f"{root}/{self.period}/klines/{self.symbol}/{self.interval}/{self.filename}"

    def url(self, base_url: str = DEFAULT_BASE_URL) -> str:
        return f"{base_url.rstrip('/')}/{self.path}"

    def local_path(self, dest: Path) -> Path:
        return Path(dest) / self.market / self.symbol / self.interval / self.filename


# --------------------------------------------------------------------------- validation


def _check_symbol(symbol: str) -> str:
    # Binance URLs are case-sensitive and always upper case; accept `btcusdt` as the obvious intent.
    norm = symbol.strip().upper() if isinstance(symbol, str) else symbol
    if not isinstance(norm, str) or not SYMBOL_RE.match(norm):
        raise ValueError(
            f"symbol {symbol!r} is not a Binance symbol: use letters and digits only, e.g. BTCUSDT"
        )
    return norm


def _check_choice(name: str, value: str, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name} {value!r} is not supported; choose one of: {', '.join(allowed)}")
    return value


def _as_date(name: str, value: date | str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{name} {value!r} is not a date; use YYYY-MM-DD") from None


def _check_range(start: date | str, end: date | str) -> tuple[date, date]:
    start, end = _as_date("start", start), _as_date("end", end)
    if start > end:
        raise ValueError(f"start {start} is after end {end}; start must be on or before end")
    return start, end


def _utc_today() -> date:
    # Archives are cut at UTC midnight, so "today" must be the UTC date, not the local one.
    return datetime.now(UTC).date()


# --------------------------------------------------------------------------- planning


def _month_end(first: date) -> date:
    return first.replace(day=calendar.monthrange(first.year, first.month)[1])


def _days(first: date, last: date) -> Iterator[date]:
    for offset in range((last - first).days + 1):
        yield first + timedelta(days=offset)


def plan_archives(
    symbol: str,
    interval: str,
    start: date | str,
    end: date | str,
    market: str = "futures",
    today: date | None = None,
) -> list[ArchiveRef]:
    """Archives covering [start, end]: monthly files for whole, published months, daily otherwise.

    Days from `today` (UTC) on have no archive yet and are left out, so a range reaching into
    the future plans only what can exist.
    """
    symbol = _check_symbol(symbol)
    _check_choice("interval", interval, INTERVALS)
    _check_choice("market", market, MARKETS)
    start, end = _check_range(start, end)
    today = today or _utc_today()
    last_day = min(end, today - timedelta(days=1))

    refs: list[ArchiveRef] = []
    month = start.replace(day=1)
    while month <= last_day:
        month_end = _month_end(month)
        first, last = max(start, month), min(last_day, month_end)
        whole = first == month and last == month_end
        if whole and today > month_end + MONTHLY_PUBLISH_DELAY:
            refs.append(ArchiveRef(symbol, interval, market, "monthly", month))
        else:
            refs.extend(ArchiveRef(symbol, interval, market, "daily", d) for d in _days(first, last))
        month = month_end + timedelta(days=1)
    return refs


# --------------------------------------------------------------------------- HTTP


class _NotFound(Exception):
    """404: the archive does not exist (not listed yet, delisted, or not published)."""


class _Transient(Exception):
    """Worth another attempt: 5xx, 429, timeouts, dropped connections, checksum mismatch."""


def _open(url: str, timeout: float):
    try:
        return urlopen(Request(url, headers={"User-Agent": _USER_AGENT}), timeout=timeout)
    except HTTPError as exc:
        exc.close()
        if exc.code == 404:
            raise _NotFound(url) from None
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
        # Other 4xx (403, 400, ...) will not change on retry; say so at once.
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None


_NETWORK_ERRORS = (URLError, TimeoutError, ConnectionError, http.client.HTTPException)


def _with_retries[T](action: Callable[[], T], url: str, attempts: int, backoff: float) -> T:
    """Run `action`, retrying transient failures with exponential backoff, then DownloadError."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except (_Transient, *_NETWORK_ERRORS) as exc:
            reason = str(getattr(exc, "reason", exc)) or type(exc).__name__
            if attempt == attempts:
                raise DownloadError(f"{url}: {reason} (gave up after {attempts} attempts)") from exc
            delay = backoff * 2 ** (attempt - 1)
            log.warning("%s: %s; retrying in %.1fs (attempt %d/%d)", url, reason, delay, attempt, attempts)
            time.sleep(delay)
    raise AssertionError("unreachable")  # attempts >= 1 is validated by the caller


def _fetch_checksum(url: str, timeout: float) -> str:
    with _open(url, timeout) as resp:
        text = resp.read().decode("ascii", errors="replace").strip()
    digest = text.split()[0].lower() if text else ""
    if not _SHA256_RE.match(digest):
        raise DownloadError(
            f"{url}: malformed checksum file (expected '<sha256>  <name>', got {text[:80]!r})"
        )
    return digest


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fetch_verified(url: str, target: Path, expected: str, timeout: float) -> None:
    """Stream `url` to a hidden temp file beside `target`; rename into place only if it verifies.

    The rename is atomic, so `target` is either absent or complete and verified; an interrupted
    run leaves at most a hidden `.part` file that ingest's `*.zip` globs do not see.
    """
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, _open(url, timeout) as resp:
            while chunk := resp.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != expected:
            raise _Transient(f"checksum mismatch for {target.name}: expected {expected}, got {h.hexdigest()}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- download


def _download_one(
    ref: ArchiveRef, dest: Path, base_url: str, attempts: int, backoff: float, timeout: float
) -> Literal["downloaded", "skipped"]:
    url = ref.url(base_url)
    expected = _with_retries(lambda: _fetch_checksum(url + ".CHECKSUM", timeout), url, attempts, backoff)
    target = ref.local_path(dest)
    if target.is_file():
        if _sha256_file(target) == expected:
            return "skipped"
        log.warning("%s does not match its published checksum; downloading it again", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _with_retries(lambda: _fetch_verified(url, target, expected, timeout), url, attempts, backoff)
    return "downloaded"


def _validated_plans(
    symbols: Iterable[str] | str, start: date | str, end: date | str, interval: str, market: str
) -> dict[str, list[ArchiveRef]]:
    # Validate everything before the first request, so a typo costs no network time.
    if isinstance(symbols, str):
        symbols = [symbols]
    names = list(dict.fromkeys(_check_symbol(s) for s in symbols))
    if not names:
        raise ValueError("symbols is empty; give at least one symbol, e.g. BTCUSDT")
    plans = {s: plan_archives(s, interval, start, end, market) for s in names}
    if not any(plans.values()):
        raise ValueError(
            f"start {start} is not before today (UTC); Binance publishes each day's archive the day after"
        )
    return plans


def download_klines(
    symbols: Iterable[str] | str,
    start: date | str,
    end: date | str,
    dest: Path | str,
    interval: str = "5m",
    market: str = "futures",
    base_url: str = DEFAULT_BASE_URL,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 30.0,
    *,
    backoff: float = 1.0,
) -> DownloadResult:
    """Download and verify kline archives for `symbols` over [start, end] into `dest`.

    `retries` is the number of extra attempts after a transient failure (5xx, 429, timeout,
    dropped connection, checksum mismatch); waits grow as backoff, 2*backoff, 4*backoff seconds.
    Archives the server lacks (404) go to `missing`; a symbol with no archive at all raises
    DownloadError, since that is almost always a misspelt or wrong-market symbol.
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    plans = _validated_plans(symbols, start, end, interval, market)
    dest = Path(dest)
    result = DownloadResult()
    empty: list[str] = []

    total = sum(len(refs) for refs in plans.values())
    # Route log records through tqdm so warnings do not tear the progress bar apart.
    redirect = logging_redirect_tqdm() if progress else nullcontext()
    with redirect, tqdm(total=total, unit="file", desc="klines", disable=not progress) as bar:
        for symbol, refs in plans.items():
            bar.set_postfix_str(symbol)
            found = _download_symbol(refs, dest, base_url, retries + 1, backoff, timeout, result, bar)
            if not found:
                empty.append(symbol)

    if empty:
        raise DownloadError(
            f"no {market} {interval} archives found for {', '.join(empty)} between {start} and {end} "
            f"at {base_url}: check the symbol is spelled right, is traded on {market}, "
            "and was listed in that period",
            result,
        )
    return result


def _download_symbol(
    refs: list[ArchiveRef],
    dest: Path,
    base_url: str,
    attempts: int,
    backoff: float,
    timeout: float,
    result: DownloadResult,
    bar: tqdm,
) -> int:
    """Fetch one symbol's archives into `result`; returns how many exist on the server."""
    found = 0
    missing_before = len(result.missing)
    for ref in refs:
        try:
            outcome = _download_one(ref, dest, base_url, attempts, backoff, timeout)
        except _NotFound:
            result.missing.append(ref.url(base_url))
            log.info("not on server (404): %s", ref.url(base_url))
        else:
            found += 1
            bucket = result.downloaded if outcome == "downloaded" else result.skipped
            bucket.append(ref.local_path(dest))
        bar.update(1)
    if found and len(result.missing) > missing_before:
        n = len(result.missing) - missing_before
        log.warning("%s: %d of %d archives not on server (e.g. before listing)", refs[0].symbol, n, len(refs))
    return found
