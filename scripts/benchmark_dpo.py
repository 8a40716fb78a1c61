"""Benchmark our LoRA-DPO trainer against TRL's DPOTrainer on CPU: same model, data and steps.

One random-init Qwen2 (2 layers, Qwen2.5's 152,064-token vocabulary and full-size untied output
head) is built from a config and saved once; both trainers load it. The tokenizer is our tiny
locally trained one, so token ids stay small while the embedding and head have the full size,
which is what drives memory and time. Each preference pair chains synthetic forward (y+) /
reverse (y-) worked problems into responses of ``--min_response_tokens`` to
``--max_response_tokens`` tokens.

Each trainer runs in a fresh subprocess (its own peak RSS) with the same recipe: batch 1, no
gradient accumulation, LoRA (same rank, alpha, targets, no dropout, same seed: identical init),
constant learning rate, sigmoid loss, fp32, sequential data order, reference log-probs
precomputed once before training. Ours runs through the real CLI, ``dpo/combined_dpo.py``'s main.
Step times are the forward + backward of ``training_step``, wall and process CPU time (the
latter is far less sensitive to other programs on the machine); the figures are medians over steps
2..N (step 1 of our trainer also holds its reference pass, which TRL does at construction), pooled
over ``--rounds`` alternating runs of the trainers.

From the repo root (TRL 1.16.0 is pinned in requirements.txt, a test dependency of
tests/test_trl_parity.py; requirements-bench.txt installs it alone):

    python scripts/benchmark_dpo.py                            # 5 steps, responses 1000-2000 tokens (~5 min)
    python scripts/benchmark_dpo.py --max_response_tokens 4000           # the 1000-4000 range (~15 min)
    python scripts/benchmark_dpo.py --rounds 3                 # steadier figures on a busy machine
    python scripts/benchmark_dpo.py --methods ours             # without TRL
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import transformers

from fwdrev.cli import run_cli
from fwdrev.data import load_preference_data
from fwdrev.devtools.bench import BYTES_PER_GB, machine_facts, markdown_table, peak_rss_bytes, run_json_worker
from fwdrev.devtools.synthetic import (
    forward_question,
    forward_thinking,
    generate_preference_rows,
    make_problem,
    render_conversation,
    reverse_thinking,
)
from fwdrev.devtools.tiny_model import build_tiny_model, train_tokenizer
from fwdrev.modeling import load_causal_lm, load_tokenizer, make_lora_config
from fwdrev.tokenization import encode_examples

REPO_ROOT = Path(__file__).resolve().parents[1]
DPO_SCRIPT = REPO_ROOT / "dpo" / "combined_dpo.py"
OURS, TRL = "ours", "trl"
MAX_LENGTH = 32768  # no truncation in either trainer
LN2 = math.log(2)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=f"{OURS},{TRL}", help="comma-separated: ours, trl")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps (= pairs, batch 1)")
    parser.add_argument("--min_response_tokens", type=int, default=1000)
    parser.add_argument("--max_response_tokens", type=int, default=2000)
    parser.add_argument("--vocab_size", type=int, default=152064, help="Qwen2.5's vocabulary")
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--num_kv_heads", type=int, default=2)
    parser.add_argument("--intermediate_size", type=int, default=768)
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument("--lora_alpha", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=5e-6)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the trainers this many times, alternating (medians over all rounds)")
    parser.add_argument("--workdir", default=None, help="keep model, data and outputs here (default: a temp dir)")
    # Internal: run one trainer in this process on a prepared workdir, figures to a JSON file.
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result_file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---- model and data (built once, in the driver) ------------------------------------------------
def long_pair(rng: random.Random, tokenizer, response_tokens: int) -> dict:
    """A forward question whose y+ chains forward traces and y- the reverse traces of the same problems.

    Problems are added until y+ has about ``response_tokens`` tokens. The conversations end on
    ``<|im_end|>`` (the trailing newline is dropped) because TRL appends the EOS token to responses
    not ending with it: this way both trainers see the very same token ids.
    """
    problems, forward, reverse, count = [], [], [], 0
    while count < response_tokens:
        problem = make_problem(rng)
        problems.append(problem)
        forward.append(forward_thinking(problem, rng))
        reverse.append(reverse_thinking(problem, rng))
        count += len(tokenizer(forward[-1] + "\n", add_special_tokens=False)["input_ids"])
    question = forward_question(problems[0], rng)
    chosen = render_conversation(question, "\n".join(forward), problems[-1].result).removesuffix("\n")
    rejected = render_conversation(question, "\n".join(reverse), problems[-1].start).removesuffix("\n")
    return {"question": question, "text": chosen, "worse-text": rejected}


def prepare_workdir(args, workdir: Path) -> dict:
    """Save the model + tokenizer and the preference data; return the data's token statistics."""
    rng = random.Random(args.seed)
    corpus = generate_preference_rows(200, seed=args.seed)
    tokenizer = train_tokenizer(list(corpus["text"]) + list(corpus["worse-text"]))
    lengths = [round(args.min_response_tokens + i * (args.max_response_tokens - args.min_response_tokens)
                     / max(args.steps - 1, 1)) for i in range(args.steps)]
    rng.shuffle(lengths)  # long and short pairs mixed along the run
    frame = pd.DataFrame([long_pair(rng, tokenizer, n) for n in lengths])
    frame.to_parquet(workdir / "data.parquet", index=False)

    model = build_tiny_model(tokenizer, hidden_size=args.hidden_size, num_layers=args.num_layers,
                             num_heads=args.num_heads, num_kv_heads=args.num_kv_heads,
                             intermediate_size=args.intermediate_size, seed=args.seed)
    # Token ids stay below len(tokenizer); the embedding and head get Qwen2.5's full size.
    model.resize_token_embeddings(args.vocab_size, mean_resizing=False)
    model.save_pretrained(workdir / "model")
    tokenizer.save_pretrained(workdir / "model")

    pairs = encode_examples(tokenizer, load_preference_data(workdir / "data.parquet").examples,
                            MAX_LENGTH, MAX_LENGTH - 1)
    responses = [len(p.chosen_ids) for p in pairs] + [len(p.rejected_ids) for p in pairs]
    return {"pairs": len(pairs), "prompt_tokens": [len(p.prompt_ids) for p in pairs],
            "response_tokens": (min(responses), max(responses)),
            "model_parameters": sum(p.numel() for p in model.parameters())}


# ---- workers: one trainer each, in a fresh process ---------------------------------------------
def record_training_steps(trainer_class, steps: list[dict]) -> None:
    """Time every ``training_step`` (forward + backward) of ``trainer_class`` into ``steps``.

    Besides wall time, the process's CPU time is kept: other programs loading the machine inflate
    the first much more than the second. On the first call, before any update, a fingerprint of
    the LoRA A matrices is noted too, so the report can show both trainers start from one adapter.
    """
    original = trainer_class.training_step

    def timed_training_step(self, model, inputs, *rest, **kwargs):
        entry = {"tokens": int(inputs["attention_mask"].sum())}
        if not steps:
            lora_a = [p.detach().double() for name, p in model.named_parameters() if "lora_A" in name]
            entry["lora_a_fingerprint"] = [float(sum(p.sum() for p in lora_a)),
                                           float(sum(p.abs().sum() for p in lora_a))]
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = original(self, model, inputs, *rest, **kwargs)
        entry["seconds"] = time.perf_counter() - start
        entry["cpu_seconds"] = time.process_time() - cpu_start
        steps.append(entry)
        return loss

    trainer_class.training_step = timed_training_step


def shared_training_settings(args, output_dir: Path) -> dict:
    """The recipe both trainers get (TrainingArguments fields)."""
    return dict(output_dir=str(output_dir), max_steps=args.steps, per_device_train_batch_size=1,
                per_device_eval_batch_size=1, gradient_accumulation_steps=1,
                learning_rate=args.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
                weight_decay=0.0, logging_steps=1, save_strategy="no", report_to="none", seed=args.seed,
                train_sampling_strategy="sequential", bf16=False, use_cpu=True)


def run_ours(args, workdir: Path) -> dict:
    """The real CLI: dpo/combined_dpo.py's main with argv; losses come back through its metrics.csv."""
    from fwdrev.dpo_trainer import DPOTrainer

    spec = importlib.util.spec_from_file_location("combined_dpo", DPO_SCRIPT)
    combined_dpo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(combined_dpo)
    steps: list[dict] = []
    record_training_steps(DPOTrainer, steps)
    output_dir = workdir / f"out-ours-{args.round}"  # fresh: it caches the reference log-probs
    argv = ["--model_name", str(workdir / "model"), "--train_file_path", str(workdir / "data.parquet"),
            "--max_length", str(MAX_LENGTH), "--max_prompt_length", str(MAX_LENGTH - 1),
            "--eval_size", "0", "--beta", str(args.beta), "--loss_type", "sigmoid",
            "--precompute_ref_log_probs", "True", "--lora_r", str(args.lora_r),
            "--lora_alpha", str(args.lora_alpha), "--lora_dropout", "0",
            # the recipe's GPU settings off on every machine, as TRL's run below
            "--deepspeed", "", "--use_flash_attention", "False", "--gradient_checkpointing", "False"]
    for name, value in shared_training_settings(args, output_dir).items():
        argv += [f"--{name}", str(value)]
    combined_dpo.main(argv)
    metrics = pd.read_csv(output_dir / "metrics.csv")
    logged = metrics[metrics["loss"].notna()]
    return {"steps": steps, "losses": logged["loss"].tolist(), "logps_chosen": logged["logps/chosen"].tolist()}


def run_trl(args, workdir: Path) -> dict:
    """TRL's DPOTrainer on the same model, text and recipe (its defaults that differ are overridden)."""
    import trl
    from datasets import Dataset
    from trl import DPOConfig
    from trl import DPOTrainer as TRLDPOTrainer

    steps: list[dict] = []
    record_training_steps(TRLDPOTrainer, steps)
    model_dir = workdir / "model"
    tokenizer = load_tokenizer(str(model_dir))
    examples = load_preference_data(workdir / "data.parquet").examples  # the prompt/response split ours uses
    dataset = Dataset.from_list([{"prompt": e.prompt, "chosen": e.chosen, "rejected": e.rejected}
                                 for e in examples])
    config = DPOConfig(**shared_training_settings(args, workdir / f"out-trl-{args.round}"), beta=args.beta,
                       loss_type=["sigmoid"], precompute_ref_log_probs=True, max_length=None,
                       gradient_checkpointing=False,  # TRL's default is on, ours off
                       disable_dropout=True)
    trainer = TRLDPOTrainer(model=load_causal_lm(str(model_dir)), args=config, train_dataset=dataset,
                            processing_class=tokenizer,
                            peft_config=make_lora_config(args.lora_r, args.lora_alpha, 0.0))
    ours = encode_examples(tokenizer, examples, MAX_LENGTH, MAX_LENGTH - 1)
    theirs = trainer.train_dataset
    same_ids = (theirs["prompt_ids"] == [p.prompt_ids for p in ours]
                and theirs["chosen_ids"] == [p.chosen_ids for p in ours]
                and theirs["rejected_ids"] == [p.rejected_ids for p in ours])
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    return {"steps": steps, "losses": [e["loss"] for e in logged],
            "logps_chosen": [e["logps/chosen"] for e in logged], "same_token_ids": same_ids,
            "version": trl.__version__}


def run_worker(args) -> dict:
    workdir = Path(args.workdir)
    start = time.perf_counter()
    result = run_ours(args, workdir) if args.worker == OURS else run_trl(args, workdir)
    # load, tokenize, reference pass, train (and, in ours, save the adapter as the CLI does)
    result["end_to_end_seconds"] = time.perf_counter() - start
    result["peak_rss_bytes"] = peak_rss_bytes()
    result["threads"] = torch.get_num_threads()
    return result


# ---- driver ------------------------------------------------------------------------------------
def trl_missing_reason() -> str | None:
    if importlib.util.find_spec("trl") is None:
        return "TRL is not installed (pip install trl==1.16.0, pinned in requirements.txt)"
    return None


def run_in_subprocess(args, method: str, workdir: Path, round_index: int) -> dict:
    result_file = workdir / f"{method}-{round_index}.json"
    command = [sys.executable, os.path.abspath(__file__), "--worker", method, "--result_file", str(result_file),
               "--workdir", str(workdir), "--round", str(round_index), "--steps", str(args.steps),
               "--lora_r", str(args.lora_r), "--lora_alpha", str(args.lora_alpha),
               "--learning_rate", str(args.learning_rate), "--beta", str(args.beta), "--seed", str(args.seed)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return run_json_worker(command, result_file, env=env, cwd=REPO_ROOT)


def summarize(method: str, runs: list[dict]) -> dict:
    """One table row: medians over steps 2..N of every round, peak RSS, the first round's losses."""
    failed = [run for run in runs if "error" in run]
    if failed:
        return {"method": method, "error": failed[0]["error"]}
    steady = [step for run in runs for step in (run["steps"][1:] or run["steps"])]
    first = runs[0]
    return {
        "method": method,
        "version": first.get("version"),
        "rounds": len(runs),
        "steps": len(first["steps"]),
        "tokens_per_s": statistics.median(s["tokens"] / s["seconds"] for s in steady),
        # CPU time: far less sensitive than wall time to other programs on a shared machine
        "tokens_per_cpu_s": statistics.median(s["tokens"] / s["cpu_seconds"] for s in steady),
        "step_seconds": statistics.median(s["seconds"] for s in steady),
        "step_cpu_seconds": statistics.median(s["cpu_seconds"] for s in steady),
        "end_to_end_seconds": statistics.median(run["end_to_end_seconds"] for run in runs),
        "peak_rss_gb": max(run["peak_rss_bytes"] for run in runs) / BYTES_PER_GB,
        "losses": first["losses"],
        "logps_chosen": first["logps_chosen"],
        "lora_a_fingerprint": first["steps"][0]["lora_a_fingerprint"],
        "same_token_ids": first.get("same_token_ids"),
        "threads": first["threads"],
    }


def run_benchmark(args) -> tuple[list[dict], dict]:
    """(table rows, data statistics); a method that cannot run gets a row with its error."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    runs = {method: [] for method in methods}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        data_stats = prepare_workdir(args, workdir)
        for round_index in range(args.rounds):  # alternating, so slow spells of the machine hit both
            for method in methods:
                missing = trl_missing_reason() if method == TRL else None
                result = {"error": missing} if missing else run_in_subprocess(args, method, workdir, round_index)
                if "log_tail" in result:
                    print(f"--- {method} failed; last lines of its log:\n{result['log_tail']}", file=sys.stderr)
                runs[method].append(result)
    return [summarize(method, runs[method]) for method in methods], data_stats


def method_label(row: dict) -> str:
    if row["method"] == TRL:
        return f"TRL DPOTrainer {row.get('version') or ''}".strip()
    return "ours (dpo/combined_dpo.py)"


def format_table(rows: list[dict], first: int = 3) -> str:
    columns = ["method", "steps", "tokens/s (wall)", "tokens per CPU s", "step s (wall)", "step CPU s",
               "end-to-end s", "peak RSS GB", f"first {first} losses"]
    table_rows = []
    for row in rows:
        if "error" in row:
            table_rows.append([method_label(row), f"unavailable: {row['error']}"] + [""] * 7)
            continue
        losses = ", ".join(f"{loss:.4f}" for loss in row["losses"][:first])
        table_rows.append([method_label(row), row["steps"], f"{row['tokens_per_s']:,.0f}",
                           f"{row['tokens_per_cpu_s']:,.0f}", f"{row['step_seconds']:.2f}",
                           f"{row['step_cpu_seconds']:.2f}", f"{row['end_to_end_seconds']:.1f}",
                           f"{row['peak_rss_gb']:.2f}", losses])
    return markdown_table(columns, "lrrrrrrrl", table_rows)


def comparison_lines(rows: list[dict]) -> list[str]:
    """Ratios and the checks that the two runs saw the same model, adapter init and data."""
    done = {row["method"]: row for row in rows if "error" not in row}
    lines = [f"{method_label(row)} step-1 loss {row['losses'][0]:.4f} (ln 2 = {LN2:.4f})" for row in done.values()]
    if OURS in done and TRL in done:
        ours, trl = done[OURS], done[TRL]
        lines += [
            f"ratios ours / TRL: tokens per CPU s {ours['tokens_per_cpu_s'] / trl['tokens_per_cpu_s']:.2f}x, "
            f"tokens/s (wall) {ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x, "
            f"peak RSS {ours['peak_rss_gb'] / trl['peak_rss_gb']:.2f}x",
            f"ratios TRL / ours: tokens/s {trl['tokens_per_s'] / ours['tokens_per_s']:.2f}x, "
            f"CPU s per step {trl['step_cpu_seconds'] / ours['step_cpu_seconds']:.2f}x, "
            f"peak RSS {trl['peak_rss_gb'] / ours['peak_rss_gb']:.2f}x",
            "losses per step (ours | TRL): " + "; ".join(
                f"{a:.6f} | {b:.6f}" for a, b in zip(ours["losses"], trl["losses"])),
            f"max |loss difference| over the steps: "
            f"{max(abs(a - b) for a, b in zip(ours['losses'], trl['losses'])):.2e}",
            "step-1 policy logps/chosen (ours | TRL): "
            f"{ours['logps_chosen'][0]:.4f} | {trl['logps_chosen'][0]:.4f}",
            f"identical LoRA init: {ours['lora_a_fingerprint'] == trl['lora_a_fingerprint']}; "
            f"identical token ids: {trl['same_token_ids']}",
        ]
    return lines


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        Path(args.result_file).write_text(json.dumps(run_worker(args)))
        return
    print("command: " + " ".join(shlex.quote(part) for part in [sys.executable, *sys.argv]))
    transformers.utils.logging.disable_progress_bar()  # keep the printed report clean
    rows, data = run_benchmark(args)
    threads = next((row["threads"] for row in rows if "threads" in row), None)
    print(f"machine: {machine_facts(threads)}")
    print(f"model: Qwen2, {args.num_layers} layers, hidden {args.hidden_size}, vocab {args.vocab_size} "
          f"({data['model_parameters'] / 1e6:.1f}M parameters), fp32; LoRA r={args.lora_r} "
          f"alpha={args.lora_alpha} dropout 0; lr {args.learning_rate} constant, beta {args.beta}, batch 1, "
          "grad accumulation 1; reference log-probs precomputed in both")
    print(f"data: {data['pairs']} pairs, responses {data['response_tokens'][0]}-{data['response_tokens'][1]} "
          f"tokens, prompts {min(data['prompt_tokens'])}-{max(data['prompt_tokens'])} tokens; "
          f"each trainer in a fresh subprocess, {args.rounds} round(s); step figures are medians over "
          "steps 2..N of every round (step 1 of ours also holds its reference pass)")
    print()
    print(format_table(rows))
    print()
    for line in comparison_lines(rows):
        print(line)


if __name__ == "__main__":
    run_cli(main)
