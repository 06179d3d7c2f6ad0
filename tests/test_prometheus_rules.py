"""The alert rules (configs/prometheus/alerts.yml) and the scrape config, checked by the real promtool.

promtool comes with the Debian package `prometheus` (.ci/services installs it): without it these tests skip,
except under CI=true, where they fail (tests/conftest.py `service_or_skip`). Each rule has its own unit tests in
tests/prometheus/alerts.test.yml (`promtool test rules`), and every metric a rule reads is one the exporter
actor serves.
"""

import re
import subprocess
from pathlib import Path

import yaml

from actors.metrics_exporter import MetricsExporter
from tests.conftest import service_or_skip

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "configs" / "prometheus" / "alerts.yml"
SCRAPE = ROOT / "configs" / "prometheus" / "prometheus.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "alerts.test.yml"


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    binary = service_or_skip("promtool", package="prometheus")
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def alert_rules() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def test_promtool_check_rules_accepts_the_alert_rules():
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def test_promtool_check_config_accepts_the_scrape_example_and_finds_its_rules():
    done = promtool("check", "config", str(SCRAPE))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout


def test_promtool_unit_tests_of_every_rule_pass():
    done = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_rule_has_a_unit_test_that_fires_it_and_one_that_keeps_it_quiet():
    fired, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    rules = set(alert_rules())
    assert {"QtHighDrawdown", "QtEmergencyStopActive", "QtModelsLoadedLow", "QtLowWinRate"} <= rules
    assert {"QtHighDecisionLatency", "QtHighApiLatency", "QtStaleData"} <= rules
    assert fired == rules
    assert quiet == rules


def test_every_metric_a_rule_reads_is_served_by_the_exporter():
    served = set()
    for family in MetricsExporter().registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(
            family.type, ("",)
        )
        served |= {family.name + s for s in suffixes}
    for name, expr in alert_rules().items():
        read = set(re.findall(r"\bqt_[a-z_]+", expr))
        assert read <= served, (name, read - served)
