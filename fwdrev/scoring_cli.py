"""The scoring scripts' shared command line: data, truncation, batching and sharding flags, their
checks, and loading the pairs they name."""

from __future__ import annotations

import argparse

from fwdrev.data import PreferenceData, RowSelection, load_preference_data
from fwdrev.data_arguments import add_data_flags
from fwdrev.errors import LengthSettingsError
from fwdrev.logprobs import DEFAULT_CHUNK_SIZE
from fwdrev.original_scoring import MIN_MAX_TOKENS, SCORINGS, encode_original_examples
from fwdrev.scoring import CPU_CHUNK_MB
from fwdrev.tokenization import TokenizedPair, check_lengths, default_max_prompt_length, encode_examples


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """Data, truncation, batching and sharding flags shared by the analysis scripts."""
    parser.add_argument("--dataset_path", required=True, help="Parquet or JSONL preference file.")
    add_data_flags(parser)  # --prompt_field ... --max_prompt_length, as the training scripts have them
    parser.add_argument("--max_tokens", type=int, default=1000,
                        help="K of the *_first_k columns: statistics over the first K response tokens.")
    parser.add_argument("--score_tokens", type=int, default=None, help="Score only each response's first "
                        "K (>= --max_tokens) tokens: *_first_k exact, whole-response log-probs NaN.")
    parser.add_argument("--batch_size", type=int, default=2, help="Pairs per forward pass.")
    parser.add_argument("--logprob_chunk_size", type=int, default=None,
                        help="Response tokens per output-head chunk (bounds logits memory); default "
                             f"{DEFAULT_CHUNK_SIZE} on GPUs, {CPU_CHUNK_MB} MiB of logits on the CPU.")
    parser.add_argument("--logprob_chunk_mb", type=float, default=None,
                        help="Instead of --logprob_chunk_size: the chunk whose logits fit in this many MiB.")
    parser.add_argument("--gpu_id", type=int, default=0, help="CUDA device of a single-process run.")
    parser.add_argument("--use_flash_attention", action="store_true",
                        help="flash_attention_2 if flash-attn and CUDA are present, else SDPA.")
    parser.add_argument("--num_shards", type=int, default=None,
                        help="Split the examples over this many separate runs (with --shard_id); "
                             "the last run to finish merges. Under torchrun: the world size.")
    parser.add_argument("--shard_id", type=int, default=None, help="This run's shard, 0-based.")
    parser.add_argument("--scoring", choices=SCORINGS, default="response",
                        help="response: the response tokens after the conversation's own prompt; "
                             "original: the original analysis's definition, which the published "
                             "figure used (fixed prompt + the question column, whole conversation "
                             "as completion, first --max_tokens tokens minus the first; see docs/data_format.md).")
    parser.add_argument("--allow_train_overlap", action="store_true",
                        help="Score rows whose problems the model was trained on (its run_config.json "
                             "says which) instead of stopping; adds a boolean trained_on column.")
    parser.add_argument("--force_base_model", action="store_true",
                        help="Load LoRA adapters on --base_model even when it is not the base "
                             "recorded in their adapter_config.json, or its content is not the one "
                             "recorded at training.")
    parser.add_argument("--require_provenance", action="store_true",
                        help="Stop (exit 2) when no training record says what the model was trained "
                             "on (default: a warning, and no overlap check).")


def parse_scoring_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse, and refuse inconsistent length flags before any model is loaded (exit 2)."""
    args = parser.parse_args(argv)
    if args.max_prompt_length is None:
        args.max_prompt_length = default_max_prompt_length(args.max_length)
    try:
        check_lengths(args.max_length, args.max_prompt_length)
    except LengthSettingsError as error:
        parser.error(str(error))
    if args.score_tokens is not None and args.score_tokens < args.max_tokens:
        parser.error(f"--score_tokens {args.score_tokens} is below --max_tokens {args.max_tokens}: the "
                     "*_first_k columns need the first --max_tokens tokens scored")
    if args.scoring == "original" and args.max_tokens < MIN_MAX_TOKENS:
        parser.error(f"--scoring original needs --max_tokens >= {MIN_MAX_TOKENS} (it drops the "
                     f"first of the first --max_tokens tokens), got {args.max_tokens}")
    return args


def load_scoring_pairs(args, tokenizer) -> tuple[PreferenceData, list[TokenizedPair]]:
    """Load, validate and tokenize ``--dataset_path``; truncations are added to the report."""
    rows = RowSelection.from_args(args)
    data = load_preference_data(args.dataset_path, rows, tokenizer)
    if args.scoring == "original":
        pairs = encode_original_examples(tokenizer, data, rows, args.max_tokens, args.max_length,
                                         args.max_prompt_length)
    else:
        pairs = encode_examples(tokenizer, data.examples, args.max_length, args.max_prompt_length,
                                data.report)
    return data, pairs
