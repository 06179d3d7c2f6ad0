"""`qt backtest --out DIR` leaves DIR holding this run's report and nothing of an earlier run's."""

import json
from pathlib import Path

import yaml

from backtests.report import CLM_FILES, REPORT_FILES
from quantum_trader.cli import main

EXIT_BRAIN_TRADES = {"path": "tests.strategies_for_tests:EnterWithAtr"}
EMPTY = {"path": "strategies.empty:Empty"}


def backtest(tmp_path: Path, catalog: Path, out: Path, strategy: dict, **top) -> int:
    config = tmp_path / "bt.yaml"
    data = {"catalog": str(catalog), "universe": {"select": "all"}, "strategies": [strategy], **top}
    config.write_text(yaml.safe_dump(data))
    return main(["backtest", str(config), "--out", str(out), "--no-progress"])


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_second_report_to_the_same_folder_leaves_no_file_of_the_first(walk_catalog, tmp_path):
    out = tmp_path / "out"
    first = {"exit_profile": "default", "report": {"tearsheet": True}}
    assert backtest(tmp_path, walk_catalog, out, EXIT_BRAIN_TRADES, **first) == 0
    assert {"tearsheet.html", "exits.png", "equity.png"} <= set(files(out))
    assert set(files(out)) <= set(REPORT_FILES)
    (out / "notes.txt").write_text("the user's own\n")

    assert backtest(tmp_path, walk_catalog, out, EMPTY, report={"tearsheet": False}) == 0
    assert backtest(tmp_path, walk_catalog, tmp_path / "fresh", EMPTY, report={"tearsheet": False}) == 0
    assert files(out) == sorted([*files(tmp_path / "fresh"), "notes.txt"])
    assert "tearsheet.html" not in files(out) and "exits.png" not in files(out)
    assert json.loads((out / "stats.json").read_text())["trades"] == 0
    assert (out / "notes.txt").read_text() == "the user's own\n"


def test_a_tearsheet_that_fails_is_not_claimed_the_rest_is_written_and_the_run_exits_1(
    walk_catalog, tmp_path, monkeypatch, capsys
):
    def half_written(engine, output_path, title):
        Path(output_path).write_text("<html><body>")
        raise RuntimeError("no plotly")

    monkeypatch.setattr("nautilus_trader.analysis.tearsheet.create_tearsheet", half_written)
    out = tmp_path / "out"
    assert backtest(tmp_path, walk_catalog, out, EMPTY, report={"tearsheet": True}) == 1
    printed = capsys.readouterr()
    assert f"report: {out}/ (stats.json, equity.png, per_symbol.csv, orders/fills/positions)\n" in printed.out
    error = "tearsheet failed: RuntimeError('no plotly')"
    assert f"error: {error}; the rest of the report is written" in printed.err.splitlines()
    assert json.loads((out / "stats.json").read_text())["tearsheet_error"] == error
    assert files(out) == sorted(set(REPORT_FILES) - {"tearsheet.html", "exits.png", *CLM_FILES})
