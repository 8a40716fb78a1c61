"""Training records, the train/test overlap check, the base of an adapter, and content-keyed resume."""

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import REPO_ROOT, assert_mentions, load_script, script_env

from fwdrev.checkpoints import load_for_scoring
from fwdrev.data_arguments import DataArguments
from fwdrev.devtools.synthetic import generate_preference_rows
from fwdrev.errors import UsageError
from fwdrev.fingerprint import file_sha256, model_fingerprint
from fwdrev.model_arguments import ModelArguments
from fwdrev.modeling import add_lora, load_causal_lm, load_tokenizer, make_lora_config
from fwdrev.provenance import recorded_adapter_base, run_folder_of, training_records
from fwdrev.training import prepare_training_data, write_run_config_and_data_report

analyze_dpo_model = load_script("analysis", "analyze_dpo_model")
analyze_training_dynamics = load_script("analysis", "analyze_training_dynamics")

PROBLEMS = 6  # rows.parquet: 6 original + 6 flipped rows, problem_id 0..5


@dataclass
class FakeTrainingArgs:  # the TrainingArguments fields prepare_training_data and the record use
    output_dir: str
    seed: int = 0
    process_index: int = 0
    eval_strategy: str = "epoch"


def save_adapter(base_dir, folder, seed: int, base_name: str | None = None) -> Path:
    """A LoRA adapter on ``base_dir`` with non-zero weights (a fresh one is the identity)."""
    model = add_lora(load_causal_lm(str(base_dir)),
                     make_lora_config(r=4, alpha=8, dropout=0.0, target_modules="q_proj,v_proj"), seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.1)
    model.save_pretrained(folder)
    if base_name is not None:  # as written by a run started with another --model_name spelling
        config_path = Path(folder) / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = base_name
        config_path.write_text(json.dumps(config))
    return Path(folder)


def save_model_with_tokenizer(model, folder, tokenizer_dir) -> None:
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (Path(tokenizer_dir) / name).is_file():
            shutil.copy(Path(tokenizer_dir) / name, folder)


def record_training(run_dir, data_path, model_name, tiny_model_dir, sample_types=None, eval_size=0.0):
    """What scripts/sft.py and dpo/combined_dpo.py write: run_config.json and data_report.json."""
    model_args = ModelArguments(model_name=str(model_name))
    data_args = DataArguments(train_file_path=str(data_path), max_length=256, max_prompt_length=128,
                              eval_size=eval_size, sample_types=sample_types)
    training_args = FakeTrainingArgs(str(run_dir))
    data, train, held_out = prepare_training_data(model_args, data_args, training_args,
                                                  load_tokenizer(str(tiny_model_dir)))
    write_run_config_and_data_report(model_args, data_args, training_args, data, train, held_out)
    return data, train, held_out


def test_preparing_the_data_writes_nothing_and_leaves_the_arguments(world, tiny_model_dir, tmp_path):
    model_args = ModelArguments(model_name=str(tiny_model_dir))
    data_args = DataArguments(train_file_path=str(world / "all.parquet"), max_length=256,
                              max_prompt_length=128, eval_size=0)
    training_args = FakeTrainingArgs(str(tmp_path / "run"))
    data, train, held_out = prepare_training_data(model_args, data_args, training_args,
                                                  load_tokenizer(str(tiny_model_dir)))
    assert held_out == [] and len(train) == 2 * PROBLEMS  # no evaluation: the caller turns it off
    assert training_args.eval_strategy == "epoch"
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory):
    """Train/test files split by problem, a second base model, an SFT run (adapters) on the first."""
    root = tmp_path_factory.mktemp("provenance")
    rows = generate_preference_rows(2 * PROBLEMS, seed=4)
    rows.to_parquet(root / "all.parquet")
    rows[rows.problem_id < 4].reset_index(drop=True).to_parquet(root / "train.parquet")
    rows[rows.problem_id >= 4].reset_index(drop=True).to_parquet(root / "test.parquet")
    other = load_causal_lm(str(tiny_model_dir))
    with torch.no_grad():
        other.lm_head.weight.mul_(1.5)
    save_model_with_tokenizer(other, root / "other_base", tiny_model_dir)
    run = root / "sft_run"
    for epoch in (1, 2):
        save_adapter(tiny_model_dir, run / "checkpoints" / str(epoch), seed=epoch)
    record_training(run, root / "train.parquet", tiny_model_dir, tiny_model_dir)
    return root


def flags(data_path) -> list[str]:
    return ["--dataset_path", str(data_path), "--max_tokens", "8", "--batch_size", "4",
            "--max_length", "256", "--max_prompt_length", "128"]


def test_training_run_records_file_hash_rows_and_problems(world, tiny_model_dir, tmp_path):
    data, train, held_out = record_training(tmp_path, world / "all.parquet", tiny_model_dir, tiny_model_dir,
                                            sample_types="original", eval_size=2)
    record = json.loads((tmp_path / "run_config.json").read_text())
    assert record["DataArguments"]["train_file_path"] == str(world / "all.parquet")  # the arguments stay
    data_record = record["training_data"]
    assert data_record["sha256"] == file_sha256(world / "all.parquet")
    train_ids, eval_ids = data_record["train_example_ids"], data_record["eval_example_ids"]
    assert len(eval_ids) == 2 and not set(train_ids) & set(eval_ids)
    assert sorted(train_ids + eval_ids) == list(range(PROBLEMS))  # the original rows
    assert sorted(train_ids) == sorted(p.example_id for p in train)
    problem_ids = pd.read_parquet(world / "all.parquet")["problem_id"]

    def ids_of(keys):
        return sorted(int(k.split(":")[1]) for k in keys if k.startswith("problem_id:"))

    assert ids_of(data_record["train_problem_keys"]) == sorted(problem_ids[i] for i in train_ids)
    assert ids_of(data_record["eval_problem_keys"]) == sorted(problem_ids[i] for i in eval_ids)
    kinds = {k.split(":")[0] for k in data_record["train_problem_keys"]}
    assert kinds == {"problem_id", "forward", "reverse", "response"}
    assert record["base_model"]["fingerprint"] == model_fingerprint(tiny_model_dir)


def test_record_found_from_every_checkpoint_layout(world, tmp_path):
    run = world / "sft_run"
    assert run_folder_of(run / "checkpoints" / "1") == run
    for sub in ("checkpoint-10", "merged"):
        (tmp_path / sub).mkdir()
        assert run_folder_of(tmp_path / sub) is None
    shutil.copy(run / "run_config.json", tmp_path)
    assert run_folder_of(tmp_path / "checkpoint-10") == tmp_path and run_folder_of(tmp_path / "merged") == tmp_path


def test_scoring_rows_of_trained_problems_stops_with_exit_2(world, tiny_model_dir, tmp_path):
    adapter = world / "sft_run" / "checkpoints" / "1"
    result = subprocess.run([sys.executable, "analysis/analyze_dpo_model.py", "--model_path", str(adapter),
                             "--output_dir", str(tmp_path / "out"), *flags(world / "all.parquet")],
                            cwd=REPO_ROOT, env=script_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert_mentions(result.stderr, "8 of 12", "4 problems")
    assert "Traceback" not in result.stderr and not (tmp_path / "out" / "scores.parquet").exists()

    analyze_dpo_model.main(["--model_path", str(adapter), "--output_dir", str(tmp_path / "allowed"),
                            "--allow_train_overlap", *flags(world / "all.parquet")])
    table = pd.read_parquet(tmp_path / "allowed" / "scores.parquet")
    problem_ids = pd.read_parquet(world / "all.parquet")["problem_id"]
    assert table["trained_on"].dtype == bool
    assert table["trained_on"].tolist() == (problem_ids[table["example_id"]] < 4).tolist()


def test_held_out_rows_pass_and_a_model_without_record_warns(world, tiny_model_dir, tmp_path, capsys):
    analyze_dpo_model.main(["--model_path", str(world / "sft_run" / "checkpoints" / "2"),
                            "--output_dir", str(tmp_path / "a"), *flags(world / "test.parquet")])
    assert "trained_on" not in pd.read_parquet(tmp_path / "a" / "scores.parquet").columns
    assert "warning" not in capsys.readouterr().out
    analyze_dpo_model.main(["--model_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "b"),
                            *flags(world / "all.parquet")])
    out = capsys.readouterr().out
    assert out.count("cannot check whether the scored rows were trained on") == 1


def test_dynamics_stop_on_trained_rows_also_through_the_base_of_a_dpo_series(world, tiny_model_dir, tmp_path):
    dpo = tmp_path / "dpo"  # DPO adapters on a model whose own run (SFT) trained on train.parquet
    merged = world / "sft_run" / "merged"
    if not merged.exists():
        save_model_with_tokenizer(load_causal_lm(str(tiny_model_dir)), merged, tiny_model_dir)
    save_adapter(merged, dpo / "checkpoint-2", seed=5)
    assert [r.folder for r in training_records(dpo / "checkpoint-2")] == [world / "sft_run"]
    with pytest.raises(UsageError, match=r"8 of 12 .*4 problems"):
        analyze_training_dynamics.main(["--checkpoint_dir", str(dpo), "--output_dir", str(tmp_path / "out"),
                                        *flags(world / "all.parquet")])


def scores_of(model_path, data_path, out, *extra) -> pd.DataFrame:
    analyze_dpo_model.main(["--model_path", str(model_path), "--output_dir", str(out), *flags(data_path), *extra])
    return pd.read_parquet(Path(out) / "scores.parquet")


def test_adapter_loads_on_its_recorded_base_and_refuses_another(world, tiny_model_dir, tmp_path):
    adapter = world / "sft_run" / "checkpoints" / "1"
    test_data = world / "test.parquet"
    with pytest.raises(UsageError, match="is not the base model of"):
        scores_of(adapter, test_data, tmp_path / "wrong", "--base_model", str(world / "other_base"))
    default = scores_of(adapter, test_data, tmp_path / "default")
    explicit = scores_of(adapter, test_data, tmp_path / "explicit", "--base_model", str(tiny_model_dir))
    np.testing.assert_allclose(default["chosen_logp_sum"], explicit["chosen_logp_sum"], atol=1e-4)
    forced = scores_of(adapter, test_data, tmp_path / "forced", "--base_model", str(world / "other_base"),
                       "--force_base_model")
    assert not np.allclose(forced["chosen_logp_sum"], default["chosen_logp_sum"], atol=1e-2)

    copy = tmp_path / "copy_of_base"  # the same model in another folder is the same base
    shutil.copytree(tiny_model_dir, copy)
    same = scores_of(adapter, test_data, tmp_path / "copy", "--base_model", str(copy))
    np.testing.assert_allclose(same["chosen_logp_sum"], default["chosen_logp_sum"], atol=1e-4)


def test_relative_and_moved_bases_are_resolved(world, tiny_model_dir, tmp_path, monkeypatch):
    shutil.copytree(tiny_model_dir, tmp_path / "models" / "base")
    adapter = save_adapter(tmp_path / "models" / "base", tmp_path / "runs" / "a", seed=3,
                           base_name="../../models/base")  # relative to the adapter folder
    monkeypatch.chdir(REPO_ROOT)
    assert Path(recorded_adapter_base(adapter)).resolve() == (tmp_path / "models" / "base").resolve()

    # the base folder moved away: a --base_model with the recorded fingerprint is accepted
    record_training(tmp_path / "runs" / "a", world / "train.parquet", tmp_path / "models" / "base", tiny_model_dir)
    shutil.move(tmp_path / "models" / "base", tmp_path / "moved")
    model, _ = load_for_scoring(str(adapter), str(tmp_path / "moved"))
    assert model is not None
    with pytest.raises(UsageError, match="is not the base model"):
        load_for_scoring(str(adapter), str(world / "other_base"))


def test_reference_adapter_is_loaded_on_its_own_base(world, tiny_model_dir, tmp_path):
    """A DPO model on another base, its reference an adapter: the reference ignores --base_model."""
    adapter = world / "sft_run" / "checkpoints" / "1"
    test_data = world / "test.parquet"
    alone = scores_of(adapter, test_data, tmp_path / "alone")
    with_ref = scores_of(world / "other_base", test_data, tmp_path / "ref", "--ref_model_path", str(adapter),
                         "--base_model", str(world / "other_base"))
    np.testing.assert_allclose(with_ref["ref_chosen_logp_sum"], alone["chosen_logp_sum"], atol=1e-4)
    with pytest.raises(UsageError, match="--ref_base_model"):
        scores_of(world / "other_base", test_data, tmp_path / "bad", "--ref_model_path", str(adapter),
                  "--ref_base_model", str(world / "other_base"))


def test_adapter_series_follow_the_recorded_base(world, tiny_model_dir, tmp_path):
    run = world / "sft_run"
    with pytest.raises(UsageError, match="is not the base model"):
        analyze_training_dynamics.main(["--checkpoint_dir", str(run), "--base_model", str(world / "other_base"),
                                        "--output_dir", str(tmp_path / "wrong"), *flags(world / "test.parquet")])
    analyze_training_dynamics.main(["--checkpoint_dir", str(run), "--output_dir", str(tmp_path / "ok"),
                                    "--include_base", *flags(world / "test.parquet")])
    table = pd.read_parquet(tmp_path / "ok" / "all.parquet")
    alone = scores_of(run / "checkpoints" / "2", world / "test.parquet", tmp_path / "alone")
    np.testing.assert_allclose(table[table.checkpoint == "2"]["chosen_logp_sum"], alone["chosen_logp_sum"],
                               atol=1e-4)


def test_resume_rescores_a_retrained_checkpoint_and_regenerated_data(world, tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world / "sft_run", run)
    data = tmp_path / "test.parquet"
    shutil.copy(world / "test.parquet", data)
    out = tmp_path / "out"

    def dynamics():
        analyze_training_dynamics.main(["--checkpoint_dir", str(run), "--output_dir", str(out), *flags(data)])
        return pd.read_parquet(out / "all.parquet")

    first = dynamics()
    save_adapter(tiny_model_dir, run / "checkpoints" / "2", seed=9)  # retrained into the same folder
    capsys.readouterr()
    second = dynamics()
    log = capsys.readouterr().out
    assert_mentions(log, "checkpoint 2", "checkpoint_fingerprint", "1 of 2", "['2']")  # what changed, what is rescored
    fresh = scores_of(run / "checkpoints" / "2", data, tmp_path / "fresh")
    np.testing.assert_allclose(second[second.checkpoint == "2"]["chosen_logp_sum"], fresh["chosen_logp_sum"],
                               atol=1e-4)
    assert not np.allclose(second[second.checkpoint == "2"]["chosen_logp_sum"],
                           first[first.checkpoint == "2"]["chosen_logp_sum"], atol=1e-2)

    rows = pd.read_parquet(data)  # regenerated at the same path: every checkpoint is rescored
    rows["text"] = rows["text"].str.replace("\nThe result is", "\nSo the result is")
    rows.to_parquet(data)
    third = dynamics()
    assert_mentions(capsys.readouterr().out, "0 of 2", "['1', '2']")
    assert len(third) == len(second) and not np.allclose(third["chosen_logp_sum"], second["chosen_logp_sum"])

    shutil.rmtree(run / "checkpoints" / "2")  # a part whose checkpoint is gone is not mixed in
    assert set(dynamics()["checkpoint"]) == {"1"}


def test_separate_shard_runs_never_merge_a_shard_file_of_other_content(tmp_path):
    from fwdrev.sharding import Shard, gather_table, read_key

    def rows(ids, value):
        return pd.DataFrame({"example_id": ids, "score": [value] * len(ids)})

    final = tmp_path / "1.part"
    old, new = {"checkpoint_fingerprint": "old"}, {"checkpoint_fingerprint": "new"}
    assert gather_table(Shard(1, 2), rows([1, 3], -1.0), final, [0, 1, 2, 3], old) is None  # a previous run
    assert gather_table(Shard(0, 2), rows([0, 2], 5.0), final, [0, 1, 2, 3], new) is None  # waits for shard 1
    merged = gather_table(Shard(1, 2), rows([1, 3], 5.0), final, [0, 1, 2, 3], new)
    assert merged["score"].tolist() == [5.0] * 4 and read_key(final) == new
    assert pd.read_parquet(final)["example_id"].tolist() == [0, 1, 2, 3]
