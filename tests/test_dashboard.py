"""The operator dashboard (actors/dashboard.html, served by the control API at GET /dashboard) in a real
headless Chromium (Debian `chromium` + `chromedriver`, driven by selenium; no browser is downloaded).

One `qt live` node trades on the local fake exchange (tests/fake_session.py) with the ControlApi actor on a
free port and a sentinel admin token in its environment. The strategy enters at once and its Exit Brain rests a
stop and two take-profits; a stand-in actor publishes what an ML node adds (a decision batch with per-model
votes on every bar, the health monitor's roll-up). The browser opens `/dashboard#token=<sentinel>` and must
show the position with its PnL and exit levels, the signal feed, the risk panel and the equity curve; a
screenshot is kept in `test-output/dashboard.png`. A page with a wrong token shows the unauthorized message and
no data. The token is never in the served page, the address bar, the DOM, the console or the node's output.
"""

import re
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from nautilus_trader.common.actor import Actor
from nautilus_trader.config import ActorConfig
from nautilus_trader.model.data import Bar, BarType, DataType

from quantum_trader.events import BarCloseSignals, HealthEvent
from tests.conftest import build_catalog, candles, free_port, service_or_skip
from tests.fake_session import live_session

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "actors" / "dashboard.html"
SCREENSHOT = ROOT / "test-output" / "dashboard.png"
TOKEN_ENV = "QT_DASHBOARD_TEST_TOKEN"
TOKEN = "SENTINELTOKENd4sh"
HISTORY = 20
ATR = 1.0  # in price; with the exit profile below: stop 99, take-profits 102 and 104 for an entry at 100
EXIT_PROFILE = {
    "name": "dashboard",
    "r_atr": 1.0,
    "stop_r": 1.0,
    "max_stop_r": 1.5,
    "take_profits": [{"r": 2.0, "fraction": 0.5}, {"r": 4.0, "fraction": 0.5}],
    "trailing_atr": None,
}
VOTES = {"xgboost": 0.9, "lightgbm": 0.6}
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1500,1250",
)  # fmt: skip


class StandInConfig(ActorConfig, frozen=True):
    bar_types: tuple[str, ...] = ()  # the node injects its bar types


class StandIn(Actor):
    """What an ML node adds to this test's simple one: on every bar the decision batch the EnsembleStrategy
    would publish (LONG, two models voting), and the health monitor's HEALTHY roll-up."""

    def on_start(self) -> None:
        for bar_type in self.config.bar_types:
            self.subscribe_bars(BarType.from_str(bar_type))

    def on_bar(self, bar: Bar) -> None:
        now = self.clock.timestamp_ns()
        batch = BarCloseSignals(
            ts_event=bar.ts_event,
            ts_init=now,
            instrument_ids=[bar.bar_type.instrument_id],
            direction=np.array([1], dtype=np.int8),
            confidence=np.array([0.74]),
            prob_up=np.array([0.66]),
            forecast=np.array([0.001]),
            votes={kind: np.array([vote]) for kind, vote in VOTES.items()} | {"nhits": np.array([np.nan])},
            model_ids="xgboost-test,lightgbm-test",
            features_hash="test",
        )
        self.publish_data(DataType(BarCloseSignals), batch)
        health = HealthEvent(component="system", status="ok", level="HEALTHY", ts_event=now, ts_init=now)
        self.publish_data(DataType(HealthEvent), health)


def test_the_served_page_is_self_contained_and_holds_no_data():
    html = PAGE.read_text()
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html, re.I), "an external resource"
    assert not re.search(r"@import|url\(\s*[\"']?(https?:)?//", html, re.I), "an external stylesheet or font"
    assert "fetch(" in html and "Authorization" in html and "sessionStorage" in html
    assert "innerHTML" not in html  # every value from the API goes in as text


def chromium():
    """Headless Debian chromium through its chromedriver (never Selenium Manager: it would download one)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = service_or_skip("chromium", "chromium")
    driver_path = service_or_skip("chromedriver", "chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='qt-chromium-')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


def wait_for(driver, condition, what: str, timeout: float = 20):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d))
    except Exception as err:
        raise AssertionError(f"the page never showed {what}; it shows:\n{body_text(driver)}") from err


def body_text(driver) -> str:
    return driver.find_element("tag name", "body").text


def texts(driver, css: str) -> list[str]:
    return [e.text for e in driver.find_elements("css selector", css)]


def node_config(port: int) -> dict:
    return {
        "name": "dashboard",
        "trader_id": "DASH-001",
        "symbols": ["BTCUSDT"],
        "redis": {"enabled": False},
        "reconciliation": {"startup_delay_secs": 0},
        "timeouts": {"connection": 15, "reconciliation": 10, "disconnection": 2, "post_stop": 0.5},
        "strategies": [
            {
                "path": "tests.strategies_for_tests:EnterWhenFlat",
                "config": {"notional_usd": 1000, "atr": ATR, "exit_profile": EXIT_PROFILE},
            }
        ],
        "actors": [
            {"path": "tests.test_dashboard:StandIn"},
            {
                "path": "actors.control_api:ControlApi",
                "config": {"port": port, "token_env": TOKEN_ENV, "risk_profile": "moderate"},
            },
        ],
    }


def test_the_dashboard_shows_a_live_fake_exchange_session_and_nothing_without_the_token(
    tmp_path, monkeypatch
):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    driver = chromium()
    closes = np.concatenate([np.full(HISTORY, 100.0), np.round(np.linspace(100.0, 101.0, 11), 4)])
    build_catalog(tmp_path / "catalog", {"BTCUSDT": candles(closes)})
    start = pd.Timestamp("2025-01-01", tz="UTC") + pd.Timedelta(minutes=5 * HISTORY)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        with live_session(tmp_path, tmp_path / "catalog", ["BTCUSDT"], start, node_config(port)) as session:
            session.wait_until(
                lambda st: "btcusdt@kline_5m" in st["subscriptions"], "the node subscribed", 30
            )
            session.step(1)  # the strategy enters on the first bar; the Exit Brain rests the stop and the TPs
            session.wait_until(
                lambda st: st["open_algo_orders"] and len(st["open_orders"]) == 2, "the entry's exits rest"
            )
            session.step(3)  # the price rises: an unrealised profit, and equity samples for the curve
            with urllib.request.urlopen(f"{base}/dashboard", timeout=5) as answer:
                served = answer.read().decode()
                csp = answer.headers["Content-Security-Policy"]

            driver.get(f"{base}/dashboard#token={TOKEN}")
            wait_for(driver, lambda d: texts(d, "#positions-body tr.position-row"), "an open position")
            wait_for(driver, lambda d: len(texts(d, "#signals-body tr.signal-row")) >= 2, "signal rows")
            wait_for(
                driver,
                lambda d: len(d.find_element("css selector", "#equity-chart polyline").get_attribute("points").split())
                >= 2,
                "an equity curve",
            )  # fmt: skip
            wait_for(driver, lambda d: d.find_element("id", "risk-equity").text != "—", "the equity")
            position = driver.find_elements("css selector", "#positions-body tr.position-row")[0]
            cells = [c.text for c in position.find_elements("tag name", "td")]
            signal = texts(driver, "#signals-body tr.signal-row")[0]
            risk = {
                name: driver.find_element("id", f"risk-{name}").text
                for name in ("equity", "drawdown", "exposure", "ess", "state")
            }
            limits = driver.find_element("id", "risk-limits").text
            health = driver.find_element("id", "health-level").text
            address = driver.current_url
            dom = driver.page_source
            stored = driver.execute_script("return sessionStorage.getItem('qt_admin_token')")
            SCREENSHOT.parent.mkdir(exist_ok=True)
            assert driver.save_screenshot(str(SCREENSHOT))
            print(f"dashboard screenshot: {SCREENSHOT}")

            # a fresh browser session (empty sessionStorage) with a wrong token
            driver.delete_all_cookies()
            driver.execute_script("sessionStorage.clear()")
            driver.get(f"{base}/dashboard#token=wrong-{TOKEN[::-1]}")
            wait_for(driver, lambda d: d.find_element("id", "unauthorized").is_displayed(), "the refusal")
            refused_text = body_text(driver)
            refused_rows = texts(driver, "#positions-body tr, #signals-body tr, #models-body tr")
            refused_curve = driver.find_elements("css selector", "#equity-chart polyline, #equity-chart text")
            refused_equity = driver.find_element("id", "risk-equity").get_attribute("textContent")
            assert driver.save_screenshot(str(SCREENSHOT.with_name("dashboard-unauthorized.png")))

            # the password field: the right token typed in brings the data back, and leaves the field empty
            driver.find_element("id", "token-input").send_keys(TOKEN)
            driver.find_element("css selector", "#auth button[type=submit]").click()
            wait_for(driver, lambda d: texts(d, "#positions-body tr.position-row"), "the position again")
            typed_field = driver.find_element("id", "token-input").get_attribute("value")
            typed_dom = driver.page_source
            typed_banner = driver.find_element("id", "unauthorized").is_displayed()
            console = driver.get_log("browser")
            session.stop(timeout=30)
            output = session.output()
    finally:
        driver.quit()

    symbol, side, qty, entry, last, upnl, _, _, stop, take_profits, _ = cells
    assert (symbol, side) == ("BTCUSDT", "LONG")
    assert float(qty.replace(",", "")) == pytest.approx(10.0)  # 1000 USDT at 100
    assert float(entry) == pytest.approx(100.0, abs=0.5) and float(last) > float(entry)
    assert re.fullmatch(r"\+\d+\.\d\d", upnl), upnl  # a profit on the rise
    assert float(stop) == pytest.approx(float(entry) - ATR, abs=0.01)
    assert [float(tp) for tp in take_profits.split(" / ")] == pytest.approx(
        [float(entry) + 2 * ATR, float(entry) + 4 * ATR], abs=0.01
    )
    assert "BTCUSDT" in signal and "LONG" in signal and "0.74" in signal
    assert "xgboost +0.90" in signal and "lightgbm +0.60" in signal and "nhits" not in signal
    assert float(risk["equity"].replace(",", "")) > 0
    assert risk["drawdown"].endswith("%") and float(risk["exposure"].rstrip("%")) > 0
    assert (risk["ess"], risk["state"]) == ("armed", "ACTIVE")
    assert "daily drawdown\n15.00%" in limits  # the moderate profile's limits, as percent of equity
    assert health == "HEALTHY"

    assert "Unauthorized: wrong or missing token" in refused_text
    assert refused_rows == [] and refused_curve == [] and refused_equity == "—"
    assert not re.search(r"\d\d,\d\d\d\.\d\d", refused_text)  # no equity-sized number anywhere

    # the token lives in sessionStorage only: not in the page as served, the address bar, the DOM, the console
    assert stored == TOKEN
    assert "#token" not in address and TOKEN not in address
    assert TOKEN not in served and TOKEN not in dom and TOKEN not in typed_dom
    assert typed_field == "" and not typed_banner
    assert "connect-src 'self'" in csp
    assert not [entry for entry in console if TOKEN in entry["message"]]
    assert "SENTINEL" not in output
    assert "[ERROR]" not in output, [line for line in output.splitlines() if "[ERROR]" in line]
