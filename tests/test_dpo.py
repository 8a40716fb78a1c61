"""The DPO trainer end to end on the tiny model: flags, reference model, ZeRO-3, resume, launcher."""

import json
import math
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import REPO_ROOT, run_command, script_env, training_command

from fwdrev.data import load_preference_data
from fwdrev.data_arguments import DataArguments
from fwdrev.dpo_trainer import DPOArguments
from fwdrev.logprobs import sequence_logprobs
from fwdrev.model_arguments import ModelArguments
from fwdrev.modeling import add_lora, load_causal_lm, load_tokenizer, make_lora_config
from fwdrev.tokenization import collate_pairs, encode_examples
from fwdrev.training import parse_arguments

SCRIPT = str(REPO_ROOT / "dpo" / "combined_dpo.py")
SAMPLE = str(REPO_ROOT / "data-100samples.parquet")
SMALL_RUN = ["--max_length", "256", "--max_prompt_length", "128", "--lora_r", "8", "--lora_alpha", "16",
             "--learning_rate", "1e-3", "--warmup_steps", "0", "--per_device_eval_batch_size", "4",
             "--gradient_accumulation_steps", "2", "--report_to", "none", "--eval_size", "8"]


def run_dpo(model_dir, output_dir, *extra, procs=1, timeout=600, check=True):
    command = training_command(SCRIPT, model_dir, SAMPLE, output_dir, *SMALL_RUN, *extra, procs=procs)
    return run_command(command, timeout=timeout, check=check)


def final_state(output_dir):
    return json.loads((Path(output_dir) / "trainer_state.json").read_text()) \
        if (Path(output_dir) / "trainer_state.json").is_file() else \
        json.loads(max(Path(output_dir).glob("checkpoint-*/trainer_state.json"),
                       key=lambda p: int(p.parent.name.split("-")[1])).read_text())


def test_every_flag_reaches_the_arguments():
    argv = ["--model_name", "m", "--train_file_path", "d.parquet", "--output_dir", "o",
            "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "3",
            "--gradient_accumulation_steps", "5", "--learning_rate", "2e-6",
            "--lr_scheduler_type", "linear", "--warmup_steps", "7", "--weight_decay", "0.01",
            "--max_steps", "7", "--max_prompt_length", "100", "--max_length", "300", "--beta", "0.2",
            "--seed", "3", "--save_steps", "4", "--save_total_limit", "2", "--logging_steps", "2",
            "--eval_steps", "6", "--gradient_checkpointing", "--no_use_lora", "--lora_r", "4",
            "--lora_alpha", "8", "--lora_dropout", "0.1", "--lora_target_modules", "q_proj,v_proj",
            "--use_flash_attention", "--local_rank", "-1", "--merge_weights", "--prompt_field", "p",
            "--chosen_field", "c", "--rejected_field", "r", "--sample_types", "original",
            "--flipped_prompt_field", "rq",
            "--loss_type", "ipo", "--sft_weight", "0.5", "--eval_size", "10",
            "--resume_from_checkpoint", "latest", "--trust_remote_code", "--ref_batch_size", "9"]
    model, data, args = parse_arguments((ModelArguments, DataArguments, DPOArguments), {}, argv)
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size) == (2, 3)
    assert (args.gradient_accumulation_steps, args.learning_rate, args.warmup_steps) == (5, 2e-6, 7)
    assert args.lr_scheduler_type == "linear" and args.weight_decay == 0.01
    assert (args.max_steps, args.seed, args.save_steps, args.save_total_limit) == (7, 3, 4, 2)
    assert (args.logging_steps, args.eval_steps, args.activation_checkpointing) == (2, 6, True)
    assert (args.beta, args.loss_type, args.sft_weight) == (0.2, "ipo", 0.5)
    assert args.resume_from_checkpoint == "latest" and args.ref_batch_size == 9
    assert not model.use_lora and (model.lora_r, model.lora_alpha, model.lora_dropout) == (4, 8, 0.1)
    assert model.lora_target_modules == "q_proj,v_proj" and model.use_flash_attention
    assert model.merge_weights and model.trust_remote_code
    assert (data.prompt_field, data.chosen_field, data.rejected_field) == ("p", "c", "r")
    assert data.flipped_prompt_field == "rq"
    assert (data.max_length, data.max_prompt_length, data.sample_types) == (300, 100, "original")
    assert data.eval_size == 10
    if not torch.cuda.is_available():
        assert args.use_cpu


def test_default_recipe_is_lora_dpo():
    model, _, args = parse_arguments((ModelArguments, DataArguments, DPOArguments), {},
                                     ["--model_name", "m", "--train_file_path", "d", "--output_dir", "o"],
                                     stage="dpo", default_recipe="lora", recipes_dir=REPO_ROOT / "recipes")
    assert model.use_lora and (model.lora_r, model.lora_alpha, model.lora_dropout) == (256, 512, 0.05)
    assert args.loss_type == "sigmoid" and args.precompute_ref_log_probs and args.ref_batch_size is None
    assert (args.learning_rate, args.max_steps, args.save_steps, args.beta) == (5e-6, 50, 7, 0.1)


def test_adapter_disabled_reference_equals_base_model(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    data = load_preference_data(SAMPLE, tokenizer=tokenizer)
    batch = collate_pairs(encode_examples(tokenizer, data.examples[:3], 256, 128), tokenizer.pad_token_id)
    base = load_causal_lm(str(tiny_model_dir)).eval()
    with torch.no_grad():
        base_logps = sequence_logprobs(base, batch["input_ids"], batch["attention_mask"], batch["labels"]).sum
    policy = add_lora(load_causal_lm(str(tiny_model_dir)), make_lora_config(8, 16, 0.0), seed=0).eval()
    for name, param in policy.named_parameters():  # a trained adapter: non-zero B matrices
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    with torch.no_grad():
        policy_logps = sequence_logprobs(policy, batch["input_ids"], batch["attention_mask"], batch["labels"]).sum
        with policy.disable_adapter():
            reference_logps = sequence_logprobs(policy, batch["input_ids"], batch["attention_mask"],
                                                batch["labels"]).sum
    assert torch.allclose(reference_logps, base_logps, atol=1e-4)
    assert (policy_logps - base_logps).abs().max() > 1e-2


def test_max_steps_and_outputs_single_process(tiny_model_dir, tmp_path):
    run_dpo(tiny_model_dir, tmp_path, "--max_steps", "7", "--save_steps", "100", "--eval_steps", "3")
    state = final_state(tmp_path)
    assert state["global_step"] == 7
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    train = metrics.dropna(subset=["loss"])
    assert list(train["step"]) == [1, 2, 3, 4, 5, 6, 7]
    assert train["loss"].iloc[0] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 1
    for column in ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"]:
        assert train[column].iloc[0] == pytest.approx(0.0, abs=1e-5), column  # no reward before any update
    for column in ["logps/chosen", "logps/rejected", "logps/chosen_mean_per_token"]:
        assert train[column].notna().all()
    assert list(metrics.dropna(subset=["eval_loss"])["step"]) == [3, 6, 7]  # every 3 steps and at the end
    assert (tmp_path / "adapter_model.safetensors").is_file()
    reference = pd.read_parquet(tmp_path / "reference_logps.parquet").set_index("example_id")
    assert sorted(reference.index) == list(range(100))
    assert_reference_is_the_base_model(tiny_model_dir, reference, example_ids=[0, 57])
    report = json.loads((tmp_path / "data_report.json").read_text())
    assert report["used_rows"] == 100
    assert json.loads((tmp_path / "run_config.json").read_text())["DPOArguments"]["max_steps"] == 7


def assert_reference_is_the_base_model(model_dir, reference: pd.DataFrame, example_ids) -> None:
    """Cached reference log-probs of these examples = the base model's, from one full-logits pass each."""
    tokenizer = load_tokenizer(str(model_dir))
    examples = [e for e in load_preference_data(SAMPLE, tokenizer=tokenizer).examples if e.example_id in example_ids]
    base = load_causal_lm(str(model_dir)).eval()
    for pair in encode_examples(tokenizer, examples, 256, 128):  # SMALL_RUN's lengths
        for side in ("chosen", "rejected"):
            response = getattr(pair, f"{side}_ids")
            ids = torch.tensor([pair.prompt_ids + response])
            with torch.no_grad():
                logps = torch.log_softmax(base(input_ids=ids).logits[0, :-1].double(), dim=-1)
            expected = logps.gather(-1, ids[0, 1:, None])[len(pair.prompt_ids) - 1 :, 0]
            row = reference.loc[pair.example_id]
            assert row[f"{side}_logp_sum"] == pytest.approx(expected.sum().item(), abs=1e-3), (pair.example_id, side)
            assert row[f"{side}_logp_mean"] == pytest.approx(expected.mean().item(), abs=1e-5), (pair.example_id, side)


def test_bad_data_exits_2_with_the_rows(tiny_model_dir, tmp_path):
    frame = pd.read_parquet(SAMPLE)
    frame.loc[[3, 8], "worse-text"] = None
    bad = tmp_path / "bad.parquet"
    frame.to_parquet(bad)
    result = run_command(training_command(SCRIPT, tiny_model_dir, bad, tmp_path / "o"), timeout=300)
    assert result.returncode == 2
    assert "bad.parquet" in result.stderr and "worse-text" in result.stderr and "[3, 8]" in result.stderr


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_model_dir, tmp_path):
    steps = ["--max_steps", "16", "--save_steps", "2", "--eval_strategy", "no", "--seed", "5"]
    run_dpo(tiny_model_dir, tmp_path / "full", *steps)
    expected = final_state(tmp_path / "full")["log_history"]

    killed = tmp_path / "killed"
    command = training_command(SCRIPT, tiny_model_dir, SAMPLE, killed, *SMALL_RUN, *steps)
    process = subprocess.Popen(command, env=script_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint-4" / "trainer_state.json").is_file():
        assert process.poll() is None and time.time() < deadline, "run ended before checkpoint-4"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (killed / "checkpoint-16").exists()

    run_dpo(tiny_model_dir, killed, *steps, "--resume_from_checkpoint", "latest")
    resumed = final_state(killed)["log_history"]
    def losses(history):
        return {e["step"]: e["loss"] for e in history if "loss" in e}

    assert set(losses(resumed)) == set(range(1, 17))
    for step in range(1, 17):
        assert losses(resumed)[step] == pytest.approx(losses(expected)[step], abs=1e-4), step


@pytest.mark.slow
def test_zero3_two_processes_with_merge(tiny_model_dir, tmp_path):
    run_dpo(tiny_model_dir, tmp_path, "--max_steps", "4", "--save_steps", "2", "--eval_steps", "2",
            "--deepspeed", str(REPO_ROOT / "configs" / "ds_config_zero3_cpu.json"), "--merge_weights",
            "--probe_every", "2", "--probe_size", "2",
            "--logprob_chunk_size", "48", procs=2)  # ranks then differ in their number of head chunks
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    train = metrics.dropna(subset=["loss"])
    assert list(train["step"]) == [1, 2, 3, 4] and train["loss"].map(math.isfinite).all()
    # both ranks fed different pairs: 4 steps x 2 pairs x 2 ranks of 92 train pairs
    assert train["epoch"].iloc[-1] == pytest.approx(16 / 92, abs=0.01)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    assert (tmp_path / "checkpoint-2").is_dir() and (tmp_path / "checkpoint-4").is_dir()
    # in-training probes under ZeRO-3: 2 train + 2 eval pairs at steps 0, 2 and 4, written once
    dynamics = pd.read_csv(tmp_path / "dynamics.csv")
    assert dynamics.groupby("step").size().to_dict() == {0: 4, 2: 4, 4: 4}
    assert set(dynamics["split"]) == {"train", "eval"}
    assert dynamics["chosen_logp_mean"].lt(0).all()
    merged = load_causal_lm(str(tmp_path / "merged"))
    adapter = load_causal_lm(str(tiny_model_dir))
    from fwdrev.modeling import load_adapter

    adapter = load_adapter(adapter, tmp_path).eval()
    tokenizer = load_tokenizer(str(tmp_path / "merged"))
    ids = tokenizer("<|im_start|>user\nStart with 3.<|im_end|>\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(merged.eval()(ids).logits, adapter(ids).logits, atol=1e-4)


def train_losses(output_dir) -> pd.DataFrame:
    return pd.read_csv(Path(output_dir) / "metrics.csv").dropna(subset=["loss"]).set_index("step")


@pytest.mark.slow
@pytest.mark.parametrize("procs", [1, 2], ids=["single", "zero3"])
def test_full_finetuning_reference_precomputed_or_frozen_copy_agree(tiny_model_dir, tmp_path, procs):
    """Full fine-tuning: the reference is the initial policy, scored up front (default) or kept
    as a separate frozen model (--no_precompute_ref_log_probs; under ZeRO-3 its own engine)."""
    run = ["--no_use_lora", "--max_steps", "3", "--eval_steps", "3", "--save_steps", "100"]
    if procs > 1:
        run += ["--deepspeed", str(REPO_ROOT / "configs" / "ds_config_zero3_cpu.json")]
    run_dpo(tiny_model_dir, tmp_path / "precomputed", *run, procs=procs)
    run_dpo(tiny_model_dir, tmp_path / "frozen", *run, "--no_precompute_ref_log_probs", procs=procs)
    assert not (tmp_path / "frozen" / "reference_logps.parquet").exists()
    precomputed, frozen = train_losses(tmp_path / "precomputed"), train_losses(tmp_path / "frozen")
    assert precomputed.loc[1, "loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference
    assert precomputed.loc[3, "rewards/margins"] != pytest.approx(0.0, abs=1e-3)  # the policy moved
    for column in ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins"]:
        assert frozen[column].to_numpy() == pytest.approx(precomputed[column].to_numpy(), abs=1e-4)


def test_full_finetuning_resume_without_its_reference_cache(tiny_model_dir, tmp_path):
    run = ["--no_use_lora", "--save_steps", "2", "--eval_strategy", "no"]
    run_dpo(tiny_model_dir, tmp_path, *run, "--max_steps", "2")
    (tmp_path / "reference_logps.parquet").unlink()  # e.g. deleted, or made for other settings
    resumed = [*run, "--max_steps", "4", "--resume_from_checkpoint", "latest"]
    refused = run_dpo(tiny_model_dir, tmp_path, *resumed, check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "--no_precompute_ref_log_probs" in refused.stderr
    run_dpo(tiny_model_dir, tmp_path, *resumed, "--no_precompute_ref_log_probs")  # the way out it names
    assert list(train_losses(tmp_path).index) == [1, 2, 3, 4]


@pytest.mark.slow
def test_launcher_runs_on_the_tiny_model(tiny_model_dir, tmp_path):
    env = script_env(MODEL_PATHS=f"{tiny_model_dir} {tmp_path / 'missing_model'}", DATA_PATH=SAMPLE,
                     OUTPUT_ROOT=tmp_path,
                     EXTRA_ARGS="--max_steps 2 --max_length 256 --lora_r 4 --lora_alpha 8 --save_steps 2 "
                                "--gradient_accumulation_steps 2 --report_to none --eval_size 0")
    result = run_command(["bash", str(REPO_ROOT / "dpo" / "7b-train_multiple_base_models.sh")], env)
    assert result.returncode == 1  # the missing model is reported and counted as failed
    assert "model not found" in result.stderr and "missing_model" in result.stderr
    name = f"{Path(tiny_model_dir).parent.name}-{Path(tiny_model_dir).name}"  # parent-folder
    assert (tmp_path / f"dpo_{name}" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "logs" / f"dpo_{name}.log").is_file()
    assert final_state(tmp_path / f"dpo_{name}")["global_step"] == 2
