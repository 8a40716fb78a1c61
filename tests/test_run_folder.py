"""A run's OUTPUT_DIR: no training past a finished run, no silent reuse of another run's folder,
unique launcher output names, and a merge made after the process group is gone, atomically."""

import os
import types
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT, assert_mentions, run_command, script_env, training_command

import fwdrev.cli
from fwdrev.cli import run_cli
from fwdrev.errors import UsageError
from fwdrev.model_arguments import ModelArguments
from fwdrev.modeling import add_lora, load_causal_lm, load_tokenizer, make_lora_config
from fwdrev.run_folder import check_output_dir
from fwdrev.training import finish_distributed, merge_final_model

SAMPLE = str(REPO_ROOT / "data-100samples.parquet")
SMALL_RUN = ["--max_length", "256", "--max_prompt_length", "128", "--lora_r", "4", "--lora_alpha", "8",
             "--learning_rate", "1e-3", "--warmup_steps", "0", "--report_to", "none", "--eval_size", "0"]


def run(script, model_dir, output_dir, *extra):
    return run_command(training_command(REPO_ROOT / script, model_dir, SAMPLE, output_dir, *SMALL_RUN, *extra))


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its content."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


DPO_STEPS = ["--max_steps", "2", "--save_steps", "2", "--gradient_accumulation_steps", "1"]


@pytest.fixture(scope="module")
def finished_dpo_run(tiny_model_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("dpo_done")
    result = run("dpo/combined_dpo.py", tiny_model_dir, output_dir, *DPO_STEPS)
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir


def test_resuming_a_finished_dpo_run_trains_nothing(finished_dpo_run, tiny_model_dir):
    before = snapshot(finished_dpo_run)
    result = run("dpo/combined_dpo.py", tiny_model_dir, finished_dpo_run, *DPO_STEPS,
                 "--resume_from_checkpoint", "latest")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_mentions(result.stdout, "complete", "step 2")
    assert not (finished_dpo_run / "checkpoint-3").exists()  # the old code trained a step 3
    after = snapshot(finished_dpo_run)
    assert {k: v for k, v in after.items() if k.name != "run_config.json"} == \
        {k: v for k, v in before.items() if k.name != "run_config.json"}


def test_a_new_run_refuses_a_trained_folder(finished_dpo_run, tiny_model_dir):
    before = snapshot(finished_dpo_run)
    result = run("dpo/combined_dpo.py", tiny_model_dir, finished_dpo_run, *DPO_STEPS, "--seed", "7")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert_mentions(result.stderr, "checkpoint-2", "--resume_from_checkpoint latest", "--overwrite_output_dir")
    assert snapshot(finished_dpo_run) == before  # not even run_config.json was rewritten


def test_check_output_dir_rules(tmp_path):
    check_output_dir(str(tmp_path / "new"), None, False)  # missing folder
    (tmp_path / "run_config.json").write_text("{}")  # a run that never trained: nothing to lose
    check_output_dir(str(tmp_path), None, False)
    (tmp_path / "checkpoints" / "1").mkdir(parents=True)  # an SFT epoch checkpoint
    with pytest.raises(UsageError, match=r"\(checkpoints\)"):
        check_output_dir(str(tmp_path), None, False)
    check_output_dir(str(tmp_path), "latest", False)  # resuming it
    check_output_dir(str(tmp_path), None, True)  # --overwrite_output_dir


def test_resuming_a_finished_epoch_run_trains_nothing(tiny_model_dir, tmp_path):
    # 50 rows / batch 16 = 4 steps in the one epoch: the step count comes from the data here
    epochs = ["--sample_types", "original", "--num_train_epochs", "1", "--per_device_train_batch_size", "16"]
    assert run("scripts/sft.py", tiny_model_dir, tmp_path, *epochs).returncode == 0
    assert (tmp_path / "checkpoint-4").is_dir()
    before = snapshot(tmp_path / "checkpoints")
    result = run("scripts/sft.py", tiny_model_dir, tmp_path, *epochs, "--resume_from_checkpoint", "latest")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_mentions(result.stdout, "complete", "step 4")
    assert not (tmp_path / "checkpoint-5").exists() and snapshot(tmp_path / "checkpoints") == before


# ---- merging -----------------------------------------------------------------------------------
def test_merge_runs_after_the_process_group_is_gone_and_main_returns(monkeypatch):
    events = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda: events.append("leave group"))
    monkeypatch.setattr(os, "_exit", lambda code: events.append(f"exit {code}"))
    monkeypatch.setattr("logging.shutdown", lambda: None)
    for rank in (0, 1):
        monkeypatch.setattr(fwdrev.cli, "_left_process_group", False)  # a fresh process per rank
        trainer = types.SimpleNamespace(
            args=types.SimpleNamespace(process_index=rank),
            accelerator=types.SimpleNamespace(wait_for_everyone=lambda: events.append("barrier")))

        def main():  # run_cli below calls it within this iteration, so `trainer` is this rank's
            finish_distributed(trainer, then=lambda: events.append("merge"))  # noqa: B023
            events.append("rest of main")  # code after finish_distributed runs under torchrun too

        run_cli(main)
    assert events == ["barrier", "leave group", "merge", "rest of main", "exit 0",  # rank 0
                      "barrier", "leave group", "rest of main", "exit 0"]  # rank 1 merges nothing


def test_single_process_main_returns_without_hard_exit(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(fwdrev.cli, "_left_process_group", False)
    monkeypatch.setattr(os, "_exit", lambda code: pytest.fail("os._exit in a single process"))
    events = []
    trainer = types.SimpleNamespace(args=types.SimpleNamespace(process_index=0))
    run_cli(lambda: finish_distributed(trainer, then=lambda: events.append("merge")))
    assert events == ["merge"]


def test_interrupted_merge_leaves_no_merged_folder(tiny_model_dir, tmp_path, monkeypatch):
    model = add_lora(load_causal_lm(str(tiny_model_dir)), make_lora_config(4, 8, 0.0), seed=0)
    model.save_pretrained(tmp_path)
    model_args = ModelArguments(model_name=str(tiny_model_dir), merge_weights=True)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    from transformers import PreTrainedModel

    save = PreTrainedModel.save_pretrained

    def killed_while_writing(self, folder, *args, **kwargs):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        merge_final_model(model_args, str(tmp_path), tokenizer)
    assert not (tmp_path / "merged").exists()
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save)
    merge_final_model(model_args, str(tmp_path), tokenizer)  # the rerun clears the leftover
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert (tmp_path / "merged" / "tokenizer.json").is_file()
    assert sorted(p.name for p in tmp_path.glob(".merged*")) == []


# ---- launcher output names ------------------------------------------------------------------
@pytest.fixture
def fake_torchrun(tmp_path):
    """A `torchrun` on PATH that records its arguments (one line per call) and succeeds."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "torchrun_calls.txt"
    bin_dir.mkdir()
    (bin_dir / "torchrun").write_text(f'#!/usr/bin/env bash\necho "$*" >> "{calls}"\n')
    (bin_dir / "torchrun").chmod(0o755)
    return bin_dir, calls


def run_launcher(fake_torchrun, tmp_path, model_paths):
    bin_dir, calls = fake_torchrun
    env = script_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", MODEL_PATHS=model_paths,
                     DATA_PATH=SAMPLE, OUTPUT_ROOT=tmp_path / "out")
    result = run_command(["bash", str(REPO_ROOT / "dpo" / "7b-train_multiple_base_models.sh")], env, timeout=120)
    output_dirs = [line.split("--output_dir ")[1].split()[0] for line in
                   (calls.read_text().splitlines() if calls.is_file() else [])]
    return result, output_dirs


def test_launcher_names_runs_after_parent_and_model_folder(fake_torchrun, tmp_path):
    models = [tmp_path / "sft_f" / "merged", tmp_path / "sft_m" / "merged"]
    for model in models:
        model.mkdir(parents=True)
    result, output_dirs = run_launcher(fake_torchrun, tmp_path, " ".join(map(str, models)))
    assert result.returncode == 0, result.stderr
    assert [Path(d).name for d in output_dirs] == ["dpo_sft_f-merged", "dpo_sft_m-merged"]
    assert (tmp_path / "out" / "logs" / "dpo_sft_f-merged.log").is_file()


def test_launcher_refuses_two_models_with_one_name(fake_torchrun, tmp_path):
    models = [tmp_path / "a" / "sft_f" / "merged", tmp_path / "b" / "sft_f" / "merged"]
    for model in models:
        model.mkdir(parents=True)
    result, output_dirs = run_launcher(fake_torchrun, tmp_path, " ".join(map(str, models)))
    assert result.returncode == 2 and output_dirs == []  # nothing was started
    assert "sft_f-merged" in result.stderr and "MODEL_NAMES" in result.stderr
