"""What a model was trained on, and on which base it sits: written by training, checked by the analysis.

Every training run records in OUTPUT_DIR/run_config.json (``training_record``):

* ``training_data``: the data file (path and SHA-256), the example ids (row indices) of the
  train and eval rows, and the problem keys of those rows (``problem_column``);
* ``base_model``: the model it started from, as given, resolved, and its content fingerprint
  (so an adapter's base can be recognised after the folder moved).

The analysis finds the records of a model (its own folder, the run folder above a checkpoint,
and the runs its base came from) and refuses to score rows of problems it was trained on
(``train_overlap``); ``resolve_adapter_base`` decides which base an adapter is loaded on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fwdrev.errors import UsageError
from fwdrev.fingerprint import file_sha256, model_fingerprint
from fwdrev.modeling import adapter_base_model, is_adapter_dir

logger = logging.getLogger(__name__)

RUN_CONFIG = "run_config.json"
PROMPT_KEY = "prompt"  # embedded data without problem_id or question: the rendered prompt
MAX_PLAIN_KEY = 64  # longer keys (question texts) are stored as digests
MAX_RECORD_DEPTH = 4  # DPO <- merged SFT <- ... : how far base models are followed


def problem_column(frame: pd.DataFrame) -> str:
    """As ``fwdrev.splits.default_group_column``: problem_id, else the forward question."""
    for column in ("problem_id", "question"):
        if column in frame.columns:
            return column
    return PROMPT_KEY


def problem_key(value) -> str:
    text = str(value)
    if len(text) <= MAX_PLAIN_KEY:
        return text
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:24]


def problem_keys(data, example_ids: Iterable[int], column: str) -> dict[int, str]:
    """example_id -> problem key of the rows of ``data`` (a ``fwdrev.data.PreferenceData``)."""
    example_ids = list(example_ids)
    if column == PROMPT_KEY:
        prompts = {e.example_id: e.prompt for e in data.examples}
        return {i: problem_key(prompts[i]) for i in example_ids}
    values = data.frame.loc[example_ids, column]
    return {int(i): problem_key(v) for i, v in values.items()}


def resolved_name(path: str) -> str:
    """An existing path as an absolute path; anything else (a hub name) as given."""
    return os.path.abspath(path) if os.path.exists(path) else str(path)


def training_record(data, train_ids: list[int], eval_ids: list[int], model_name: str,
                    init_adapter: str | None = None) -> dict:
    """The run_config.json entries of a training run (see the module docstring)."""
    column = problem_column(data.frame)
    path = data.report.path
    record = {"training_data": {
        "file": str(path), "file_resolved": resolved_name(str(path)), "sha256": file_sha256(path),
        "problem_column": column,
        "train_example_ids": sorted(int(i) for i in train_ids),
        "eval_example_ids": sorted(int(i) for i in eval_ids),
        "train_problem_keys": sorted(set(problem_keys(data, train_ids, column).values())),
        "eval_problem_keys": sorted(set(problem_keys(data, eval_ids, column).values()))}}
    record["base_model"] = {"name_or_path": model_name, "resolved": resolved_name(model_name),
                            "fingerprint": model_fingerprint(model_name)}
    if init_adapter:
        record["init_adapter"] = {"path": init_adapter, "resolved": resolved_name(init_adapter)}
    return record


# ------------------------------------------------------------------ finding the records
def run_folder_of(model_path: str | Path) -> Path | None:
    """The training run folder holding ``model_path``'s run_config.json, if any.

    The folder itself; checkpoints/<epoch>/ -> the run folder; checkpoint-<step>/ and merged/ ->
    their parent.
    """
    path = Path(model_path)
    candidates = [path]
    if re.fullmatch(r"\d+", path.name) and path.parent.name == "checkpoints":
        candidates.append(path.parent.parent)
    if re.fullmatch(r"checkpoint-\d+", path.name) or path.name == "merged":
        candidates.append(path.parent)
    if path.name == "checkpoints":
        candidates.append(path.parent)
    return next((c for c in candidates if (c / RUN_CONFIG).is_file()), None)


@dataclass(frozen=True)
class RunRecord:
    folder: Path
    config: dict

    @property
    def training_data(self) -> dict | None:
        return self.config.get("training_data")


def _existing(path: str | None, relative_to: Path | None = None) -> Path | None:
    if not path:
        return None
    if os.path.exists(path):
        return Path(path)
    if relative_to is not None and not os.path.isabs(path) and (relative_to / path).exists():
        return relative_to / path
    return None


def training_records(model_path: str | Path, depth: int = 0) -> list[RunRecord]:
    """The run records of ``model_path`` and of the models it was trained from (nearest first)."""
    if depth > MAX_RECORD_DEPTH or not Path(model_path).exists():
        return []
    records, sources = [], []
    folder = run_folder_of(model_path)
    if folder is not None:
        config = json.loads((folder / RUN_CONFIG).read_text())
        records.append(RunRecord(folder, config))
        for entry in ("base_model", "init_adapter"):
            recorded = config.get(entry) or {}
            sources.append(_existing(recorded.get("resolved")) or _existing(
                recorded.get("name_or_path", recorded.get("path"))))
    if is_adapter_dir(model_path):
        sources.append(_existing(adapter_base_model(model_path), Path(model_path)))
    seen = {r.folder.resolve() for r in records}
    for source in sources:
        for record in training_records(source, depth + 1) if source else []:
            if record.folder.resolve() not in seen:
                seen.add(record.folder.resolve())
                records.append(record)
    return records


# ------------------------------------------------------------------ the overlap check
def train_overlap(model_paths: Iterable[str | Path], data, allow: bool) -> dict[int, bool] | None:
    """example_id -> whether its problem was in the training rows of ``model_paths``' runs.

    Raises ``UsageError`` (exit 2) when any scored row was trained on, unless ``allow``.
    Returns None (after a one-line warning) when no run says what it trained on.
    """
    records, seen = [], set()
    for path in model_paths:
        for record in training_records(path):
            if record.training_data and record.folder.resolve() not in seen:
                seen.add(record.folder.resolve())
                records.append(record)
    names = ", ".join(str(p) for p in model_paths)
    if not records:
        print(f"warning: no training record (run_config.json with training_data) found for {names}: "
              "cannot check whether the scored rows were trained on")
        return None
    example_ids = [e.example_id for e in data.examples]
    trained_on = dict.fromkeys(example_ids, False)
    problems = set()
    for record in records:
        column = record.training_data["problem_column"]
        if column != PROMPT_KEY and column not in data.frame.columns:
            print(f"warning: {data.report.path} has no column {column!r}, the problem key of "
                  f"{record.folder}'s training data: cannot check overlap with that run")
            continue
        trained = set(record.training_data["train_problem_keys"])
        for example_id, key in problem_keys(data, example_ids, column).items():
            if key in trained:
                trained_on[example_id] = True
                problems.add(key)
    count = sum(trained_on.values())
    if count and not allow:
        runs = ", ".join(str(r.folder) for r in records)
        raise UsageError(
            f"{count} of {len(example_ids)} scored rows of {data.report.path} ({len(problems)} "
            f"problems) were in the training data of {runs}; score held-out rows (e.g. the "
            "test.parquet of scripts/prepare_data.py) or pass --allow_train_overlap (adds a "
            "trained_on column)")
    if count:
        print(f"warning: {count} of {len(example_ids)} scored rows ({len(problems)} problems) "
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
    folder = run_folder_of(adapter_dir)
    if folder is not None:
        resolved = json.loads((folder / RUN_CONFIG).read_text()).get("base_model", {}).get("resolved")
        if resolved and os.path.exists(resolved):
            return resolved
    return base


def _recorded_base_fingerprint(adapter_dir: str | Path) -> str | None:
    folder = run_folder_of(adapter_dir)
    if folder is None:
        return None
    return json.loads((folder / RUN_CONFIG).read_text()).get("base_model", {}).get("fingerprint")


def same_model(given: str, recorded: str, adapter_dir: str | Path) -> bool:
    """Same folder, or same content (a copy, or the recorded folder moved)."""
    if resolved_name(given) == resolved_name(recorded):
        return True
    if not os.path.isdir(given):
        return False
    if os.path.isdir(recorded):
        return model_fingerprint(given) == model_fingerprint(recorded)
    return model_fingerprint(given) == _recorded_base_fingerprint(adapter_dir)


def resolve_adapter_base(adapter_dir: str | Path, base_model: str | None = None,
                         force: bool = False, flag: str = "--base_model") -> str:
    """The base model to load the adapter ``adapter_dir`` on.

    Default: the one it was trained on (``recorded_adapter_base``). A ``base_model`` that is not
    that model raises ``UsageError`` (exit 2) unless ``force``: scores of an adapter on another
    base look fine and are wrong.
    """
    recorded = recorded_adapter_base(adapter_dir)
    if base_model is None or same_model(base_model, recorded, adapter_dir):
        return recorded if base_model is None else base_model
    if force:
        logger.warning("%s: loading on %s although it was trained on %s (--force_base_model)",
                       adapter_dir, base_model, recorded)
        print(f"warning: {adapter_dir} loaded on {base_model}, not on its recorded base {recorded}")
        return base_model
    raise UsageError(
        f"{flag} {base_model} is not the base model of the adapter {adapter_dir}: it was trained "
        f"on {recorded} (adapter_config.json base_model_name_or_path). Leave {flag} out to use "
        "the recorded base, or pass --force_base_model to load it on another one anyway")
