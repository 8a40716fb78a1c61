"""Reading probes.parquet / token_logps.parquet of an analysis tree as one SFT -> DPO series per
training set, and the numbers the probe figures and their one-line description show.

Layout (the launchers' and the quickstart's): ``ROOT/<train set>/<stage>/probes.parquet``, e.g.
``m/sft`` and ``m/dpo``. Checkpoints get a ``label`` (``sft:2``, ``dpo:checkpoint-8``) and an
``x`` position: SFT epochs first, then the DPO checkpoints after the last SFT epoch. The DPO
series' own ``base`` (its starting model, the last SFT epoch) gets no x when the SFT series is
present (it is not drawn twice), but it is the start of ``dpo_shift``: ``self_greedy`` is each
series' own starting model's response, so only the DPO series' rows compare over DPO.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fwdrev.probe_scoring import PROBES_FILE

PROBE_ORDER = ["y+", "y-", "argmax_along_y+", "argmax_along_y-", "irr_train", "irr_test", "permuted",
               "permuted_irr", "self_greedy"]
STAGE_ORDER = {"sft": 0, "dpo": 1}


def find_series(root, file_name: str = PROBES_FILE) -> dict[str, dict[str, Path]]:
    """train set -> stage -> file, for every ``<set>/<stage>/<file_name>`` under ``root``."""
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(Path(root).rglob(file_name)):
        stage, train_set = path.parent.name, path.parent.parent.name
        if stage in STAGE_ORDER:
            found.setdefault(train_set, {})[stage] = path
    return found


def read_series(paths: dict[str, Path], columns=None) -> pd.DataFrame:
    """The stages of one training set in order, with ``label`` and ``x`` columns."""
    frames, offset = [], 0.0
    for stage in sorted(paths, key=STAGE_ORDER.get):
        frame = pd.read_parquet(paths[stage], columns=columns)
        drawn = frame[frame["checkpoint"] != "base"] if stage == "dpo" and "sft" in paths else frame
        order = drawn[["epoch", "checkpoint"]].drop_duplicates().sort_values("epoch")["checkpoint"].tolist()
        positions = {name: offset + i for i, name in enumerate(order)}
        if stage == "dpo" and "sft" in paths:  # DPO ordinals 1..K continue after the last SFT epoch
            positions = {name: offset - 1 + drawn.loc[drawn["checkpoint"] == name, "epoch"].iloc[0]
                         for name in order}
        frame = frame.assign(label=stage + ":" + frame["checkpoint"].astype(str),
                             x=frame["checkpoint"].map(positions).astype(float))
        offset = max(positions.values()) + 1 if positions else offset
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def probe_means(series: pd.DataFrame, value: str = "logp_mean") -> pd.DataFrame:
    """Mean of ``value`` per (probe, sample_type, checkpoint): one row each, with label and x."""
    keys = ["probe", "sample_type", "x", "label", "stage"]
    return series.groupby(keys, as_index=False)[value].mean().sort_values(["probe", "sample_type", "x"])


def dpo_shift(series: pd.DataFrame, value: str = "logp_mean") -> pd.Series | None:
    """Per probe: mean ``value`` at the last DPO checkpoint minus at the DPO start (the DPO
    series' own base, else the last SFT checkpoint); None without DPO checkpoints."""
    dpo = series[series["stage"] == "dpo"]
    if dpo["x"].isna().all():
        return None
    end = dpo[dpo["x"] == dpo["x"].max()]
    start = dpo[dpo["checkpoint"] == "base"]
    if start.empty:
        before = series[series["x"] < dpo["x"].min()]
        start = before[before["x"] == before["x"].max()]
    shift = end.groupby("probe")[value].mean() - start.groupby("probe")[value].mean()
    shift = shift.dropna()
    return shift.reindex(sorted(shift.index, key=lambda p: (PROBE_ORDER.index(p) if p in PROBE_ORDER else 99, p)))


def describe_shift(train_set: str, shift: pd.Series | None) -> str:
    """One sentence: how each probe's mean per-token log-prob moved over DPO (numbers, no verdict)."""
    if shift is None or shift.empty:
        return f"D_{train_set}: no DPO checkpoints with probes."
    parts = ", ".join(f"{probe} {value:+.3f}" for probe, value in shift.items())
    others = shift.drop(["y+", "y-"], errors="ignore")
    rising = ", ".join(others[others > 0].index)
    if "y-" not in shift or shift["y-"] >= 0:
        tail = "y- did not fall"
    elif rising:
        tail = f"y- fell while these probes rose: {rising}"
    else:
        tail = "y- fell and none of the other probes rose (its mass went to responses not probed here)"
    return f"D_{train_set}, over DPO, change of the mean per-token log-prob: {parts}; {tail}."


def checkpoint_order(series: pd.DataFrame) -> list[str]:
    """The drawn checkpoints' labels in x order (the DPO series' own base, without x, left out)."""
    return series[series["x"].notna()].drop_duplicates("label").sort_values("x")["label"].tolist()


def tick_label(label: str) -> str:
    """'sft:2' -> '2', 'dpo:checkpoint-8' -> 's8' (a DPO step), 'dpo:base' -> 'base'."""
    stage, name = str(label).split(":", 1)
    return f"s{name.replace('checkpoint-', '')}" if stage == "dpo" and name != "base" else name


def relabel(series: pd.DataFrame) -> pd.DataFrame:
    """The ``label`` as the checkpoint name (token tables are keyed by checkpoint)."""
    return series.assign(checkpoint=series["label"])


def finite_range(matrices) -> float:
    """The largest absolute finite value of the matrices (a symmetric colour scale), at least 1e-6."""
    values = [np.nanmax(np.abs(m)) for m in matrices if np.isfinite(m).any()]
    return max(values + [1e-6])

