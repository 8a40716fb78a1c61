"""The ``self_greedy`` probe: the starting model's own greedy response to each prompt.

Generated once per example (never per checkpoint), greedy and batched with a KV cache (the
benchmarks' ``hf`` backend, ``fwdrev.evaluation.hf_backend``) under a token budget, and cached in
OUTPUT_DIR/self_greedy.parquet (example_id, text, hit_budget) with a key of what it was
generated from (the starting model's fingerprint, the data file's hash, the prompt settings and
the budget): a resumed run reuses it, a changed starting model or budget regenerates it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fwdrev.evaluation.forcing import StepRequest
from fwdrev.evaluation.hf_backend import HFBackend
from fwdrev.fingerprint import file_sha256, model_fingerprint
from fwdrev.sharding import read_key, write_parquet
from fwdrev.tokenization import encode_response

GREEDY_FILE = "self_greedy.parquet"


def greedy_budget(max_new_tokens: int | None, tokenizer, data) -> int:
    """``--probe_max_new_tokens``, else the longest y+ in tokens (a model that writes as long as
    the data is not cut off)."""
    if max_new_tokens is not None:
        return max_new_tokens
    return max(len(encode_response(tokenizer, e.chosen, e.shape == "plain")) for e in data.examples)


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
        stop_ids = tuple(sorted({tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}))
        with start_model() as model:
            outputs = HFBackend(model, tokenizer, batch_size).generate(
                [StepRequest(tuple(p.prompt_ids), budget, stop_ids) for p in todo])
        end = tokenizer.eos_token or ""
        hit_budget = [o.stop_id is None for o in outputs]
        texts = [tokenizer.decode(o.token_ids, skip_special_tokens=False) for o in outputs]
        new = pd.DataFrame({"example_id": [p.example_id for p in todo],
                            "text": [text + ("" if cut else end) for text, cut in zip(texts, hit_budget)],
                            "hit_budget": hit_budget})
        cached = pd.concat([cached, new], ignore_index=True) if len(cached) else new
        cached = cached.astype({"example_id": "int64", "hit_budget": bool})
        write_parquet(cached.sort_values("example_id").reset_index(drop=True), path, key)
    return dict(zip(cached["example_id"].astype(int), cached["text"]))
