"""Held-out splits that keep both rows of a problem (forward and reverse) on the same side: of a
data file (``split_by_group``, scripts/prepare_data.py) and of a training run's rows (``split_train_eval``)."""

from __future__ import annotations

import random
from collections import Counter

import pandas as pd

from fwdrev.errors import UsageError
from fwdrev.problems import group_column as problem_group_column


def split_by_group(frame: pd.DataFrame, test_groups: int, seed: int = 0, group_column: str | None = None,
                   train_groups: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded split into (train, test) by whole groups; row order within each side is kept.

    ``train_groups`` caps the train side (a smaller run), taken from the groups not in test.
    """
    group_column = group_column or problem_group_column(frame)
    if group_column not in frame.columns:
        raise ValueError(f"group column {group_column!r} not in {list(frame.columns)}")
    groups = list(dict.fromkeys(frame[group_column]))
    if not 0 < test_groups < len(groups):
        raise ValueError(f"test_groups must be between 1 and {len(groups) - 1}, got {test_groups}")
    random.Random(seed).shuffle(groups)
    test = set(groups[:test_groups])
    rest = groups[test_groups:]
    train = set(rest if train_groups is None else rest[:train_groups])
    is_test = frame[group_column].isin(test)
    return frame[frame[group_column].isin(train) & ~is_test], frame[is_test]


def split_train_eval(items: list, eval_size: float, seed: int,
                     groups: list | None = None) -> tuple[list, list]:
    """Seeded hold-out of whole problems, ``eval_size`` rows (fraction < 1 or count >= 1).

    ``groups`` holds each item's problem key: both rows of a problem (forward and reverse)
    land on the same side. Problems are drawn in a seeded order until the hold-out has at
    least ``eval_size`` rows; without groups every row is its own problem.
    """
    groups = list(range(len(items))) if groups is None else list(groups)
    count = int(round(eval_size * len(items))) if eval_size < 1 else int(eval_size)
    if count > len(items) // 2:
        raise UsageError(f"--eval_size {eval_size:g} would hold out {count} of {len(items)} rows, leaving "
                         "fewer to train on than to evaluate; lower --eval_size (0 = no evaluation)")
    if count <= 0:
        return list(items), []
    order = list(dict.fromkeys(groups))
    random.Random(seed).shuffle(order)
    sizes = Counter(groups)
    held_out, held_rows = set(), 0
    for group in order:
        if held_rows >= count:
            break
        if held_rows + sizes[group] < len(items):  # keep at least one training row
            held_out.add(group)
            held_rows += sizes[group]
    train = [item for item, group in zip(items, groups) if group not in held_out]
    return train, [item for item, group in zip(items, groups) if group in held_out]


def row_groups(frame, example_ids) -> list | None:
    """The problem of each row (``fwdrev.problems.group_column``), None without that column."""
    column = problem_group_column(frame)
    if column not in frame.columns:
        return None
    return [frame.at[example_id, column] for example_id in example_ids]
