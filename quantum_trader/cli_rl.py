"""`qt rl train CONFIG` and `qt rl evaluate CONFIG`: the PPO sizing agent (ml/rl/train.py).

Wire into the `qt` parser with ``add_rl_commands(sub)``.
"""

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path


def add_rl_commands(subparsers) -> argparse.ArgumentParser:
    rl = subparsers.add_parser("rl", help="train and evaluate the PPO position-sizing agent")
    sub = rl.add_subparsers(dest="rl_command", required=True)
    tr = sub.add_parser("train", help="train the agent on the config's train period and register it")
    tr.add_argument("config", type=Path, help="an RL config, e.g. configs/rl/ppo_sizing.yaml")
    tr.add_argument("--evaluate", action="store_true", help="then evaluate it (as `qt rl evaluate`)")
    tr.add_argument("--out", type=Path, help="evaluation report folder (default runs/rl-<name>-<time>)")
    tr.add_argument("--no-progress", action="store_true")
    tr.set_defaults(func=cmd_rl_train)
    ev = sub.add_parser(
        "evaluate", help="backtest the eval period rule-based, in shadow and in active mode; compare them"
    )
    ev.add_argument("config", type=Path)
    ev.add_argument("--model", default="ppo_sizer:latest", help="agent id (default ppo_sizer:latest)")
    ev.add_argument("--out", type=Path, help="report folder (default runs/rl-<name>-<time>)")
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(func=cmd_rl_evaluate)
    return rl


def cmd_rl_train(args) -> int:
    from ml.rl.train import load_rl_config, train_agent

    cfg = load_rl_config(args.config)
    summary = train_agent(cfg, progress=not args.no_progress)
    print(
        f"trained on {summary['opportunities']:,} entry opportunities, {summary['timesteps']:,} steps, "
        f"{summary['seconds']} s; mean episode reward on the train period: {summary['mean_episode_reward']}"
    )
    print(f"agent: {summary['id']} in {summary['registry']}")
    if args.evaluate:
        args.model = summary["id"]
        return cmd_rl_evaluate(args)
    return 0


def cmd_rl_evaluate(args) -> int:
    from ml.rl.train import evaluate_agent, load_rl_config

    cfg = load_rl_config(args.config)
    out = args.out or Path("runs") / f"rl-{cfg.name}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    table = evaluate_agent(cfg, args.model, out, progress=not args.no_progress)
    with_numbers = table.drop(columns=["fingerprint"])
    print(with_numbers.to_string())
    print(f"report: {out}/ (comparison.csv, comparison.png, rule/ shadow/ active/ backtest reports)")
    if not bool(table.loc["shadow", "shadow_trades_as_rule"]):
        print("error: the shadow run traded differently from the rule-based run", file=sys.stderr)
        return 1
    return 0
