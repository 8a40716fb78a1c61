"""The ``self_greedy`` probe: the starting model's own greedy response to each prompt.

Generated once per example (never per checkpoint), with ``fwdrev.answers.generate_greedy_outputs``
under a token budget, and cached in OUTPUT_DIR/self_greedy.parquet (example_id, text, hit_budget)
with a key of what it was generated from (the starting model's fingerprint, the data file's hash,
the prompt settings and the budget): a resumed run reuses it, a changed starting model or budget
regenerates it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fwdrev.answers import generate_greedy_outputs, reference_budget
from fwdrev.fingerprint import file_sha256, model_fingerprint
from fwdrev.sharding import read_key, write_parquet

GREEDY_FILE = "self_greedy.parquet"


def greedy_budget(max_new_tokens: int | None, tokenizer, data) -> int:
    """``--probe_max_new_tokens``, else the longest y+ (as ``evaluate_answers.py``'s default)."""
    return max_new_tokens if max_new_tokens is not None else reference_budget(tokenizer, data.examples)[0]


def greedy_key(start_model: str, args, budget: int, dtype) -> dict:
    """What the cached responses depend on."""
    return {"start_model_fingerprint": model_fingerprint(start_model), "data_sha256": file_sha256(args.dataset_path),
            "max_new_tokens": int(budget), "max_prompt_length": args.max_prompt_length,
            "prompt_field": args.prompt_field, "flipped_prompt_field": args.flipped_prompt_field,
            "sample_types": args.sample_types, "dtype": str(dtype)}


def cached_greedy(path: str | Path, key: dict, pairs, tokenizer, start_model, batch_size: int,
                  budget: int) -> dict[int, str]:
    """example_id -> greedy response text of every pair, generating only what the cache lacks.

    ``start_model``: a context manager factory yielding the starting model (loaded only when
    something is missing). A response that stopped on the end-of-sequence token keeps it (it is
    scored like a finished y+); one cut by the budget does not.
    """
    path = Path(path)
    cached = pd.read_parquet(path) if read_key(path) == key else pd.DataFrame(columns=["example_id", "text",
                                                                                        "hit_budget"])
    have = set(cached["example_id"].astype(int))
    todo = [pair for pair in pairs if pair.example_id not in have]
    if todo:
        print(f"self_greedy: generating {len(todo)} responses (budget {budget} tokens), cached in {path}")
        with start_model() as model:
            outputs = generate_greedy_outputs(model, tokenizer, [p.prompt_ids for p in todo], budget, batch_size)
        end = tokenizer.eos_token or ""
        new = pd.DataFrame({"example_id": [p.example_id for p in todo],
                            "text": [g.text + ("" if g.hit_budget else end) for g in outputs],
                            "hit_budget": [g.hit_budget for g in outputs]})
        cached = pd.concat([cached, new], ignore_index=True) if len(cached) else new
        cached = cached.astype({"example_id": "int64", "hit_budget": bool})
        write_parquet(cached.sort_values("example_id").reset_index(drop=True), path, key)
    return dict(zip(cached["example_id"].astype(int), cached["text"]))
