"""Tests that need a real service (redis-server, ...) run in CI: there a missing service fails, never skips."""

import pytest

from tests.conftest import service_or_skip


def test_a_missing_service_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-such-server is not installed .* under CI=true"):
        service_or_skip("no-such-server", package="no-such-package")


def test_a_missing_service_skips_outside_ci_and_says_how_to_install_it(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install no-such-package"):
        service_or_skip("no-such-server", package="no-such-package")


def test_an_installed_service_is_found(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert service_or_skip("sh", package="dash").endswith("/sh")
