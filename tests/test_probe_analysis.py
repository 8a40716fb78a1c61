"""--probes / --token_positions of the analysis scripts on the tiny model: the files, their values
against the y+/y- tables, the self_greedy cache, resume, and exit 2 on bad flags."""

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import load_script

from fwdrev.devtools.synthetic import generate_preference_rows
from fwdrev.modeling import add_lora, load_causal_lm, make_lora_config

analyze_training_dynamics = load_script("analysis", "analyze_training_dynamics")
analyze_dpo_model = load_script("analysis", "analyze_dpo_model")
NUM_ROWS = 8
TEXT_PROBES = ["irr_train", "irr_test", "permuted", "permuted_irr", "self_greedy", "rephrase"]


@pytest.fixture(scope="module")
def series(tiny_model_dir, tmp_path_factory):
    """Scored rows (with a user probe column), a training file, and two LoRA epochs."""
    root = tmp_path_factory.mktemp("probe-runs")
    frame = generate_preference_rows(NUM_ROWS, seed=5)
    frame["rephrase"] = [None if i == 0 else f"a rephrase of row {i}" for i in range(NUM_ROWS)]
    frame.to_parquet(root / "test.parquet")
    train = generate_preference_rows(6, seed=6)
    train["problem_id"] += 1000  # problems of their own
    train.to_parquet(root / "train.parquet")
    for epoch in (1, 2):
        model = add_lora(load_causal_lm(str(tiny_model_dir)),
                         make_lora_config(r=4, alpha=8, dropout=0.0, target_modules="q_proj,v_proj"), seed=epoch)
        with torch.no_grad():
            for name, weight in model.named_parameters():
                if "lora_B" in name:
                    weight.normal_(0, 0.05 * epoch)
        model.save_pretrained(root / "sft" / str(epoch))
    return root


def dynamics_args(series, tiny_model_dir, output_dir, *extra):
    return ["--base_model", str(tiny_model_dir), "--checkpoint_dir", str(series / "sft"),
            "--dataset_path", str(series / "test.parquet"), "--output_dir", str(output_dir),
            "--max_tokens", "8", "--batch_size", "3", "--include_base", "--probes", "all",
            "--probe_fields", "rephrase", "--probe_train_file", str(series / "train.parquet"),
            "--probe_max_new_tokens", "12", "--token_positions", "1000", *extra]


@pytest.fixture(scope="module")
def probed(series, tiny_model_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("probed")
    analyze_training_dynamics.main(dynamics_args(series, tiny_model_dir, output_dir))
    return output_dir


def test_probe_rows_per_example_and_checkpoint(probed):
    probes = pd.read_parquet(probed / "probes.parquet")
    assert set(probes["checkpoint"]) == {"base", "1", "2"}
    counts = probes.groupby(["checkpoint", "example_id"]).size()
    assert set(counts[counts.index.get_level_values(1) != 0]) == {4 + len(TEXT_PROBES)}
    assert set(counts[counts.index.get_level_values(1) == 0]) == {3 + len(TEXT_PROBES)}  # no rephrase
    assert set(probes["probe"]) == {"y+", "y-", "argmax_along_y+", "argmax_along_y-", *TEXT_PROBES}
    assert probes["source_example_id"].notna().groupby(probes["probe"]).all().to_dict() == {
        "y+": False, "y-": False, "argmax_along_y+": False, "argmax_along_y-": False, "irr_train": True,
        "irr_test": True, "permuted": False, "permuted_irr": True, "self_greedy": False, "rephrase": False}
    assert probes["source_example_id"].isna().groupby(probes["probe"]).all()[["y+", "permuted"]].all()
    assert list(probes["epoch"].unique()) == [0, 1, 2]


def test_y_rows_equal_the_score_table_and_argmax_bounds_them(probed):
    probes = pd.read_parquet(probed / "probes.parquet").set_index(["checkpoint", "example_id", "probe"])
    scores = pd.read_parquet(probed / "all.parquet")
    for row in scores.itertuples():
        for side, probe in (("chosen", "y+"), ("rejected", "y-")):
            assert probes.loc[(row.checkpoint, row.example_id, probe), "logp_sum"] == pytest.approx(
                getattr(row, f"{side}_logp_sum"), rel=1e-6)
            argmax = probes.loc[(row.checkpoint, row.example_id, f"argmax_along_{probe}")]
            assert argmax["num_tokens"] == getattr(row, f"{side}_num_tokens")
            assert argmax["logp_sum"] >= getattr(row, f"{side}_logp_sum") - 1e-4


def test_irrelevant_probes_come_from_other_problems(probed, series):
    probes = pd.read_parquet(probed / "probes.parquet")
    test_keys = pd.read_parquet(series / "test.parquet")["problem_id"]
    train_keys = pd.read_parquet(series / "train.parquet")["problem_id"]
    irr_test = probes[probes["probe"] == "irr_test"]
    assert (test_keys[irr_test["source_example_id"]].to_numpy() != test_keys[irr_test["example_id"]].to_numpy()).all()
    irr_train = probes[probes["probe"] == "irr_train"]
    assert irr_train["source_example_id"].isin(train_keys.index).all()
    # the same irrelevant response at every checkpoint: probes are fixed, only the model moves
    assert irr_test.groupby("example_id")["source_example_id"].nunique().max() == 1


def test_token_logps_sum_to_the_score_columns(probed):
    tokens = pd.read_parquet(probed / "token_logps.parquet")
    scores = pd.read_parquet(probed / "all.parquet").set_index(["checkpoint", "example_id"])
    assert len(tokens) == 3 * NUM_ROWS * 2
    assert tokens["logps"].iloc[0].dtype == np.float32
    for row in tokens.itertuples():
        expected = scores.loc[(row.checkpoint, row.example_id), f"{row.response}_logp_sum"]
        assert np.sum(row.logps, dtype=np.float64) == pytest.approx(expected, rel=1e-6)
        assert (row.argmax_logps >= row.logps - 1e-6).all()
        assert len(row.token_ids) == scores.loc[(row.checkpoint, row.example_id), f"{row.response}_num_tokens"]


def test_resume_rescores_only_missing_parts_and_never_regenerates(probed, series, tiny_model_dir, monkeypatch,
                                                                  capsys):
    import fwdrev.greedy_probe

    before = pd.read_parquet(probed / "probes.parquet")
    greedy = pd.read_parquet(probed / "self_greedy.parquet")
    assert len(greedy) == NUM_ROWS and set(greedy["example_id"]) == set(range(NUM_ROWS))
    (probed / "parts" / "probes" / "2.part").unlink()  # what a run killed while scoring epoch 2 leaves

    def no_generation(*args, **kwargs):
        raise AssertionError("self_greedy regenerated on resume")

    monkeypatch.setattr(fwdrev.greedy_probe, "HFBackend", no_generation)
    capsys.readouterr()
    analyze_training_dynamics.main(dynamics_args(series, tiny_model_dir, probed))
    out = capsys.readouterr().out
    assert "checkpoint 2 scored" in out and "checkpoint 1 scored" not in out
    assert "probes: scoring ['2'] again" in out
    pd.testing.assert_frame_equal(pd.read_parquet(probed / "probes.parquet"), before, check_exact=False, rtol=1e-6)
    pd.testing.assert_frame_equal(pd.read_parquet(probed / "self_greedy.parquet"), greedy)


def test_dpo_model_probes_with_its_reference(series, tiny_model_dir, tmp_path):
    analyze_dpo_model.main(["--model_path", str(series / "sft" / "2"), "--ref_model_path", str(tiny_model_dir),
                            "--dataset_path", str(series / "test.parquet"), "--output_dir", str(tmp_path),
                            "--max_tokens", "8", "--probes", "argmax,irr_test,self_greedy",
                            "--probe_max_new_tokens", "8", "--token_positions", "5"])
    probes = pd.read_parquet(tmp_path / "probes.parquet")
    assert set(probes["checkpoint"]) == {"2", "reference"}
    assert set(probes["probe"]) == {"y+", "y-", "argmax_along_y+", "argmax_along_y-", "irr_test", "self_greedy"}
    tokens = pd.read_parquet(tmp_path / "token_logps.parquet")
    assert tokens["logps"].map(len).max() == 5
    scores = pd.read_parquet(tmp_path / "scores.parquet").set_index("example_id")
    ys = probes[(probes["probe"] == "y+") & (probes["checkpoint"] == "reference")].set_index("example_id")
    np.testing.assert_allclose(ys["logp_sum"], scores.loc[ys.index, "ref_chosen_logp_sum"], rtol=1e-6)


@pytest.mark.parametrize("flags, message", [
    (["--probes", "irr_train"], "--probe_train_file"),
    (["--probes", "bogus"], "unknown probe"),
    (["--probes", "permuted", "--scoring", "original"], "--scoring response"),
])
def test_bad_probe_flags_exit_2(series, tiny_model_dir, tmp_path, flags, message):
    import subprocess
    import sys

    from helpers import REPO_ROOT, script_env

    result = subprocess.run([sys.executable, str(REPO_ROOT / "analysis" / "analyze_training_dynamics.py"),
                             "--checkpoint_dir", str(series / "sft"), "--dataset_path", str(series / "test.parquet"),
                             "--output_dir", str(tmp_path), *flags], capture_output=True, text=True,
                            env=script_env())
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr


@pytest.mark.parametrize("launcher, environment", [
    ("analysis/run_dpo_analysis.sh", {"MODEL_PATH": "{d}", "DATASET_PATH": "{d}"}),
    ("analysis/run_training_dynamics.sh", {"BASE_MODEL": "{d}", "CHECKPOINT_DIR": "{d}", "DATASET_PATH": "{d}"}),
])
def test_launchers_pass_the_probe_flags(launcher, environment, tmp_path):
    import os
    import subprocess

    from helpers import REPO_ROOT, script_env

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "torchrun").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/args\n')
    (tmp_path / "bin" / "torchrun").chmod(0o755)
    env = script_env(**{k: v.format(d=tmp_path) for k, v in environment.items()},
                     PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", PROBES="all", PROBE_FIELDS="rephrase",
                     TOKEN_POSITIONS=1000)
    result = subprocess.run(["bash", launcher], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    args = (tmp_path / "args").read_text()
    assert "--probes all" in args and "--probe_fields rephrase" in args and "--token_positions 1000" in args
    assert "--probe_train_file" not in args


def test_probe_figures_and_sentence(probed, tmp_path, tiny_model_dir, capsys):
    """plot_probes.py on an SFT series and a DPO series made from it (its epochs renamed as steps)."""
    plot_probes = load_script("visualization", "plot_probes")
    for file_name in ("probes.parquet", "token_logps.parquet"):
        sft = pd.read_parquet(probed / file_name)
        (tmp_path / "m" / "sft").mkdir(parents=True, exist_ok=True)
        (tmp_path / "m" / "dpo").mkdir(parents=True, exist_ok=True)
        sft.to_parquet(tmp_path / "m" / "sft" / file_name)
        dpo = sft.assign(stage="dpo", checkpoint=sft["checkpoint"].map({"base": "base", "1": "checkpoint-4",
                                                                         "2": "checkpoint-8"}))
        if file_name == "probes.parquet":  # DPO pushes y- down by 1 nat per token at its last checkpoint
            dpo.loc[(dpo["probe"] == "y-") & (dpo["checkpoint"] == "checkpoint-8"), "logp_mean"] -= 1.0
            y_minus = dpo[dpo["probe"] == "y-"].groupby("checkpoint")["logp_mean"].mean()
            expected = f"y- {y_minus['checkpoint-8'] - y_minus['base']:+.3f}"  # from the DPO series' own start
        dpo.to_parquet(tmp_path / "m" / "dpo" / file_name)
    capsys.readouterr()
    written = plot_probes.main(["--results_dir", str(tmp_path), "--output_dir", str(tmp_path / "fig"),
                                "--tokenizer", str(tiny_model_dir), "--dpi", "50"])
    names = {p.name for p in written}
    assert {"probes.png", "tokens_m.png", "top_tokens_m.csv"} <= names
    out = capsys.readouterr().out
    assert "D_m, over DPO" in out and expected in out
    top = pd.read_csv(tmp_path / "fig" / "top_tokens_m.csv")
    assert set(top["direction"]) <= {"rise", "fall"} and top["token"].notna().all()
    assert ((top["direction"] == "rise") == (top["mean_change"] > 0)).all()


def test_irr_train_rows_from_the_training_record(series, tiny_model_dir, tmp_path):
    import json
    import shutil
    from types import SimpleNamespace

    from fwdrev.cli import UsageError
    from fwdrev.data import load_preference_data
    from fwdrev.modeling import load_tokenizer
    from fwdrev.probe_scoring import train_rows
    from fwdrev.provenance import training_record

    tokenizer = load_tokenizer(str(tiny_model_dir))
    train_file = tmp_path / "train.parquet"
    shutil.copy(series / "train.parquet", train_file)
    data = load_preference_data(train_file, tokenizer=tokenizer)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_config.json").write_text(json.dumps(training_record(data, [0, 1, 2, 3], [4, 5], str(tiny_model_dir))))
    args = SimpleNamespace(probe_train_file=None, prompt_field="question", chosen_field="text",
                           rejected_field="worse-text", drop_invalid_rows=False,
                           flipped_prompt_field="relevant-question")
    rows = train_rows(args, tokenizer, [run])
    assert sorted(rows.responses) == [0, 1, 2, 3]  # the train rows, not the eval rows
    assert f"problem_id:{pd.read_parquet(train_file)['problem_id'][0]}" in rows.keys[0]  # fwdrev.problems
    assert train_rows(args, tokenizer, [tmp_path / "nothing"]) is None
    generate_preference_rows(6, seed=9).to_parquet(train_file)  # changed since training
    with pytest.raises(UsageError, match="--probe_train_file"):
        train_rows(args, tokenizer, [run])


@pytest.mark.slow
def test_two_processes_write_what_one_does(probed, series, tiny_model_dir, tmp_path):
    """torchrun, examples split over 2 ranks (LoRA series): the same probe and token files."""
    from helpers import REPO_ROOT, run_command, torchrun_command

    script = str(REPO_ROOT / "analysis" / "analyze_training_dynamics.py")
    run_command(torchrun_command(2) + [script, *dynamics_args(series, tiny_model_dir, tmp_path)], check=True)
    for name, key in (("probes.parquet", ["checkpoint", "example_id", "probe"]),
                      ("token_logps.parquet", ["checkpoint", "example_id", "response"])):
        one, two = (pd.read_parquet(d / name).sort_values(key).reset_index(drop=True) for d in (probed, tmp_path))
        assert len(one) == len(two) and (one[key] == two[key]).all().all()
        if name == "probes.parquet":
            np.testing.assert_allclose(two["logp_sum"], one["logp_sum"], rtol=1e-5)
        else:
            for a, b in zip(one["logps"], two["logps"]):
                np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "self_greedy.parquet"),
                                  pd.read_parquet(probed / "self_greedy.parquet"))
