"""--scoring original reproduces the original analysis's numbers, through the chunked batched path."""

import argparse
import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from helpers import PAPER_CSV, REPO_ROOT, assert_mentions, load_script, script_env

from fwdrev.checkpoints import load_for_scoring
from fwdrev.data import DataValidationError
from fwdrev.errors import UsageError
from fwdrev.scoring import score_pairs
from fwdrev.scoring_cli import add_scoring_arguments, load_scoring_pairs, parse_scoring_args

SAMPLE_ROWS = [0, 1, 50, 51]  # two 'original' and two 'flipped' rows of the real sample
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_for_scoring(str(tiny_model_dir))  # float32 on the CPU


@pytest.fixture(scope="module")
def sample_rows(shared_sample_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("sample") / "rows.parquet"
    frame = pd.read_parquet(shared_sample_path).iloc[SAMPLE_ROWS].reset_index(drop=True)
    assert frame["sample_type"].tolist() == ["original", "original", "flipped", "flipped"]
    frame.to_parquet(path)
    return path


def original_analysis_logps(model, tokenizer, question: str, completion: str, max_tokens: int = 1000):
    """The original analysis's definition, written out plainly: full logits, one sequence."""
    prompt = ("<|im_start|>system\nYou are a helpful assistant.\n<|im_end|>\n"
              f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
    prompt_ids = tokenizer.encode(prompt)
    completion_ids = tokenizer.encode(completion)[:max_tokens]
    full_ids = torch.tensor([prompt_ids + completion_ids[1:]])
    with torch.no_grad():
        logits = model(input_ids=full_ids).logits.float()
    log_probs = torch.log_softmax(logits[0, len(prompt_ids) - 1 : -1], dim=-1)
    token_logps = log_probs.gather(-1, full_ids[0, len(prompt_ids):, None])[:, 0]
    return token_logps.mean().item(), token_logps.max().item(), len(token_logps)


def scoring_args(dataset_path, *flags) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_scoring_arguments(parser)
    return parse_scoring_args(parser, ["--dataset_path", str(dataset_path), *flags])


def test_original_scoring_matches_the_original_definition(tiny, sample_rows):
    model, tokenizer = tiny
    data, pairs = load_scoring_pairs(scoring_args(sample_rows, "--scoring", "original"), tokenizer)
    scores = score_pairs(model, pairs, tokenizer.pad_token_id, batch_size=2, first_k=1000, chunk_size=300)
    frame = pd.read_parquet(sample_rows)
    for row, scored in zip(frame.to_dict("records"), scores.to_dict("records")):
        for side, column in (("chosen", "text"), ("rejected", "worse-text")):
            # the forward `question` column, also on flipped rows (their conversations differ)
            mean, peak, count = original_analysis_logps(model, tokenizer, row["question"], row[column])
            assert scored[f"{side}_num_tokens"] == count == 999  # every real trace is > 1000 tokens
            assert scored[f"{side}_logp_mean"] == pytest.approx(mean, abs=TOLERANCE)
            assert scored[f"{side}_logp_max"] == pytest.approx(peak, abs=TOLERANCE)
    assert data.report.truncated == {
        "completion cut to its first 1000 tokens (--scoring original)": list(range(len(SAMPLE_ROWS)))}

    # the default scoring is another definition: other tokens, other numbers
    _, response_pairs = load_scoring_pairs(scoring_args(sample_rows), tokenizer)
    assert [p.prompt_ids for p in response_pairs] != [p.prompt_ids for p in pairs]


def test_original_scoring_checks_its_inputs(tiny, sample_rows, tmp_path):
    _, tokenizer = tiny
    frame = pd.read_parquet(sample_rows)
    with pytest.raises(DataValidationError, match="'question'"):
        path = tmp_path / "no_question.parquet"
        frame.drop(columns=["question"]).to_parquet(path)
        load_scoring_pairs(scoring_args(path, "--scoring", "original"), tokenizer)
    frame.loc[2, "question"] = None
    path = tmp_path / "missing_question.parquet"
    frame.to_parquet(path)
    with pytest.raises(DataValidationError, match=r"question.*rows \[2\]"):
        load_scoring_pairs(scoring_args(path, "--scoring", "original"), tokenizer)
    data, pairs = load_scoring_pairs(scoring_args(path, "--scoring", "original", "--drop_invalid_rows"),
                                     tokenizer)
    assert [p.example_id for p in pairs] == [0, 1, 3] and data.report.used_rows == 3
    assert data.report.sample_type_counts == {"original": 2, "flipped": 1}
    with pytest.raises(DataValidationError, match=r"--max_prompt_length.*rows \[0, 1, 2, 3\]"):
        load_scoring_pairs(scoring_args(sample_rows, "--scoring", "original", "--max_length", "600",
                                        "--max_prompt_length", "500"), tokenizer)
    with pytest.raises(SystemExit):  # argparse: exit 2 before any model loads
        scoring_args(sample_rows, "--scoring", "original", "--max_tokens", "1")


def test_analyze_dpo_model_records_the_scoring(tiny_model_dir, sample_rows, tmp_path):
    result = subprocess.run([sys.executable, "analysis/analyze_dpo_model.py", "--model_path", str(tiny_model_dir),
                             "--dataset_path", str(sample_rows), "--output_dir", str(tmp_path),
                             "--scoring", "original", "--max_tokens", "20", "--batch_size", "4"],
                            cwd=REPO_ROOT, env=script_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_parquet(tmp_path / "scores.parquet")
    assert table["scoring"].tolist() == ["original"] * len(SAMPLE_ROWS)
    assert (table["chosen_num_tokens"] == 19).all() and (table["rejected_num_tokens"] == 19).all()
    assert pd.read_csv(tmp_path / "scores.csv")["scoring"].tolist() == ["original"] * len(SAMPLE_ROWS)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {subset: values["scoring"] for subset, values in summary.items()} == {
        "all": "original", "original": "original", "flipped": "original",
        "first50": "original", "last50": "original"}


def test_training_dynamics_refuses_to_resume_with_another_scoring(tiny_model_dir, tmp_path):
    dynamics = load_script("analysis", "analyze_training_dynamics")
    flags = ["--base_model", str(tiny_model_dir), "--checkpoint_dir", str(tmp_path), "--output_dir",
             str(tmp_path / "out"), "--dataset_path", str(tmp_path / "rows.parquet")]
    (tmp_path / "out").mkdir()
    dynamics.check_settings(dynamics.parse_args(flags), "sft", tmp_path / "out", is_main=True)
    assert json.loads((tmp_path / "out" / "scoring_settings.json").read_text())["scoring"] == "response"
    with pytest.raises(UsageError, match="'scoring': \\('response', 'original'\\)"):
        dynamics.check_settings(dynamics.parse_args(flags + ["--scoring", "original"]), "sft",
                                tmp_path / "out", is_main=True)
    # settings saved without a scoring (not by this script) are other settings
    settings = tmp_path / "out" / "scoring_settings.json"
    settings.write_text(json.dumps({k: v for k, v in json.loads(settings.read_text()).items() if k != "scoring"}))
    with pytest.raises(UsageError, match="'scoring': \\(None, 'response'\\)"):
        dynamics.check_settings(dynamics.parse_args(flags), "sft", tmp_path / "out", is_main=True)


def test_paper_figure_refuses_to_mix_scorings(tmp_path):
    plot = load_script("visualization", "plot_with_wider_middle")
    paper = plot.result_tables.load_paper_values(PAPER_CSV)
    series = tmp_path / "series.csv"
    paper.assign(scoring=["original"] * (len(paper) - 1) + ["response"]).to_csv(series, index=False)
    command = [sys.executable, "visualization/plot_with_wider_middle.py", "--series_csv", str(series),
               "--output_stem", str(tmp_path / "fig"), "--dpi", "60"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=script_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert_mentions(result.stderr, "original, response", "--allow_mixed_scoring")
    assert not (tmp_path / "fig.png").exists()
    result = subprocess.run(command + ["--allow_mixed_scoring"], cwd=REPO_ROOT, env=script_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert r"\texttt{--scoring original+response}" in (tmp_path / "fig.tex").read_text()
    # the published values are the original scoring's; a results folder says what it holds
    assert plot.check_scorings(plot.input_scorings(plot.parse_args(["--paper"])), False) == "original"
    folder = tmp_path / "results" / "m" / "sft"
    folder.mkdir(parents=True)
    pd.DataFrame({"scoring": ["original"]}).to_csv(folder / "all.csv", index=False)
    (tmp_path / "results" / "m" / "dpo").mkdir()
    dpo_table = tmp_path / "results" / "m" / "dpo" / "all.csv"
    pd.DataFrame({"chosen_logp_mean": [0.0], "scoring": ["response"]}).to_csv(dpo_table, index=False)
    scorings = plot.input_scorings(plot.parse_args(["--results_dir", str(tmp_path / "results")]))
    assert scorings == {str(folder / "all.csv"): {"original"}, str(dpo_table): {"response"}}
    with pytest.raises(UsageError, match="--allow_mixed_scoring"):  # run_cli: exit 2
        plot.check_scorings(scorings, allow_mixed=False)
    pd.DataFrame({"chosen_logp_mean": [0.0]}).to_csv(dpo_table, index=False)  # not written by the analysis
    with pytest.raises(UsageError, match="no 'scoring' column"):  # run_cli: exit 2
        plot.input_scorings(plot.parse_args(["--results_dir", str(tmp_path / "results")]))
