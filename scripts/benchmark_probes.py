"""What the probes add to scoring: the argmax / per-position outputs, and text probes in one run vs
one run per probe.

In one process, on one loaded model and the first ``--rows`` rows of a preference file, in
``--repeats`` interleaved rounds (median seconds reported):

* ``y+/y-``: ``fwdrev.scoring.score_pairs`` as the analysis runs it (the baseline);
* ``y+/y- + argmax + positions``: the same call with ``fwdrev.token_dynamics.TokenCollector``
  (the max of each chunk's log-softmax, no extra forward; goal: < 10% over the baseline);
* ``text probes, one run``: the text probes (--probes) scored as ``ProbeRun`` does, two
  responses of one example per pair;
* ``text probes, one run per probe``: each probe kind scored on its own (one response per
  example and call).

    python scripts/make_tiny_model.py --tokenizer qwen2.5 --output_dir ./models/tiny-qwen2.5
    python scripts/benchmark_probes.py --model_path ./models/tiny-qwen2.5 --rows 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = str(REPO_ROOT.parent / "shared" / "data" / "data-100samples.parquet")
BASELINE, ARGMAX, ONE_RUN, PER_PROBE = ("y+/y-", "y+/y- + argmax + positions", "text probes, one run",
                                        "text probes, one run per probe")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", required=True, help="model folder (e.g. the tiny Qwen2.5 model)")
    parser.add_argument("--dataset_path", default=SAMPLE, help="preference file; its first --rows rows are scored")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--probes", default="irr_test,permuted,permuted_irr", help="text probes to time")
    parser.add_argument("--max_length", type=int, default=2048)
    parser.add_argument("--token_positions", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    return parser.parse_args(argv)


def run_benchmark(args) -> tuple[dict[str, float], dict]:
    """Median seconds per method, and facts about the run (rows, tokens, vocabulary)."""
    from fwdrev.checkpoints import load_for_scoring
    from fwdrev.data import RowSelection, load_preference_data
    from fwdrev.logprobs import chunk_size_for_budget
    from fwdrev.response_probes import parse_probe_kinds, probe_pairs, probe_responses
    from fwdrev.scoring import CPU_CHUNK_MB, score_pairs
    from fwdrev.token_dynamics import TokenCollector
    from fwdrev.tokenization import encode_examples

    torch.set_num_threads(args.threads)
    model, tokenizer = load_for_scoring(args.model_path)
    data = load_preference_data(args.dataset_path, RowSelection(drop_invalid_rows=True), tokenizer)
    data.examples = data.examples[: args.rows]
    pairs = encode_examples(tokenizer, data.examples, args.max_length, min(2048, args.max_length // 2))
    kinds = [k for k in parse_probe_kinds(args.probes) if k not in ("argmax", "self_greedy", "irr_train")]
    responses, _ = probe_responses(data, kinds, seed=0)
    chunk = chunk_size_for_budget(CPU_CHUNK_MB, model.config.vocab_size)

    def score(score_these, **extra):
        return score_pairs(model, score_these, tokenizer.pad_token_id, batch_size=args.batch_size,
                           chunk_size=chunk, **extra)

    one_run, _ = probe_pairs(tokenizer, data, pairs, responses, args.max_length)
    per_probe = [probe_pairs(tokenizer, data, pairs, [r for r in responses if r.probe == kind], args.max_length)[0]
                 for kind in kinds]
    methods = {
        BASELINE: lambda: score(pairs),
        ARGMAX: lambda: score(pairs, on_batch=TokenCollector(1000, args.token_positions)),
        ONE_RUN: lambda: score(one_run),
        PER_PROBE: lambda: [score(single) for single in per_probe],
    }
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):  # interleaved: load from other programs hits every method alike
        for name, method in methods.items():
            start = time.perf_counter()
            method()
            seconds[name].append(time.perf_counter() - start)
    facts = {"rows": len(pairs), "response_tokens": sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs),
             "vocab_size": model.config.vocab_size, "probes": kinds, "threads": args.threads,
             "repeats": args.repeats}
    return {name: statistics.median(values) for name, values in seconds.items()}, facts


def format_table(medians: dict[str, float]) -> str:
    lines = ["| method | seconds (median) | vs. y+/y- |", "| --- | ---: | ---: |"]
    for name, value in medians.items():
        lines.append(f"| {name} | {value:.2f} | {value / medians[BASELINE]:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not Path(args.dataset_path).is_file():
        sys.exit(f"error: --dataset_path {args.dataset_path} not found")
    medians, facts = run_benchmark(args)
    print(format_table(medians))
    print(f"\n{facts}")
    added = medians[ARGMAX] / medians[BASELINE] - 1
    print(f"argmax + per-position outputs add {added:+.1%} to y+/y- scoring (goal < +10%); "
          f"{len(facts['probes'])} text probes in one run take {medians[ONE_RUN]:.2f} s vs "
          f"{medians[PER_PROBE]:.2f} s one run per probe")


if __name__ == "__main__":
    main()
