"""Finding the rows of a preference file that cannot be used, per reason, and the error naming them.

Every check names the file, the column and the row indices (row index = position in the file), so
one message says what to fix; ``--drop_invalid_rows`` turns the error into excluded, reported rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from fwdrev.errors import DataValidationError

MAX_INDICES_IN_MESSAGE = 20


@dataclass(frozen=True)
class Columns:
    """Where a file keeps prompts and responses; ``rejected=None``: SFT data (prompt + chosen only)."""

    prompt: str
    chosen: str
    rejected: str | None
    flipped_prompt: str | None  # plain flipped rows are prompted with it when the file has it

    @property
    def responses(self) -> list[str]:
        return [self.chosen] if self.rejected is None else [self.chosen, self.rejected]


def require_columns(frame: pd.DataFrame, path, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataValidationError(
            f"{path}: missing column(s) {missing}; available columns: {list(frame.columns)}"
        )


def select_sample_types(frame: pd.DataFrame, path, columns: Columns,
                        wanted_types: list[str] | None) -> pd.DataFrame:
    """Check the response columns exist; keep the rows of the wanted sample types (None: all)."""
    require_columns(frame, path, columns.responses)
    if wanted_types is None:
        return frame
    require_columns(frame, path, ["sample_type"])
    present = set(frame["sample_type"].dropna().astype(str))
    missing = [t for t in wanted_types if t not in present]
    if missing:
        raise DataValidationError(
            f"{path}: column 'sample_type' has no rows with value(s) {missing}; "
            f"present values: {sorted(present)}"
        )
    return frame[frame["sample_type"].isin(wanted_types)]


def plain_prompt_columns(frame: pd.DataFrame, path, columns: Columns) -> dict[int, str]:
    """Row index -> the column that holds its plain prompt (flipped rows: the reverse question)."""
    require_columns(frame, path, [columns.prompt])
    flipped = columns.flipped_prompt
    use_flipped = bool(flipped) and flipped in frame.columns and "sample_type" in frame.columns
    return {int(i): flipped if use_flipped and row.get("sample_type") == "flipped" else columns.prompt
            for i, row in frame.iterrows()}


def invalid_values(frame: pd.DataFrame, columns: Columns,
                   prompt_columns: dict[int, str] | None) -> dict[str, list[int]]:
    """Rows whose values cannot be used (missing, empty, non-string, chosen = rejected) per reason."""
    problems = value_problems(frame, columns.responses, prompt_columns)
    if columns.rejected is None:
        return problems
    bad_rows = {i for rows in problems.values() for i in rows}
    identical = [int(i) for i, row in frame.iterrows()
                 if i not in bad_rows and row[columns.chosen] == row[columns.rejected]]
    if identical:
        problems[f"columns '{columns.chosen}' and '{columns.rejected}': chosen identical to rejected"] = identical
    return problems


def value_problems(frame: pd.DataFrame, response_fields: list[str],
                   prompt_fields: dict[int, str] | None) -> dict[str, list[int]]:
    """Missing, empty or non-string values: reason naming the column -> row indices."""
    cells = {column: list(frame.index) for column in response_fields}
    for i, column in (prompt_fields or {}).items():  # plain rows: only the prompt column they use
        cells.setdefault(column, []).append(i)
    problems: dict[str, list[int]] = {}
    for column in sorted(cells, key=lambda c: c in response_fields):  # prompt columns first
        bad = [int(i) for i in cells[column] if not is_nonempty_string(frame.at[i, column])]
        if bad:
            problems[f"column '{column}': missing, empty or non-string value"] = bad
    return problems


def rows_by_reason(pairs: Iterable[tuple[int, str]], order: list[str]) -> dict[str, list[int]]:
    """(row, reason) pairs -> reason -> rows, reasons in ``order`` (an unlisted reason is a bug)."""
    found: dict[str, list[int]] = {}
    for i, reason in pairs:
        found.setdefault(reason, []).append(i)
    return {reason: found[reason] for reason in sorted(found, key=order.index)}


def raise_unless_dropped(path, problems: dict[str, list[int]], drop_invalid_rows: bool) -> None:
    """One error listing every reason with its rows, unless the rows are to be dropped."""
    if problems and not drop_invalid_rows:
        details = "\n".join(f"  {reason}: rows {preview(rows)}" for reason, rows in problems.items())
        raise DataValidationError(
            f"{path}: {sum(map(len, problems.values()))} invalid rows "
            f"(pass --drop_invalid_rows to exclude them instead):\n{details}"
        )


def is_nonempty_string(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def preview(rows: list[int]) -> str:
    shown = ", ".join(map(str, rows[:MAX_INDICES_IN_MESSAGE]))
    more = f", ... ({len(rows)} in all)" if len(rows) > MAX_INDICES_IN_MESSAGE else ""
    return f"[{shown}{more}]"
