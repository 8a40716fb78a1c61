"""Helpers of scripts/gpu_check.sh: a 7B-shaped model from a config, synthetic rows of a given
length, a peak-memory sampler, and the report (peak memory, tokens/s, MFU).

    python -m fwdrev.devtools.gpu_check prepare --shape 7b --check_dir DIR --lengths 8192 20000 --world_size 8 \
        --gpus 8 --sample_texts r1k.parquet
        (DIR/model unless it exists; DIR/len<L>/data.parquet and meta.json per length)
    python -m fwdrev.devtools.gpu_check sample-memory --output FILE      (until killed)
    python -m fwdrev.devtools.gpu_check report RUN_DIR...

MFU = tokens/s x 6 x (trainable + frozen parameters) / (GPUs x peak bf16 FLOP/s per GPU): the
usual 6-FLOPs-per-parameter-per-token convention, with neither attention FLOPs, the reference
forward, nor checkpointing's recomputation counted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from fwdrev.io import write_json

# Qwen2.5-7B's shape (random weights: nothing is downloaded).
QWEN25_7B = dict(vocab_size=152064, hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, intermediate_size=18944, max_position_embeddings=32768,
                 rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
DEFAULT_PEAK_TFLOPS = 989.0  # H100/H200 SXM dense bf16 (without sparsity)


def make_model(shape: str, output_dir: str, sample_texts: str) -> None:
    """A random-init Qwen2 of ``shape`` ("tiny" or "7b") with the tiny byte-level tokenizer
    (trained on the text / worse-text columns of ``sample_texts``, e.g. r1k.parquet)."""
    import pandas as pd
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from fwdrev.devtools.tiny_model import build_tiny_model, train_tokenizer

    frame = pd.read_parquet(sample_texts, columns=["text", "worse-text"])
    tokenizer = train_tokenizer(list(frame["text"]) + list(frame["worse-text"]))
    if shape == "tiny":
        model = build_tiny_model(tokenizer, seed=0)
    else:
        config = Qwen2Config(**QWEN25_7B, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, dtype="bfloat16")
        device = "cuda" if torch.cuda.is_available() else "cpu"  # random init is fast on a GPU
        torch.manual_seed(0)
        with torch.device(device):
            model = Qwen2ForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    print(f"{shape} model ({sum(p.numel() for p in model.parameters()) / 1e9:.3f}B parameters) -> {output_dir}")


def make_data(model_dir: str, tokens: int, rows: int, output: str, seed: int = 0) -> None:
    """``rows`` preference pairs whose responses are longer than ``tokens`` (so every sequence
    is cut to exactly --max_length): random token ids of the model's tokenizer, decoded."""
    import pandas as pd
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    rng = random.Random(seed)

    def text(count):
        """Decoded random ids that re-encode to at least ``count`` tokens."""
        decoded = tokenizer.decode(rng.choices(ids, k=count))
        while len(tokenizer(decoded, add_special_tokens=False)["input_ids"]) < count:
            decoded += tokenizer.decode(rng.choices(ids, k=count // 4 + 1))
        return decoded

    frame = pd.DataFrame({"question": [f"Problem {i}: {text(32)}" for i in range(rows)],
                          "text": [text(tokens + tokens // 2) for _ in range(rows)],
                          "worse-text": [text(tokens + tokens // 2) for _ in range(rows)]})
    frame.to_parquet(output, index=False)
    print(f"{rows} synthetic pairs of > {tokens} tokens -> {output}")


def prepare(shape: str, check_dir: str, lengths: list[int], world_size: int, gpus: int,
            sample_texts: str) -> None:
    """The model (unless built already) and, per length, 2 pairs per rank (2 steps x 1 pair)."""
    check_dir = Path(check_dir)
    model_dir = check_dir / "model"
    if not (model_dir / "config.json").is_file():
        make_model(shape, str(model_dir), sample_texts)
    for length in lengths:
        run_dir = check_dir / f"len{length}"
        run_dir.mkdir(parents=True, exist_ok=True)
        make_data(str(model_dir), length, 2 * world_size, str(run_dir / "data.parquet"))
        write_json(run_dir / "meta.json", {"seq_len": length, "world_size": world_size, "gpus": gpus,
                                           "model_dir": str(model_dir)})


def gpu_memory_mib() -> dict[str, float]:
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    return {f"gpu{line.split(',')[0].strip()}": float(line.split(",")[1]) for line in out.strip().splitlines()}


def tree_rss_mib(pid: int) -> dict[str, float]:
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [p for p in [root, *root.children(recursive=True)] if p.pid != os.getpid()]  # not the sampler
    except psutil.NoSuchProcess:
        return {}
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return {"cpu (RSS, all processes)": total / 2**20}


def sample_memory(output: str, pid: int, interval: float = 0.5) -> None:
    """Until killed: the peak memory seen per GPU (nvidia-smi), or the process tree's RSS."""
    on_gpu = shutil.which("nvidia-smi") is not None
    peak: dict[str, float] = {}
    while True:
        current = gpu_memory_mib() if on_gpu else tree_rss_mib(pid)
        changed = {key: value for key, value in current.items() if value > peak.get(key, -1)}
        if changed:
            peak.update(changed)
            write_json(output, {"source": "nvidia-smi memory.used" if on_gpu else "RSS", "peak_mib": peak})
        time.sleep(interval)


def parameter_counts(model_dir: Path, adapter_dir: Path) -> tuple[int, int]:
    """(frozen base parameters from the config, trainable LoRA parameters from the adapter)."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    frozen = sum(p.numel() for p in base.parameters())
    trainable = 0
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as f:
        for key in f.keys():
            trainable += math.prod(f.get_slice(key).get_shape())
    return frozen, trainable


def step_wall_times(run_dir: Path) -> dict[int, float]:
    """Wall-clock time of each logged training step, from the TensorBoard event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    times: dict[int, float] = {}
    for events in sorted(run_dir.glob("runs/**/events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if "train/loss" in accumulator.Tags().get("scalars", []):
            times.update({e.step: e.wall_time for e in accumulator.Scalars("train/loss")})
    return times


def measure(check_dir: Path, peak_tflops: float) -> dict:
    """One check run: losses checked, tokens/s of step 2, MFU, peak memory."""
    meta = json.loads((check_dir / "meta.json").read_text())
    run_dir = check_dir / "dpo"
    history = json.loads((run_dir / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    losses = {e["step"]: e["loss"] for e in history if "loss" in e}
    if sorted(losses) != [1, 2] or not all(math.isfinite(v) for v in losses.values()):
        raise RuntimeError(f"{run_dir}: expected finite losses at steps 1 and 2, got {losses}")
    if abs(losses[1] - math.log(2)) > 1e-2:  # a fresh adapter: policy == reference at step 1
        raise RuntimeError(f"{run_dir}: step-1 loss {losses[1]} is not log 2")
    if not (check_dir / "analysis" / "scores.parquet").is_file():
        raise RuntimeError(f"{check_dir}/analysis/scores.parquet missing: the analysis did not finish")
    times = step_wall_times(run_dir)
    tokens_per_step = 2 * meta["seq_len"] * meta["world_size"]  # chosen + rejected, 1 pair per rank
    tokens_per_s = tokens_per_step / (times[2] - times[1])
    frozen, trainable = parameter_counts(Path(meta["model_dir"]), run_dir / "checkpoint-2")
    on_gpu = meta["gpus"] > 0
    mfu = tokens_per_s * 6 * (frozen + trainable) / (meta["gpus"] * peak_tflops * 1e12) if on_gpu else None
    memory = json.loads((check_dir / "memory.json").read_text()) if (check_dir / "memory.json").is_file() else {}
    return dict(seq_len=meta["seq_len"], world_size=meta["world_size"], losses=losses,
                tokens_per_s=tokens_per_s, mfu=mfu, params=frozen + trainable, trainable=trainable,
                peak_mib=memory.get("peak_mib", {}), memory_source=memory.get("source", "not sampled"))


def report(check_dirs: list[str], peak_tflops: float) -> int:
    rows = [measure(Path(d), peak_tflops) for d in check_dirs]
    print(f"\nMFU = tokens/s x 6 x (trainable + frozen parameters) / (GPUs x {peak_tflops:g} TFLOP/s "
          "peak bf16 per GPU, GPU_PEAK_TFLOPS); tokens/s of step 2 (chosen + rejected tokens, all ranks)")
    print("| tokens/seq | ranks | parameters (trainable) | loss step 1, 2 | tokens/s | MFU | peak memory (MiB) |")
    print("|---:|---:|---|---|---:|---:|---|")
    for r in rows:
        memory = ", ".join(f"{k}: {v:.0f}" for k, v in sorted(r["peak_mib"].items())) or "not sampled"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (CPU)"
        print(f"| {r['seq_len']} | {r['world_size']} | {r['params'] / 1e6:,.1f}M ({r['trainable'] / 1e6:,.1f}M) "
              f"| {r['losses'][1]:.4f}, {r['losses'][2]:.4f} | {r['tokens_per_s']:.1f} | {mfu} | {memory} |")
    write_json(Path(check_dirs[0]).parent / "gpu_check.json", {"peak_tflops": peak_tflops, "runs": rows})
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    setup = commands.add_parser("prepare")
    setup.add_argument("--shape", choices=["tiny", "7b"], required=True)
    setup.add_argument("--check_dir", required=True)
    setup.add_argument("--lengths", type=int, nargs="+", required=True)
    setup.add_argument("--world_size", type=int, required=True)
    setup.add_argument("--gpus", type=int, required=True)
    setup.add_argument("--sample_texts", required=True, help="Parquet with text / worse-text columns "
                       "(r1k.parquet) to train the tiny tokenizer on.")
    memory = commands.add_parser("sample-memory")
    memory.add_argument("--output", required=True)
    memory.add_argument("--pid", type=int, required=True, help="CPU: sum the RSS of this process tree")
    summary = commands.add_parser("report")
    summary.add_argument("check_dirs", nargs="+")
    summary.add_argument("--peak_tflops", type=float, default=DEFAULT_PEAK_TFLOPS)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.shape, args.check_dir, args.lengths, args.world_size, args.gpus, args.sample_texts)
    elif args.command == "sample-memory":
        sample_memory(args.output, args.pid)
    else:
        return report(args.check_dirs, args.peak_tflops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
