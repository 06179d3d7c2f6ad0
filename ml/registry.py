"""A versioned model registry on disk: immutable versions, verified on load, one production alias per kind.

Layout under the root (default ``models/``)::

    registry.json                       {"production": {kind: id}, "history": [event, ...]}
    <kind>/<id>/meta.json               what the model is, what it was trained on, sha256 of its files
    <kind>/<id>/<the model's files>     written by the model's own save()

A version id is ``<kind>-<UTC YYYYMMDDTHHMMSS>-<first 8 hex of the checksum>``: it sorts by time and names
its content. A version is written into a hidden temporary folder and renamed into place, and
registry.json is replaced whole, so a crash never leaves a half-written version or a torn alias file.

Loading refuses a version whose files no longer match their recorded sha256, or whose feature set differs
from the one this build computes: a model fed features it was not trained on fails silently otherwise.
Promoting (or rolling back to) a version also needs its recorded validation `skill` to pass ml.skill's
rule; a refusal is appended to the history with its reason. `status` says what `qt models` shows:
healthy, missing, corrupt, constant or no-skill.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import logging
import os
import platform
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from ml.features import FEATURE_NAMES, FEATURE_SET_HASH, FEATURE_VERSION
from ml.models.base import FitReport, ForecastModel, ModelLoadError
from ml.skill import HEALTHY, Verdict, verdict
from quantum_trader.jsonable import jsonable

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("models")
META_FILE = "meta.json"
REGISTRY_FILE = "registry.json"
LOCK_FILE = ".registry.lock"  # flock()ed while registry.json is read, changed and replaced
ALIASES = ("production", "latest")
_UNCHANGED = object()  # _record(): leave the production alias as it is

# kind -> "module:Class", imported only when a model of that kind is loaded (torch is heavy, and optional)
MODEL_CLASSES = {
    "xgboost": "ml.models.gbdt:XGBoostModel",
    "lightgbm": "ml.models.gbdt:LightGBMModel",
    "nhits": "ml.models.nhits:NHiTSModel",
    "patchtst": "ml.models.patchtst:PatchTSTModel",
}
# the package whose version matters for reading each kind's files back
MODEL_LIBRARIES = {"xgboost": "xgboost", "lightgbm": "lightgbm", "nhits": "torch", "patchtst": "torch"}


class RegistryError(ValueError):
    """A lookup or alias operation that cannot be done: no registry, unknown id, kind or alias."""


class ModelRejected(RegistryError):
    """A version that may not become production: it failed ml.skill's rule on validation."""


MISSING, CORRUPT = "missing", "corrupt"  # the statuses of versions whose files cannot be trusted


@dataclass
class ModelRecord:
    id: str
    kind: str
    path: Path
    meta: dict
    production: bool = False
    unreadable: str | None = None  # why meta.json could not be read; list() still shows the version


def model_class(kind: str) -> type[ForecastModel]:
    """The ForecastModel class that reads models of `kind`."""
    _check_kind(kind)
    module_name, class_name = MODEL_CLASSES[kind].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def _check_kind(kind: str) -> None:
    if kind not in MODEL_CLASSES:
        raise RegistryError(f"unknown model kind {kind!r}; known kinds: {', '.join(MODEL_CLASSES)}")


def training_info(report: FitReport, **extra) -> dict:
    """The `training` dict for register(), from a fit's report (the loss curves stay out: they are long)."""
    best = report.val_loss[report.best_iteration] if report.val_loss else None
    return {
        "seconds": round(report.seconds, 3),
        "best_iteration": report.best_iteration,
        "iterations": len(report.val_loss),
        "best_val_loss": best,
        "device": report.device,
        **extra,
    }


class ModelRegistry:
    def __init__(self, root: Path | str = DEFAULT_ROOT) -> None:
        self.root = Path(root)

    # --- versions -------------------------------------------------------------------------------------

    def register(
        self,
        model: ForecastModel,
        *,
        metrics: dict,
        data: dict,
        label: dict,
        training: dict,
        skill: dict | None = None,
        feature_distribution: dict | None = None,
    ) -> ModelRecord:
        """Save `model` as a new immutable version and record it; it is not promoted.

        `skill` is ml.skill.assess() of its validation forecasts: without it the version can never be
        promoted nor vote. `feature_distribution` (ml.drift) is the training distribution a drift check
        compares live features against."""
        meta = {
            "lookback": model.lookback,
            "label": label,
            "data": data,
            "metrics": metrics,
            "params": model.params(),
            "versions": _library_versions(model.kind),
            "training": training,
            "skill": skill,
            "feature_distribution": feature_distribution,
        }
        return self.store(model.kind, model.save, meta)

    def store(self, kind: str, write_files, meta: dict) -> ModelRecord:
        """Write a new immutable version of `kind`: `write_files(folder)` saves its files and returns their
        names; `meta` is recorded beside the id, time, feature set and sha256 of each file. Written into a
        hidden staging folder and renamed into place, so a crash never leaves half a version."""
        kind_dir = self.root / kind
        kind_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=kind_dir))  # hidden: list() skips it
        try:
            names = write_files(staging)
            files = {name: _sha256(staging / name) for name in sorted(names)}
            checksum = _checksum(files)
            created = datetime.now(UTC)
            version_id = self._new_id(kind, created, checksum)
            meta = {
                "id": version_id,
                "kind": kind,
                "created_at": created.isoformat(),
                "feature_names": list(FEATURE_NAMES),
                "feature_hash": FEATURE_SET_HASH,
                "feature_version": FEATURE_VERSION,
                **meta,
                "files": files,
                "checksum": checksum,
            }
            _write_synced(staging / META_FILE, json.dumps(jsonable(meta), indent=2))
            os.rename(staging, kind_dir / version_id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._record("register", kind, version_id, previous=None)
        return self._record_at(kind_dir / version_id)

    def list(self, kind: str | None = None) -> list[ModelRecord]:
        """Every version (of `kind`, if given), newest first."""
        self._require_root()
        if kind is not None:
            _check_kind(kind)
        kind_dirs = [self.root / kind] if kind else sorted(p for p in self.root.iterdir() if p.is_dir())
        production = self._read_registry()["production"]
        records = []
        for kind_dir in kind_dirs:
            if not kind_dir.is_dir() or kind_dir.name.startswith("."):
                continue
            for version_dir in kind_dir.iterdir():
                if version_dir.name.startswith(".") or not (version_dir / META_FILE).is_file():
                    continue
                try:
                    records.append(self._record_at(version_dir, production))
                except ModelLoadError as err:  # listed, so `qt models list` can flag it as corrupt
                    log.warning("%s: %s", version_dir, err)
                    is_production = production.get(kind_dir.name) == version_dir.name
                    records.append(
                        ModelRecord(version_dir.name, kind_dir.name, version_dir, {}, is_production, str(err))
                    )
        return sorted(records, key=lambda r: (r.meta.get("created_at", ""), r.id), reverse=True)

    def get(self, id_or_alias: str) -> ModelRecord:
        """The version a version id or a `<kind>:<alias>` names (aliases: production, latest)."""
        self._require_root()
        if ":" in id_or_alias:
            return self._resolve_alias(id_or_alias)
        plain_name = id_or_alias == Path(id_or_alias).name and not id_or_alias.startswith(".")
        for kind_dir in self.root.iterdir() if plain_name else ():
            if (kind_dir / id_or_alias / META_FILE).is_file():
                return self._record_at(kind_dir / id_or_alias)
        known = [r.id for r in self.list()]
        listing = ", ".join(known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
        raise RegistryError(f"unknown model id {id_or_alias!r} in {self.root}; known: {listing or 'none'}")

    def show(self, id_or_alias: str) -> dict:
        return self.get(id_or_alias).meta

    def verify(self, id_or_alias: str) -> ModelRecord:
        """The record, once every file matches its sha256 and the feature set matches this build's."""
        record = self.get(id_or_alias)
        problem = _file_problem(record)
        if problem is not None:
            raise ModelLoadError(problem.reason)
        return record

    def status(self, record: ModelRecord) -> Verdict:
        """What a version is worth: missing or corrupt files first, else ml.skill's verdict on it. A kind that
        forecasts nothing (the RL sizing agent, ml/rl/agent.py) has no skill record: its files decide."""
        if record.kind not in MODEL_CLASSES:
            return _file_problem(record) or Verdict(HEALTHY)
        return _file_problem(record) or verdict(record.meta.get("skill"))

    def load(self, id_or_alias: str) -> tuple[ForecastModel, ModelRecord]:
        """The verified model and its record."""
        record = self.verify(id_or_alias)
        return model_class(record.kind).load(record.path), record

    # --- the production alias -------------------------------------------------------------------------

    def production(self, kind: str) -> str | None:
        return self._read_registry()["production"].get(kind)

    def promote(self, id_or_alias: str) -> ModelRecord:
        """Point `<kind>:production` at this version (which must verify and pass ml.skill's rule)."""
        record = self._usable(self.verify(id_or_alias), "promote")
        previous = self.production(record.kind)
        self._record("promote", record.kind, record.id, previous, production=record.id)
        record.production = True
        return record

    def demote(self, kind: str) -> str:
        """Clear `<kind>:production`; return the id it pointed at."""
        _check_kind(kind)
        previous = self.production(kind)
        if previous is None:
            raise RegistryError(f"no production {kind} model to demote{self._known_production()}")
        self._record("demote", kind, None, previous, production=None)
        return previous

    def rollback(self, kind: str) -> ModelRecord:
        """Point `<kind>:production` back at the production version before the current one.

        Repeated rollbacks walk further back through the promotions; a demotion counts as a state with
        no production model, so a rollback after a demotion restores the demoted version."""
        _check_kind(kind)
        current = self.production(kind)
        stack = _production_stack(self._read_registry()["history"], kind)
        earlier = [i for i in reversed(stack[:-1]) if i is not None and i != current]
        if not earlier:
            raise RegistryError(f"no earlier production {kind} model to roll back to (current: {current})")
        record = self._usable(self.verify(earlier[0]), "rollback")
        self._record("rollback", kind, record.id, current, production=record.id)
        record.production = True
        return record

    def note(self, action: str, kind: str, version_id: str | None = None, **details) -> None:
        """Append a lifecycle event (a retrain, a drift alarm, a refused promotion...) to the history without
        touching the production alias: the continuous-learning actor's audit trail (actors/clm.py)."""
        _check_kind(kind)
        self.root.mkdir(parents=True, exist_ok=True)
        self._record(action, kind, version_id, self.production(kind), **jsonable(details, nan_as_null=True))

    def history(self, kind: str | None = None) -> list[dict]:
        events = self._read_registry()["history"]
        return [e for e in events if kind is None or e["kind"] == kind]

    # --- internals ------------------------------------------------------------------------------------

    def _usable(self, record: ModelRecord, action: str) -> ModelRecord:
        """The record, if it may become production; else the refusal is recorded and raised."""
        found = verdict(record.meta.get("skill"))
        if found.usable:
            return record
        current = self.production(record.kind)
        self._record(f"refuse_{action}", record.kind, record.id, current, reason=str(found))
        raise ModelRejected(
            f"{record.id} is not made production: {found}; {record.kind}:production stays {current or 'unset'}"
        )

    def _require_root(self) -> None:
        if not self.root.is_dir():
            raise RegistryError(f"no model registry at {self.root.resolve()}: register a model first")

    def _new_id(self, kind: str, created: datetime, checksum: str) -> str:
        base = f"{kind}-{created:%Y%m%dT%H%M%S}-{checksum[:8]}"
        candidate, n = base, 1
        while (self.root / kind / candidate).exists():  # the same model registered twice in one second
            n += 1
            candidate = f"{base}-{n}"
        return candidate

    def _record_at(self, version_dir: Path, production: dict | None = None) -> ModelRecord:
        meta_path = version_dir / META_FILE
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelLoadError(f"{meta_path}: unreadable meta.json ({err})") from err
        kind = meta.get("kind", version_dir.parent.name)
        production = self._read_registry()["production"] if production is None else production
        is_production = production.get(kind) == version_dir.name
        return ModelRecord(version_dir.name, kind, version_dir, meta, is_production)

    def _resolve_alias(self, name: str) -> ModelRecord:
        kind, alias = name.split(":", 1)
        _check_kind(kind)
        if alias not in ALIASES:
            raise RegistryError(f"unknown alias {alias!r} in {name!r}; known aliases: {', '.join(ALIASES)}")
        if alias == "latest":
            records = self.list(kind)
            if not records:
                raise RegistryError(
                    f"no {kind} models in {self.root}; kinds present: {self._kinds_present()}"
                )
            return records[0]
        target = self.production(kind)
        if target is None:
            raise RegistryError(f"no production {kind} model{self._known_production()}")
        return self.get(target)

    def _kinds_present(self) -> str:
        kinds = sorted({r.kind for r in self.list()})
        return ", ".join(kinds) or "none"

    def _known_production(self) -> str:
        prod = self._read_registry()["production"]
        return "; production models: " + (", ".join(f"{k}:{v}" for k, v in prod.items()) or "none")

    def _read_registry(self) -> dict:
        path = self.root / REGISTRY_FILE
        if not path.is_file():
            return {"production": {}, "history": []}
        try:
            state = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RegistryError(f"{path}: unreadable ({err}); restore it from a backup") from err
        state.setdefault("production", {})
        state.setdefault("history", [])
        return state

    def _record(
        self,
        action: str,
        kind: str,
        version_id: str | None,
        previous: str | None,
        production=_UNCHANGED,
        **details,
    ) -> None:
        """Append an event to the history and, unless `production` is left out, set the alias. Read, change and
        write happen under an exclusive lock, so processes registering at once (walk-forward folds on Ray) each
        keep their line."""
        with _locked(self.root / LOCK_FILE):
            state = self._read_registry()
            if production is not _UNCHANGED:
                if production is None:
                    state["production"].pop(kind, None)
                else:
                    state["production"][kind] = production
            event = {"ts": datetime.now(UTC).isoformat(), "action": action, "kind": kind, "id": version_id}
            state["history"].append({**event, "previous": previous, **details})
            _write_atomic(self.root / REGISTRY_FILE, json.dumps(state, indent=2))


def _production_stack(history: list[dict], kind: str) -> list[str | None]:
    """The production states of `kind` in order, as promotions push and rollbacks pop them."""
    stack: list[str | None] = []
    for event in history:
        if event["kind"] != kind:
            continue
        if event["action"] == "promote":
            stack.append(event["id"])
        elif event["action"] == "demote":
            stack.append(None)
        elif event["action"] == "rollback":
            while stack and stack[-1] != event["id"]:
                stack.pop()
    return stack


def _file_problem(record: ModelRecord) -> Verdict | None:
    """Why a version's files cannot be trusted (missing or corrupt, with the reason), or None."""
    if record.unreadable is not None:
        return Verdict(CORRUPT, record.unreadable)
    meta = record.meta
    files = meta.get("files") or {}
    if not files or _checksum(files) != meta.get("checksum"):
        return Verdict(CORRUPT, f"meta.json of {record.id}: its file list does not match its checksum")
    for name, expected in files.items():
        path = record.path / name
        if not path.is_file():
            return Verdict(MISSING, f"{name} missing from {record.id} ({record.path})")
        if _sha256(path) != expected:
            return Verdict(
                CORRUPT,
                f"checksum mismatch for {name} in {record.id}: the file was changed after registration",
            )
    if meta.get("feature_hash") != FEATURE_SET_HASH:
        return Verdict(
            CORRUPT,
            f"feature set mismatch: model {record.id} was trained on feature hash "
            f"{meta.get('feature_hash')}, this build computes {FEATURE_SET_HASH}; retrain",
        )
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksum(files: dict[str, str]) -> str:
    """One hash over the sorted file names and their hashes: names the version's whole content."""
    text = "".join(f"{name}\0{files[name]}\n" for name in sorted(files))
    return hashlib.sha256(text.encode()).hexdigest()


def _library_versions(kind: str) -> dict:
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    library = MODEL_LIBRARIES.get(kind)
    if library:
        try:
            versions[library] = version(library)
        except PackageNotFoundError:
            versions[library] = None
    return versions


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    _write_synced(tmp, text)
    os.replace(tmp, path)


def _write_synced(path: Path, text: str) -> None:
    # on disk before the rename that publishes it, so a power cut cannot publish an empty file
    with path.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


__all__ = [
    "MODEL_CLASSES",
    "ModelRecord",
    "ModelRejected",
    "ModelRegistry",
    "RegistryError",
    "model_class",
    "training_info",
]
