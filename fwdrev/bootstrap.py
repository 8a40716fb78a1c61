"""Percentile bootstrap of a mean, over rows or over whole groups (problems).

A problem's original and flipped rows share their two traces with the roles swapped, so they
are not independent draws: confidence intervals resample problems (cluster bootstrap).
"""

from __future__ import annotations

import numpy as np

BOOTSTRAP_SAMPLES = 1000


def bootstrap_mean_ci(values, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                      level: float = 0.95, groups=None) -> list[float]:
    """Percentile bootstrap confidence interval of the mean (NaNs dropped).

    ``groups`` (one key per value): resample whole groups (cluster bootstrap) and take the
    mean over all values of the drawn groups; None = the values are independent.
    """
    values = np.asarray(values, dtype=float)
    groups = np.arange(values.size) if groups is None else np.asarray(groups)
    if groups.shape != values.shape:
        raise ValueError(f"{groups.size} group keys for {values.size} values")
    keep = ~np.isnan(values)
    values, groups = values[keep], groups[keep]
    if values.size == 0:
        return [float("nan"), float("nan")]
    _, group_index = np.unique(groups, return_inverse=True)
    sums, counts = np.bincount(group_index, weights=values), np.bincount(group_index)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, sums.size, size=(samples, sums.size))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]
