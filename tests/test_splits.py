"""Problem-level train/test split."""

import subprocess
import sys

import pandas as pd
import pytest
from helpers import REPO_ROOT

from fwdrev.splits import split_by_group


def test_split_keeps_problems_whole_and_is_seeded():
    frame = pd.read_parquet(REPO_ROOT / "r1k.parquet")
    train, test = split_by_group(frame, test_groups=50, seed=0, train_groups=100)
    assert len(test) == 100 and len(train) == 200
    assert set(train["problem_id"]).isdisjoint(test["problem_id"])
    assert test["sample_type"].value_counts().to_dict() == {"original": 50, "flipped": 50}
    again, _ = split_by_group(frame, test_groups=50, seed=0, train_groups=100)
    assert again.equals(train)
    other, _ = split_by_group(frame, test_groups=50, seed=1, train_groups=100)
    assert set(other["problem_id"]) != set(train["problem_id"])


def test_real_data_groups_by_forward_question(shared_sample_path):
    frame = pd.read_parquet(shared_sample_path)
    train, test = split_by_group(frame, test_groups=10, seed=0)
    assert len(test) == 20 and len(train) == 80
    assert set(train["question"]).isdisjoint(test["question"])


def test_bad_group_count():
    with pytest.raises(ValueError, match="test_groups"):
        split_by_group(pd.DataFrame({"problem_id": [1, 1]}), test_groups=1)


def test_cli_writes_both_files(tmp_path):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "prepare_data.py"), "--input",
                             str(REPO_ROOT / "data-100samples.parquet"), "--output_dir", str(tmp_path),
                             "--test_groups", "10"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len(pd.read_parquet(tmp_path / "test.parquet")) == 20
    assert len(pd.read_parquet(tmp_path / "train.parquet")) == 80


@pytest.mark.parametrize("problem", ["missing_file", "too_many_test_groups"])
def test_cli_bad_input_exits_2_without_traceback(tmp_path, problem):
    data = tmp_path / "missing.parquet" if problem == "missing_file" else REPO_ROOT / "data-100samples.parquet"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "prepare_data.py"), "--input", str(data),
                             "--output_dir", str(tmp_path / "out"), "--test_groups", "1000"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(data.name) in result.stderr
    assert not (tmp_path / "out").exists()
