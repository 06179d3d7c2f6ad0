"""`qt backtest --out DIR` leaves DIR holding this run's report and nothing of an earlier run's."""

import json
from pathlib import Path

import yaml

from backtests.report import REPORT_FILES
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
