"""The `qt` command end to end: generate, check, backtest; errors exit 2 with the reason."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def qt(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "quantum_trader.cli", *map(str, args)], cwd=cwd,
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
