"""--score_tokens K: only each response's first K tokens are scored; first-K values are exact."""

import argparse
import json
import math
import os
import subprocess
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import REPO_ROOT, load_script, script_env

from fwdrev.checkpoints import load_for_scoring
from fwdrev.data import load_preference_data
from fwdrev.devtools.synthetic import generate_preference_rows
from fwdrev.logprobs import chunk_size_for_budget
from fwdrev.scoring import score_pairs, scoring_chunk_size
from fwdrev.tokenization import encode_examples

analyze_dpo_model = load_script("analysis", "analyze_dpo_model")
FIRST_K = 6
WHOLE_RESPONSE_LOGPS = [f"{side}_{name}" for side in ("chosen", "rejected")
                        for name in ("logp_sum", "logp_mean", "logp_max")]


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "six.parquet"
    generate_preference_rows(6, seed=7).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def scored(tiny_model_dir, data_path):
    """(pairs, full scores, first-K scores) on the tiny model."""
    model, tokenizer = load_for_scoring(str(tiny_model_dir))
    data = load_preference_data(data_path, tokenizer=tokenizer)
    pairs = encode_examples(tokenizer, data.examples, max_length=512, max_prompt_length=256)
    full = score_pairs(model, pairs, tokenizer.pad_token_id, batch_size=2, first_k=FIRST_K, chunk_size=5)
    first = score_pairs(model, pairs, tokenizer.pad_token_id, batch_size=2, first_k=FIRST_K, chunk_size=5,
                        score_tokens=FIRST_K)
    return pairs, full, first


def test_first_k_columns_equal_full_scoring(scored):
    pairs, full, first = scored
    assert min(len(p.chosen_ids) for p in pairs) > FIRST_K  # every response is really cut
    first_k_columns = [c for c in full.columns if c.endswith("_first_k")]
    assert len(first_k_columns) == 11  # 4 stats x 2 sides + 3 deltas
    for column in first_k_columns:
        np.testing.assert_allclose(first[column], full[column], rtol=1e-6, atol=1e-6)


def test_whole_response_columns_are_nan_and_marked(scored):
    pairs, full, first = scored
    assert first[WHOLE_RESPONSE_LOGPS].isna().all().all()
    assert first[["delta_logp_sum", "delta_logp_mean", "delta_logp_max"]].isna().all().all()
    assert list(first["chosen_num_tokens"]) == [len(p.chosen_ids) for p in pairs] == list(full["chosen_num_tokens"])
    assert list(first["rejected_num_tokens"]) == list(full["rejected_num_tokens"])
    assert (first["score_tokens"] == FIRST_K).all() and "score_tokens" not in full


def test_analysis_cli_marks_the_summary(tiny_model_dir, data_path, tmp_path):
    analyze_dpo_model.main(["--model_path", str(tiny_model_dir), "--dataset_path", str(data_path),
                            "--output_dir", str(tmp_path), "--max_tokens", str(FIRST_K),
                            "--score_tokens", str(FIRST_K), "--group_field", "question"])
    table = pd.read_parquet(tmp_path / "scores.parquet")
    assert (table["score_tokens"] == FIRST_K).all() and table["chosen_logp_sum"].isna().all()
    summary = json.loads((tmp_path / "summary.json").read_text())["all"]
    assert summary["score_tokens"] == FIRST_K and "score_tokens" not in summary["means"]
    assert summary["pref_acc_first_k"] == pytest.approx((table["delta_logp_mean_first_k"] > 0).mean())
    assert summary["pref_acc_full"] is None or math.isnan(summary["pref_acc_full"])


def test_score_tokens_below_max_tokens_exits_with_code_2():
    with pytest.raises(SystemExit) as stop:
        analyze_dpo_model.parse_args(["--model_path", "m", "--dataset_path", "d", "--output_dir", "o",
                                      "--max_tokens", "1000", "--score_tokens", "999"])
    assert stop.value.code == 2


@pytest.mark.parametrize("launcher, env", [
    ("analysis/run_dpo_analysis.sh", {"MODEL_PATH": "{d}", "DATASET_PATH": "{d}"}),
    ("analysis/run_training_dynamics.sh", {"BASE_MODEL": "{d}", "CHECKPOINT_DIR": "{d}", "DATASET_PATH": "{d}"})])
def test_launchers_pass_score_tokens_only_when_set(launcher, env, tmp_path):
    (tmp_path / "bin").mkdir()
    fake_torchrun = tmp_path / "bin" / "torchrun"
    fake_torchrun.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/args\n')
    fake_torchrun.chmod(0o755)
    env = {key: value.format(d=tmp_path) for key, value in env.items()}
    env["PATH"] = f"{tmp_path / 'bin'}:{os.environ['PATH']}"
    for score_tokens in ("", "1000"):
        (tmp_path / "args").unlink(missing_ok=True)
        result = subprocess.run(["bash", launcher], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                                env=script_env(**env, SCORE_TOKENS=score_tokens))
        assert result.returncode == 0, result.stderr[-2000:]
        args = (tmp_path / "args").read_text()
        assert ("--score_tokens 1000" in args) == bool(score_tokens) and args.count("--score_tokens") <= 1


def test_chunk_size_for_budget():
    # 152,064-token vocabulary: one token's logits and log-softmax are 2 x 4 x 152,064 bytes
    assert chunk_size_for_budget(32, 152064) == 27
    assert chunk_size_for_budget(1024, 152064) == 882
    assert chunk_size_for_budget(0.001, 152064) == 1  # never below one token
    model = torch.nn.Linear(1, 1)
    model.config = SimpleNamespace(vocab_size=1024)
    args = argparse.Namespace(logprob_chunk_mb=None, logprob_chunk_size=100)
    assert scoring_chunk_size(args, model) == 100
    args.logprob_chunk_mb = 1.0
    assert scoring_chunk_size(args, model) == 128  # 2**20 / (1024 x 8)
    args.logprob_chunk_mb = args.logprob_chunk_size = None  # the CPU default: a 64 MiB budget
    assert scoring_chunk_size(args, model) == 64 * 128
    model.to("meta")  # any device but the CPU: the default chunk size
    assert scoring_chunk_size(args, model) == 1024
