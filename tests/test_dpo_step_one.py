"""Before its first update the DPO policy is its reference, in every configuration: at step 1 the
loss is ln 2 and the margin, both rewards and the accuracy are 0.

Two causes made them differ: under --bf16 without DeepSpeed the policy's head ran under autocast
(bf16) and the frozen reference's in fp32; and the policy's (LoRA) dropout was on while the
reference was scored without it (--disable_dropout, on by default, switches it off as TRL does).
"""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import REPO_ROOT, load_script, run_command, torchrun_command

from fwdrev.modeling import add_lora, load_causal_lm, make_lora_config

combined_dpo = load_script("dpo", "combined_dpo")

# 64 tokens: every pair is cut to the same width. In bf16 a sequence's log-probs depend on the
# width it is padded to (~1e-3 nats), and precomputed reference log-probs come from other batches.
STEP_ONE = ["--max_length", "64", "--max_prompt_length", "32", "--lora_r", "4", "--lora_alpha", "8",
            "--lora_dropout", "0.5", "--learning_rate", "1e-3", "--warmup_steps", "0", "--max_steps", "1",
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--eval_size", "0",
            "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1"]
# what the reference is: a fresh adapter switched off, the initial policy scored up front, or a frozen copy
CONFIGURATIONS = {
    "lora": [],
    "lora-init-precomputed": ["--init_adapter", "{adapter}"],
    "lora-init-frozen-copy": ["--init_adapter", "{adapter}", "--no_precompute_ref_log_probs"],
    "full-precomputed": ["--no_use_lora"],
    "full-frozen-copy": ["--no_use_lora", "--no_precompute_ref_log_probs"],
}


@pytest.fixture(scope="module")
def step_one_data(tmp_path_factory):
    """Four rows of the sample: one batch of two pairs to train on, few to score up front."""
    path = tmp_path_factory.mktemp("step-one-data") / "rows.parquet"
    pd.read_parquet(REPO_ROOT / "data-100samples.parquet").head(4).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def trained_adapter(tiny_model_dir, tmp_path_factory):
    """An SFT-like adapter: non-zero B matrices (so its dropout matters) and dropout 0.5 in its config."""
    path = tmp_path_factory.mktemp("init-adapter")
    model = add_lora(load_causal_lm(str(tiny_model_dir)), make_lora_config(4, 8, 0.5), seed=0)
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    model.save_pretrained(path)
    return path


def step_one_metrics(output_dir) -> pd.Series:
    metrics = pd.read_csv(output_dir / "metrics.csv").dropna(subset=["loss"]).set_index("step")
    return metrics.loc[1]


def assert_policy_is_its_reference(metrics: pd.Series) -> None:
    assert metrics["loss"] == pytest.approx(math.log(2), abs=1e-6)
    for name in ["rewards/margins", "rewards/chosen", "rewards/rejected"]:
        assert metrics[name] == pytest.approx(0.0, abs=1e-6), name
    assert metrics["rewards/accuracies"] == 0.0


def configuration_flags(name: str, adapter) -> list[str]:
    return [flag.format(adapter=adapter) for flag in CONFIGURATIONS[name]]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("configuration", list(CONFIGURATIONS))
def test_step_one_policy_equals_reference_without_deepspeed(tiny_model_dir, step_one_data, trained_adapter,
                                                            tmp_path, configuration, precision):
    flags = configuration_flags(configuration, trained_adapter) + (["--bf16"] if precision == "bf16" else [])
    combined_dpo.main(["--model_name", str(tiny_model_dir), "--train_file_path", str(step_one_data),
                       "--output_dir", str(tmp_path), *STEP_ONE, *flags])
    assert_policy_is_its_reference(step_one_metrics(tmp_path))
    run_config = json.loads((tmp_path / "run_config.json").read_text())
    assert run_config["DPOArguments"]["disable_dropout"] is True


@pytest.mark.slow
def test_step_one_policy_equals_reference_under_zero3(tiny_model_dir, step_one_data, trained_adapter, tmp_path):
    """Every configuration and precision under ZeRO-3 (2 processes on CPU, gloo), in one torchrun
    launch (tests/dpo_step_one_worker.py)."""
    runs = {}
    for configuration in CONFIGURATIONS:
        for precision in ["fp32", "bf16"]:
            output_dir = tmp_path / f"{configuration}-{precision}"
            runs[str(output_dir)] = [
                "--model_name", str(tiny_model_dir), "--train_file_path", str(step_one_data),
                "--output_dir", str(output_dir), *STEP_ONE, *configuration_flags(configuration, trained_adapter),
                *(["--bf16"] if precision == "bf16" else []),
                "--deepspeed", str(REPO_ROOT / "configs" / "ds_config_zero3_cpu.json")]
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    worker = REPO_ROOT / "tests" / "dpo_step_one_worker.py"
    run_command(torchrun_command(2) + [str(worker), str(tmp_path / "runs.json")], check=True, timeout=900)
    for output_dir in runs:
        assert_policy_is_its_reference(step_one_metrics(Path(output_dir)))
