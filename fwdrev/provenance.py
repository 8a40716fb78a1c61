"""What a model was trained on, and on which base it sits: written by training, checked by the analysis.

Every training run records in OUTPUT_DIR/run_config.json (``training_record``), and in every
model folder it writes (``fwdrev.run_identity``):

* ``run_id`` and ``stage``;
* ``training_data``: the data file (path and SHA-256), the example ids (row indices) of the
  train and eval rows, and every problem key of those rows (``fwdrev.problems``);
* ``base_model`` (and ``init_adapter``): the model it started from, as given, resolved, its
  content fingerprint, and that model's own record (``record``: None for a model no run of
  ours made). So the whole chain DPO <- SFT <- base travels with a copied or moved folder.

The analysis reads the records of a model from the model folder itself (``training_records``),
refuses to score rows of problems it was trained on (``train_overlap``: a row overlaps when it
shares any key with a trained row), and refuses an adapter on a base whose content is not the
one it was trained on (``resolve_adapter_base``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fwdrev.errors import UsageError
from fwdrev.fingerprint import file_sha256, model_fingerprint
from fwdrev.modeling import adapter_base_model, is_adapter_dir
from fwdrev.problems import group_column, normalized_id, problem_keys
from fwdrev.run_identity import model_record

logger = logging.getLogger(__name__)

PROBLEM_KEYS_VERSION = 2  # 1 (no version field): one column's values, see ``_legacy_overlap``
MAX_RECORD_DEPTH = 4  # DPO <- merged SFT <- ... : how far older records are followed by path


def resolved_name(path: str) -> str:
    """An existing path as an absolute path; anything else (a hub name) as given."""
    return os.path.abspath(path) if os.path.exists(path) else str(path)


def start_model_entry(path: str) -> dict:
    """A start model (base or init adapter): where, what content, and the record it carries."""
    found = model_record(path) if os.path.isdir(path) else None
    return {"name_or_path": path, "resolved": resolved_name(path), "fingerprint": model_fingerprint(path),
            "record": found[0] if found else None}


def training_record(data, train_ids: list[int], eval_ids: list[int], model_name: str,
                    init_adapter: str | None = None, run_id: str | None = None,
                    stage: str | None = None) -> dict:
    """The run_config.json entries of a training run (see the module docstring)."""
    keys = problem_keys(data, list(train_ids) + list(eval_ids))
    path = data.report.path
    record = {"run_id": run_id, "stage": stage, "training_data": {
        "file": str(path), "file_resolved": resolved_name(str(path)), "sha256": file_sha256(path),
        "problem_keys_version": PROBLEM_KEYS_VERSION,
        "train_example_ids": sorted(int(i) for i in train_ids),
        "eval_example_ids": sorted(int(i) for i in eval_ids),
        "train_problem_keys": sorted(set().union(*(keys[int(i)] for i in train_ids))),
        "eval_problem_keys": sorted(set().union(*(keys[int(i)] for i in eval_ids)))}}
    record["base_model"] = start_model_entry(model_name)
    if init_adapter:
        record["init_adapter"] = {**start_model_entry(init_adapter), "path": init_adapter}
    return record


# ------------------------------------------------------------------ finding the records
def run_folder_of(model_path: str | Path) -> Path | None:
    """The folder whose record describes ``model_path`` (the folder itself, or for a checkpoint of
    an older run without its own record, the run folder above it)."""
    found = model_record(model_path)
    return None if found is None else found[1].parent


@dataclass(frozen=True)
class RunRecord:
    folder: Path  # where the record was found: the model folder, or the recorded start model
    config: dict

    @property
    def training_data(self) -> dict | None:
        return self.config.get("training_data")

    @property
    def identity(self):
        """One record per run and training data (copies of a record in its checkpoints count once)."""
        run_id = self.config.get("run_id")
        return (run_id, (self.training_data or {}).get("sha256")) if run_id else str(self.folder.resolve())


def _existing(path: str | None, relative_to: Path | None = None) -> Path | None:
    if not path:
        return None
    if os.path.exists(path):
        return Path(path)
    if relative_to is not None and not os.path.isabs(path) and (relative_to / path).exists():
        return relative_to / path
    return None


def _start_model_records(config: dict, depth: int) -> list[RunRecord]:
    """The records of the models a run started from: embedded in its record, or (records written
    before they were embedded) looked up at the recorded path."""
    records = []
    for entry in ("base_model", "init_adapter"):
        recorded = config.get(entry) or {}
        if recorded.get("record") is not None:
            where = Path(recorded.get("resolved") or recorded.get("name_or_path") or ".")
            records.append(RunRecord(where, recorded["record"]))
            records += _start_model_records(recorded["record"], depth + 1)
        elif "record" not in recorded:
            source = _existing(recorded.get("resolved")) or _existing(
                recorded.get("name_or_path", recorded.get("path")))
            records += training_records(source, depth + 1) if source else []
    return records


def training_records(model_path: str | Path | None, depth: int = 0) -> list[RunRecord]:
    """The run records of ``model_path`` and of the models it was trained from (nearest first)."""
    if model_path is None or depth > MAX_RECORD_DEPTH or not Path(model_path).exists():
        return []
    found = model_record(model_path)
    if found is not None:
        config, file = found
        records = [RunRecord(file.parent, config)] + _start_model_records(config, depth)
    elif is_adapter_dir(model_path):  # no record: the base its adapter_config.json names
        records = training_records(_existing(adapter_base_model(model_path), Path(model_path)), depth + 1)
    else:
        records = []
    unique = {}
    for record in records:
        unique.setdefault(record.identity, record)
    return list(unique.values())


# ------------------------------------------------------------------ the overlap check
def _legacy_key(value) -> str:
    text = str(value)
    return text if len(text) <= 64 else "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:24]


def _legacy_overlap(training_data: dict, data) -> set[int] | None:
    """Rows of a version-1 record's problems (keys: str() of one column, or the rendered prompt)."""
    column, trained = training_data["problem_column"], set(training_data["train_problem_keys"])
    if column == "problem_id" and column in data.frame.columns:
        trained = {normalized_id(k) for k in trained}
        return {int(i) for i, v in data.frame[column].items() if normalized_id(v) in trained}
    if column in data.frame.columns:
        return {int(i) for i, v in data.frame[column].items() if _legacy_key(v) in trained}
    if column == "prompt":
        return {e.example_id for e in data.examples if _legacy_key(e.prompt) in trained}
    return None


def overlapping_rows(record: RunRecord, data, keys: dict[int, frozenset]) -> set[int]:
    """The example ids of ``data`` whose problem shares any key with the record's training rows."""
    training_data = record.training_data
    if training_data.get("problem_keys_version") != PROBLEM_KEYS_VERSION:
        found = _legacy_overlap(training_data, data)
        if found is not None:
            return found
        print(f"warning: {data.report.path} has no column {training_data['problem_column']!r}, the "
              f"problem key of {record.folder}'s (older) record: cannot check overlap with that run")
        return set()
    trained = set(training_data["train_problem_keys"])
    return {i for i, row_keys in keys.items() if row_keys & trained}


def no_record(names: str, require: bool) -> None:
    message = (f"no training record (run_config.json / run_record.json with training_data) found for "
               f"{names}: cannot check whether the scored rows were trained on")
    if require:
        raise UsageError(f"{message} (--require_provenance); score a model trained by this "
                         "project's scripts, or leave --require_provenance out")
    print(f"warning: {message}")


def train_overlap(model_paths: Iterable[str | Path], data, allow: bool,
                  require: bool = False) -> dict[int, bool] | None:
    """example_id -> whether its problem was in the training rows of ``model_paths``' runs.

    Raises ``UsageError`` (exit 2) when any scored row was trained on, unless ``allow``.
    Returns None (after a one-line warning; exit 2 with ``require``) when no run says what it
    trained on.
    """
    model_paths = list(model_paths)
    records = {}
    for path in model_paths:
        for record in training_records(path):
            if record.training_data:
                records.setdefault(record.identity, record)
    if not records:
        no_record(", ".join(str(p) for p in model_paths), require)
        return None
    keys = problem_keys(data)
    hits_by_run = {identity: overlapping_rows(r, data, keys) for identity, r in records.items()}
    hits = set().union(*hits_by_run.values())
    trained_on = {i: i in hits for i in keys}
    column = group_column(data.frame)
    problems = len({data.frame.at[i, column] for i in hits}) if column in data.frame.columns else len(hits)
    if hits and not allow:
        runs = ", ".join(f"{r.folder} (run {r.config.get('run_id') or 'without id'}: {len(hits_by_run[i])} rows)"
                         for i, r in records.items() if hits_by_run[i])  # only the runs that trained on them
        raise UsageError(
            f"{len(hits)} of {len(keys)} scored rows of {data.report.path} ({problems} "
            f"problems) were in the training data of {runs}; score held-out rows (e.g. the "
            "test.parquet of scripts/prepare_data.py) or pass --allow_train_overlap (adds a "
            "trained_on column)")
    if hits:
        print(f"warning: {len(hits)} of {len(keys)} scored rows ({problems} problems) "
              "were trained on (column trained_on)")
    return trained_on


# ------------------------------------------------------------------ the base of an adapter
def recorded_adapter_base(adapter_dir: str | Path) -> str:
    """The adapter config's base: as given when it exists relative to the working directory,
    else relative to the adapter folder, else the training record's resolved path, else as is."""
    base = adapter_base_model(adapter_dir)
    found = _existing(base, Path(adapter_dir))
    if found is not None:
        return str(found)
    resolved = recorded_base(adapter_dir).get("resolved")
    return resolved if resolved and os.path.exists(resolved) else base


def recorded_base(model_dir: str | Path) -> dict:
    """The ``base_model`` entry of the record of the run that wrote ``model_dir`` ({} if none)."""
    found = model_record(model_dir)
    return (found[0].get("base_model") or {}) if found else {}


def same_model(given: str, recorded: str) -> bool:
    """Same folder, or same content (a copy of the recorded folder)."""
    if resolved_name(given) == resolved_name(recorded):
        return True
    return os.path.isdir(given) and os.path.isdir(recorded) and \
        model_fingerprint(given) == model_fingerprint(recorded)


def check_base_content(model_dir: str | Path, base: str, force: bool, flag: str, given: bool = True) -> None:
    """Refuse (exit 2, unless ``force``) a base whose content is not the one recorded when
    ``model_dir`` was trained: e.g. an SFT run re-trained into the folder a DPO adapter sits on.
    ``given``: ``base`` came from ``flag``, not from the record."""
    entry = recorded_base(model_dir)
    recorded = entry.get("fingerprint")
    if recorded is None:
        return
    if not os.path.exists(base) and os.path.isabs(entry.get("resolved", "")):  # was a local folder
        raise UsageError(f"{base}, the base model {model_dir} was trained on, does not exist (moved or "
                         f"deleted?): pass {flag} with its new place (checked by content: fingerprint "
                         f"{recorded[:12]})")
    current = model_fingerprint(base)
    if current == recorded:
        return
    named = f"{flag} {base}" if given else f"{base} (its recorded base)"
    message = (f"{named} is not the base model of {model_dir}: content fingerprint now {current[:12]}, "
               f"recorded at training {recorded[:12]} (re-trained or replaced since?)")
    if force:
        print(f"warning: {message}; used anyway (--force_base_model)")
        return
    raise UsageError(f"{message}. Pass {flag} with the model it was trained from, or "
                     "--force_base_model to use this one anyway")


def resolve_adapter_base(adapter_dir: str | Path, base_model: str | None = None,
                         force: bool = False, flag: str = "--base_model") -> str:
    """The base model to load the adapter ``adapter_dir`` on.

    Default: the one it was trained on (``recorded_adapter_base``). Its content must be the one
    recorded at training (``check_base_content``), and a ``base_model`` that is another model
    raises ``UsageError`` (exit 2) unless ``force``: scores of an adapter on another base look
    fine and are wrong.
    """
    recorded = recorded_adapter_base(adapter_dir)
    chosen = recorded if base_model is None else base_model
    if recorded_base(adapter_dir).get("fingerprint") is not None:
        check_base_content(adapter_dir, chosen, force, flag, given=base_model is not None)
        return chosen
    if base_model is None or same_model(base_model, recorded):
        return chosen
    if force:
        logger.warning("%s: loading on %s although it was trained on %s (--force_base_model)",
                       adapter_dir, base_model, recorded)
        print(f"warning: {adapter_dir} loaded on {base_model}, not on its recorded base {recorded}")
        return base_model
    raise UsageError(
        f"{flag} {base_model} is not the base model of the adapter {adapter_dir}: it was trained "
        f"on {recorded} (adapter_config.json base_model_name_or_path). Leave {flag} out to use "
        "the recorded base, or pass --force_base_model to load it on another one anyway")



# ------------------------------------------------------------------ the DPO reward settings
DEFAULT_BETA = 0.1


def dpo_reward_settings(model_path: str | Path, beta: float | None, force: bool) -> tuple[float, str]:
    """(beta, loss_type) of the implicit rewards: those the model was trained with (its run
    record's DPOArguments). A different ``beta`` is refused (exit 2) unless ``force``."""
    found = model_record(model_path)
    trained = (found[0].get("DPOArguments") or {}) if found else {}
    if not trained:
        chosen = DEFAULT_BETA if beta is None else beta
        print(f"warning: no DPO run record for {model_path}: rewards with beta {chosen:g}"
              f"{'' if beta is not None else ' (default)'} and the sigmoid loss's summed log-probs")
        return chosen, "sigmoid"
    recorded, loss_type = float(trained["beta"]), str(trained.get("loss_type", "sigmoid"))
    if beta is None or beta == recorded:
        return recorded, loss_type
    message = (f"--beta {beta:g} is not the beta {model_path} was trained with ({recorded:g}, "
               f"{found[1]})")
    if not force:
        raise UsageError(f"{message}: leave --beta out to use it, or pass --force_beta")
    print(f"warning: {message}; rewards with {beta:g} (--force_beta)")
    return beta, loss_type
