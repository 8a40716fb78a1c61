"""Whole-process scoring benchmark: ``analysis/analyze_dpo_model.py`` vs. the original analysis's method.

Both score every response token of chosen and rejected of the first ``--rows`` rows of a
preference file with the same model and the same token ids (``--scoring response``):

* analysis:        ``analysis/analyze_dpo_model.py`` as a user runs it (one process: imports, model
                   load, tokenization, scoring, tables and summary.json written);
* original:        the original analysis's method, written out plainly below (``original_method``):
                   the model's full logits for the whole sequence, then a Python loop with one
                   ``log_softmax`` over the vocabulary per response position;
* analysis_first<K>: the analysis with ``--score_tokens K`` (only the first K response tokens);
                   its ``*_first_k`` columns are compared with the full analysis's;
* analysis_mb<N>:  the analysis with ``--logprob_chunk_mb N`` (head chunks of N MiB of logits);
* analysis_chunk<N>: the analysis with ``--logprob_chunk_size N`` (head chunks of N tokens).

Each run is a fresh process; its wall time and its own peak RSS (``ru_maxrss`` of that child,
from ``os.wait4``) are measured from outside, so imports, model loading and writing the outputs
count. Methods run in ``--repeats`` interleaved rounds (other programs' load hits each alike);
the table gives the median time and the highest peak, with the 1-minute load average seen.

    python scripts/benchmark_logprobs.py --whole_process --model_path ./models/tiny-qwen2.5
    python scripts/benchmark_scoring.py --model_path ./models/tiny-qwen2.5 --rows 100 \\
        --methods analysis,analysis_first1000 --repeats 1          # the --score_tokens speed-up
(``python scripts/make_tiny_model.py --tokenizer qwen2.5 --output_dir ./models/tiny-qwen2.5`` builds
the model: Qwen2.5's tokenizer and 152,064-row vocabulary, hidden size 16.)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from fwdrev.cli import run_cli
from fwdrev.devtools.bench import BYTES_PER_GB, markdown_table, measured_run

REPO_ROOT = Path(__file__).resolve().parents[1]
ANALYSIS_SCRIPT = REPO_ROOT / "analysis" / "analyze_dpo_model.py"
# the real 100-row sample beside the checkout (../shared/data), as the tests find it
SAMPLE = str(REPO_ROOT.parent / "shared" / "data" / "data-100samples.parquet")
ANALYSIS, ORIGINAL, FIRST, BUDGET, CHUNK = "analysis", "original", "analysis_first", "analysis_mb", "analysis_chunk"
SIDES = ("chosen", "rejected")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", required=True, help="model folder (e.g. the tiny Qwen2.5 model)")
    parser.add_argument("--dataset_path", default=SAMPLE, help="preference file; its first --rows rows are scored")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--methods", default=f"{ANALYSIS},{ORIGINAL}",
                        help=f"comma-separated: {ANALYSIS}, {ORIGINAL}, {FIRST}<K>, {BUDGET}<N>, {CHUNK}<N> "
                             f"(e.g. {FIRST}1000, {BUDGET}32, {CHUNK}1024)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median time reported)")
    parser.add_argument("--max_tokens", type=int, default=1000, help="K of the *_first_k columns")
    parser.add_argument("--analysis_args", default="",
                        help="extra flags of the analysis runs, e.g. '--batch_size 1 --logprob_chunk_size 64'")
    parser.add_argument("--original_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result_file", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---- the original analysis's method, in one process -------------------------------------------
def original_method(model_path: str, dataset_path: str, max_tokens: int) -> list[dict]:
    """Per example and side: count, sum, mean, max of the response tokens' log-probs, and the
    mean over the first ``max_tokens``, from full logits and a per-position ``log_softmax`` loop."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fwdrev.data import load_preference_data
    from fwdrev.data_arguments import DEFAULT_MAX_LENGTH
    from fwdrev.scoring import scoring_dtype
    from fwdrev.tokenization import default_max_prompt_length, encode_examples

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the original ran on a GPU
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=scoring_dtype(device)).to(device).eval()
    data = load_preference_data(dataset_path, tokenizer=tokenizer)  # the analysis's defaults
    pairs = encode_examples(tokenizer, data.examples, DEFAULT_MAX_LENGTH, default_max_prompt_length(DEFAULT_MAX_LENGTH),
                            data.report)
    rows = []
    for pair in pairs:
        row = {"example_id": pair.example_id}
        for side in SIDES:
            ids = pair.prompt_ids + getattr(pair, f"{side}_ids")
            with torch.no_grad():
                logits = model(torch.tensor([ids], device=device)).logits[0]  # (T, V): every position's logits
                values = []
                for position in range(len(pair.prompt_ids), len(ids)):  # logits at t-1 score token t
                    log_probs = torch.log_softmax(logits[position - 1].float(), dim=-1)
                    values.append(log_probs[ids[position]].item())
            del logits
            row.update({f"{side}_num_tokens": len(values), f"{side}_logp_sum": sum(values),
                        f"{side}_logp_mean": sum(values) / len(values), f"{side}_logp_max": max(values),
                        f"{side}_logp_mean_first_k": statistics.fmean(values[:max_tokens])})
        rows.append(row)
    return rows


def method_command(args, method: str, dataset: Path, workdir: Path) -> list[str]:
    if method == ORIGINAL:
        return [sys.executable, os.path.abspath(__file__), "--original_worker", "--model_path", args.model_path,
                "--dataset_path", str(dataset), "--max_tokens", str(args.max_tokens),
                "--result_file", str(workdir / "original.json")]
    command = [sys.executable, str(ANALYSIS_SCRIPT), "--model_path", args.model_path, "--dataset_path",
               str(dataset), "--output_dir", str(workdir / method), "--max_tokens", str(args.max_tokens),
               *shlex.split(args.analysis_args)]
    if method.startswith(FIRST):
        command += ["--score_tokens", method[len(FIRST):]]
    if method.startswith(BUDGET):
        command += ["--logprob_chunk_mb", method[len(BUDGET):]]
    if method.startswith(CHUNK):
        command += ["--logprob_chunk_size", method[len(CHUNK):]]
    return command


def method_scores(method: str, workdir: Path):
    import pandas as pd

    if method == ORIGINAL:
        return pd.DataFrame(json.loads((workdir / "original.json").read_text()))
    return pd.read_parquet(workdir / method / "scores.parquet")


def max_relative_difference(scores, reference, columns: list[str]) -> float:
    """Largest |a - b| / |b| over ``columns`` of two tables of the same examples (NaN: never equal)."""
    merged = scores.merge(reference, on="example_id", suffixes=("", "_reference"))
    if len(merged) != len(reference):
        return float("inf")
    worst = 0.0
    for column in columns:
        a, b = merged[column].astype(float), merged[f"{column}_reference"].astype(float)
        if a.isna().any() or b.isna().any():
            return float("inf")
        worst = max(worst, float(((a - b).abs() / b.abs().clip(lower=1e-12)).max()))
    return worst


def comparisons(methods: list[str], workdir: Path) -> dict[str, dict]:
    """Per method: which columns were compared with which run, and the largest relative difference."""
    full_columns = [f"{side}_{name}" for side in SIDES
                    for name in ("num_tokens", "logp_sum", "logp_mean", "logp_max", "logp_mean_first_k")]
    first_columns = [f"{side}_{name}_first_k" for side in SIDES for name in ("num_tokens", "logp_sum", "logp_mean")]
    notes = {}
    for method in methods:
        if (method == ANALYSIS or method.startswith((BUDGET, CHUNK))) and ORIGINAL in methods:
            difference = max_relative_difference(method_scores(method, workdir), method_scores(ORIGINAL, workdir),
                                                 full_columns)
            notes[method] = {"max_rel_diff": difference, "against": ORIGINAL,
                             "columns": "count, sum, mean, max, first-K mean"}
        elif method.startswith(FIRST) and ANALYSIS in methods:
            difference = max_relative_difference(method_scores(method, workdir), method_scores(ANALYSIS, workdir),
                                                 first_columns)
            notes[method] = {"max_rel_diff": difference, "against": ANALYSIS,
                             "columns": "first-K count, sum, mean"}
    return notes


def run_benchmark(args) -> tuple[list[dict], dict]:
    """(one row per method, facts about the data) after ``args.repeats`` interleaved rounds."""
    import pandas as pd

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    runs: dict[str, list[dict]] = {method: [] for method in methods}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        dataset = workdir / f"first{args.rows}.parquet"
        pd.read_parquet(args.dataset_path).head(args.rows).to_parquet(dataset)
        for _ in range(args.repeats):
            for method in methods:
                runs[method].append(measured_run(method_command(args, method, dataset, workdir),
                                                 workdir / f"{method}.log", cwd=REPO_ROOT))
        notes = comparisons(methods, workdir)
        first = method_scores(methods[0], workdir)
        tokens = int(sum(first[f"{side}_num_tokens"].sum() for side in SIDES))
    rows = [{"method": method, "seconds": statistics.median(r["seconds"] for r in runs[method]),
             "all_seconds": [r["seconds"] for r in runs[method]],
             "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs[method]),
             "peak_rss_gb": max(r["peak_rss_bytes"] for r in runs[method]) / BYTES_PER_GB,
             "load": max(r["load"] for r in runs[method]), "comparison": notes.get(method)}
            for method in methods]
    return rows, {"examples": len(first), "response_tokens": tokens}


def comparison_text(comparison: dict | None) -> str:
    if comparison is None:
        return ""
    return f"{comparison['max_rel_diff']:.1e} vs {comparison['against']} ({comparison['columns']})"


def format_table(rows: list[dict]) -> str:
    reference = next((row for row in rows if row["method"] == ORIGINAL), rows[0])
    name = reference["method"]
    columns = ["process", "wall s (median)", "runs (s)", "CPU s (median)", "peak RSS (GB)", f"wall vs {name}",
               f"CPU vs {name}", f"memory vs {name}", "max rel. diff", "1-min load"]
    return markdown_table(columns, "lrlrrrrrlr", [
        [row["method"], f"{row['seconds']:.1f}", ", ".join(f"{s:.1f}" for s in row["all_seconds"]),
         f"{row['cpu_seconds']:.1f}", f"{row['peak_rss_gb']:.3f}", f"{row['seconds'] / reference['seconds']:.2f}x",
         f"{row['cpu_seconds'] / reference['cpu_seconds']:.2f}x",
         f"{row['peak_rss_gb'] / reference['peak_rss_gb']:.3f}x", comparison_text(row["comparison"]),
         f"{row['load']:.1f}"] for row in rows])


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.original_worker:
        rows = original_method(args.model_path, args.dataset_path, args.max_tokens)
        Path(args.result_file).write_text(json.dumps(rows))
        return
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    rows, facts = run_benchmark(args)
    print(f"{facts['examples']} examples, {facts['response_tokens']:,} response tokens (chosen + rejected), "
          f"each process run {args.repeats}x interleaved, {os.cpu_count()} CPUs")
    print(format_table(rows))


if __name__ == "__main__":
    run_cli(main)
