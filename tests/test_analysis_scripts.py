"""The analysis scripts end to end on the tiny model: tables, resume, sharding, launchers."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import REPO_ROOT, assert_mentions, load_script, script_env

from fwdrev.checkpoints import discover_checkpoints
from fwdrev.devtools.synthetic import generate_preference_rows
from fwdrev.errors import UsageError
from fwdrev.modeling import add_lora, load_causal_lm, make_lora_config
from fwdrev.score_summaries import META_COLUMNS, REWARD_COLUMNS, SCORE_COLUMNS

NUM_ROWS = 12
SCORE_TOLERANCE = dict(check_exact=False, rtol=1e-5, atol=1e-3)  # float32 sums of ~100 tokens



analyze_dpo_model = load_script("analysis", "analyze_dpo_model")
analyze_training_dynamics = load_script("analysis", "analyze_training_dynamics")


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """A data file, an SFT series of LoRA adapters (1/, 2/, 3/) and a DPO series of full models."""
    root = tmp_path_factory.mktemp("runs")
    data_path = root / "rows.parquet"
    generate_preference_rows(NUM_ROWS, seed=4).to_parquet(data_path)
    for epoch in (1, 2, 3):
        model = add_lora(load_causal_lm(str(tiny_model_dir)),
                         make_lora_config(r=4, alpha=8, dropout=0.0, target_modules="q_proj,v_proj"), seed=epoch)
        with torch.no_grad():  # a fresh adapter is the identity: give each epoch its own weights
            for name, weight in model.named_parameters():
                if "lora_B" in name:
                    weight.normal_(0, 0.05 * epoch)
        model.save_pretrained(root / "sft" / str(epoch))
    for step in (10, 5):
        model = load_causal_lm(str(tiny_model_dir))
        with torch.no_grad():
            model.lm_head.weight.mul_(1 + step / 10)
        model.save_pretrained(root / "dpo" / f"checkpoint-{step}")
    return root


def read_csv(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"checkpoint": str, "step": "Int64"})  # "1" stays a name


def common_flags(runs) -> list[str]:
    return ["--dataset_path", str(runs / "rows.parquet"), "--max_tokens", "8", "--batch_size", "3"]


@pytest.fixture(scope="module")
def adapter_scores(runs, tiny_model_dir, tmp_path_factory):
    """analyze_dpo_model on SFT adapter 1 with the base model as reference (single process)."""
    output_dir = tmp_path_factory.mktemp("adapter-1")
    analyze_dpo_model.main(["--model_path", str(runs / "sft" / "1"), "--output_dir", str(output_dir),
                            "--ref_model_path", str(tiny_model_dir), "--beta", "0.5", "--stage", "sft",
                            *common_flags(runs)])
    return output_dir


@pytest.fixture(scope="module")
def sft_dynamics(runs, tiny_model_dir, tmp_path_factory):
    """analyze_training_dynamics over the whole SFT series plus the base model."""
    output_dir = tmp_path_factory.mktemp("sft-dynamics")
    dynamics(runs, tiny_model_dir, output_dir, "--include_base")
    return output_dir


def dynamics(runs, tiny_model_dir, output_dir, *flags, series="sft"):
    analyze_training_dynamics.main(["--base_model", str(tiny_model_dir), "--checkpoint_dir", str(runs / series),
                                    "--output_dir", str(output_dir), *common_flags(runs), *flags])


def test_dpo_model_table_summary_and_rewards(adapter_scores, runs, tiny_model_dir, tmp_path):
    table = pd.read_parquet(adapter_scores / "scores.parquet")
    assert list(table.columns) == SCORE_COLUMNS + REWARD_COLUMNS + ["group_id"]
    # the problem of each row: synthetic rows k and 6 + k are problem k (problem_id column)
    assert table["group_id"].tolist() == generate_preference_rows(NUM_ROWS, seed=4)["problem_id"].tolist()
    assert table["example_id"].tolist() == list(range(NUM_ROWS))  # file order
    assert table["sample_type"].tolist() == ["original"] * 6 + ["flipped"] * 6
    assert set(table["checkpoint"]) == {"1"} and table["step"].isna().all()
    assert (table["chosen_num_tokens_first_k"] == 8).all() and (table["chosen_num_tokens"] > 8).all()
    pd.testing.assert_frame_equal(read_csv(adapter_scores / "scores.csv"), table,
                                  check_dtype=False, **SCORE_TOLERANCE)

    # the reference columns are the base model's own scores
    analyze_dpo_model.main(["--model_path", str(tiny_model_dir), "--output_dir", str(tmp_path), *common_flags(runs)])
    base = pd.read_parquet(tmp_path / "scores.parquet")
    assert np.allclose(table["ref_chosen_logp_sum"], base["chosen_logp_sum"], atol=1e-3)
    assert np.allclose(table["chosen_reward"], 0.5 * (table["chosen_logp_sum"] - base["chosen_logp_sum"]), atol=1e-3)
    assert not np.allclose(table["chosen_logp_sum"], base["chosen_logp_sum"])  # the adapter matters

    summary = json.loads((adapter_scores / "summary.json").read_text())
    assert summary["all"]["n"] == NUM_ROWS and summary["flipped"]["n"] == 6
    assert summary["all"]["means"]["rejected_logp_max"] == pytest.approx(table["rejected_logp_max"].mean())
    assert summary["all"]["pref_acc_full"] == pytest.approx((table["delta_logp_mean"] > 0).mean())
    assert summary["all"]["pref_acc_first_k"] == pytest.approx((table["delta_logp_mean_first_k"] > 0).mean())
    assert summary["all"]["n_problems"] == 6 and summary["all"]["ci_resamples"] == "problems (group_id)"
    assert summary["all"]["reward_accuracy"] == pytest.approx((table["reward_margin"] > 0).mean())
    report = json.loads((adapter_scores / "data_report.json").read_text())
    assert report["used_rows"] == NUM_ROWS and report["sample_type_counts"] == {"original": 6, "flipped": 6}


def test_manual_shards_merge_to_the_single_process_table(adapter_scores, runs, tiny_model_dir, tmp_path):
    def shard(index):
        analyze_dpo_model.main(["--model_path", str(runs / "sft" / "1"), "--output_dir", str(tmp_path),
                                "--ref_model_path", str(tiny_model_dir), "--beta", "0.5", "--stage", "sft",
                                "--num_shards", "2", "--shard_id", str(index), *common_flags(runs)])

    shard(1)
    assert not (tmp_path / "scores.parquet").exists()  # waits for shard 0
    shard(0)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "scores.parquet"),
                                  pd.read_parquet(adapter_scores / "scores.parquet"), **SCORE_TOLERANCE)
    assert json.loads((tmp_path / "summary.json").read_text())["all"]["n"] == NUM_ROWS
    assert not list(tmp_path.glob("*.shard-*"))


def test_leftover_shard_of_another_model_is_ignored_and_named(adapter_scores, runs, tiny_model_dir, tmp_path,
                                                              capsys):
    """Shard 1/2 of model A left in the folder, then shard 0/2 of model B: never merged together."""
    def shard(model, index):
        analyze_dpo_model.main(["--model_path", str(runs / "sft" / model), "--output_dir", str(tmp_path),
                                "--ref_model_path", str(tiny_model_dir), "--beta", "0.5", "--stage", "sft",
                                "--checkpoint_name", "1", "--num_shards", "2", "--shard_id", str(index),
                                *common_flags(runs)])

    shard("2", 1)  # model A's shard
    capsys.readouterr()
    shard("1", 0)  # model B
    assert not (tmp_path / "scores.parquet").exists() and not (tmp_path / "summary.json").exists()
    assert_mentions(capsys.readouterr().out, f"ignored shard file {tmp_path / 'scores.parquet.shard-1-of-2'}",
                    "another model")
    shard("1", 1)  # model B's own shard 1 replaces A's: B's rows only
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "scores.parquet"),
                                  pd.read_parquet(adapter_scores / "scores.parquet"), **SCORE_TOLERANCE)


def test_more_shards_than_rows_keep_the_score_columns_numeric(runs, tmp_path):
    data = tmp_path / "two_rows.parquet"
    generate_preference_rows(2, seed=4).to_parquet(data)
    for index in (0, 1, 2):  # shard 2 has no rows, and is the last to finish: it merges
        analyze_dpo_model.main(["--model_path", str(runs / "sft" / "1"), "--output_dir", str(tmp_path / "out"),
                                "--dataset_path", str(data), "--max_tokens", "8",
                                "--num_shards", "3", "--shard_id", str(index)])
    table = pd.read_parquet(tmp_path / "out" / "scores.parquet")
    assert table["example_id"].tolist() == [0, 1]
    not_numeric = [c for c in SCORE_COLUMNS[len(META_COLUMNS):] if not pd.api.types.is_numeric_dtype(table[c])]
    assert not_numeric == []
    means = json.loads((tmp_path / "out" / "summary.json").read_text())["all"]["means"]
    assert means["delta_logp_mean"] == pytest.approx(table["delta_logp_mean"].mean())


def test_a_change_of_the_scoring_rules_rescores_the_parts(runs, tiny_model_dir, tmp_path, capsys, monkeypatch):
    from fwdrev import score_keys

    dynamics(runs, tiny_model_dir, tmp_path, "--epochs", "1")
    monkeypatch.setattr(score_keys, "SCORING_RULES_VERSION", score_keys.SCORING_RULES_VERSION + 1)
    capsys.readouterr()
    dynamics(runs, tiny_model_dir, tmp_path, "--epochs", "1")
    assert_mentions(capsys.readouterr().out, "checkpoint 1: its part was scored from other content", "settings",
                    "0 of 1 checkpoints already scored")


@pytest.mark.slow
def test_torchrun_launcher_two_processes_equals_single_process(adapter_scores, runs, tiny_model_dir, tmp_path):
    env = script_env(NUM_PROCS=2, MODEL_PATH=runs / "sft" / "1", DATASET_PATH=runs / "rows.parquet",
                     OUTPUT_DIR=tmp_path, REF_MODEL_PATH=tiny_model_dir, BETA=0.5, MAX_TOKENS=8, BATCH_SIZE=3)
    result = subprocess.run(["bash", "analysis/run_dpo_analysis.sh", "--stage", "sft"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "scores.parquet"),
                                  pd.read_parquet(adapter_scores / "scores.parquet"), **SCORE_TOLERANCE)


def test_bad_data_exits_with_code_2(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.parquet"
    generate_preference_rows(4).drop(columns=["worse-text"]).to_parquet(bad)
    result = subprocess.run([sys.executable, "analysis/analyze_dpo_model.py", "--model_path", str(tiny_model_dir),
                             "--dataset_path", str(bad), "--output_dir", str(tmp_path / "out")],
                            cwd=REPO_ROOT, env=script_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "error:" in result.stderr and "worse-text" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "scores.parquet").exists()


def test_prompt_length_not_below_max_length_exits_with_code_2(tiny_model_dir, runs, tmp_path):
    result = subprocess.run([sys.executable, "analysis/analyze_dpo_model.py", "--model_path", str(tiny_model_dir),
                             "--dataset_path", str(runs / "rows.parquet"), "--output_dir", str(tmp_path),
                             "--max_length", "256", "--max_prompt_length", "300"],
                            cwd=REPO_ROOT, env=script_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert_mentions(result.stderr, "--max_prompt_length 300", "--max_length 256")


@pytest.mark.parametrize("max_length, expected", [(512, 256), (20000, 2048), (4097, 2048)])
def test_prompt_budget_defaults_to_half_of_max_length_up_to_2048(max_length, expected):
    """`--max_length 512` alone used to exit 2 (the prompt budget defaulted to 2048)."""
    for script in ("analyze_dpo_model", "analyze_training_dynamics"):
        required = (["--model_path", "m", "--dataset_path", "d", "--output_dir", "o"]
                    if script == "analyze_dpo_model" else
                    ["--base_model", "m", "--checkpoint_dir", "c", "--output_dir", "o", "--dataset_path", "d"])
        module = analyze_dpo_model if script == "analyze_dpo_model" else analyze_training_dynamics
        args = module.parse_args(required + ["--max_length", str(max_length)])
        assert args.max_prompt_length == expected
        assert args.flipped_prompt_field == "relevant-question"
    explicit = analyze_dpo_model.parse_args(["--model_path", "m", "--dataset_path", "d", "--output_dir", "o",
                                             "--max_length", "512", "--max_prompt_length", "500"])
    assert explicit.max_prompt_length == 500


LAUNCHERS = {  # launcher -> the environment that makes it reach torchrun
    "analysis/run_dpo_analysis.sh": {"MODEL_PATH": "{d}", "DATASET_PATH": "{d}"},
    "analysis/run_training_dynamics.sh": {"BASE_MODEL": "{d}", "CHECKPOINT_DIR": "{d}", "DATASET_PATH": "{d}"},
}
TRAINING_LAUNCHERS = {  # launcher -> (environment that reaches torchrun, default recipe)
    "scripts/sft.sh": ({"MODEL_PATH": "{d}", "DATA_PATH": "{d}", "TRAIN_SETS": "f", "OUTPUT_ROOT": "{d}/o",
                        "DS_CONFIG": ""}, "s1"),
    "dpo/7b-train_multiple_base_models.sh": ({"MODEL_PATHS": "{d}", "DATA_PATH": "{d}", "OUTPUT_ROOT": "{d}/o",
                                              "DS_CONFIG": ""}, "lora"),
}


def fake_torchrun_env(tmp_path, environment: dict) -> dict:
    """The launcher's environment with a torchrun on PATH that appends its arguments to tmp_path/args."""
    (tmp_path / "bin").mkdir(exist_ok=True)
    fake_torchrun = tmp_path / "bin" / "torchrun"
    fake_torchrun.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/args\n')
    fake_torchrun.chmod(0o755)
    env = {k: v.format(d=tmp_path) for k, v in environment.items()}
    env["PATH"] = f"{tmp_path / 'bin'}:{os.environ['PATH']}"
    return env


@pytest.mark.parametrize("launcher", sorted(TRAINING_LAUNCHERS))
def test_training_launchers_pass_a_recipe_and_paths_only(launcher, tmp_path):
    environment, default_recipe = TRAINING_LAUNCHERS[launcher]
    env = fake_torchrun_env(tmp_path, environment)
    for recipe, extra in ((None, ""), ("original" if default_recipe == "lora" else "lora", "--max_steps 3")):
        (tmp_path / "args").unlink(missing_ok=True)
        run_env = script_env(**env, EXTRA_ARGS=extra, **({"RECIPE": recipe} if recipe else {}))
        result = subprocess.run(["bash", launcher], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                                env=run_env)
        assert result.returncode == 0, result.stderr[-2000:]
        args = (tmp_path / "args").read_text().split()
        assert args[args.index("--config") + 1] == (recipe or default_recipe)
        hyper_parameters = {"--learning_rate", "--max_steps", "--num_train_epochs", "--lora_r", "--beta",
                            "--gradient_accumulation_steps", "--save_steps", "--warmup_steps"}
        assert hyper_parameters & set(args) == ({"--max_steps"} if extra else set())  # only EXTRA_ARGS'


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_launchers_pass_max_prompt_length_only_when_set(launcher, tmp_path):
    """MAX_PROMPT_LENGTH used to default to 2048, so MAX_LENGTH=512 alone always exited 2."""
    env = fake_torchrun_env(tmp_path, LAUNCHERS[launcher])
    for prompt_length, expected in (("", None), ("100", "--max_prompt_length 100")):
        (tmp_path / "args").unlink(missing_ok=True)
        result = subprocess.run(["bash", launcher], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                                env=script_env(**env, MAX_LENGTH=512, MAX_PROMPT_LENGTH=prompt_length))
        assert result.returncode == 0, result.stderr[-2000:]
        args = (tmp_path / "args").read_text()
        assert "--max_length 512" in args
        assert ("--max_prompt_length" in args) == bool(expected) and (expected or "") in args
    (tmp_path / "args").unlink()
    result = subprocess.run(["bash", launcher], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                            env=script_env(**env, MAX_LENGTH="", MAX_PROMPT_LENGTH=""))
    assert result.returncode == 0 and "--max_length" not in (tmp_path / "args").read_text()  # the scripts' default


def test_launchers_check_their_inputs(tmp_path):
    for script in ("run_dpo_analysis.sh", "run_training_dynamics.sh", "run_complete_analysis.sh"):
        assert subprocess.run(["bash", "-n", f"analysis/{script}"], cwd=REPO_ROOT).returncode == 0
    result = subprocess.run(["bash", "analysis/run_dpo_analysis.sh"], cwd=REPO_ROOT, capture_output=True, text=True,
                            env=script_env(MODEL_PATH=tmp_path / "missing"), timeout=60)
    assert result.returncode == 1
    assert_mentions(result.stderr, "not found", tmp_path / "missing")


def test_checkpoint_discovery_in_both_layouts(runs, tmp_path):
    sft = discover_checkpoints(runs / "sft")
    assert [(c.name, c.stage, c.epoch, c.step) for c in sft] == [("1", "sft", 1, None), ("2", "sft", 2, None),
                                                                 ("3", "sft", 3, None)]
    dpo = discover_checkpoints(runs / "dpo")
    assert [(c.name, c.stage, c.epoch, c.step) for c in dpo] == [("checkpoint-5", "dpo", 1, 5),
                                                                 ("checkpoint-10", "dpo", 2, 10)]
    assert [c.name for c in discover_checkpoints(runs / "sft", epochs=[3, 1])] == ["1", "3"]
    with pytest.raises(FileNotFoundError, match=r"epoch\(s\) \[4\]"):
        discover_checkpoints(runs / "sft", epochs=[4])
    with pytest.raises(FileNotFoundError, match="checkpoint-<step>"):
        discover_checkpoints(runs / "sft", stage="dpo")
    sft_run = tmp_path / "sft_run"  # scripts/sft.py's OUTPUT_DIR: epochs under checkpoints/
    shutil.copytree(runs / "sft", sft_run / "checkpoints")
    shutil.copytree(runs / "dpo" / "checkpoint-5", sft_run / "checkpoint-50")  # kept for resuming
    assert discover_checkpoints(sft_run) == [
        c.__class__(c.name, sft_run / "checkpoints" / c.name, "sft", c.epoch, None) for c in sft]
    (tmp_path / "checkpoint-7").mkdir()  # e.g. optimizer state only
    with pytest.raises(FileNotFoundError, match="neither a LoRA adapter"):
        discover_checkpoints(tmp_path)


def test_sft_dynamics_tables(sft_dynamics, adapter_scores):
    table = pd.read_parquet(sft_dynamics / "all.parquet")
    assert list(table.columns) == SCORE_COLUMNS + ["group_id"]
    assert table["group_id"].tolist() == [k % 6 for _ in range(4) for k in range(NUM_ROWS)]
    assert table.groupby("checkpoint", sort=False).size().to_dict() == {"base": 12, "1": 12, "2": 12, "3": 12}
    assert table["epoch"].tolist() == [e for e in (0, 1, 2, 3) for _ in range(NUM_ROWS)]
    assert not table.duplicated(["checkpoint", "example_id"]).any()
    # adapters swapped on one base model score like a freshly loaded adapter
    epoch_1 = table[table["checkpoint"] == "1"].reset_index(drop=True)[SCORE_COLUMNS]
    alone = pd.read_parquet(adapter_scores / "scores.parquet")[SCORE_COLUMNS]
    pd.testing.assert_frame_equal(epoch_1, alone, **SCORE_TOLERANCE)
    assert not np.allclose(table[table["epoch"] == 2]["chosen_logp_sum"], epoch_1["chosen_logp_sum"])
    for subset in ("first50", "last50"):  # fewer than 50 rows: every example
        pd.testing.assert_frame_equal(pd.read_parquet(sft_dynamics / f"{subset}.parquet"), table)
    pd.testing.assert_frame_equal(read_csv(sft_dynamics / "all.csv"), table, check_dtype=False, **SCORE_TOLERANCE)

    summary = pd.read_csv(sft_dynamics / "summary.csv")
    assert len(summary) == 4 * 5  # checkpoints x (all, flipped, original, first50, last50)
    row = summary[(summary["checkpoint"] == "2") & (summary["subset"] == "flipped")].iloc[0]
    flipped = table[(table["checkpoint"] == "2") & (table["sample_type"] == "flipped")]
    assert row["n"] == 6 and row["delta_logp_mean"] == pytest.approx(flipped["delta_logp_mean"].mean())
    assert row["pref_acc_full_by_sum"] == pytest.approx((flipped["delta_logp_sum"] > 0).mean())


def test_dynamics_resume_scores_only_the_missing_checkpoints(sft_dynamics, runs, tiny_model_dir, tmp_path, capsys):
    dynamics(runs, tiny_model_dir, tmp_path, "--epochs", "1")  # as if interrupted after epoch 1
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["1.part"]
    assert set(pd.read_parquet(tmp_path / "all.parquet")["checkpoint"]) == {"1"}
    first_part = (tmp_path / "parts" / "1.part").read_bytes()
    capsys.readouterr()

    dynamics(runs, tiny_model_dir, tmp_path, "--include_base")
    assert_mentions(capsys.readouterr().out, "1 of 4", "['base', '2', '3']")  # done, and left to score
    assert (tmp_path / "parts" / "1.part").read_bytes() == first_part
    for name in ("all.parquet", "first50.parquet", "last50.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / name), pd.read_parquet(sft_dynamics / name))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "summary.csv"), pd.read_csv(sft_dynamics / "summary.csv"))

    dynamics(runs, tiny_model_dir, tmp_path, "--include_base")  # nothing left to do
    assert_mentions(capsys.readouterr().out, "4 of 4", "[]")
    assert len(pd.read_parquet(tmp_path / "all.parquet")) == 4 * NUM_ROWS
    with pytest.raises(UsageError, match="other settings"):
        dynamics(runs, tiny_model_dir, tmp_path, "--max_tokens", "3")


def test_dpo_dynamics_of_full_model_checkpoints(runs, tiny_model_dir, tmp_path):
    dynamics(runs, tiny_model_dir, tmp_path, series="dpo")
    table = pd.read_parquet(tmp_path / "all.parquet")
    firsts = table.drop_duplicates("checkpoint")
    assert firsts[["checkpoint", "stage", "epoch", "step"]].values.tolist() == [
        ["checkpoint-5", "dpo", 1, 5], ["checkpoint-10", "dpo", 2, 10]]
    # a sharper output head (larger scale) changes the log-probs
    assert not np.allclose(table[table["epoch"] == 1]["chosen_logp_mean"],
                           table[table["epoch"] == 2]["chosen_logp_mean"])


def test_full_model_series_is_sharded_by_whole_checkpoints(runs, tiny_model_dir, tmp_path, capsys):
    """Each process loads and scores whole checkpoints of a full-model series (not every model)."""
    single = tmp_path / "single"
    dynamics(runs, tiny_model_dir, single, series="dpo")
    sharded = tmp_path / "sharded"
    capsys.readouterr()
    dynamics(runs, tiny_model_dir, sharded, "--num_shards", "2", "--shard_id", "1", series="dpo")
    # the first to finish leaves no tables of its checkpoint alone (a later run's could be overwritten)
    assert not list(sharded.glob("all.*")) and not (sharded / "summary.csv").exists()
    assert_mentions(capsys.readouterr().out, "1 of 2 checkpoints scored", "['checkpoint-5']",
                    "checkpoint checkpoint-10 scored (process 1)")
    dynamics(runs, tiny_model_dir, sharded, "--num_shards", "2", "--shard_id", "0", series="dpo")
    printed = capsys.readouterr().out
    # checkpoints in step order: checkpoint-5 (position 0) to shard 0, checkpoint-10 to shard 1
    assert_mentions(printed, "checkpoint checkpoint-5 scored (process 0)")
    assert printed.count("scored (process") == 1  # no checkpoint scored twice
    pd.testing.assert_frame_equal(pd.read_parquet(sharded / "all.parquet"), pd.read_parquet(single / "all.parquet"),
                                  **SCORE_TOLERANCE)
    lora = tmp_path / "lora"  # adapters share one loaded base: their examples are split instead
    dynamics(runs, tiny_model_dir, lora, "--num_shards", "2", "--shard_id", "0")
    assert "scored (process" not in capsys.readouterr().out


def test_tables_are_written_by_one_run_at_a_time(tmp_path, monkeypatch):
    """Reading the parts and writing the tables happen under a lock: a run that read fewer parts
    never writes its tables after a run that read them all."""
    import threading
    from types import SimpleNamespace

    from fwdrev.io import exclusive_lock
    from fwdrev.sharding import write_parquet

    write_parquet(pd.DataFrame({"example_id": [0]}), tmp_path / "parts" / "a.part", {"part": "a"})
    written = []
    monkeypatch.setattr(analyze_training_dynamics, "rebuild_tables", lambda *args: written.append(args[0]))
    writer = threading.Thread(target=analyze_training_dynamics.write_tables_when_complete,
                              args=(tmp_path, [SimpleNamespace(name="a")], {"a": {"part": "a"}}, {}))
    with exclusive_lock(tmp_path / analyze_training_dynamics.TABLES_LOCK):  # another run is writing
        writer.start()
        writer.join(timeout=1.0)
        assert writer.is_alive() and written == []
    writer.join(timeout=30)
    assert written == [tmp_path]

