"""SFT: response-only labels on both data shapes, D_f/D_r/D_m selection, per-epoch checkpoints,
resume, SFT -> DPO, the 2-process ZeRO-3 run and the shell launcher."""

import json
import shutil

import pandas as pd
import pytest
import torch
from helpers import REPO_ROOT, assert_mentions, load_script, run_command, script_env, training_command

from fwdrev.checkpoints import discover_checkpoints, load_for_scoring
from fwdrev.cli import run_cli
from fwdrev.data import ASSISTANT_HEADER, DataValidationError, RowSelection, load_preference_data, render_prompt
from fwdrev.model_arguments import ModelArguments
from fwdrev.modeling import load_tokenizer
from fwdrev.scoring import score_pairs
from fwdrev.sft import SFTArguments, SFTCollator, SFTDataArguments
from fwdrev.tokenization import IGNORE_INDEX, encode_examples
from fwdrev.training import parse_arguments

SCRIPT = str(REPO_ROOT / "scripts" / "sft.py")
SAMPLE = REPO_ROOT / "data-100samples.parquet"
ZERO3_CPU = str(REPO_ROOT / "configs" / "ds_config_zero3_cpu.json")
SMALL_RUN = ["--config", "lora", "--gradient_accumulation_steps", "1", "--max_length", "256",
             "--max_prompt_length", "128", "--lora_r", "8", "--lora_alpha", "16",
             "--learning_rate", "1e-3", "--warmup_steps", "0"]


def run_script(script, model_dir, data_path, output_dir, *extra, procs=1, check=True):
    command = training_command(script, model_dir, data_path, output_dir, *SMALL_RUN, *extra, procs=procs)
    return run_command(command, script_env(OMP_NUM_THREADS=1), check=check)


def sft_script():
    """scripts/sft.py as a module (its defaults and main, in-process)."""
    return load_script("scripts", "sft")


def collate_sft(tokenizer, path, **load_kwargs):
    data = load_preference_data(path, RowSelection(rejected_field=None, **load_kwargs), tokenizer)
    rows = encode_examples(tokenizer, data.examples, 4096, 2048, include_rejected=False)
    return data, SFTCollator(tokenizer.pad_token_id)(rows)


def assert_only_response_labelled(tokenizer, examples, batch):
    for row, example in enumerate(examples):
        prompt_length = len(tokenizer(example.prompt, add_special_tokens=False)["input_ids"])
        length = int(batch["attention_mask"][row].sum())
        labels, ids = batch["labels"][row], batch["input_ids"][row]
        assert (labels[:prompt_length] == IGNORE_INDEX).all()
        assert torch.equal(labels[prompt_length:length], ids[prompt_length:length])
        assert (labels[length:] == IGNORE_INDEX).all()  # padding
        assert tokenizer.decode(ids[:prompt_length]).endswith(ASSISTANT_HEADER)
    return prompt_length, length


# ---- data and batches ------------------------------------------------------------------------
def test_embedded_rows_label_only_the_assistant_part(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    data, batch = collate_sft(tokenizer, SAMPLE, sample_types="original")
    assert len(data.examples) == 50 and batch["labels"].shape[0] == 50
    prompt_length, length = assert_only_response_labelled(tokenizer, data.examples, batch)
    # the labelled part is the whole s1-style response: think + answer + the closing <|im_end|>
    response = tokenizer.decode(batch["input_ids"][-1][prompt_length:length])
    assert response == data.examples[-1].chosen
    assert response.startswith("<|im_start|>think\n") and "<|im_start|>answer\n" in response
    assert response.rstrip().endswith("<|im_end|>")


def test_plain_rows_without_rejected_column_get_the_chat_template(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    frame = pd.DataFrame({"question": ["Start with 3. Add 4.", "Start with 2."],
                          "text": ["<think>3 + 4 = 7</think> 7", "<think>2</think> 2"]})
    path = tmp_path / "plain.jsonl"  # JSONL, no worse-text column at all
    frame.to_json(path, orient="records", lines=True)
    data, batch = collate_sft(tokenizer, path)
    assert data.report.shape == "plain"
    assert [e.prompt for e in data.examples] == [render_prompt(q, tokenizer) for q in frame["question"]]
    assert [e.rejected for e in data.examples] == ["", ""]
    _, length = assert_only_response_labelled(tokenizer, data.examples, batch)
    assert batch["labels"][-1][length - 1] == tokenizer.eos_token_id  # EOS appended and trained


def test_rejected_field_none_is_sft_only(tmp_path):
    frame = pd.read_parquet(SAMPLE).head(4)
    frame.loc[1, "worse-text"] = frame.loc[1, "text"]  # identical pair: invalid for DPO only
    frame = frame.drop(columns=["question"])
    path = tmp_path / "d.parquet"
    frame.to_parquet(path)
    with pytest.raises(DataValidationError, match=r"identical.*rows \[1\]"):
        load_preference_data(path)
    data = load_preference_data(path, RowSelection(rejected_field=None))
    assert [e.example_id for e in data.examples] == [0, 1, 2, 3]
    # the text's trailing newline after the final <|im_end|> is not part of the response
    assert all(e.prompt + e.chosen + "\n" == text for e, text in zip(data.examples, frame["text"]))
    frame.drop(columns=["worse-text"]).to_parquet(path)
    assert len(load_preference_data(path, RowSelection(rejected_field=None)).examples) == 4
    with pytest.raises(DataValidationError, match="missing column.*worse-text"):
        load_preference_data(path)


@pytest.mark.parametrize("sample_types, expected", [
    ("original", {"original": 50}), ("flipped", {"flipped": 50}),
    ("original,flipped", {"original": 50, "flipped": 50})])
def test_forward_reverse_mixed_sets(shared_sample_path, sample_types, expected):
    data = load_preference_data(shared_sample_path, RowSelection(rejected_field=None, sample_types=sample_types))
    assert data.report.sample_type_counts == expected
    assert len(data.examples) == sum(expected.values())  # D_f 50, D_r 50, D_m 100


def test_default_recipe_is_s1s_and_response_field_alias():
    model, data, args = parse_arguments(
        (ModelArguments, SFTDataArguments, SFTArguments), {},
        ["--model_name", "m", "--train_file_path", "d", "--output_dir", "o", "--response_field", "worse-text"],
        stage="sft", default_recipe=sft_script().DEFAULT_RECIPE,
        recipes_dir=sft_script().RECIPES_DIR)
    assert data.chosen_field == "worse-text" and data.eval_size == 0
    assert (args.learning_rate, args.lr_scheduler_type, args.warmup_steps) == (1e-5, "cosine", 0.05)
    assert (args.weight_decay, args.adam_beta1, args.adam_beta2) == (1e-4, 0.9, 0.95)
    assert args.num_train_epochs == 6 and args.save_every_epoch and not model.use_lora  # s1: full
    assert args.gradient_accumulation_steps == 16  # global batch 16
    # how the script runs is in the recipe too (it had SFT_DEFAULTS)
    assert (args.logging_steps, args.report_to, args.save_total_limit) == (1, ["tensorboard"], 1)
    assert args.save_strategy == args.eval_strategy == "epoch" and not args.remove_unused_columns
    if not torch.cuda.is_available():  # the recipe's GPU settings, as a CPU runs them
        assert (args.deepspeed, args.bf16, model.use_flash_attention, args.gradient_checkpointing) == \
            (None, False, False, False)


# ---- training runs -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def sft_run(tiny_model_dir, tmp_path_factory):
    """2 epochs of LoRA SFT on D_f (50 rows), single process, with a merged copy and probes."""
    output_dir = tmp_path_factory.mktemp("sft")
    probe_file = output_dir.parent / "probe.parquet"  # 4 forward + 4 reverse preference pairs
    pd.read_parquet(SAMPLE).groupby("sample_type").head(4).to_parquet(probe_file)
    run_script(SCRIPT, tiny_model_dir, SAMPLE, output_dir, "--sample_types", "original",
               "--num_train_epochs", "2", "--per_device_train_batch_size", "2", "--merge_weights",
               "--probe_file", str(probe_file), "--probe_every", "25")
    return output_dir


def test_outputs_and_epoch_checkpoints(sft_run):
    checkpoints = discover_checkpoints(sft_run / "checkpoints")  # the analysis' reader
    assert [(c.stage, c.epoch) for c in checkpoints] == [("sft", 1), ("sft", 2)]
    for c in checkpoints:
        assert (c.path / "adapter_model.safetensors").is_file() and (c.path / "tokenizer.json").is_file()
    assert not list((sft_run / "checkpoints").glob(".*"))  # no partial folders left
    report = json.loads((sft_run / "data_report.json").read_text())
    assert report["used_rows"] == 50 and report["sample_type_counts"] == {"original": 50}
    config = json.loads((sft_run / "run_config.json").read_text())
    assert config["SFTDataArguments"]["sample_types"] == "original"
    assert list(sft_run.glob("runs/*/events.out.tfevents.*"))  # TensorBoard
    assert list(sft_run.glob("checkpoint-*/trainer_state.json"))  # for --resume_from_checkpoint
    metrics = pd.read_csv(sft_run / "metrics.csv").dropna(subset=["loss"])
    assert list(metrics["step"]) == list(range(1, 51))  # 25 steps per epoch


@pytest.mark.usefixtures("one_thread")
def test_each_epoch_raises_the_log_prob_of_the_trained_responses(sft_run, tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    data = load_preference_data(SAMPLE, RowSelection(sample_types="original"), tokenizer)
    pairs = encode_examples(tokenizer, data.examples, 256, 128)
    means = []
    for path in [tiny_model_dir, sft_run / "checkpoints" / "1", sft_run / "checkpoints" / "2"]:
        model, _ = load_for_scoring(str(path))
        means.append(score_pairs(model, pairs, tokenizer.pad_token_id, batch_size=8)["chosen_logp_mean"].mean())
    assert means[0] + 0.5 < means[1] < means[2]  # base < epoch 1 < epoch 2 (nats per token)
    metrics = pd.read_csv(sft_run / "metrics.csv").dropna(subset=["loss"])
    assert metrics["loss"].tail(5).mean() < metrics["loss"].head(5).mean() - 0.5
    probes = pd.read_csv(sft_run / "dynamics.csv")  # in-training probes of y+ and y-
    assert sorted(probes["step"].unique()) == [0, 25, 50]
    chosen = probes[probes["sample_type"] == "original"].groupby("step")["chosen_logp_mean"].mean()
    assert chosen[0] < chosen[25] < chosen[50]


@pytest.mark.usefixtures("one_thread")
def test_merged_model_equals_the_final_adapter(sft_run):
    merged, tokenizer = load_for_scoring(str(sft_run / "merged"))
    adapter, _ = load_for_scoring(str(sft_run / "checkpoints" / "2"))
    ids = tokenizer("<|im_start|>user\nStart with 3.<|im_end|>\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapter(ids).logits, atol=1e-4)


def test_dpo_starts_from_the_sft_adapter_or_the_merged_model(sft_run, tiny_model_dir, tmp_path):
    dpo = REPO_ROOT / "dpo" / "combined_dpo.py"
    dpo_args = ["--max_steps", "2", "--gradient_accumulation_steps", "1", "--eval_size", "0",
                "--sample_types", "original", "--report_to", "none", "--seed", "3"]
    adapter = ["--init_adapter", str(sft_run / "checkpoints" / "2")]  # = the merged model
    run_script(dpo, tiny_model_dir, SAMPLE, tmp_path / "adapter", *adapter, *dpo_args)
    run_script(dpo, tiny_model_dir, SAMPLE, tmp_path / "adapter_frozen_ref", *adapter, *dpo_args,
               "--no_precompute_ref_log_probs")
    run_script(dpo, sft_run / "merged", SAMPLE, tmp_path / "merged", *dpo_args)
    runs = {name: pd.read_csv(tmp_path / name / "metrics.csv").dropna(subset=["loss"])
            for name in ("adapter", "adapter_frozen_ref", "merged")}
    config = json.loads((tmp_path / "adapter" / "run_config.json").read_text())
    assert config["DPOArguments"]["eval_strategy"] == "no"  # --eval_size 0: recorded as switched off
    # Every way in, the reference is the SFT model (the pre-SFT base would give y+ a reward > 1):
    # the merged model is its own reference; an SFT adapter's reference is the adapter as loaded,
    # scored up front or kept as a frozen copy. (LoRA dropout of the policy: not exactly 0.)
    assert runs["merged"]["rewards/chosen"].iloc[0] == pytest.approx(0.0, abs=1e-4)
    assert runs["adapter"]["rewards/chosen"].iloc[0] == pytest.approx(0.0, abs=0.05)
    for column in ["loss", "rewards/chosen", "rewards/margins"]:
        assert runs["adapter_frozen_ref"][column].to_numpy() == pytest.approx(
            runs["adapter"][column].to_numpy(), abs=1e-4)
    reference = pd.read_parquet(tmp_path / "adapter" / "reference_logps.parquet").set_index("example_id")
    merged_reference = pd.read_parquet(tmp_path / "merged" / "reference_logps.parquet").set_index("example_id")
    assert reference["chosen_logp_sum"].to_numpy() == pytest.approx(
        merged_reference["chosen_logp_sum"].to_numpy(), rel=1e-4)
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8  # the SFT adapter's rank, not a fresh default one


def test_resume_latest_continues_with_the_next_epoch(sft_run, tiny_model_dir, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(sft_run, output_dir)  # 2 epochs done; train a third
    epoch_weights = {epoch: (output_dir / "checkpoints" / str(epoch) / "adapter_model.safetensors").read_bytes()
                     for epoch in (1, 2)}
    result = run_script(SCRIPT, tiny_model_dir, SAMPLE, output_dir, "--sample_types", "original",
                        "--num_train_epochs", "3", "--per_device_train_batch_size", "2",
                        "--resume_from_checkpoint", "latest")
    assert_mentions(result.stdout, output_dir / "checkpoint-50")  # where it resumed from
    for epoch, before in epoch_weights.items():  # earlier epochs keep their weights
        assert (output_dir / "checkpoints" / str(epoch) / "adapter_model.safetensors").read_bytes() == before
    assert [c.epoch for c in discover_checkpoints(output_dir / "checkpoints")] == [1, 2, 3]
    metrics = pd.read_csv(output_dir / "metrics.csv").dropna(subset=["loss"])
    assert list(metrics["step"]) == list(range(1, 76))


def test_probes_default_to_training_rows_with_their_rejected_response(tiny_model_dir, tmp_path):
    run_script(SCRIPT, tiny_model_dir, SAMPLE, tmp_path, "--sample_types", "flipped", "--max_steps", "2",
               "--eval_size", "4", "--probe_every", "2", "--probe_size", "3", "--report_to", "none")
    probes = pd.read_csv(tmp_path / "dynamics.csv")
    assert probes.groupby(["step", "split"]).size().to_dict() == {(0, "eval"): 3, (0, "train"): 3,
                                                                  (2, "eval"): 3, (2, "train"): 3}
    assert set(probes["sample_type"]) == {"flipped"}
    # step-0 rows: the base model's y+ and y- log-probs of those rows, one full-logits pass each
    at_start = probes[probes["step"] == 0].set_index("example_id")
    model, tokenizer = load_for_scoring(str(tiny_model_dir))
    examples = [e for e in load_preference_data(SAMPLE, tokenizer=tokenizer).examples if e.example_id in at_start.index]
    assert len(examples) == 6
    for pair in encode_examples(tokenizer, examples, 256, 128):  # SMALL_RUN's lengths
        for side in ("chosen", "rejected"):
            ids = torch.tensor([pair.prompt_ids + getattr(pair, f"{side}_ids")])
            with torch.no_grad():
                logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
            expected = logps.gather(-1, ids[0, 1:, None])[len(pair.prompt_ids) - 1 :, 0]
            assert at_start.loc[pair.example_id, f"{side}_logp_mean"] == pytest.approx(expected.mean().item(), abs=1e-5)


def test_missing_response_column_exits_2(tiny_model_dir, tmp_path, capsys):
    argv = ["--model_name", str(tiny_model_dir), "--train_file_path", str(SAMPLE),
            "--output_dir", str(tmp_path), "--response_field", "answer_text"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: sft_script().main(argv))
    assert exit_info.value.code == 2
    assert_mentions(capsys.readouterr().err, "'answer_text'")


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_zero3_two_processes_saves_every_epoch(tiny_model_dir, tmp_path):
    run_script(SCRIPT, tiny_model_dir, SAMPLE, tmp_path, "--sample_types", "flipped",
               "--num_train_epochs", "2", "--per_device_train_batch_size", "4", "--report_to", "none",
               "--deepspeed", ZERO3_CPU, procs=2)
    metrics = pd.read_csv(tmp_path / "metrics.csv").dropna(subset=["loss"])
    assert list(metrics["step"]) == list(range(1, 15))  # ceil(50 / (4 x 2 ranks)) = 7 per epoch
    tokenizer = load_tokenizer(str(tiny_model_dir))
    data = load_preference_data(SAMPLE, RowSelection(sample_types="flipped"), tokenizer)
    pairs = encode_examples(tokenizer, data.examples[:8], 256, 128)
    scores = []
    for epoch in (1, 2):  # gathered ZeRO-3 shards: full-shape adapters that load and differ
        model, _ = load_for_scoring(str(tmp_path / "checkpoints" / str(epoch)))
        scores.append(score_pairs(model, pairs, tokenizer.pad_token_id, batch_size=8)["chosen_logp_sum"])
    assert (scores[1] - scores[0]).abs().min() > 1e-3


@pytest.mark.slow
def test_launcher_trains_the_requested_sets(tiny_model_dir, tmp_path):
    env = script_env(OMP_NUM_THREADS=1, MODEL_PATH=tiny_model_dir, DATA_PATH=SAMPLE, OUTPUT_ROOT=tmp_path,
                     TRAIN_SETS="x f", EXTRA_ARGS="--num_train_epochs 2 --max_length 256 "
                                                  "--per_device_train_batch_size 8 --report_to none")
    result = run_command(["bash", str(REPO_ROOT / "scripts" / "sft.sh")], env)
    assert result.returncode == 1  # the unknown set is reported and counted as failed
    assert "unknown TRAIN_SETS entry 'x'" in result.stderr and "failed runs: x" in result.stderr
    run = tmp_path / "sft_f"
    assert [c.epoch for c in discover_checkpoints(run / "checkpoints")] == [1, 2]
    assert json.loads((run / "data_report.json").read_text())["sample_type_counts"] == {"original": 50}
    assert json.loads((run / "run_config.json").read_text())["SFTArguments"]["deepspeed"].endswith(
        "ds_config_zero3_cpu.json")
    steps = pd.read_csv(run / "metrics.csv").dropna(subset=["loss"])["step"]
    # s1's global batch 16 on 2 CPU ranks x 8: no accumulation, ceil(50 / 16) = 4 steps per epoch
    assert list(steps) == list(range(1, 9))
    assert (tmp_path / "logs" / "sft_f.log").is_file()
    missing = run_command(["bash", str(REPO_ROOT / "scripts" / "sft.sh")],
                          {**env, "MODEL_PATH": str(tmp_path / "no_model")}, timeout=60)
    assert missing.returncode == 1
    assert_mentions(missing.stderr, "not found", tmp_path / "no_model")
