"""Per-example predictions as JSONL, appended record by record so a killed run resumes.

Each batch of records is appended as whole lines and flushed to disk (``fsync``) before the
next batch is generated. A run killed mid-write can leave one partial last line: reading
reports it and ignores it (its example is generated again), and the next append first cuts
the file back to its last complete line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from fwdrev.data_checks import DataValidationError

RECORD_FIELDS = ("model", "checkpoint", "stage", "epoch", "step", "benchmark", "id", "group", "sample_type",
                 "prompt", "generation", "thinking_tokens", "answer_tokens", "stop_reason", "extracted",
                 "gold", "correct", "grader")
KEY_FIELDS = ("model", "benchmark", "id")


def record_key(record: dict) -> tuple[str, str, str]:
    return tuple(str(record[f]) for f in KEY_FIELDS)


def read_records(path: str | Path) -> tuple[list[dict], int]:
    """(complete records, byte length of the complete lines); a partial last line is ignored."""
    path = Path(path)
    if not path.is_file():
        return [], 0
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        print(f"note: {path}: ignoring a partial last line ({len(data) - len(complete)} bytes, "
              "from an interrupted run); its example is generated again")
    records = []
    for number, line in enumerate(complete.decode().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataValidationError(f"{path}:{number}: not a JSON record ({error})") from error
    return records, len(complete)


class PredictionStore:
    """The predictions file of one output folder: what is done, and appending more."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records, self._valid_bytes = read_records(self.path)
        self.done = {record_key(r) for r in self.records}

    def append(self, records: Iterable[dict]) -> None:
        records = list(records)
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as file:
            file.truncate(self._valid_bytes)  # drop a partial line left by a killed run
            file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
            file.flush()
            os.fsync(file.fileno())
            self._valid_bytes = file.tell()
        self.records += records
        self.done |= {record_key(r) for r in records}
