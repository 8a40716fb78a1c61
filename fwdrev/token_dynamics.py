"""Per-position log-probs of y+ and y- at every checkpoint, and the tables drawn from them.

``TokenCollector`` is the ``on_batch`` hook of ``fwdrev.scoring.score_pairs``: from the same
forward pass as the y+ / y- scores it keeps, per example and response, the float32 log-probs of
the first K response tokens, the max log-prob at those positions (the "argmax token" along the
trace, the probe of the squeezing effect) and the token ids, plus the whole-response statistics
of the argmax log-probs. Arrays stay float32 numpy arrays (one per example, checkpoint and
response): never a DataFrame of Python floats, never a full-vocabulary tensor.

The table functions below (``position_change``, ``cumulative_preference``, ``top_moving_tokens``)
read ``token_logps.parquet`` (``TOKEN_COLUMNS``) for the figures of ``visualization/plot_probes.py``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fwdrev.tokenization import ChosenRejected

SIDES = ChosenRejected._fields  # ("chosen", "rejected")
ARGMAX_PROBES = {"chosen": "argmax_along_y+", "rejected": "argmax_along_y-"}
PROBE_STATS = ["num_tokens", "logp_sum", "logp_mean", "num_tokens_first_k", "logp_sum_first_k",
               "logp_mean_first_k"]
TOKEN_COLUMNS = ["checkpoint", "stage", "epoch", "step", "example_id", "sample_type", "response",
                 "token_ids", "logps", "argmax_logps"]


def span_stats(values: np.ndarray, first_k: int) -> dict:
    """Count, sum and mean of per-token log-probs, over all and over the first ``first_k``."""
    stats = {}
    for suffix, part in (("", values), ("_first_k", values[:first_k])):
        total = float(part.astype(np.float64).sum())
        stats[f"num_tokens{suffix}"] = len(part)
        stats[f"logp_sum{suffix}"] = total
        stats[f"logp_mean{suffix}"] = total / len(part) if len(part) else float("nan")
    return stats


class TokenCollector:
    """Collects per-position values of each scored batch (see the module docstring).

    ``first_k``: K of the ``*_first_k`` statistics (``--max_tokens``); ``positions``: how many
    leading positions are kept per response (``--token_positions``, 0 = none); ``score_tokens``:
    the responses were cut to that many tokens, so whole-response argmax sums are NaN.
    """

    def __init__(self, first_k: int, positions: int, score_tokens: int | None = None):
        self.first_k, self.positions, self.score_tokens = first_k, positions, score_tokens
        self.argmax_rows: list[dict] = []
        self.position_rows: list[dict] = []

    def __call__(self, batch_pairs, out) -> None:
        count = len(batch_pairs)
        for side_index, side in enumerate(SIDES):
            for j, pair in enumerate(batch_pairs):
                row = side_index * count + j  # collate_pairs: the chosen rows, then the rejected rows
                mask = out.mask[row]
                logps = out.per_token[row][mask].float().cpu().numpy()
                argmax = out.argmax_per_token[row][mask].float().cpu().numpy()
                stats = span_stats(argmax, self.first_k)
                if self.score_tokens is not None:  # cut responses: no whole-response values
                    stats.update(num_tokens=len(getattr(pair, f"{side}_ids")), logp_sum=float("nan"),
                                 logp_mean=float("nan"))
                self.argmax_rows.append({"example_id": pair.example_id, "probe": ARGMAX_PROBES[side],
                                         **stats})
                if self.positions:
                    ids = np.asarray(getattr(pair, f"{side}_ids")[: self.positions], dtype=np.int32)
                    self.position_rows.append({
                        "example_id": pair.example_id, "response": side, "token_ids": ids,
                        "logps": logps[: self.positions].astype(np.float32),
                        "argmax_logps": argmax[: self.positions].astype(np.float32)})

    def argmax_table(self) -> pd.DataFrame:
        """One row per (example, argmax probe): ``PROBE_STATS`` of the argmax log-probs."""
        return pd.DataFrame(self.argmax_rows, columns=["example_id", "probe", *PROBE_STATS])

    def token_table(self) -> pd.DataFrame:
        """One row per (example, response) with the kept positions' arrays (example order)."""
        frame = pd.DataFrame(self.position_rows, columns=["example_id", "response", "token_ids", "logps",
                                                          "argmax_logps"])
        return frame.sort_values(["example_id", "response"], kind="stable").reset_index(drop=True)


def with_checkpoint_columns(frame: pd.DataFrame, checkpoint, sample_types: dict) -> pd.DataFrame:
    """Add checkpoint name, stage, epoch, step and each example's sample_type in front."""
    frame = frame.copy()
    frame.insert(0, "checkpoint", str(checkpoint.name))
    frame.insert(1, "stage", str(checkpoint.stage))
    frame.insert(2, "epoch", np.int64(checkpoint.epoch))
    frame.insert(3, "step", pd.array([checkpoint.step] * len(frame), dtype="Int64"))
    frame.insert(5, "sample_type", [sample_types.get(i) or "unknown" for i in frame["example_id"]])
    return frame


# ------------------------------------------------------------------ tables for the figures
def _aligned(tokens: pd.DataFrame, start: str, column: str = "logps"):
    """Yield (row, values - start values) for rows whose example and response the start has."""
    start_rows = tokens[tokens["checkpoint"] == start].set_index(["example_id", "response"])[column]
    for row in tokens.itertuples(index=False):
        key = (row.example_id, row.response)
        if key in start_rows.index:
            base = np.asarray(start_rows.loc[key], dtype=np.float64)
            values = np.asarray(getattr(row, column), dtype=np.float64)
            width = min(len(base), len(values))
            yield row, values[:width] - base[:width]


def position_change(tokens: pd.DataFrame, start: str, checkpoints: list[str]) -> dict:
    """(sample_type, response) -> matrix (checkpoint x position) of the mean change of log p(token)
    from checkpoint ``start`` (NaN where no example reaches the position)."""
    width = int(tokens["logps"].map(len).max()) if len(tokens) else 0
    sums, counts = {}, {}
    index = {c: i for i, c in enumerate(checkpoints)}
    for row, change in _aligned(tokens, start):
        if row.checkpoint not in index:
            continue
        key = (row.sample_type, row.response)
        if key not in sums:
            sums[key] = np.zeros((len(checkpoints), width))
            counts[key] = np.zeros((len(checkpoints), width))
        sums[key][index[row.checkpoint], : len(change)] += change
        counts[key][index[row.checkpoint], : len(change)] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return {key: np.where(counts[key] > 0, sums[key] / counts[key], np.nan) for key in sums}


def cumulative_preference(tokens: pd.DataFrame) -> pd.DataFrame:
    """Mean over examples of sum_{t<=p} (log p(y+_t) - log p(y-_t)) at each position p, per
    checkpoint and sample_type (up to the shorter response of each example)."""
    rows = []
    for (checkpoint, sample_type), part in tokens.groupby(["checkpoint", "sample_type"], sort=False):
        sides = part.set_index(["example_id", "response"])["logps"]
        curves = []
        for example_id in part["example_id"].unique():
            if (example_id, "chosen") in sides.index and (example_id, "rejected") in sides.index:
                chosen = np.asarray(sides.loc[(example_id, "chosen")], dtype=np.float64)
                rejected = np.asarray(sides.loc[(example_id, "rejected")], dtype=np.float64)
                width = min(len(chosen), len(rejected))
                curves.append(np.cumsum(chosen[:width] - rejected[:width]))
        if not curves:
            continue
        width = max(len(c) for c in curves)
        padded = np.full((len(curves), width), np.nan)
        for i, curve in enumerate(curves):
            padded[i, : len(curve)] = curve
        with np.errstate(invalid="ignore"):
            means = np.nanmean(padded, axis=0)
        rows.append(pd.DataFrame({"checkpoint": checkpoint, "sample_type": sample_type,
                                  "position": np.arange(width), "cumulative_delta": means,
                                  "n_examples": (~np.isnan(padded)).sum(0)}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["checkpoint", "sample_type", "position", "cumulative_delta", "n_examples"])


def top_moving_tokens(tokens: pd.DataFrame, start: str, end: str, decode, top_n: int = 15,
                      min_count: int = 3) -> pd.DataFrame:
    """The tokens whose log-prob changed most from ``start`` to ``end`` on average: the ``top_n``
    rises and the ``top_n`` falls per response, among tokens seen at least ``min_count`` times."""
    changes: dict[tuple[str, int], list[float]] = {}
    for row, change in _aligned(tokens[tokens["checkpoint"].isin([start, end])], start):
        if row.checkpoint != end:
            continue
        for token_id, value in zip(np.asarray(row.token_ids)[: len(change)], change):
            changes.setdefault((row.response, int(token_id)), []).append(value)
    frame = pd.DataFrame([{"response": response, "token_id": token_id, "token": decode(token_id),
                           "count": len(values), "mean_change": float(np.mean(values))}
                          for (response, token_id), values in changes.items() if len(values) >= min_count],
                         columns=["response", "token_id", "token", "count", "mean_change"])
    picked = []
    for _, part in frame.groupby("response", sort=True):
        ordered = part.sort_values("mean_change", kind="stable")
        rises, falls = ordered[ordered["mean_change"] > 0], ordered[ordered["mean_change"] < 0]
        picked += [rises.tail(top_n).iloc[::-1].assign(direction="rise"),
                   falls.head(top_n).assign(direction="fall")]
    result = pd.concat(picked, ignore_index=True) if picked else frame.assign(direction=[])
    return result.assign(start=start, end=end)
