# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
PY ?= python3.12
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/qt: pyproject.toml requirements.lock
	@command -v $(PY) >/dev/null 2>&1 || { echo "Python 3.12 is required ($(PY) not found; with pyenv, .python-version selects it: use PY=python)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	@touch $(BIN)/qt

.PHONY: setup demo test lint bench test-restart
setup: $(BIN)/qt

demo: setup
	$(BIN)/qt demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/pytest -q

# The kill -9 restart recovery test alone (tests/test_live_restart.py; needs redis-server), 10 cycles by default
# (the issue's done-criterion; `make test` runs it with 3): `make test-restart CYCLES=20` for more.
CYCLES ?= 10
test-restart: setup
	QT_RESTART_CYCLES=$(CYCLES) $(BIN)/pytest -q -s tests/test_live_restart.py

bench: setup
	$(BIN)/python benchmarks/run_all.py
