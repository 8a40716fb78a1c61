"""Benchmark per-token label log-probs against a Qwen2.5-sized vocabulary on CPU.

Three ways of getting log p(label) for every position of one long sequence are compared:

* full_logits:    the whole (T, V) logits, ``log_softmax`` over the vocabulary, ``gather`` (reference);
* chunked_<N>:    ``fwdrev.logprobs.label_logprobs`` with ``chunk_size`` N (no full-vocabulary logits);
* per_token_loop: the seed repo's style: full logits from the model, then a Python loop with one
                  ``log_softmax`` over the vocabulary per position. Only ``--loop_positions`` positions
                  are run; their time is extrapolated linearly to all T positions (the table says so).

Every run is a fresh subprocess, so its peak RSS (``ru_maxrss``) is its own; the figure reported
is the peak minus the RSS once the inputs exist. The methods run in ``--repeats`` interleaved rounds
and each time is the median of its runs (other programs' load then hits every method alike).
``--backward`` adds the backward pass (the training case; gradients flow to the hidden states only,
as in LoRA training where the output head is frozen, so ``label_logprobs`` takes its frozen-head
path: each label's hidden-state gradient is computed in the forward chunk loop).

From the repo root (times on 2 CPU cores):

    python scripts/benchmark_logprobs.py                      # forward, T=4096, V=152064, H=512 (~2.5 min)
    python scripts/benchmark_logprobs.py --backward           # forward + backward (~5-10 min)
    python scripts/benchmark_logprobs.py --seq_len 8192 --chunk_sizes 256,1024,4096
    python scripts/benchmark_logprobs.py --whole_process --model_path ./models/tiny-qwen2.5
                 # whole processes: analysis/analyze_dpo_model.py vs. the original's method on real
                 # rows (scripts/benchmark_scoring.py; its --help lists the flags)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

from fwdrev.cli import run_cli
from fwdrev.devtools.bench import BYTES_PER_GB, machine_facts, markdown_table, peak_rss_bytes, run_json_worker
from fwdrev.logprobs import label_logprobs

FULL, LOOP, CHUNKED = "full_logits", "per_token_loop", "chunked"
LOOP_POSITIONS_FORWARD, LOOP_POSITIONS_BACKWARD = 256, 8


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq_len", type=int, default=4096, help="labelled tokens in the sequence")
    parser.add_argument("--vocab_size", type=int, default=152064, help="Qwen2.5's vocabulary")
    parser.add_argument("--hidden_size", type=int, default=512)
    parser.add_argument("--chunk_sizes", default="256,1024", help="comma-separated chunk sizes of label_logprobs")
    parser.add_argument("--loop_positions", type=int, default=None,
                        help="positions the per-token loop runs, its time extrapolated to --seq_len (default: "
                             f"{LOOP_POSITIONS_FORWARD}, or {LOOP_POSITIONS_BACKWARD} with --backward, where each "
                             "position's backward fills a full (T, V) gradient)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of runs, one run per method per round (the median is reported)")
    parser.add_argument("--backward", action="store_true", help="time forward + backward (training)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--whole_process", action="store_true",
                        help="run scripts/benchmark_scoring.py with the other flags instead")
    # Internal: run one method in this process and write its figures to a JSON file.
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result_file", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loop_positions is None:
        args.loop_positions = LOOP_POSITIONS_BACKWARD if args.backward else LOOP_POSITIONS_FORWARD
    return args


def method_names(args) -> list[str]:
    chunks = [int(size) for size in str(args.chunk_sizes).split(",") if size.strip()]
    return [FULL] + [f"{CHUNKED}_{size}" for size in chunks] + [LOOP]


# ---- the three ways of computing label log-probs ------------------------------------------------
def build_inputs(args):
    """Seeded hidden states (T, H), a Qwen-initialised output head (V x H) and random labels."""
    generator = torch.Generator().manual_seed(args.seed)
    hidden = torch.randn(1, args.seq_len, args.hidden_size, generator=generator)
    head = torch.nn.utils.skip_init(torch.nn.Linear, args.hidden_size, args.vocab_size, bias=False)
    head.weight.requires_grad_(False)  # frozen, as under LoRA
    with torch.no_grad():
        head.weight.normal_(0.0, 0.02, generator=generator)  # Qwen2's initializer_range
    targets = torch.randint(0, args.vocab_size, (1, args.seq_len), generator=generator)
    return hidden, head, targets


def loop_positions(args) -> torch.Tensor:
    """Evenly spread positions the per-token loop runs (all of them when the subset covers T)."""
    count = min(args.loop_positions, args.seq_len)
    return torch.linspace(0, args.seq_len - 1, count).round().long().unique()


def full_logits_logps(hidden, head, targets) -> torch.Tensor:
    log_probs = torch.log_softmax(head(hidden).float(), dim=-1)
    return log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def timed_full_or_chunked(method: str, hidden, head, targets, backward: bool):
    """(seconds, per-token log-probs (T,)) of one run."""
    hidden = hidden.detach().requires_grad_(backward)
    start = time.perf_counter()
    with torch.set_grad_enabled(backward):
        if method == FULL:
            logps = full_logits_logps(hidden, head, targets)
        else:
            chunk_size = int(method.rsplit("_", 1)[1])
            logps = label_logprobs(hidden, head, targets, chunk_size).per_token
        if backward:
            logps.sum().backward()
    return time.perf_counter() - start, logps.detach()[0]


def timed_per_token_loop(hidden, head, targets, positions, backward: bool):
    """(seconds extrapolated to all T positions, log-probs at ``positions``).

    The head runs once on all positions (the seed took ``model(...).logits``); the loop and its
    backward run on ``positions`` only and are scaled by T / len(positions). To time them apart,
    the loop starts from a detached copy of the logits whose gradient is then pushed through the
    head: autograd does the same work as in one backward call.
    """
    seq_len = targets.shape[1]
    scale = seq_len / len(positions)
    hidden = hidden.detach().requires_grad_(backward)
    with torch.set_grad_enabled(backward):
        start = time.perf_counter()
        logits = head(hidden).float()
        head_seconds = time.perf_counter() - start

        loop_logits = logits.detach().requires_grad_(backward)
        start = time.perf_counter()
        values = []
        for position in positions.tolist():
            log_probs = torch.log_softmax(loop_logits[0, position], dim=-1)
            values.append(log_probs[targets[0, position]])
        logps = torch.stack(values)
        if backward:
            logps.sum().backward()
        loop_seconds = time.perf_counter() - start

        if backward:
            start = time.perf_counter()
            logits.backward(loop_logits.grad)
            head_seconds += time.perf_counter() - start
    return head_seconds + loop_seconds * scale, logps.detach()


def current_rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def run_worker(args) -> dict:
    """Time one run of ``args.worker`` in this fresh process; return its figures."""
    if args.threads:
        torch.set_num_threads(args.threads)
    hidden, head, targets = build_inputs(args)
    positions = loop_positions(args) if args.worker == LOOP else torch.arange(args.seq_len)
    rss_before = current_rss_bytes()
    peak_before = peak_rss_bytes()
    if args.worker == LOOP:
        seconds, logps = timed_per_token_loop(hidden, head, targets, positions, args.backward)
    else:
        seconds, logps = timed_full_or_chunked(args.worker, hidden, head, targets, args.backward)
    peak_after = peak_rss_bytes()
    return {
        "method": args.worker,
        "seconds": seconds,
        "peak_rss_increase_bytes": max(peak_after - rss_before, 0),
        # the method's own peak is hidden if it stayed below the process's earlier high-water mark
        "peak_masked": peak_after <= peak_before,
        "positions": positions.tolist(),
        "logps": logps.tolist(),
        "threads": torch.get_num_threads(),
    }


# ---- driver: every run in its own subprocess --------------------------------------------------
def worker_command(args, method: str, result_file: str) -> list[str]:
    command = [sys.executable, os.path.abspath(__file__), "--seq_len", str(args.seq_len),
               "--vocab_size", str(args.vocab_size), "--hidden_size", str(args.hidden_size),
               "--loop_positions", str(args.loop_positions), "--seed", str(args.seed),
               "--worker", method, "--result_file", result_file]
    if args.backward:
        command.append("--backward")
    if args.threads:
        command += ["--threads", str(args.threads)]
    return command


def run_in_subprocess(args, method: str, workdir: str) -> dict:
    result_file = os.path.join(workdir, f"{method}.json")
    result = run_json_worker(worker_command(args, method, result_file), result_file)
    if "error" in result:
        raise RuntimeError(f"{method} failed ({result['error']}):\n{result['log_tail']}")
    return result


def run_rounds(args) -> list[dict]:
    """``args.repeats`` rounds of every method, each run in a fresh process.

    Interleaving the methods spreads the load of other programs on the machine over all of them
    alike; per method, the times of its runs are kept and the highest peak RSS.
    """
    methods = method_names(args)
    merged = {method: None for method in methods}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.repeats):
            for method in methods:
                run = run_in_subprocess(args, method, workdir)
                if merged[method] is None:
                    merged[method] = {**run, "seconds": [], "peak_rss_increase_bytes": 0}
                merged[method]["seconds"].append(run["seconds"])
                merged[method]["peak_rss_increase_bytes"] = max(merged[method]["peak_rss_increase_bytes"],
                                                                run["peak_rss_increase_bytes"])
    return list(merged.values())


def summarize(results: list[dict], args) -> list[dict]:
    """Table rows: memory, speed and max |difference| to the full-logits reference."""
    reference = {r["method"]: r for r in results}[FULL]
    reference_logps = torch.tensor(reference["logps"], dtype=torch.float32)
    reference_seconds = statistics.median(reference["seconds"])
    reference_memory = reference["peak_rss_increase_bytes"]
    rows = []
    for result in results:
        seconds = statistics.median(result["seconds"])
        positions = torch.tensor(result["positions"])
        difference = (torch.tensor(result["logps"], dtype=torch.float32) - reference_logps[positions]).abs().max()
        memory = result["peak_rss_increase_bytes"]
        rows.append({
            "method": result["method"],
            "seconds": seconds,
            "tokens_per_s": args.seq_len / seconds,
            "peak_rss_increase_gb": memory / BYTES_PER_GB,
            "peak_masked": result["peak_masked"],
            "max_abs_diff": float(difference),
            "memory_vs_full": memory / reference_memory if reference_memory else float("nan"),
            "speedup_vs_full": reference_seconds / seconds,
            "extrapolated": result["method"] == LOOP and len(result["positions"]) < args.seq_len,
            "positions_run": len(result["positions"]),
        })
    return rows


def short_number(value: float) -> str:
    """Thousands separators for large figures, two decimals, or two significant digits when tiny."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value >= 0.01 else f"{value:.2g}"


def format_table(rows: list[dict]) -> str:
    columns = ["method", "peak RSS increase (GB)", "time (s, median)", "tokens/s", "max abs diff vs full",
               "memory vs full", "speed vs full"]
    table_rows = []
    for row in rows:
        marks = (" *" if row["extrapolated"] else "") + (" †" if row["peak_masked"] else "")
        table_rows.append([f"{row['method']}{marks}", f"{row['peak_rss_increase_gb']:.3f}", f"{row['seconds']:.3f}",
                           short_number(row["tokens_per_s"]), f"{row['max_abs_diff']:.2e}",
                           f"{row['memory_vs_full']:.3f}x", f"{short_number(row['speedup_vs_full'])}x"])
    return markdown_table(columns, "lrrrrrr", table_rows)


def footnotes(rows: list[dict], args) -> list[str]:
    notes = []
    for row in rows:
        if row["extrapolated"]:
            notes.append(f"* {row['method']}: the loop ran {row['positions_run']} of {args.seq_len} positions; "
                         "its time is extrapolated linearly, its diff is over those positions"
                         + (" and its memory is a lower bound (each position's saved log_softmax output "
                            "is missing for the positions not run)" if args.backward else "") + ".")
        if row["peak_masked"]:
            notes.append(f"† {row['method']}: peak below the process's earlier high-water mark; "
                         "the increase shown is an upper bound.")
    return notes


def run_benchmark(args) -> tuple[list[dict], int]:
    """(table rows, torch threads used)."""
    results = run_rounds(args)
    return summarize(results, args), results[0]["threads"]


def run_whole_process_benchmark(argv: list[str]) -> None:
    import importlib.util

    path = Path(__file__).with_name("benchmark_scoring.py")
    spec = importlib.util.spec_from_file_location("benchmark_scoring", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(argv)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--whole_process" in argv:
        run_whole_process_benchmark([arg for arg in argv if arg != "--whole_process"])
        return
    args = parse_args(argv)
    if args.worker:
        Path(args.result_file).write_text(json.dumps(run_worker(args)))
        return
    command = " ".join(shlex.quote(part) for part in [sys.executable, *sys.argv])
    print(f"command: {command}")
    mode = "forward + backward" if args.backward else "forward only"
    print(f"T={args.seq_len} labelled tokens, V={args.vocab_size}, H={args.hidden_size}, float32, {mode}; "
          f"each run in a fresh subprocess, {args.repeats} rounds of all methods interleaved, median time")
    rows, threads = run_benchmark(args)
    print(f"machine: {machine_facts(threads)}")
    print()
    print(format_table(rows))
    for note in footnotes(rows, args):
        print(note)
    print()
    full = next(row for row in rows if row["method"] == FULL)
    for row in rows:
        if row["method"] != FULL:
            print(f"{row['method']}: {row['memory_vs_full']:.3f}x the memory of full logits "
                  f"({full['peak_rss_increase_gb']:.2f} -> {row['peak_rss_increase_gb']:.2f} GB), "
                  f"{short_number(row['speedup_vs_full'])}x its speed")


if __name__ == "__main__":
    run_cli(main)
