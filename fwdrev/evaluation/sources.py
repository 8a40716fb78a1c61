"""Where each benchmark's rows come from: a local file (``--data_files``), else the HF hub.

Many clusters are offline, so a local file in the hub dataset's schema (Parquet, JSONL, JSON or
CSV) is a first-class source. What was read is recorded: a file's path and SHA-256, or the hub
dataset, config, split, the revision asked for and the commit it resolved to.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fwdrev.data import read_table
from fwdrev.data_checks import DataValidationError
from fwdrev.errors import UsageError
from fwdrev.evaluation.tasks import BENCHMARKS, Benchmark
from fwdrev.fingerprint import file_sha256


def parse_data_files(values: list[str] | None, benchmarks: list[str]) -> dict[str, str]:
    """``NAME=PATH`` entries (a bare ``PATH`` when one benchmark is named) -> {name: path}."""
    files: dict[str, str] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or name not in BENCHMARKS:
            if len(benchmarks) != 1:
                raise UsageError(f"--data_files {value}: give NAME=PATH (NAME one of {', '.join(benchmarks)}) "
                                 "when several benchmarks are named")
            name, path = benchmarks[0], value
        if name not in benchmarks:
            raise UsageError(f"--data_files {value}: {name} is not in --benchmarks {','.join(benchmarks)}")
        if name in files:
            raise UsageError(f"--data_files names {name} twice")
        files[name] = path
    return files


def read_local(path: str) -> pd.DataFrame:
    if Path(path).suffix.lower() == ".csv":
        if not Path(path).is_file():
            raise DataValidationError(f"{path}: file not found")
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    return read_table(path)


def resolved_hub_commit(dataset: str, revision: str) -> str | None:
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(dataset, revision=revision).sha
    except Exception:  # offline or gated: the requested revision is still recorded
        return None


def load_benchmark_frame(benchmark: Benchmark, local_path: str | None,
                         revision: str | None = None) -> tuple[pd.DataFrame, dict]:
    """(rows, source record) of a math or choice benchmark."""
    if local_path is not None:
        frame = read_local(local_path)
        return frame, {"file": str(Path(local_path).resolve()), "sha256": file_sha256(local_path),
                       "rows": len(frame)}
    dataset, config, split = benchmark.hub
    revision = revision or benchmark.revision
    try:
        import datasets

        rows = datasets.load_dataset(dataset, config, split=split, revision=revision)
    except Exception as error:  # offline, gated (GPQA needs an accepted licence and HF_TOKEN), renamed
        raise UsageError(f"benchmark {benchmark.name}: could not load {dataset} ({config or 'default'}, "
                         f"{split}, revision {revision}) from the HF hub: {error}. Offline: pass a local "
                         f"file with its columns {list(benchmark.columns)}: --data_files "
                         f"{benchmark.name}=PATH") from error
    frame = rows.to_pandas()
    return frame, {"hub": dataset, "config": config, "split": split, "revision": revision,
                   "commit": resolved_hub_commit(dataset, revision), "rows": len(frame)}
