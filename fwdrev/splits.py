"""Held-out splits that keep both rows of a problem (forward and reverse) on the same side."""

from __future__ import annotations

import random

import pandas as pd


def default_group_column(frame: pd.DataFrame) -> str:
    """`problem_id` in our synthetic data; in the study's data the forward `question` is shared
    by the original and the flipped row of a problem."""
    return "problem_id" if "problem_id" in frame.columns else "question"


def split_by_group(frame: pd.DataFrame, test_groups: int, seed: int = 0, group_column: str | None = None,
                   train_groups: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded split into (train, test) by whole groups; row order within each side is kept.

    ``train_groups`` caps the train side (a smaller run), taken from the groups not in test.
    """
    group_column = group_column or default_group_column(frame)
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
