"""fwdrev.training, what the training scripts share: precision without DeepSpeed (fp32 trained
weights under --bf16, an fp32 merge, flash attention only in half precision) and the eval split."""

import sys
import types
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT, run_command, training_command
from safetensors.torch import load_file

from fwdrev.checkpoints import load_for_scoring
from fwdrev.data import load_preference_data
from fwdrev.errors import UsageError
from fwdrev.model_arguments import ModelArguments
from fwdrev.modeling import load_tokenizer, pick_attn_implementation
from fwdrev.scoring import score_pairs
from fwdrev.tokenization import encode_examples
from fwdrev.training import check_attention_precision, load_policy, split_train_eval

SAMPLE = str(REPO_ROOT / "data-100samples.parquet")
# the paper's DPO learning rate: its updates are far below bf16's resolution of the weights
TINY_RUN = ["--use_lora", "--max_length", "256", "--max_prompt_length", "128", "--lora_r", "8", "--lora_alpha", "16",
            "--learning_rate", "5e-7", "--warmup_steps", "0", "--gradient_accumulation_steps", "1",
            "--report_to", "none", "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1",
            "--save_total_limit", "5", "--bf16"]


def run_script(script, model_dir, output_dir, *extra):
    return run_command(training_command(REPO_ROOT / script, model_dir, SAMPLE, output_dir, *TINY_RUN, *extra),
                       check=True)


def moved_fraction(output_dir: Path, kind: str) -> float:
    """Share of the ``kind`` (lora_A / lora_B) entries that changed from step 1 to step 3."""
    first = load_file(output_dir / "checkpoint-1" / "adapter_model.safetensors")
    last = load_file(output_dir / "checkpoint-3" / "adapter_model.safetensors")
    keys = [key for key in first if kind in key]
    assert keys and all(first[key].dtype == torch.float32 for key in keys)
    moved = sum(int((first[key] != last[key]).sum()) for key in keys)
    return moved / sum(first[key].numel() for key in keys)


@pytest.fixture(scope="module")
def bf16_dpo_run(tiny_model_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("dpo_bf16")
    run_script("dpo/combined_dpo.py", tiny_model_dir, output_dir, "--eval_size", "0", "--merge_weights")
    return output_dir


def test_bf16_dpo_without_deepspeed_keeps_small_updates(bf16_dpo_run):
    # bf16 adapter weights (the old behaviour) kept ~1% of these updates; fp32 ones keep ~99%
    assert moved_fraction(bf16_dpo_run, "lora_A") > 0.9


def test_bf16_sft_without_deepspeed_keeps_small_updates(tiny_model_dir, tmp_path):
    run_script("scripts/sft.py", tiny_model_dir, tmp_path, "--sample_types", "original")
    assert moved_fraction(tmp_path, "lora_A") > 0.9


@pytest.mark.parametrize("use_lora", [True, False], ids=["lora", "full"])
def test_trained_weights_are_fp32_unless_deepspeed_keeps_master_copies(tiny_model_dir, use_lora):
    model_args = ModelArguments(model_name=str(tiny_model_dir), use_lora=use_lora, lora_r=4, lora_alpha=8)
    for deepspeed, expected in [(None, torch.float32), ("ds_config.json", torch.bfloat16)]:
        training_args = types.SimpleNamespace(bf16=True, fp16=False, deepspeed=deepspeed, seed=0,
                                              activation_checkpointing=False)
        model = load_policy(model_args, training_args)
        trained = {p.dtype for p in model.parameters() if p.requires_grad}
        assert trained == {expected}, (deepspeed, trained)
        if use_lora:  # the frozen base stays in bf16 either way (memory)
            assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}


@pytest.mark.usefixtures("one_thread")
def test_merged_weights_score_like_the_adapter(bf16_dpo_run, tiny_model_dir):
    config = (bf16_dpo_run / "merged" / "config.json").read_text()
    assert '"dtype": "float32"' in config
    tokenizer = load_tokenizer(str(tiny_model_dir))
    data = load_preference_data(SAMPLE, tokenizer=tokenizer)
    pairs = encode_examples(tokenizer, data.examples[:6], 256, 128)
    scores = {}
    for name, path in [("base", tiny_model_dir), ("adapter", bf16_dpo_run),
                       ("merged", bf16_dpo_run / "merged")]:
        model, _ = load_for_scoring(str(path))
        scores[name] = score_pairs(model, pairs, tokenizer.pad_token_id, batch_size=6)
    for column in ("chosen_logp_sum", "rejected_logp_sum"):
        adapter, merged = scores["adapter"][column], scores["merged"][column]
        assert merged.to_numpy() == pytest.approx(adapter.to_numpy(), rel=1e-3)
        # the sums are ~-400 nats and the DPO change ~1e-3 nats: the merge must keep the change.
        # A bf16 merge (the old code) was off by ~10x the change (0.03 nats); fp32 by ~4% of it.
        change = (adapter - scores["base"][column]).abs().max()
        assert change > 1e-4 and (merged - adapter).abs().max() < 0.25 * change


@pytest.fixture
def flash_attention_usable(monkeypatch):
    """As on a GPU machine with flash-attn installed."""
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    pick_attn_implementation.cache_clear()
    yield
    pick_attn_implementation.cache_clear()


def precision(bf16=False, fp16=False):
    return types.SimpleNamespace(bf16=bf16, fp16=fp16)


def test_flash_attention_in_fp32_is_refused(flash_attention_usable):
    flash = ModelArguments(model_name="m", use_flash_attention=True)
    with pytest.raises(UsageError, match="--use_flash_attention.*add --bf16"):
        check_attention_precision(flash, precision())
    check_attention_precision(flash, precision(bf16=True))
    check_attention_precision(flash, precision(fp16=True))
    check_attention_precision(ModelArguments(model_name="m"), precision())  # SDPA: any dtype


def test_flash_attention_falling_back_to_sdpa_runs_in_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pick_attn_implementation.cache_clear()
    with pytest.warns(UserWarning, match="SDPA"):
        check_attention_precision(ModelArguments(model_name="m", use_flash_attention=True), precision())
    pick_attn_implementation.cache_clear()


def test_an_eval_split_larger_than_the_training_split_is_an_error():
    items, groups = list(range(10)), [i // 2 for i in range(10)]  # 5 problems of 2 rows
    train, held_out = split_train_eval(items, 4, seed=0, groups=groups)
    assert len(held_out) == 4 and len(train) == 6
    assert {groups[i] for i in held_out}.isdisjoint({groups[i] for i in train})  # whole problems
    with pytest.raises(UsageError, match="would hold out 6 of 10 rows"):
        split_train_eval(items, 6, seed=0, groups=groups)
