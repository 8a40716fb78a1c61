"""A run is identified by its content, not its folder (issue 17 items 1, 2, 3, 5).

Each test reproduces one defect as the issue describes it: an overwritten run's checkpoints
mixed into the new one, an adapter loaded on a base that was re-trained, a training overlap
missed because the keys or the path of the record changed, rewards with another beta.
Records are written as the training scripts write them (``write_run_config_and_data_report``,
``write_record``); two tests train the tiny model in-process to cover the callbacks.
"""

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import assert_mentions, free_port, load_script
from test_provenance import flags, save_adapter, save_model_with_tokenizer

from fwdrev.checkpoints import discover_checkpoints
from fwdrev.cli import UsageError
from fwdrev.data import RowSelection, load_preference_data
from fwdrev.data_arguments import DataArguments
from fwdrev.devtools.synthetic import generate_preference_rows
from fwdrev.fingerprint import model_fingerprint
from fwdrev.modeling import load_causal_lm, load_tokenizer
from fwdrev.problems import normalized_id
from fwdrev.provenance import train_overlap
from fwdrev.run_identity import decide_run_id, new_run_id, resolve_resume_checkpoint, run_id_of, write_record
from fwdrev.score_summaries import add_reward_columns
from fwdrev.training import ModelArguments, prepare_training_data, write_run_config_and_data_report

analyze_dpo_model = load_script("analysis", "analyze_dpo_model")
analyze_training_dynamics = load_script("analysis", "analyze_training_dynamics")


@dataclass
class RunArgs:  # the TrainingArguments fields the record uses; run_id as start_run sets it
    output_dir: str
    run_id: str
    run_stage: str = "sft"
    seed: int = 0
    process_index: int = 0
    eval_strategy: str = "no"


def record_run(run_dir, data_path, model_name, tokenizer_dir, sample_types=None, extra: dict | None = None) -> str:
    """run_config.json as a training run writes it (with a run_id); returns the run_id."""
    run_id = new_run_id()
    model_args = ModelArguments(model_name=str(model_name))
    data_args = DataArguments(train_file_path=str(data_path), max_length=256, max_prompt_length=128,
                              eval_size=0, sample_types=sample_types)
    args = RunArgs(str(run_dir), run_id)
    data, train, held_out = prepare_training_data(model_args, data_args, args, load_tokenizer(str(tokenizer_dir)))
    write_run_config_and_data_report(model_args, data_args, args, data, train, held_out)
    if extra:
        config_path = Path(run_dir) / "run_config.json"
        config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **extra}))
    return run_id


def full_model(tiny_model_dir, folder, scale: float = 1.0) -> Path:
    model = load_causal_lm(str(tiny_model_dir))
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    save_model_with_tokenizer(model, folder, tiny_model_dir)
    return Path(folder)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """12 rows, problems 0..5: train.parquet (problems 0..3), test.parquet (4, 5), all.parquet."""
    root = tmp_path_factory.mktemp("identity")
    rows = generate_preference_rows(12, seed=4)
    rows.to_parquet(root / "all.parquet")
    rows[rows.problem_id < 4].reset_index(drop=True).to_parquet(root / "train.parquet")
    rows[rows.problem_id >= 4].reset_index(drop=True).to_parquet(root / "test.parquet")
    return root


def preference_data(path, sample_types=None):
    return load_preference_data(str(path), RowSelection(sample_types=sample_types))


# ---- item 3: the overlap check -----------------------------------------------------------------
@pytest.fixture(scope="module")
def sft_run(files, tiny_model_dir, tmp_path_factory):
    """An SFT run on train.parquet with its merged/ model, records as training writes them."""
    run = tmp_path_factory.mktemp("sft_m") / "sft_m"
    record_run(run, files / "train.parquet", tiny_model_dir, tiny_model_dir)
    full_model(tiny_model_dir, run / "merged", scale=1.2)
    write_record(run, run / "merged")
    return run


def test_overlap_found_by_any_key(files, sft_run, tmp_path):
    trained = pd.read_parquet(files / "train.parquet")
    variants = {"renumbered": trained.assign(problem_id=trained.problem_id + 100),
                "float ids": trained.assign(problem_id=trained.problem_id.astype(float)),
                "no problem_id": trained.drop(columns="problem_id"),
                "spaces": trained.drop(columns="problem_id").assign(question=trained.question + "  \n")}
    for name, frame in variants.items():
        frame.to_parquet(tmp_path / f"{name}.parquet")
        with pytest.raises(UsageError, match=r"8 of 8 scored rows"):
            train_overlap([sft_run / "merged"], preference_data(tmp_path / f"{name}.parquet"), allow=False)
    held_out = train_overlap([sft_run / "merged"], preference_data(files / "test.parquet"), allow=False)
    assert not any(held_out.values())


def test_problem_ids_compare_as_numbers():
    assert {normalized_id(v) for v in (3, 3.0, "3", " 3 ", np.int64(3), "3.0")} == {"3"}
    assert normalized_id("A-7 ") == "A-7" and normalized_id(2.5) == "2.5"
    assert normalized_id(float("nan")) is None and normalized_id(None) is None and normalized_id(" ") is None


def test_reverse_rows_of_forward_trained_problems_overlap_without_question_columns(files, tiny_model_dir, tmp_path):
    """A D_f model (original rows) scored on the flipped rows of its problems, in a file whose
    only columns are the conversations: the old key (the rendered prompt) differed."""
    bare = pd.read_parquet(files / "train.parquet")[["text", "worse-text", "sample_type"]]
    bare.to_parquet(tmp_path / "bare.parquet")
    record_run(tmp_path / "sft_f", tmp_path / "bare.parquet", tiny_model_dir, tiny_model_dir, sample_types="original")
    flipped = preference_data(tmp_path / "bare.parquet", sample_types="flipped")
    with pytest.raises(UsageError, match=r"4 of 4 scored rows"):
        train_overlap([tmp_path / "sft_f"], flipped, allow=False)


def test_moved_run_and_copied_merged_model_keep_their_record(files, sft_run, tiny_model_dir, tmp_path):
    """A DPO adapter trained (on other rows) from sft_m/merged; sft_m then moved elsewhere: the
    rows SFT trained on are still found, through the record embedded in the DPO run's record."""
    run = tmp_path / "sft_m"
    shutil.copytree(sft_run, run)
    dpo = tmp_path / "dpo_m"
    save_adapter(run / "merged", dpo, seed=2)
    record_run(dpo, files / "test.parquet", run / "merged", tiny_model_dir)
    (tmp_path / "elsewhere").mkdir()
    shutil.move(run, tmp_path / "elsewhere" / "sft_m")
    moved_base = str(tmp_path / "elsewhere" / "sft_m" / "merged")
    with pytest.raises(UsageError, match="does not exist .*--base_model"):  # not a loader's traceback
        analyze_dpo_model.main(["--model_path", str(dpo), "--output_dir", str(tmp_path / "out"),
                                *flags(files / "train.parquet")])
    with pytest.raises(UsageError, match=r"8 of 8 scored rows"):
        analyze_dpo_model.main(["--model_path", str(dpo), "--base_model", moved_base,
                                "--output_dir", str(tmp_path / "out"), *flags(files / "train.parquet")])

    copy = tmp_path / "copied_merged"  # merged/ alone, copied out of its run folder
    shutil.copytree(tmp_path / "elsewhere" / "sft_m" / "merged", copy)
    with pytest.raises(UsageError, match=r"8 of 8 scored rows"):
        analyze_dpo_model.main(["--model_path", str(copy), "--output_dir", str(tmp_path / "out2"),
                                *flags(files / "train.parquet")])


def test_require_provenance_stops_a_model_without_record(files, tiny_model_dir, tmp_path):
    with pytest.raises(UsageError, match="--require_provenance"):
        analyze_dpo_model.main(["--model_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "out"),
                                "--require_provenance", *flags(files / "test.parquet")])
    assert not (tmp_path / "out" / "scores.parquet").exists()


# ---- item 2: the base a model is loaded on -----------------------------------------------------
def test_adapter_on_a_retrained_base_stops_with_both_fingerprints(files, tiny_model_dir, tmp_path):
    sft_x = full_model(tiny_model_dir, tmp_path / "sft_x" / "merged", scale=1.2)
    dpo = save_adapter(sft_x, tmp_path / "dpo", seed=3)
    record_run(dpo, files / "train.parquet", sft_x, tiny_model_dir)
    recorded = model_fingerprint(sft_x)
    full_model(tiny_model_dir, sft_x, scale=0.8)  # SFT re-run into the same folder
    with pytest.raises(UsageError, match=f"{model_fingerprint(sft_x)[:12]}.*{recorded[:12]}"):
        analyze_dpo_model.main(["--model_path", str(dpo), "--output_dir", str(tmp_path / "out"),
                                *flags(files / "test.parquet")])
    analyze_dpo_model.main(["--model_path", str(dpo), "--output_dir", str(tmp_path / "forced"),
                            "--force_base_model", *flags(files / "test.parquet")])
    assert (tmp_path / "forced" / "scores.parquet").is_file()


def test_init_adapter_made_on_another_base_stops_training(files, tiny_model_dir, tmp_path):
    other = full_model(tiny_model_dir, tmp_path / "other", scale=1.5)
    adapter = save_adapter(tiny_model_dir, tmp_path / "sft_adapter", seed=1)
    record_run(adapter, files / "train.parquet", tiny_model_dir, tiny_model_dir)
    argv = ["--model_name", str(other), "--init_adapter", str(adapter), "--train_file_path",
            str(files / "train.parquet"), "--output_dir", str(tmp_path / "dpo"), "--max_steps", "1",
            "--report_to", "none", "--max_length", "256", "--max_prompt_length", "128", "--eval_size", "0"]
    with pytest.raises(UsageError, match="--model_name .* is not the base model of"):
        load_script("dpo", "combined_dpo").main(argv)
    assert not (tmp_path / "dpo").exists()


def test_full_model_series_refuses_another_base_model(files, tiny_model_dir, tmp_path):
    run = tmp_path / "sft_full"
    record_run(run, files / "train.parquet", tiny_model_dir, tiny_model_dir)
    write_record(run, full_model(tiny_model_dir, run / "checkpoints" / "1", scale=1.1))
    other = full_model(tiny_model_dir, tmp_path / "other", scale=1.5)
    with pytest.raises(UsageError, match="--base_model .* is not the base model of"):
        analyze_training_dynamics.main(["--checkpoint_dir", str(run), "--base_model", str(other),
                                        "--include_base", "--output_dir", str(tmp_path / "out"),
                                        *flags(files / "test.parquet")])


# ---- item 1: checkpoints of one run only ---------------------------------------------------------
def test_series_with_checkpoints_of_two_runs_stops_naming_them(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "1").mkdir(parents=True)
    (run / "checkpoints" / "2").mkdir()
    for folder in ("1", "2"):
        shutil.copy(tiny_model_dir / "config.json", run / "checkpoints" / folder)
    (run / "run_config.json").write_text(json.dumps({"run_id": "new"}))
    (run / "checkpoints" / "1" / "run_record.json").write_text(json.dumps({"run_id": "new"}))
    (run / "checkpoints" / "2" / "run_record.json").write_text(json.dumps({"run_id": "old"}))
    with pytest.raises(UsageError, match=r"2 \(run old\).* new"):
        discover_checkpoints(run)


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    for step, run_id in ((2, "new"), (4, "old")):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "run_record.json").write_text(json.dumps({"run_id": run_id}))
    with pytest.raises(UsageError, match=r"checkpoint-4 \(run old\)"):
        resolve_resume_checkpoint("latest", str(tmp_path), "new")
    with pytest.raises(UsageError, match=r"checkpoint-4 \(run old\)"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-4"), str(tmp_path), "new")
    assert resolve_resume_checkpoint(str(tmp_path / "checkpoint-2"), str(tmp_path), "new") == \
        str(tmp_path / "checkpoint-2")


TRAIN = ["--max_length", "256", "--max_prompt_length", "128", "--lora_r", "4", "--lora_alpha", "8",
         "--warmup_steps", "0", "--report_to", "none", "--eval_size", "0", "--gradient_accumulation_steps", "1",
         "--logging_steps", "1"]


def train(script: str, files, tiny_model_dir, output_dir, *extra):
    load_script(*script.split("/")).main(["--model_name", str(tiny_model_dir), "--train_file_path",
                                          str(files / "train.parquet"), "--output_dir", str(output_dir),
                                          *TRAIN, *extra])


def test_overwritten_sft_run_leaves_only_its_own_epochs(files, tiny_model_dir, tmp_path, one_thread, capsys):
    sft = ["--config", "lora", "--sample_types", "original", "--per_device_train_batch_size", "4",
           "--learning_rate", "1e-3"]
    train("scripts/sft", files, tiny_model_dir, tmp_path, *sft, "--num_train_epochs", "2")
    first = run_id_of(tmp_path)
    capsys.readouterr()
    train("scripts/sft", files, tiny_model_dir, tmp_path, *sft, "--num_train_epochs", "1",
          "--overwrite_output_dir", "--merge_weights")
    assert [c.name for c in discover_checkpoints(tmp_path)] == ["1"]  # the old code kept epoch 2
    assert_mentions(capsys.readouterr().out, f"removed the previous run {first}", "checkpoints/", "checkpoint-2/")
    second = run_id_of(tmp_path)
    assert second != first
    for folder in (tmp_path / "checkpoints" / "1", tmp_path / "merged", tmp_path / "checkpoint-1"):
        assert run_id_of(folder) == second, folder
    merged_record = json.loads((tmp_path / "merged" / "run_record.json").read_text())
    assert merged_record["base_model"]["fingerprint"] == model_fingerprint(tiny_model_dir)
    assert merged_record["stage"] == "sft" and merged_record["training_data"]["train_problem_keys"]


def test_overwritten_dpo_run_resumes_its_own_checkpoint(files, tiny_model_dir, tmp_path, one_thread, capsys):
    dpo = ["--per_device_train_batch_size", "2", "--save_steps", "2"]
    train("dpo/combined_dpo", files, tiny_model_dir, tmp_path, *dpo, "--max_steps", "4", "--learning_rate", "1e-3")
    train("dpo/combined_dpo", files, tiny_model_dir, tmp_path, *dpo, "--max_steps", "2", "--learning_rate", "1e-5",
          "--overwrite_output_dir")
    second = run_id_of(tmp_path)
    assert not (tmp_path / "checkpoint-4").exists()
    capsys.readouterr()
    train("dpo/combined_dpo", files, tiny_model_dir, tmp_path, *dpo, "--max_steps", "4",
          "--learning_rate", "1e-5", "--resume_from_checkpoint", "latest")
    log = capsys.readouterr().out
    assert "complete" not in log  # the old code: "run already complete: checkpoint-4" (the old run's)
    assert_mentions(log, f"resuming run {second}", "checkpoint-2")
    assert run_id_of(tmp_path) == second and run_id_of(tmp_path / "checkpoint-4") == second
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    assert max(e["learning_rate"] for e in state["log_history"] if "learning_rate" in e) <= 1e-5


# ---- item 5: the DPO reward settings -------------------------------------------------------------
def test_rewards_use_the_beta_the_model_was_trained_with(files, tiny_model_dir, tmp_path):
    dpo = save_adapter(tiny_model_dir, tmp_path / "dpo", seed=4)
    record_run(dpo, files / "train.parquet", tiny_model_dir, tiny_model_dir,
               extra={"DPOArguments": {"beta": 0.5, "loss_type": "sigmoid"}})
    common = ["--model_path", str(dpo), "--ref_model_path", str(tiny_model_dir), "--allow_train_overlap",
              *flags(files / "test.parquet")]
    analyze_dpo_model.main([*common, "--output_dir", str(tmp_path / "out")])
    table = pd.read_parquet(tmp_path / "out" / "scores.parquet")
    np.testing.assert_allclose(table["chosen_reward"],
                               0.5 * (table["chosen_logp_sum"] - table["ref_chosen_logp_sum"]), atol=1e-6)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["all"]["beta"], summary["all"]["loss_type"]) == (0.5, "sigmoid")
    with pytest.raises(UsageError, match=r"--beta 0.1 .*0.5"):
        analyze_dpo_model.main([*common, "--beta", "0.1", "--output_dir", str(tmp_path / "other")])


def test_ipo_rewards_use_length_averaged_logprobs():
    policy = pd.DataFrame({"example_id": [0], "chosen_logp_sum": [-10.0], "rejected_logp_sum": [-20.0],
                           "chosen_logp_mean": [-1.0], "rejected_logp_mean": [-2.0]})
    reference = policy.assign(chosen_logp_sum=[-12.0], rejected_logp_sum=[-18.0],
                              chosen_logp_mean=[-1.5], rejected_logp_mean=[-1.0])
    ipo = add_reward_columns(policy, reference, 0.1, "ipo")
    assert ipo["chosen_reward"].item() == pytest.approx(0.05) and ipo["rejected_reward"].item() == pytest.approx(-0.1)
    sigmoid = add_reward_columns(policy, reference, 0.1)
    assert sigmoid["chosen_reward"].item() == pytest.approx(0.2)


def test_dynamics_parts_are_keyed_by_the_checkpoints_run(files, tiny_model_dir, tmp_path, capsys):
    """The same weights saved by another run (e.g. a rerun with the same seed) are that run's
    checkpoint: its part is rescored under the new run_id, not taken from the old run."""
    run = tmp_path / "run"
    record_run(run, files / "train.parquet", tiny_model_dir, tiny_model_dir)
    write_record(run, save_adapter(tiny_model_dir, run / "checkpoints" / "1", seed=1))
    argv = ["--checkpoint_dir", str(run), "--output_dir", str(tmp_path / "out"), *flags(files / "test.parquet")]
    analyze_training_dynamics.main(argv)
    for record_file in (run / "run_config.json", run / "checkpoints" / "1" / "run_record.json"):
        record_file.write_text(json.dumps({**json.loads(record_file.read_text()), "run_id": "rerun"}))
    capsys.readouterr()
    analyze_training_dynamics.main(argv)
    assert_mentions(capsys.readouterr().out, "checkpoint 1", "run_id", "0 of 1", "['1']")


# ---- every rank gets rank 0's run_id ---------------------------------------------------------------
def _run_id_on_two_ranks(rank, port, folders, results):
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        args = SimpleNamespace(output_dir=folders[rank], resume_from_checkpoint=None, process_index=rank,
                               world_size=2)
        Path(results[rank]).write_text(decide_run_id(args, overwrite=True))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ranks_share_rank_0s_run_id_and_only_rank_0_clears_the_folder(tmp_path):
    """Each rank drawing its own uuid would disagree on which checkpoints are the run's."""
    folders = [tmp_path / "rank0", tmp_path / "rank1"]  # as if on two nodes without a shared disk
    for folder in folders:
        (folder / "checkpoint-2").mkdir(parents=True)
    results = [tmp_path / f"result{rank}.txt" for rank in range(2)]
    torch.multiprocessing.spawn(_run_id_on_two_ranks, args=(free_port(), [str(f) for f in folders],
                                                            [str(r) for r in results]), nprocs=2)
    assert results[0].read_text() == results[1].read_text() and len(results[0].read_text()) == 32
    assert not (folders[0] / "checkpoint-2").exists() and (folders[1] / "checkpoint-2").exists()


# ---- a review's findings: resuming with other settings, overlap of every checkpoint and base ----
def test_resume_with_other_settings_stops_before_rewriting_the_record(files, tiny_model_dir, tmp_path, one_thread):
    dpo = ["--per_device_train_batch_size", "2", "--save_steps", "2", "--max_steps", "2"]
    train("dpo/combined_dpo", files, tiny_model_dir, tmp_path, *dpo, "--beta", "0.1")
    recorded = (tmp_path / "run_config.json").read_text()
    # a finished run "resumed" with another beta / other data: before, "run already complete", the
    # record rewritten with beta 0.7 / test.parquet, and the analysis used them (exit 0)
    with pytest.raises(UsageError, match=r"DPOArguments\.beta \(0\.1 -> 0\.7\)"):
        train("dpo/combined_dpo", files, tiny_model_dir, tmp_path, *dpo, "--beta", "0.7",
              "--resume_from_checkpoint", "latest")
    with pytest.raises(UsageError, match=r"training_data\.sha256"):
        load_script("dpo", "combined_dpo").main(
            ["--model_name", str(tiny_model_dir), "--train_file_path", str(files / "test.parquet"),
             "--output_dir", str(tmp_path), *TRAIN, *dpo, "--beta", "0.1", "--resume_from_checkpoint", "latest"])
    assert (tmp_path / "run_config.json").read_text() == recorded
    # a checkpoint of another run is refused before this folder's record is touched
    other = tmp_path.parent / f"{tmp_path.name}_other"
    train("dpo/combined_dpo", files, tiny_model_dir, other, *dpo, "--beta", "0.3")
    with pytest.raises(UsageError, match="other runs"):
        train("dpo/combined_dpo", files, tiny_model_dir, tmp_path, *dpo, "--beta", "0.9",
              "--resume_from_checkpoint", str(other / "checkpoint-2"))
    assert (tmp_path / "run_config.json").read_text() == recorded


def test_overwrite_wins_over_resume_latest(files, tiny_model_dir, tmp_path, one_thread):
    sft = ["--config", "lora", "--sample_types", "original", "--per_device_train_batch_size", "4"]
    train("scripts/sft", files, tiny_model_dir, tmp_path, *sft, "--num_train_epochs", "2", "--learning_rate", "1e-3")
    first = run_id_of(tmp_path)
    # the quickstart always passes --resume_from_checkpoint latest: before, the overwrite was ignored
    train("scripts/sft", files, tiny_model_dir, tmp_path, *sft, "--num_train_epochs", "1", "--learning_rate", "1e-4",
          "--overwrite_output_dir", "--resume_from_checkpoint", "latest")
    assert run_id_of(tmp_path) != first and [c.name for c in discover_checkpoints(tmp_path)] == ["1"]
    assert json.loads((tmp_path / "run_config.json").read_text())["SFTArguments"]["learning_rate"] == 1e-4
    with pytest.raises(UsageError, match="give one of them"):
        train("scripts/sft", files, tiny_model_dir, tmp_path, *sft, "--overwrite_output_dir",
              "--resume_from_checkpoint", str(tmp_path / "checkpoint-1"))


def test_series_overlap_checks_every_checkpoint(files, tiny_model_dir, tmp_path):
    """A checkpoint's own record counts, not only the first checkpoint's (and the base's)."""
    run = tmp_path / "run"
    record_run(run, files / "train.parquet", tiny_model_dir, tiny_model_dir)
    write_record(run, full_model(tiny_model_dir, run / "checkpoints" / "1", scale=1.1))
    second = full_model(tiny_model_dir, run / "checkpoints" / "2", scale=1.2)
    write_record(run, second)
    record = json.loads((second / "run_record.json").read_text())
    record_run(tmp_path / "test_run", files / "test.parquet", tiny_model_dir, tiny_model_dir)
    trained_on_test = json.loads((tmp_path / "test_run" / "run_config.json").read_text())["training_data"]
    (second / "run_record.json").write_text(json.dumps({**record, "training_data": trained_on_test}))
    with pytest.raises(UsageError, match=r"scored rows .* were in the training data of .*2"):
        analyze_training_dynamics.main(["--checkpoint_dir", str(run), "--output_dir", str(tmp_path / "out"),
                                        *flags(files / "test.parquet")])


def test_forced_base_counts_in_the_overlap_check(files, tiny_model_dir, tmp_path):
    """An adapter forced onto a base trained on the scored rows: those rows were trained on."""
    sft_y = full_model(tiny_model_dir, tmp_path / "sft_y", scale=1.2)
    record_run(sft_y, files / "train.parquet", tiny_model_dir, tiny_model_dir)
    dpo = save_adapter(sft_y, tmp_path / "dpo_y", seed=3)
    record_run(dpo, files / "train.parquet", sft_y, tiny_model_dir)
    full_model(tiny_model_dir, sft_y, scale=0.8)  # SFT re-run into sft_y, now on the test rows
    record_run(sft_y, files / "test.parquet", tiny_model_dir, tiny_model_dir)
    with pytest.raises(UsageError, match=r"4 of 4 scored rows .*sft_y"):
        analyze_dpo_model.main(["--model_path", str(dpo), "--output_dir", str(tmp_path / "out"),
                                "--force_base_model", *flags(files / "test.parquet")])


def test_missing_epoch_is_exit_2(files, tiny_model_dir, tmp_path):
    from helpers import REPO_ROOT, run_command

    run = tmp_path / "run"
    record_run(run, files / "train.parquet", tiny_model_dir, tiny_model_dir)
    write_record(run, full_model(tiny_model_dir, run / "checkpoints" / "1", scale=1.1))
    result = run_command([sys.executable, str(REPO_ROOT / "analysis" / "analyze_training_dynamics.py"),
                          "--checkpoint_dir", str(run), "--epochs", "1,2", "--output_dir", str(tmp_path / "out"),
                          *flags(files / "test.parquet")])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert_mentions(result.stderr, "epoch(s) [2]")
