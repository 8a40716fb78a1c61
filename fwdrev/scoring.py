"""Per-example response log-probs of y+ (chosen) and y- (rejected): the model-facing scorer.

One row per example: for each side the token count, sum, mean and peak (max) per-token
log-prob over the whole response and over its first K tokens, then the deltas
(chosen - rejected); the columns and the summaries are in ``fwdrev.score_summaries`` (pandas
only), the scripts' flags in ``fwdrev.scoring_cli``. Scoring is batched, longest pairs first
(an out-of-memory error shows up in the first batch, not after an hour), and never builds
full-vocabulary logits.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from fwdrev.data import PreferenceData
from fwdrev.logprobs import DEFAULT_CHUNK_SIZE, chunk_size_for_budget, scoring_logprobs
from fwdrev.modeling import eval_mode
from fwdrev.score_summaries import DELTA_STATS, SIDES, STAT_NAMES
from fwdrev.tokenization import TokenizedPair, collate_pairs, split_halves

# CPU scoring's default head chunk (55 tokens at 152k vocabulary): the fastest whole-process
# analysis measured, 0.8x the original's time (docs/performance.md); larger chunks are slower there.
CPU_CHUNK_MB = 64


def response_stats(per_token: torch.Tensor, mask: torch.Tensor, first_k: int) -> dict[str, torch.Tensor]:
    """Token count, sum, mean and max log-prob per row, over all and over the first K response tokens.

    Rows without response tokens get NaN mean and max.
    """
    first_k_mask = mask & (mask.cumsum(-1) <= first_k)  # response tokens are contiguous
    stats = {}
    for suffix, row_mask in (("", mask), ("_first_k", first_k_mask)):
        count = row_mask.sum(-1)
        total = (per_token * row_mask).sum(-1)
        empty = count == 0
        peak = per_token.masked_fill(~row_mask, float("-inf")).max(-1).values
        stats[f"num_tokens{suffix}"] = count
        stats[f"logp_sum{suffix}"] = total
        stats[f"logp_mean{suffix}"] = (total / count.clamp(min=1)).masked_fill(empty, float("nan"))
        stats[f"logp_max{suffix}"] = peak.masked_fill(empty, float("nan"))
    return stats


def pair_length(pair: TokenizedPair) -> int:
    return len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))


def score_pairs(model, pairs: list[TokenizedPair], pad_token_id: int, *, batch_size: int = 2,
                first_k: int = 1000, chunk_size: int = DEFAULT_CHUNK_SIZE,
                device: torch.device | str | None = None, progress: bool = False,
                score_tokens: int | None = None, on_batch=None) -> pd.DataFrame:
    """Score chosen and rejected responses of ``pairs``; one row per pair, in input order.

    Columns: example_id, ``{chosen,rejected}_{STAT_NAMES}`` and ``delta_{DELTA_STATS}``.
    ``score_tokens`` K (>= ``first_k``): only each response's first K tokens are run through the
    model (a causal model gives them the values of full scoring); see ``first_tokens_only``.
    ``on_batch(batch_pairs, out)``: called with each batch's ``SequenceLogprobs`` (chosen rows,
    then rejected rows; argmax included) for per-position outputs, ``fwdrev.token_dynamics``.
    """
    full_pairs = pairs
    if score_tokens is not None:
        pairs = [dataclasses.replace(pair, chosen_ids=pair.chosen_ids[:score_tokens],
                                     rejected_ids=pair.rejected_ids[:score_tokens]) for pair in pairs]
    device = device if device is not None else next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: -pair_length(pairs[i]))
    rows: dict[int, dict] = {}
    batches = range(0, len(order), batch_size)
    with eval_mode(model):
        for start in tqdm(batches, desc="scoring", unit="batch", disable=not progress):
            batch_indices = order[start : start + batch_size]
            batch_pairs = [pairs[i] for i in batch_indices]
            batch = collate_pairs(batch_pairs, pad_token_id)  # chosen rows, then rejected rows
            out = scoring_logprobs(model, batch["input_ids"].to(device),
                                   batch["attention_mask"].to(device),
                                   batch["labels"].to(device), chunk_size, with_argmax=on_batch is not None)
            if on_batch is not None:
                on_batch(batch_pairs, out)
            stats = {name: split_halves(values.cpu().tolist(), len(batch_pairs))
                     for name, values in response_stats(out.per_token, out.mask, first_k).items()}
            for j, index in enumerate(batch_indices):
                row = {"example_id": pairs[index].example_id}
                for side in SIDES:
                    row.update({f"{side}_{name}": getattr(stats[name], side)[j] for name in STAT_NAMES})
                rows[index] = row
    columns = ["example_id"] + [f"{side}_{name}" for side in SIDES for name in STAT_NAMES]
    frame = pd.DataFrame([rows[i] for i in range(len(pairs))], columns=columns)
    # explicit dtypes: a shard without rows would give object columns, and a merge with them
    frame = frame.astype({c: "int64" if c == "example_id" or "num_tokens" in c else "float64" for c in columns})
    if score_tokens is not None:
        frame = first_tokens_only(frame, full_pairs, score_tokens)
    for name in DELTA_STATS:
        frame[f"delta_{name}"] = frame[f"chosen_{name}"] - frame[f"rejected_{name}"]
    return frame


def first_tokens_only(frame: pd.DataFrame, full_pairs: list[TokenizedPair], score_tokens: int) -> pd.DataFrame:
    """Scores of responses cut to their first ``score_tokens`` tokens: the whole-response
    log-prob columns are NaN (never a first-K sum that reads as a full one), ``num_tokens`` stays
    the whole response's length, and a ``score_tokens`` column says what was scored."""
    frame = frame.copy()
    for side in SIDES:
        frame[f"{side}_num_tokens"] = [len(getattr(pair, f"{side}_ids")) for pair in full_pairs]
        frame[[f"{side}_logp_sum", f"{side}_logp_mean", f"{side}_logp_max"]] = float("nan")
    frame["score_tokens"] = np.int64(score_tokens)
    return frame


def scoring_chunk_size(args, model) -> int:
    """--logprob_chunk_mb's chunk for the model's vocabulary, else --logprob_chunk_size, else the
    device's default (``DEFAULT_CHUNK_SIZE`` on GPUs, ``CPU_CHUNK_MB`` on the CPU)."""
    budget_mb = args.logprob_chunk_mb
    if budget_mb is None and args.logprob_chunk_size is not None:
        return args.logprob_chunk_size
    if budget_mb is None and next(model.parameters()).device.type != "cpu":
        return DEFAULT_CHUNK_SIZE
    return chunk_size_for_budget(CPU_CHUNK_MB if budget_mb is None else budget_mb, model.config.vocab_size)


def scoring_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs (log-probs are still reduced in float32), float32 on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def sample_types_by_id(data: PreferenceData) -> dict[int, str | None]:
    """example_id -> sample_type of the loaded rows (None where the file has no sample_type)."""
    return {example.example_id: example.sample_type for example in data.examples}

