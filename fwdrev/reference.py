"""The DPO reference: which network it is, and the key of its cached log-probs.

``ReferenceMode.choose`` is the one place that decides what the reference is; the script loads
what the mode needs and the trainer scores what the mode says. ``reference_cache_key`` is the
one function that builds the key of ``reference_logps.parquet``: everything its values depend
on, by content (file hashes and model fingerprints), so a cache made for other data, weights,
fields, lengths, scoring rules or precision is never reused (rank 0 decides for every rank:
``fwdrev.rank_zero.decide_on_main_process``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import pandas as pd
import torch

from fwdrev.fingerprint import file_sha256, key_digest, model_fingerprint
from fwdrev.io import write_json, write_table
from fwdrev.layout import REFERENCE_CACHE, REFERENCE_CACHE_KEY
from fwdrev.model_arguments import training_tokenizer_source
from fwdrev.tokenization import SCORING_RULES_VERSION, TokenizedPair


class ReferenceMode(str, Enum):
    """What the reference is; always the initial policy, reached one of three ways."""

    ADAPTER_OFF = "adapter_off"  # fresh LoRA adapter disabled: the frozen base model, at any step
    INITIAL_POLICY = "initial_policy"  # the policy itself before its first update (precomputed)
    FROZEN_COPY = "frozen_copy"  # a separate frozen copy of the initial policy, scored every batch

    @classmethod
    def choose(cls, model_args, args) -> ReferenceMode:
        if model_args.use_lora and not model_args.init_adapter:
            return cls.ADAPTER_OFF
        # full fine-tuning, or continuing an SFT adapter: the initial policy's weights move
        return cls.INITIAL_POLICY if args.precompute_ref_log_probs else cls.FROZEN_COPY

    @property
    def needs_ref_model(self) -> bool:
        return self is ReferenceMode.FROZEN_COPY

    @property
    def scorable_after_updates(self) -> bool:
        """Whether the reference can still be scored once the policy has been trained."""
        return self is not ReferenceMode.INITIAL_POLICY


def reference_cache_key(mode: ReferenceMode, model_args, data_args, args, example_ids) -> dict:
    """Everything the cached reference log-probs depend on.

    Left out on purpose: the attention implementation (SDPA, eager and flash-attention give the
    same log-probs up to float rounding, far below any effect on a DPO loss, so switching it
    must not force a re-score) and the log-prob chunk size (it only bounds memory). The
    precision is not here: ``scoring_precision`` reads it off the model when it scores.
    """
    fields = {f.name: getattr(data_args, f.name) for f in dataclasses.fields(data_args)
              if f.name.endswith("_field")}  # prompt/chosen/rejected, and any added later
    ids = sorted(int(i) for i in example_ids)
    return {
        "reference": mode.value,
        "model": model_fingerprint(model_args.model_name),
        "init_adapter": model_fingerprint(model_args.init_adapter) if model_args.init_adapter else None,
        "tokenizer": model_fingerprint(training_tokenizer_source(model_args)),
        "scoring_rules": SCORING_RULES_VERSION,
        "data_sha256": file_sha256(data_args.train_file_path),
        **fields,
        "sample_types": data_args.sample_types,
        "max_length": data_args.max_length,
        "max_prompt_length": data_args.max_prompt_length,
        "num_pairs": len(ids),
        "example_ids": key_digest({"ids": ids}),
    }


def scoring_precision(model, device_type: str) -> dict:
    """The precision the reference is scored in on ``device_type``, as it is (not as the flags
    say): the dtypes of the model's parameters (--bf16 gives bf16 weights under DeepSpeed,
    float32 weights under autocast without it) and the autocast dtype in force (None: none)."""
    autocast = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    return {"weight_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
            "autocast_dtype": None if autocast is None else str(autocast)}


def key_differences(stored: dict, wanted: dict) -> list[str]:
    """Names of the key fields whose values differ (missing on either side counts)."""
    return sorted(name for name in stored.keys() | wanted.keys() if stored.get(name) != wanted.get(name))


@dataclass
class CacheDecision:
    frame: pd.DataFrame | None  # the cached log-probs (indexed by example_id) to use, or None
    reason: str  # why they are used or not


def check_reference_cache(output_dir: str | Path, key: dict, wanted_ids) -> CacheDecision:
    """Load the cache in ``output_dir`` if its key is ``key`` and it holds every wanted id."""
    cache, key_file = Path(output_dir) / REFERENCE_CACHE, Path(output_dir) / REFERENCE_CACHE_KEY
    if not (cache.is_file() and key_file.is_file()):
        return CacheDecision(None, f"no reference cache in {output_dir}")
    differ = key_differences(json.loads(key_file.read_text()), key)
    if differ:
        return CacheDecision(None, f"{cache} was made for other settings (differing key fields: "
                                   f"{', '.join(differ)})")
    frame = pd.read_parquet(cache).set_index("example_id")
    missing = set(wanted_ids) - set(frame.index)
    if missing:
        return CacheDecision(None, f"{cache} lacks {len(missing)} of the example ids")
    return CacheDecision(frame, f"reference log-probs loaded from {cache}")


def write_reference_cache(output_dir: str | Path, frame: pd.DataFrame, key: dict) -> None:
    """Write the log-probs, then their key: a run killed in between leaves no key (recompute)."""
    key_file = Path(output_dir) / REFERENCE_CACHE_KEY
    if key_file.exists():
        os.remove(key_file)  # an old key must never vouch for new values, nor a new one for old
    write_table(frame.reset_index(), Path(output_dir) / REFERENCE_CACHE)
    write_json(key_file, key)


def pair_length(pair: TokenizedPair) -> int:
    """Padded width of the pair in a batch (prompt + the longer response)."""
    return len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))


def length_sorted_shard(pairs: list[TokenizedPair], rank: int, world: int) -> list[TokenizedPair]:
    """This rank's share of ``pairs``, longest first, padded to the same count on every rank.

    Sorting before the round-robin split gives every rank pairs of similar length and lets
    batches pad little; longest first surfaces an out-of-memory at the first batch. Every rank
    makes the same number of forward passes (ZeRO-3 gathers weights collectively), so a shorter
    shard repeats its last pair.
    """
    ordered = sorted(pairs, key=lambda p: (-pair_length(p), p.example_id))
    per_rank = -(-len(ordered) // world)
    shard = ordered[rank::world] or ordered[-1:]  # fewer pairs than ranks
    return shard + [shard[-1]] * (per_rank - len(shard))
