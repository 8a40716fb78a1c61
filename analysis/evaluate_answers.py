"""Answer accuracy: greedy generation from each row's prompt, final answer vs. the gold solution.

    python analysis/evaluate_answers.py --model_path ./outputs/dpo_m \\
        --dataset_path ./data/your_dataset.parquet --output_dir ./outputs/answers \\
        [--max_new_tokens N] [--batch_size 8] [--sample_types original,flipped]

The prompt is the one scored by the analysis (the conversation up to the assistant header, or
the chat-template rendering of a plain question). The final answer is the text after
``<|im_start|>answer\\nAnswer:`` (else the last ``Answer:`` or ``\\boxed{}``); it is correct
when it equals the gold answer of GOLD_FIELD (numbers compared as numbers).

The default token budget is the length of the longest reference trace (the chosen response,
in the model's tokens), so a model that writes as long as the data is not cut off. A generation
that uses the whole budget without an answer is counted as no_answer_at_budget, not as wrong.
Outputs in OUTPUT_DIR: answers.csv (example_id, sample_type, generated, extracted, gold,
correct, hit_budget, outcome) and accuracy.json (overall and per sample_type: n, n_correct,
accuracy, n_wrong, n_no_answer_at_budget, no_answer_at_budget_rate, max_new_tokens).
"""

import argparse
import json
from pathlib import Path

import pandas as pd

from fwdrev.answers import (
    accuracy_by_sample_type,
    generate_greedy_outputs,
    gold_answer,
    grade_generations,
    reference_budget,
)
from fwdrev.cli import run_cli
from fwdrev.data import DataValidationError, load_preference_data
from fwdrev.data_arguments import ROW_FLAGS, add_data_flags
from fwdrev.io import write_json, write_table
from fwdrev.modeling import load_for_scoring
from fwdrev.scoring import scoring_dtype
from fwdrev.sharding import Shard
from fwdrev.tokenization import truncate_prompt

ANSWER_COLUMNS = ["example_id", "sample_type", "generated", "extracted", "gold", "correct", "hit_budget",
                  "outcome"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", required=True, help="Full model folder or LoRA adapter folder.")
    parser.add_argument("--dataset_path", required=True, help="Parquet or JSONL preference file.")
    parser.add_argument("--output_dir", default="./outputs/answers")
    parser.add_argument("--base_model", default=None,
                        help="Base of a LoRA adapter (default, and checked: its adapter_config.json's).")
    parser.add_argument("--force_base_model", action="store_true",
                        help="Load the adapter on --base_model even if it is not its recorded base.")
    parser.add_argument("--max_new_tokens", type=int, default=None,
                        help="Token budget per generation (default: the longest chosen response in "
                             "the data, in the model's tokens).")
    parser.add_argument("--batch_size", type=int, default=8, help="Prompts per generate call.")
    parser.add_argument("--max_prompt_length", type=int, default=2048, help="Max prompt tokens (end kept).")
    parser.add_argument("--gold_field", default="solution", help="Column with the gold answer.")
    add_data_flags(parser, ROW_FLAGS)  # --prompt_field ... --drop_invalid_rows, as in training
    parser.add_argument("--gpu_id", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = Shard().device(args.gpu_id)
    model, tokenizer = load_for_scoring(args.model_path, args.base_model, scoring_dtype(device), device,
                                        force_base_model=args.force_base_model)
    data = load_preference_data(args.dataset_path, args.prompt_field, args.chosen_field,
                                args.rejected_field, args.sample_types, args.drop_invalid_rows,
                                tokenizer, flipped_prompt_field=args.flipped_prompt_field)
    if args.gold_field not in data.frame:
        raise DataValidationError(f"{args.dataset_path}: no gold answer column '{args.gold_field}'; "
                                  f"available columns: {list(data.frame.columns)}")
    prompt_ids = [truncate_prompt(tokenizer(e.prompt, add_special_tokens=False)["input_ids"],
                                  args.max_prompt_length)[0] for e in data.examples]
    budget, source = args.max_new_tokens, "--max_new_tokens"
    if budget is None:
        budget, longest = reference_budget(tokenizer, data.examples)
        source = f"longest chosen response (row {longest})"
    print(f"token budget: {budget} ({source})")
    generated = generate_greedy_outputs(model, tokenizer, prompt_ids, budget, args.batch_size, progress=True)
    records = pd.DataFrame({
        "example_id": [e.example_id for e in data.examples],
        "sample_type": [e.sample_type or "unknown" for e in data.examples],
        "generated": [g.text for g in generated],
        "gold": [gold_answer(data.frame.loc[e.example_id, args.gold_field]) for e in data.examples],
        "hit_budget": [g.hit_budget for g in generated],
    })
    graded = grade_generations(records)[ANSWER_COLUMNS]
    accuracy = {name: {**counts, "max_new_tokens": budget}
                for name, counts in accuracy_by_sample_type(graded).items()}
    output_dir = Path(args.output_dir)
    write_table(graded, output_dir / "answers.csv")
    write_json(output_dir / "accuracy.json", accuracy)
    print(json.dumps(accuracy, indent=2))


if __name__ == "__main__":
    run_cli(main)
