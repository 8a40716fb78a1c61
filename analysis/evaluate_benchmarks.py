"""Benchmark accuracy as the study (and s1) measured it: greedy generation with the chat template,
optional budget forcing, graded by math-verify (GPQA: the answer letter).

    python analysis/evaluate_benchmarks.py --model_path sft_f=./outputs/sft_f sft_r=./outputs/sft_r \\
        --benchmarks aime24,math500,gpqa_diamond --backend vllm --max_tokens 32768 \\
        --paired sft_f,sft_r --output_dir ./outputs/benchmarks
    python analysis/evaluate_benchmarks.py --checkpoint_dir ./outputs/dpo_m --include_base \\
        --benchmarks heldout --data_files ./data/split/test.parquet --backend hf --max_tokens 2048
    python analysis/evaluate_benchmarks.py --regrade ./outputs/benchmarks/predictions.jsonl \\
        --output_dir ./outputs/benchmarks_regraded

Benchmarks: aime24, math500, gpqa_diamond (from the HF hub, or a local file in the same schema
with --data_files NAME=PATH) and heldout (the study's test split, a local preference file).
Outputs in OUTPUT_DIR: predictions.jsonl (one record per model and example, appended as it goes:
a rerun resumes), accuracy.csv (per model and benchmark, 95% bootstrap CI), accuracy_table.csv
and .md (a row per model, a column per benchmark), paired.csv (--paired A,B: B minus A on the
same problems, with its CI), run_config.json (data sources, generation settings).
See docs/benchmarks.md for what matches s1 and what differs.
"""

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from fwdrev.cli import UsageError, run_cli
from fwdrev.data import RowSelection
from fwdrev.data_arguments import ROW_FLAGS, add_data_flags
from fwdrev.evaluation.forcing import AUTO, ForcingConfig
from fwdrev.evaluation.models import HFModels, VLLMModels, parse_model_paths, series_specs, tokenizer_source
from fwdrev.evaluation.records import PredictionStore, read_records
from fwdrev.evaluation.runner import evaluate_model, pending, records_frame, regrade_records
from fwdrev.evaluation.sources import load_benchmark_frame, parse_data_files
from fwdrev.evaluation.summary import accuracy_table, markdown, paired_difference, paper_table
from fwdrev.evaluation.tasks import BENCHMARKS, gpqa_problems, heldout_problems, math_problems, parse_benchmarks
from fwdrev.evaluation.vllm_backend import import_vllm
from fwdrev.fingerprint import file_sha256, model_fingerprint
from fwdrev.io import atomic_write_text, write_json, write_table
from fwdrev.modeling import load_tokenizer

PREDICTIONS = "predictions.jsonl"
MODEL_FINGERPRINTS = "model_fingerprints.json"  # label -> content of the weights its predictions came from


def thinking_tokens(value: str):
    if value == AUTO:
        return AUTO
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens or 'auto', got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1 token, got {number}")
    return number


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    models = parser.add_argument_group("models (one of --model_path, --checkpoint_dir, --regrade)")
    models.add_argument("--model_path", nargs="+", default=None, metavar="[LABEL=]PATH",
                        help="Models or LoRA adapters; LABEL names the table row (default: the folder name).")
    models.add_argument("--checkpoint_dir", default=None, help="A training run: every SFT epoch / DPO checkpoint.")
    models.add_argument("--stage", choices=("sft", "dpo", "auto"), default="auto")
    models.add_argument("--epochs", default=None, help="Only these SFT epochs / DPO checkpoint ordinals, e.g. 1,4.")
    models.add_argument("--include_base", action="store_true", help="Also the series' base model.")
    models.add_argument("--base_model", default=None,
                        help="Base of LoRA adapters (default, and checked: the adapter's recorded base).")
    models.add_argument("--force_base_model", action="store_true",
                        help="Load adapters on --base_model even if it is not their recorded base.")
    models.add_argument("--regrade", nargs="+", default=None, metavar="PREDICTIONS.jsonl",
                        help="Grade saved generations again (no model, nothing generated).")
    parser.add_argument("--benchmarks", default="math500,aime24,gpqa_diamond",
                        help=f"Comma-separated, from {', '.join(BENCHMARKS)}.")
    parser.add_argument("--data_files", nargs="+", default=None, metavar="NAME=PATH",
                        help="Local files in the benchmark's schema (a bare PATH when one benchmark is named).")
    parser.add_argument("--revision", nargs="+", default=None, metavar="NAME=REV", help="Hub dataset revisions.")
    parser.add_argument("--output_dir", default="./outputs/benchmarks")
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    parser.add_argument("--max_tokens", type=int, default=32768, help="New tokens per problem, all phases (s1: 32768).")
    parser.add_argument("--max_thinking_tokens", type=thinking_tokens, default=None,
                        help="Budget forcing: thinking capped at N tokens, or 'auto' (default: no forcing).")
    parser.add_argument("--num_wait", type=int, default=0, help="Suppress the end of thinking N times with 'Wait'.")
    parser.add_argument("--wait_text", default="Wait")
    parser.add_argument("--think_start", default="<|im_start|>think")
    parser.add_argument("--answer_start", default="<|im_start|>answer")
    parser.add_argument("--think_stop", default="<|im_start|>", help="One token that ends thinking.")
    parser.add_argument("--end_tokens", default="<|im_end|>,<|endoftext|>")
    parser.add_argument("--gpqa_seed", type=int, default=0, help="Seed of the GPQA choice order (simple-evals: 0).")
    parser.add_argument("--paired", nargs="*", default=[], metavar="A,B", help="Paired differences B - A.")
    parser.add_argument("--batch_size", type=int, default=8, help="hf backend: prompts per generate call.")
    parser.add_argument("--chunk_size", type=int, default=64, help="Examples generated between two appends.")
    parser.add_argument("--tensor_parallel_size", type=int, default=1, help="vllm backend.")
    parser.add_argument("--max_model_len", type=int, default=None, help="vllm backend (default: the model's).")
    parser.add_argument("--gpu_memory_utilization", type=float, default=0.9, help="vllm backend.")
    parser.add_argument("--gold_field", default="solution", help="heldout: the gold answer column.")
    add_data_flags(parser, ROW_FLAGS)  # heldout rows are read as in training and analysis
    parser.add_argument("--gpu_id", type=int, default=0)
    args = parser.parse_args(argv)
    if sum(x is not None for x in (args.model_path, args.checkpoint_dir, args.regrade)) != 1:
        raise UsageError("give exactly one of --model_path, --checkpoint_dir or --regrade")
    if args.max_tokens < 1 or args.num_wait < 0 or args.batch_size < 1 or args.chunk_size < 1:
        raise UsageError("--max_tokens, --batch_size and --chunk_size must be >= 1, --num_wait >= 0")
    return args


def forcing_config(args) -> ForcingConfig:
    return ForcingConfig(args.max_tokens, args.max_thinking_tokens, args.num_wait, args.think_start,
                         args.answer_start, args.think_stop, wait_text=args.wait_text,
                         end_tokens=tuple(t for t in args.end_tokens.split(",") if t))


def load_problems(args, names: list[str], files: dict[str, str], revisions: dict[str, str], tokenizer):
    problems, sources = [], {}
    for name in names:
        if name == "heldout":
            if name not in files:
                raise UsageError("benchmark heldout needs its file: --data_files heldout=PATH "
                                 "(the test split written by scripts/prepare_data.py)")
            heldout = heldout_problems(files[name], tokenizer, RowSelection.from_args(args), args.gold_field)
            problems += heldout
            sources[name] = {"file": str(Path(files[name]).resolve()), "sha256": file_sha256(files[name]),
                             "rows": len(heldout)}
            continue
        frame, sources[name] = load_benchmark_frame(BENCHMARKS[name], files.get(name), revisions.get(name))
        source = files.get(name, BENCHMARKS[name].hub[0])
        if BENCHMARKS[name].kind == "choice":
            problems += gpqa_problems(frame, BENCHMARKS[name], source, tokenizer, args.gpqa_seed)
        else:
            problems += math_problems(frame, BENCHMARKS[name], source, tokenizer)
    return problems, sources


def check_settings(output_dir: Path, settings: dict, store: PredictionStore) -> None:
    """A resumed run must generate as the first did: predictions of one folder share settings."""
    path = output_dir / "run_config.json"
    if store.records and path.is_file():
        before = json.loads(path.read_text()).get("generation")
        if before != settings:
            changed = sorted(k for k in settings if before is None or before.get(k) != settings[k])
            raise UsageError(f"{output_dir} holds predictions generated with other settings ({changed}); "
                             "use another --output_dir, or the same settings to resume")


def summarize(records: list[dict], output_dir: Path, pairs: list[str]) -> None:
    frame = records_frame(records)
    accuracy = accuracy_table(frame)
    table = paper_table(accuracy)
    write_table(accuracy, output_dir / "accuracy.csv")
    write_table(table, output_dir / "accuracy_table.csv")
    atomic_write_text(output_dir / "accuracy_table.md", markdown(table))
    if pairs:
        differences = []
        for pair in pairs:
            a, sep, b = pair.partition(",")
            if not sep:
                raise UsageError(f"--paired {pair}: expected MODEL_A,MODEL_B")
            differences.append(paired_difference(frame, a, b))
        import pandas as pd

        paired = pd.concat(differences, ignore_index=True)
        write_table(paired, output_dir / "paired.csv")
        print(paired.to_string(index=False))
    print("accuracy in % [95% bootstrap CI] (n):")
    print(markdown(table))


def regrade(args, output_dir: Path) -> None:
    records = [r for path in args.regrade for r in _read_existing(path)]
    target = output_dir / PREDICTIONS
    if target.exists() and target.resolve() not in {Path(p).resolve() for p in args.regrade}:
        raise UsageError(f"{target} exists and is not one of the --regrade inputs: choose another --output_dir")
    records = regrade_records(records)
    atomic_write_text(target, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    summarize(records, output_dir, args.paired)


def _read_existing(path: str) -> list[dict]:
    if not Path(path).is_file():
        raise UsageError(f"--regrade {path}: file not found")
    return read_records(path)[0]


def check_model_content(output_dir: Path, store: PredictionStore, fingerprints: dict[str, str]) -> None:
    """Predictions are resumed per model label: a label whose weights changed since (a model
    retrained at the same path) stops with exit 2 instead of mixing old generations into its row."""
    path = output_dir / MODEL_FINGERPRINTS
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    labels_done = {r["model"] for r in store.records}
    changed = sorted(label for label, fingerprint in fingerprints.items()
                     if label in labels_done and recorded.get(label) != fingerprint)
    if changed:
        raise UsageError(f"{output_dir} holds predictions of {changed} generated from other weights (or "
                         f"without a record of them, {MODEL_FINGERPRINTS}); use another --output_dir, "
                         "or other model labels")
    write_json(path, {**recorded, **fingerprints})


def check_data_content(output_dir: Path, store: PredictionStore, files: dict[str, str]) -> None:
    """A local benchmark file regenerated at the same path is not resumed (exit 2): its ids would
    match predictions made for other problems."""
    path = output_dir / "run_config.json"
    recorded = (json.loads(path.read_text()).get("benchmarks") or {}) if path.is_file() else {}
    done = {r["benchmark"] for r in store.records}
    changed = sorted(name for name, file in files.items() if name in done and name in recorded
                     and recorded[name].get("sha256") not in (None, file_sha256(file)))
    if changed:
        raise UsageError(f"{output_dir} holds predictions of {changed} made from other data (the file's "
                         "SHA-256 changed since); use another --output_dir")


def main(argv=None) -> None:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    if args.regrade:
        return regrade(args, output_dir)
    names = parse_benchmarks(args.benchmarks)
    files = parse_data_files(args.data_files, names)
    revisions = dict(v.partition("=")[::2] for v in args.revision or [])
    if args.backend == "vllm":
        import_vllm()  # fail before any model is loaded
    config = forcing_config(args)
    settings = {**asdict(config), "end_tokens": list(config.end_tokens), "gpqa_seed": args.gpqa_seed}
    store = PredictionStore(output_dir / PREDICTIONS)
    check_settings(output_dir, settings, store)
    if args.model_path:
        specs = parse_model_paths(args.model_path)
    else:
        specs = series_specs(args.checkpoint_dir, args.stage, args.epochs, args.include_base,
                             args.base_model, args.force_base_model)
    check_model_content(output_dir, store, {s.label: model_fingerprint(
        s.path or tokenizer_source(s, args.base_model, args.force_base_model)) for s in specs})
    check_data_content(output_dir, store, files)
    known = dict.fromkeys([r["model"] for r in store.records] + [s.label for s in specs])  # in run order
    for pair in args.paired:  # before hours of generation, not after
        unknown = [m for m in pair.split(",") if m not in known]
        if "," not in pair or unknown:
            raise UsageError(f"--paired {pair}: expected MODEL_A,MODEL_B among the models {sorted(known)}")
    if args.backend == "vllm":
        models = VLLMModels(args.base_model, args.force_base_model, {
            "tensor_parallel_size": args.tensor_parallel_size, "max_model_len": args.max_model_len,
            "gpu_memory_utilization": args.gpu_memory_utilization})
    else:
        device = torch.device(f"cuda:{args.gpu_id}" if torch.cuda.is_available() else "cpu")
        models = HFModels(args.base_model, args.force_base_model, device)
    problems_by_tokenizer = {}  # a series shares its tokenizer: its prompts are built once
    for spec in specs:
        source = tokenizer_source(spec, args.base_model, args.force_base_model)
        if source not in problems_by_tokenizer:
            problems_by_tokenizer[source] = load_problems(args, names, files, revisions, load_tokenizer(source))
        problems, sources = problems_by_tokenizer[source]
        write_json(output_dir / "run_config.json", {"generation": settings, "backend": args.backend,
                                                    "benchmarks": sources, "models": list(known)})
        if not pending(problems, spec, store):
            print(f"{spec.label}: all {len(problems)} examples done, not loaded")
            continue
        with models.load(spec) as (model, tokenizer):
            backend = model if args.backend == "vllm" else _hf_backend(model, tokenizer, args.batch_size)
            evaluate_model(spec, problems, backend, tokenizer, config, store, args.chunk_size)
    summarize([r for r in store.records if r["benchmark"] in names], output_dir, args.paired)


def _hf_backend(model, tokenizer, batch_size):
    from fwdrev.evaluation.hf_backend import HFBackend

    return HFBackend(model, tokenizer, batch_size)


if __name__ == "__main__":
    run_cli(main)
