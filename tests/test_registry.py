"""The model registry: versions load back exactly, tampering and feature drift are refused, aliases move
only by promote / demote / rollback and every move is in the history, a model that learned nothing never
becomes production; and the `qt models` commands, which say what each version is worth."""

import argparse
import json
import re

import numpy as np
import pytest

from ml.features import FEATURE_NAMES, FEATURE_SET_HASH
from ml.models.base import ModelLoadError
from ml.models.gbdt import LightGBMModel, XGBoostModel
from ml.registry import ModelRegistry, ModelRejected, RegistryError, training_info
from ml.skill import assess
from quantum_trader.cli_models import add_models_commands
from tests.test_gbdt_models import FAST, newest_rows_as_windows, planted, pooled_market, split, with_labels

LABEL = {"kind": "forward_log_return", "horizon": 12, "interval": "5m"}
DATA = {"symbols": ["S0", "S1"], "start": "2025-01-01", "end": "2025-01-11"}


def fit(cls, train, val):
    """A fitted model, its report and ml.skill's record of its validation forecasts."""
    model = cls(**FAST)
    report = model.fit(train, val)
    return model, report, assess(model.predict(newest_rows_as_windows(val)), val.labels)


@pytest.fixture(scope="module")
def trained(market):
    """One fitted model of each GBDT kind (on a planted signal: both have skill), and validation windows."""
    train, val = split(planted(market))
    models = {cls.kind: fit(cls, train, val) for cls in (XGBoostModel, LightGBMModel)}
    return models, newest_rows_as_windows(val)


@pytest.fixture(scope="module")
def learned_nothing(market):
    """XGBoost fits that fail the rule: `constant` (a constant target) and `no_skill` (a training drift of
    +0.003 that validation does not have, so its forecasts lose to the zero forecast)."""
    train, val = split(market)
    rng = np.random.default_rng(5)
    constant = fit(XGBoostModel, *(with_labels(ws, np.full(len(ws), 0.001)) for ws in (train, val)))
    drift = with_labels(train, 0.003 + rng.normal(0, 0.002, len(train)))
    no_skill = fit(XGBoostModel, drift, with_labels(val, rng.normal(0, 0.002, len(val))))
    return {"constant": constant, "no_skill": no_skill}


@pytest.fixture(scope="module")
def market():
    return pooled_market()


def register(reg: ModelRegistry, model, report, skill=None, rank_ic: float = 0.05):
    metrics = {"test": {"rank_ic": rank_ic, "directional_accuracy": 0.52}, "val": {"mse": 1e-6}}
    return reg.register(
        model, metrics=metrics, data=DATA, label=LABEL, training=training_info(report), skill=skill
    )


@pytest.fixture
def reg(tmp_path):
    return ModelRegistry(tmp_path / "models")


@pytest.fixture
def three_xgb(reg, trained):
    """Three registered versions of the same xgboost model (ids differ by the -2/-3 suffix or time)."""
    model, report, skill = trained[0]["xgboost"]
    return [register(reg, model, report, skill, rank_ic=0.01 * i).id for i in range(3)]


def test_register_then_load_gives_identical_predictions_and_full_metadata(reg, trained):
    models, windows = trained
    for kind, (model, report, skill) in models.items():
        record = register(reg, model, report, skill)
        assert re.fullmatch(rf"{kind}-\d{{8}}T\d{{6}}-[0-9a-f]{{8}}", record.id)
        assert record.path == reg.root / kind / record.id and not record.production
        loaded, loaded_record = reg.load(record.id)
        np.testing.assert_array_equal(loaded.predict(windows), model.predict(windows))
        meta = loaded_record.meta
        assert meta["feature_names"] == list(FEATURE_NAMES) and meta["feature_hash"] == FEATURE_SET_HASH
        assert meta["label"] == LABEL and meta["data"] == DATA and meta["params"] == model.params()
        assert meta["versions"][kind] and meta["versions"]["numpy"] == np.__version__
        assert meta["training"]["best_iteration"] == report.best_iteration
        assert meta["skill"] == skill and skill["status"] == "healthy" and skill["mse"] < skill["zero_mse"]
        assert set(meta["files"]) == {model.MODEL_FILE, "model.json"}
        assert meta["checksum"].startswith(record.id[-8:])
        assert meta["created_at"].endswith("+00:00")
    assert [e["action"] for e in reg.history()] == ["register", "register"]


def test_a_changed_byte_in_a_model_file_is_refused(reg, trained):
    model, report, skill = trained[0]["lightgbm"]
    record = register(reg, model, report, skill)
    path = record.path / "model.txt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    message = f"checksum mismatch for model.txt in {record.id}: the file was changed after registration"
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        reg.load(record.id)


def test_a_model_trained_on_another_feature_set_is_refused(reg, trained):
    model, report, skill = trained[0]["xgboost"]
    record = register(reg, model, report, skill)
    meta_path = record.path / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["feature_hash"] = "abc123"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(
        ModelLoadError, match=rf"feature set mismatch: model {record.id} .* abc123, .*; retrain"
    ):
        reg.load(record.id)


def test_a_failed_save_leaves_no_version_behind(reg, trained):
    model, report, _ = trained[0]["xgboost"]

    class Crashing(XGBoostModel):
        def save(self, directory):
            super().save(directory)
            raise OSError("disk full")

    crashing = Crashing()
    crashing._booster, crashing.best_iteration = model._booster, model.best_iteration
    with pytest.raises(OSError, match="disk full"):
        register(reg, crashing, report)
    assert list((reg.root / "xgboost").iterdir()) == []
    assert reg.list() == [] and reg.history() == []


def test_promote_demote_and_rollback_move_the_alias_and_are_recorded(reg, three_xgb):
    a, b, c = three_xgb
    for version in (a, b, c):
        reg.promote(version)
    assert reg.production("xgboost") == c
    assert reg.get("xgboost:production").id == c and reg.get("xgboost:production").production
    assert reg.rollback("xgboost").id == b
    assert reg.rollback("xgboost").id == a  # repeated rollbacks walk further back
    reg.demote("xgboost")
    assert reg.production("xgboost") is None
    assert reg.rollback("xgboost").id == a  # a rollback after a demotion restores the demoted model
    moves = [
        (e["action"], e["id"], e["previous"]) for e in reg.history("xgboost") if e["action"] != "register"
    ]
    assert moves == [
        ("promote", a, None),
        ("promote", b, a),
        ("promote", c, b),
        ("rollback", b, c),
        ("rollback", a, b),
        ("demote", None, a),
        ("rollback", a, None),
    ]
    assert all(e["ts"].endswith("+00:00") for e in reg.history())


def test_rollback_without_an_earlier_production_model_is_an_error(reg, three_xgb):
    with pytest.raises(RegistryError, match="no earlier production xgboost model"):
        reg.rollback("xgboost")
    reg.promote(three_xgb[0])
    with pytest.raises(RegistryError, match="no earlier production xgboost model"):
        reg.rollback("xgboost")
    assert reg.production("xgboost") == three_xgb[0]


def test_list_is_newest_first_and_flags_production(reg, three_xgb, trained):
    lgb_id = register(reg, *trained[0]["lightgbm"]).id
    reg.promote(three_xgb[1])
    records = reg.list()
    assert [r.id for r in records] == [lgb_id, *reversed(three_xgb)]
    assert [r.id for r in records if r.production] == [three_xgb[1]]
    assert [r.id for r in reg.list("xgboost")] == list(reversed(three_xgb))
    assert reg.get("xgboost:latest").id == three_xgb[2]
    assert reg.show(lgb_id)["kind"] == "lightgbm"


def promoted_before_the_rule(reg: ModelRegistry, record) -> None:
    """Make `record` production the way the registry did before ml.skill's rule: without looking."""
    path = reg.root / "registry.json"
    state = json.loads(path.read_text())
    state["production"][record.kind] = record.id
    event = {"ts": "2026-01-01T00:00:00+00:00", "action": "promote", "kind": record.kind, "id": record.id}
    state["history"].append(event | {"previous": None})
    path.write_text(json.dumps(state))


def test_a_model_that_learned_nothing_is_never_promoted_and_the_refusal_is_recorded(
    reg, three_xgb, learned_nothing
):
    production = reg.promote(three_xgb[0]).id
    constant = register(reg, *learned_nothing["constant"]).id
    no_skill = register(reg, *learned_nothing["no_skill"]).id
    skill = learned_nothing["no_skill"][2]
    assert skill["pred_std"] > 1e-4  # its forecasts vary: only their score against zero rules it out
    reasons = {
        constant: "constant (validation forecast std 0 <= 1e-08: it learned nothing)",
        no_skill: f"no-skill (validation MSE {skill['mse']:.6g} is not below the zero forecast's "
        f"{skill['zero_mse']:.6g})",
    }
    for version, reason in reasons.items():
        with pytest.raises(ModelRejected) as refused:
            reg.promote(version)
        assert str(refused.value) == (
            f"{version} is not made production: {reason}; xgboost:production stays {production}"
        )
    assert reg.production("xgboost") == production
    refusals = [(e["action"], e["id"], e["previous"], e["reason"]) for e in reg.history()[-2:]]
    assert refusals == [("refuse_promote", v, production, why) for v, why in reasons.items()]
    assert reg.show(no_skill)["skill"]["status"] == "no-skill"


def test_a_version_registered_without_a_skill_record_is_never_promoted(reg, trained):
    model, report, _ = trained[0]["xgboost"]
    legacy = register(reg, model, report).id
    with pytest.raises(ModelRejected, match=r"no-skill \(no validation record of skill was registered"):
        reg.promote(legacy)
    assert reg.production("xgboost") is None


def test_rollback_never_restores_a_model_that_learned_nothing(reg, trained, learned_nothing):
    constant = register(reg, *learned_nothing["constant"])
    promoted_before_the_rule(reg, constant)
    good = reg.promote(register(reg, *trained[0]["xgboost"]).id).id
    with pytest.raises(ModelRejected, match=f"{constant.id} is not made production: constant"):
        reg.rollback("xgboost")
    assert reg.production("xgboost") == good
    last = reg.history()[-1]
    assert (last["action"], last["id"], last["previous"]) == ("refuse_rollback", constant.id, good)


def test_unknown_names_are_errors_that_say_what_is_known(reg, three_xgb, tmp_path):
    with pytest.raises(RegistryError, match=f"unknown model id 'xgboost-nope'.*known: {three_xgb[2]}"):
        reg.load("xgboost-nope")
    with pytest.raises(RegistryError, match="unknown alias 'prod'.*known aliases: production, latest"):
        reg.get("xgboost:prod")
    with pytest.raises(RegistryError, match="unknown model kind 'catboost'.*xgboost, lightgbm"):
        reg.get("catboost:production")
    with pytest.raises(RegistryError, match="no production lightgbm model"):
        reg.load("lightgbm:production")
    with pytest.raises(RegistryError, match="no model registry at"):
        ModelRegistry(tmp_path / "nowhere").list()


# --- the `qt models` commands ----------------------------------------------------------------------------


def qt_models(*argv) -> int:
    parser = argparse.ArgumentParser(prog="qt")
    add_models_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["models", *argv])
    return args.func(args)


def test_models_commands_end_to_end(reg, three_xgb, capsys):
    root = str(reg.root)
    a, b, c = three_xgb
    assert qt_models("--registry", root, "promote", a) == 0
    assert qt_models("promote", b, "--registry", root) == 0  # --registry also after the sub-command
    assert f"xgboost:production -> {b} (was {a})" in capsys.readouterr().out

    assert qt_models("--registry", root, "list", "--kind", "xgboost") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", "kind", "created", "production", "status", "rank_ic", "dir_acc"]
    assert [line.split()[0] for line in lines[1:]] == [c, b, a]
    assert lines[2].split()[4:7] == ["*", "healthy", "0.0100"]  # b: rank_ic 0.01 of its metrics

    assert qt_models("--registry", root, "show", "xgboost:production") == 0
    assert json.loads(capsys.readouterr().out)["id"] == b

    assert qt_models("--registry", root, "rollback", "xgboost") == 0
    assert f"xgboost:production -> {a} (rolled back from {b})" in capsys.readouterr().out
    assert qt_models("--registry", root, "demote", "xgboost") == 0
    assert f"xgboost:production cleared (was {a})" in capsys.readouterr().out
    assert reg.production("xgboost") is None


def test_models_commands_exit_2_with_the_reason_on_stderr(reg, three_xgb, tmp_path, capsys):
    root = str(reg.root)
    cases = [
        (["--registry", root, "show", "xgboost-nope"], "unknown model id 'xgboost-nope'"),
        (["--registry", root, "demote", "xgboost"], "no production xgboost model to demote"),
        (["--registry", root, "rollback", "xgboost"], "no earlier production xgboost model"),
        (["--registry", root, "list", "--kind", "catboost"], "unknown model kind 'catboost'"),
        (["--registry", str(tmp_path / "nowhere"), "list"], "no model registry at"),
    ]
    for argv, reason in cases:
        assert qt_models(*argv) == 2, argv
        captured = capsys.readouterr()
        assert reason in captured.err and captured.out == "", argv

    (reg.root / "xgboost" / three_xgb[0] / "model.ubj").write_bytes(b"tampered")
    assert qt_models("--registry", root, "promote", three_xgb[0]) == 2  # a damaged model is never promoted
    assert "checksum mismatch for model.ubj" in capsys.readouterr().err


STATUSES = {"healthy", "corrupt", "missing", "constant", "no-skill"}


def flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_list_and_show_flag_corrupt_missing_constant_and_no_skill_models(
    reg, trained, learned_nothing, capsys
):
    healthy = register(reg, *trained[0]["xgboost"])
    corrupt = register(reg, *trained[0]["lightgbm"])
    reg.promote(corrupt.id)
    flip_a_byte(corrupt.path / "model.txt")  # damaged after it went into production
    missing = register(reg, *trained[0]["xgboost"])
    (missing.path / "model.ubj").unlink()
    constant = register(reg, *learned_nothing["constant"])
    promoted_before_the_rule(reg, constant)
    no_skill = register(reg, *learned_nothing["no_skill"])
    unreadable = register(reg, *trained[0]["lightgbm"])
    (unreadable.path / "meta.json").write_text("{not json")
    root = str(reg.root)

    assert qt_models("--registry", root, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:7]}
    status = {
        version: next((cell for cell in row if cell in STATUSES), None) for version, row in rows.items()
    }
    assert status == {
        healthy.id: "healthy",
        corrupt.id: "corrupt",
        missing.id: "missing",
        constant.id: "constant",
        no_skill.id: "no-skill",
        unreadable.id: "corrupt",
    }
    assert {version for version, row in rows.items() if "*" in row} == {corrupt.id, constant.id}
    skill = learned_nothing["no_skill"][2]
    assert sorted(lines[7:]) == sorted(
        [
            f"{corrupt.id}: corrupt (checksum mismatch for model.txt in {corrupt.id}: the file was changed "
            "after registration)",
            f"{missing.id}: missing (model.ubj missing from {missing.id} ({missing.path}))",
            f"{constant.id}: constant (validation forecast std 0 <= 1e-08: it learned nothing)",
            f"{no_skill.id}: no-skill (validation MSE {skill['mse']:.6g} is not below the zero forecast's "
            f"{skill['zero_mse']:.6g})",
            f"{unreadable.id}: corrupt ({unreadable.path / 'meta.json'}: unreadable meta.json "
            "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1)))",
        ]
    )

    for name, version, expected in [
        ("healthy", healthy.id, "healthy"),
        ("production", "xgboost:production", "constant"),
        ("production", "lightgbm:production", "corrupt"),
        ("missing", missing.id, "missing"),
        ("no-skill", no_skill.id, "no-skill"),
    ]:
        assert qt_models("--registry", root, "show", version) == 0, name
        shown = json.loads(capsys.readouterr().out)
        assert shown["status"] == expected, name
        assert (shown["status_reason"] is None) == (expected == "healthy"), name
    assert qt_models("--registry", root, "show", unreadable.id) == 2
    assert "unreadable meta.json" in capsys.readouterr().err
    assert qt_models("--registry", root, "promote", no_skill.id) == 2
    assert f"{no_skill.id} is not made production: no-skill" in capsys.readouterr().err
