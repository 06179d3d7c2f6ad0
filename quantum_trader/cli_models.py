"""`qt models list|show|promote|demote|rollback`: the model registry from the command line.

Wire into the `qt` parser with ``add_models_commands(sub)``; each handler returns the exit code (0 ok,
2 bad input with the reason on stderr). `list` and `show` give each version's status (ModelRegistry.status):
healthy, missing, corrupt, constant or no-skill, so a broken or useless production model never looks fine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_USAGE = 2
# headline metrics for `list`, best first: the first name found (at any depth of meta.metrics) is shown
HEADLINE_METRICS = (
    ("rank_ic", ("test.rank_ic", "test_rank_ic", "rank_ic", "val.rank_ic", "validation.rank_ic")),
    (
        "dir_acc",
        (
            "test.directional_accuracy",
            "test_directional_accuracy",
            "directional_accuracy",
            "val.directional_accuracy",
            "validation.directional_accuracy",
        ),
    ),
)


def add_models_commands(subparsers) -> argparse.ArgumentParser:
    """Register `models` and its sub-commands on the `qt` sub-parsers; return the `models` parser."""
    models = subparsers.add_parser("models", help="list, inspect, promote and roll back registered models")
    models.add_argument(
        "--registry", type=Path, default=Path("models"), help="registry folder (default models)"
    )
    # also accepted after the sub-command; SUPPRESS keeps the group's value when it is not repeated there
    registry = argparse.ArgumentParser(add_help=False)
    registry.add_argument("--registry", type=Path, default=argparse.SUPPRESS, help="registry folder")
    sub = models.add_subparsers(dest="models_command", required=True)

    ls = sub.add_parser("list", parents=[registry], help="registered versions, newest first")
    ls.add_argument("--kind", help="only this kind (xgboost, lightgbm, nhits, patchtst)")
    ls.set_defaults(func=cmd_models_list)

    show = sub.add_parser("show", parents=[registry], help="a version's metadata as JSON")
    show.add_argument("id", help="version id or <kind>:production / <kind>:latest")
    show.set_defaults(func=cmd_models_show)

    promote = sub.add_parser("promote", parents=[registry], help="make a version its kind's production model")
    promote.add_argument("id", help="version id or <kind>:latest")
    promote.set_defaults(func=cmd_models_promote)

    demote = sub.add_parser("demote", parents=[registry], help="clear a kind's production model")
    demote.add_argument("kind")
    demote.set_defaults(func=cmd_models_demote)

    rollback = sub.add_parser("rollback", parents=[registry], help="restore the previous production model")
    rollback.add_argument("kind")
    rollback.set_defaults(func=cmd_models_rollback)
    return models


def cmd_models_list(args) -> int:
    return _run(args, lambda reg: _list(reg, args.kind))


def cmd_models_show(args) -> int:
    def show(reg) -> None:
        record = reg.get(args.id)
        found = reg.status(record)
        print(json.dumps(record.meta | {"status": found.status, "status_reason": found.reason}, indent=2))

    return _run(args, show)


def cmd_models_promote(args) -> int:
    def promote(reg) -> None:
        previous = reg.production(reg.get(args.id).kind)
        record = reg.promote(args.id)
        print(f"{record.kind}:production -> {record.id} (was {previous or 'none'})")

    return _run(args, promote)


def cmd_models_demote(args) -> int:
    def demote(reg) -> None:
        previous = reg.demote(args.kind)
        print(f"{args.kind}:production cleared (was {previous})")

    return _run(args, demote)


def cmd_models_rollback(args) -> int:
    def rollback(reg) -> None:
        previous = reg.production(args.kind)
        record = reg.rollback(args.kind)
        print(f"{args.kind}:production -> {record.id} (rolled back from {previous or 'none'})")

    return _run(args, rollback)


def _run(args, action) -> int:
    """Run `action(registry)`; registry and load errors are the user's input: exit 2 with the reason."""
    from ml.models.base import ModelLoadError
    from ml.registry import ModelRegistry, RegistryError

    try:
        action(ModelRegistry(args.registry))
    except (RegistryError, ModelLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _list(reg, kind: str | None) -> None:
    records = reg.list(kind)
    if not records:
        print("(no models)")
        return
    statuses = [reg.status(r) for r in records]
    rows = [_row(r, found.status) for r, found in zip(records, statuses, strict=True)]
    header = ["id", "kind", "created", "production", "status"] + [name for name, _ in HEADLINE_METRICS]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for record, found in zip(records, statuses, strict=True):
        if not found.usable:
            print(f"{record.id}: {found}")


def _row(record, status: str) -> list[str]:
    metrics = _flatten(record.meta.get("metrics") or {})
    created = str(record.meta.get("created_at", "-"))[:19].replace("T", " ")
    cells = [record.id, record.kind, created, "*" if record.production else "", status]
    for _, names in HEADLINE_METRICS:
        value = next((metrics[n] for n in names if n in metrics), None)
        cells.append(f"{value:.4f}" if isinstance(value, int | float) else "-")
    return cells


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
