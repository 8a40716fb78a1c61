"""Generation speed of the ``hf`` benchmark backend: batched (KV cache, left padding) vs. one at a time.

    python scripts/benchmark_generation.py                        # tiny model, Qwen2.5's 152k vocabulary
    python scripts/benchmark_generation.py --model_path ./models/tiny-qwen2.5 --batch_size 8 --new_tokens 64
    .venv-eval/bin/python scripts/benchmark_generation.py --backend vllm --model_path MODEL \
        --batch_size 64 --new_tokens 2048        # GPUs: vLLM's generation tokens/s (scripts/gpu_check.sh)

The same greedy requests (chat-templated questions, ``--new_tokens`` tokens each, no early stop)
run through ``fwdrev.evaluation.hf_backend.HFBackend`` with ``--batch_size`` and with batch 1, in
``--repeats`` interleaved rounds (the median is reported: other programs' load hits both alike).
Prints and (``--output``) writes JSON: tokens/s and CPU seconds of each, their ratio, and whether
both gave the same tokens. Without ``--model_path`` the tiny model is built in a temporary folder.
``--backend vllm``: the ``--batch_size`` requests in one vLLM call (after a short warm-up call),
generation tokens/s only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from fwdrev.checkpoints import load_for_scoring
from fwdrev.data import render_prompt
from fwdrev.evaluation.forcing import StepRequest
from fwdrev.evaluation.hf_backend import HFBackend
from fwdrev.io import write_json

QUESTIONS = ["Take 14. Increase it by 5, then multiply it by 3.", "What is 3 + 4?",
             "Start with 2. Multiply it by 9, then add 1, then subtract 4. What is the result?",
             "A number was doubled, giving 18. What was the number?", "Find 17 times 12.",
             "Take 7. Subtract 2.", "How many divisors does 36 have?", "Write 0.75 as a fraction."]


def timed(backend: HFBackend, requests: list[StepRequest]):
    wall, cpu = time.perf_counter(), time.process_time()
    outputs = backend.generate(requests)
    return time.perf_counter() - wall, time.process_time() - cpu, outputs


def make_requests(tokenizer, count: int, new_tokens: int, never: int) -> list[StepRequest]:
    questions = (QUESTIONS * (count // len(QUESTIONS) + 1))[:count]
    return [StepRequest(tuple(tokenizer.encode(render_prompt(q, tokenizer), add_special_tokens=False)),
                        new_tokens, (never,)) for q in questions]


def vllm_speed(args) -> dict:
    from transformers import AutoConfig

    from fwdrev.evaluation.vllm_backend import VLLMBackend
    from fwdrev.modeling import load_tokenizer

    if args.model_path is None:
        raise SystemExit("--backend vllm needs --model_path")
    tokenizer = load_tokenizer(args.model_path)
    never = AutoConfig.from_pretrained(args.model_path).vocab_size - 1  # every request runs its full length
    requests = make_requests(tokenizer, args.batch_size, args.new_tokens, never)
    backend = VLLMBackend(args.model_path, tensor_parallel_size=args.tensor_parallel_size,
                          max_model_len=max(len(r.prompt_ids) for r in requests) + args.new_tokens + 16)
    backend.generate(make_requests(tokenizer, 2, 16, never))  # warm-up: compilation, CUDA graphs
    wall = time.perf_counter()
    outputs = backend.generate(requests)
    wall = time.perf_counter() - wall
    tokens = sum(len(o.token_ids) for o in outputs)
    result = {"backend": "vllm", "model": args.model_path, "requests": len(requests), "new_tokens": args.new_tokens,
              "tensor_parallel_size": args.tensor_parallel_size, "generated_tokens": tokens,
              "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 1)}
    print(json.dumps(result, indent=2))
    if args.output:
        write_json(args.output, result)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", default=None, help="Default: a tiny model with the 152k vocabulary.")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=None, help="Also write the result as JSON here.")
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    parser.add_argument("--tensor_parallel_size", type=int, default=1, help="vllm backend.")
    args = parser.parse_args(argv)
    if args.backend == "vllm":
        return vllm_speed(args)
    with tempfile.TemporaryDirectory() as folder:
        path = args.model_path
        if path is None:
            from fwdrev.devtools.tiny_model import build_and_save_qwen25

            build_and_save_qwen25(folder, seed=0)
            path = folder
        model, tokenizer = load_for_scoring(path)
    never = model.config.vocab_size - 1  # an unused row: every request runs its full length
    requests = make_requests(tokenizer, args.batch_size, args.new_tokens, never)
    runs = {"batched": [], "one_at_a_time": []}
    outputs = {}
    for _ in range(args.repeats):
        for name, batch in (("batched", args.batch_size), ("one_at_a_time", 1)):
            wall, cpu, outputs[name] = timed(HFBackend(model, tokenizer, batch_size=batch), requests)
            runs[name].append((wall, cpu))
    tokens = sum(len(o.token_ids) for o in outputs["batched"])
    result = {"model": args.model_path or "tiny, 152,064-row vocabulary (devtools.tiny_model.build_and_save_qwen25)",
              "vocab_size": model.config.vocab_size, "requests": len(requests), "new_tokens": args.new_tokens,
              "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(), "repeats": args.repeats,
              "same_tokens": outputs["batched"] == outputs["one_at_a_time"]}
    for name, times in runs.items():
        wall, cpu = statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)
        result[name] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "tokens_per_s": round(tokens / wall, 1)}
    result["speedup_wall"] = round(result["one_at_a_time"]["wall_s"] / result["batched"]["wall_s"], 2)
    result["speedup_cpu"] = round(result["one_at_a_time"]["cpu_s"] / result["batched"]["cpu_s"], 2)
    print(json.dumps(result, indent=2))
    if args.output:
        write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
