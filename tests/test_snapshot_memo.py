"""Remembering unpickled position snapshots changes no fill and no PnL, and unpickles each snapshot once."""

import backtests.runner as runner
from backtests.config import parse_backtest_config
from backtests.report import write_report
from backtests.runner import run_backtest
from quantum_trader import snapshot_memo


def flipping_run(walk_catalog, tmp_path, name: str):
    cfg = parse_backtest_config(
        {
            "catalog": str(walk_catalog),
            "universe": {"select": "all"},
            # 3/8 crosses flip each symbol often: many re-opened NETTING positions, so many snapshots
            "strategies": [
                {"path": "strategies.ema_cross:EmaCross", "config": {"fast_period": 3, "slow_period": 8}}
            ],
            "report": {"tearsheet": False},
        }
    )
    result = run_backtest(cfg, progress=False)
    return result, write_report(result, tmp_path / name)


def test_the_memo_gives_the_same_fills_and_pnl_and_unpickles_each_snapshot_once(
    walk_catalog, tmp_path, monkeypatch
):
    with monkeypatch.context() as plain:
        plain.setattr(runner, "memoize_position_snapshots", snapshot_memo.forget_position_snapshots)
        snapshot_memo.forget_position_snapshots()
        real, real_stats = flipping_run(walk_catalog, tmp_path, "real")

    memoized, stats = flipping_run(walk_catalog, tmp_path, "memo")
    memo = snapshot_memo._portfolio_module.pickle
    assert isinstance(memo, snapshot_memo.MemoizedPickle)

    assert stats["fingerprint"] == real_stats["fingerprint"]
    assert stats["trades"] == real_stats["trades"] > 100
    for key in ("final_equity", "realized_pnl", "fees"):
        assert stats[key] == real_stats[key], key

    snapshots = sum(
        len(memoized.engine.cache.position_snapshot_bytes(p.id)) for p in memoized.engine.cache.positions()
    )
    positions = len(memoized.engine.cache.positions())  # each position's last snapshot may never be read
    assert snapshots - positions <= memo.unpickled <= snapshots
    assert memo.unpickled > 100
    assert memo.calls > 10 * memo.unpickled, "Nautilus asked for the same snapshots many times over"
    # (read last: every Portfolio in the process reads through the memo, the first run's too)
    assert memoized.engine.portfolio.realized_pnls() == real.engine.portfolio.realized_pnls()
