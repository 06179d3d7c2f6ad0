"""The `qt` command end to end: generate, check, backtest; errors exit 2 with the reason."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from quantum_trader.cli import main

ROOT = Path(__file__).resolve().parents[1]


def qt(*args, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, "-m", "quantum_trader.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_generate_check_and_backtest_from_the_command_line(tmp_path):
    catalog = tmp_path / "cat"
    assert (
        qt("data", "generate", "--symbols", 3, "--days", 3, "--seed", 5, "--catalog", catalog).returncode == 0
    )
    check = qt("data", "check", "--catalog", catalog, "--strict")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SYN00USDT-PERP.BINANCE" in check.stdout
    cfg = yaml.safe_load((ROOT / "configs/backtests/demo_ema_cross.yaml").read_text())
    cfg["report"] = {"tearsheet": False}
    (tmp_path / "bt.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    res = qt("backtest", tmp_path / "bt.yaml", "--catalog", catalog, "--out", out, "--no-progress")
    assert res.returncode == 0, res.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert stats["trades"] > 0 and len(stats["symbols"]) == 3
    assert "total_return" in res.stdout


def test_a_bad_config_exits_2_and_names_the_field(tmp_path):
    (tmp_path / "bad.yaml").write_text(
        "strategies: [{path: 'strategies.ema_cross:EmaCross'}]\nvenue: {fill_timing: now}\n"
    )
    res = qt("backtest", tmp_path / "bad.yaml")
    assert res.returncode == 2
    assert "venue.fill_timing" in res.stderr and "next_bar_close" in res.stderr


def test_a_strategy_module_with_a_syntax_error_exits_2_with_one_line_naming_its_file_and_line(tmp_path):
    (tmp_path / "qt_cli_broken.py").write_text("PERIODS = (3, 5\n")
    (tmp_path / "bt.yaml").write_text("strategies: [{path: 'qt_cli_broken:Broken'}]\n")
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    res = qt("backtest", tmp_path / "bt.yaml", env=os.environ | {"PYTHONPATH": path})
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"error: invalid config {tmp_path}/bt.yaml:",
        "  strategies.0.path: Value error, cannot import module 'qt_cli_broken': "
        f"{tmp_path}/qt_cli_broken.py:1: SyntaxError: '(' was never closed (got 'qt_cli_broken:Broken')",
    ]


@pytest.mark.parametrize(
    "command",
    [
        ["data", "check"],
        ["backtest", ROOT / "configs/backtests/demo_ema_cross.yaml"],
        ["signals", ROOT / "configs/backtests/demo_ensemble.yaml"],
        ["train", ROOT / "configs/train/demo.yaml"],
        ["walkforward", ROOT / "configs/walkforward/demo.yaml"],
    ],
    ids=lambda command: command[0] if command[0] != "data" else "data check",
)
def test_a_command_that_reads_a_catalog_refuses_a_missing_one_and_creates_nothing(command, tmp_path, capsys):
    typo = tmp_path / "catlog"
    out = ["--out", tmp_path / "out"] if command[0] in ("backtest", "train", "walkforward") else []
    assert main([*map(str, command), "--catalog", str(typo), *map(str, out)]) == 2
    assert sorted(tmp_path.iterdir()) == []
    assert capsys.readouterr().err == f"error: no catalog at {typo}: no such directory\n"
