"""The README's GPU recipe, in order, on the tiny model: split -> SFT -> DPO -> complete analysis."""

import json
import re
import sys

import pandas as pd
import pytest
from helpers import REPO_ROOT, run_command, script_env

from fwdrev.devtools.synthetic import generate_preference_rows

TRAINING_LAUNCHERS = ("scripts/sft.sh", "dpo/7b-train_multiple_base_models.sh")
ANALYSIS_LAUNCHERS = ("analysis/run_complete_analysis.sh", "analysis/run_dpo_analysis.sh",
                      "analysis/run_training_dynamics.sh")


def default_data_paths(script: str) -> list[str]:
    return re.findall(r'^(?:DATA_PATH|DATASET_PATH)="\$\{\w+:-([^}]*)\}"', (REPO_ROOT / script).read_text(), re.M)


def test_launchers_train_on_the_train_split_and_score_the_test_split():
    for script in TRAINING_LAUNCHERS:
        assert default_data_paths(script) == ["./data/split/train.parquet"], script
    for script in ANALYSIS_LAUNCHERS:
        assert default_data_paths(script) == ["./data/split/test.parquet"], script
    readme = (REPO_ROOT / "README.md").read_text()
    sed_patterns = re.findall(r"sed -i 's#([^#]+)#", (REPO_ROOT / "docs" / "running.md").read_text())
    for script in TRAINING_LAUNCHERS + ANALYSIS_LAUNCHERS:  # the docs' sed lines cover every default
        for path in re.findall(r"\./data/[\w./-]+", (REPO_ROOT / script).read_text()):
            assert any(path.startswith(pattern) for pattern in sed_patterns), (script, path)
    recipe = readme[readme.index("## Running the study on GPUs"):]
    recipe = recipe[: recipe.index("\n## ", 1)]
    assert "--train_file_path ./data/split/train.parquet" in recipe
    assert "DATASET_PATH=./data/split/test.parquet" in recipe
    assert "DPO_BASE_MODEL" not in recipe  # the DPO adapters' own recorded base is the default


def run(command, env, timeout=600):
    return run_command(command, env, cwd=REPO_ROOT, timeout=timeout, check=True)


@pytest.mark.slow
def test_gpu_recipe_in_order_trains_on_train_and_scores_held_out_problems(tmp_path, tiny_model_dir):
    data, outputs = tmp_path / "data", tmp_path / "outputs"
    data.mkdir()
    generate_preference_rows(24, seed=1).to_parquet(data / "your_dataset.parquet")  # 12 problems
    tiny = dict(NUM_PROCS=1, DS_CONFIG="")
    small = "--max_length 256 --report_to none"
    # 0. split
    run([sys.executable, "scripts/prepare_data.py", "--input", str(data / "your_dataset.parquet"),
         "--output_dir", str(data / "split"), "--test_groups", "4"], script_env())
    # 1. SFT, s1's recipe (full fine-tuning)
    run(["bash", "scripts/sft.sh"], script_env(
        **tiny, OUTPUT_ROOT=f"{outputs}/", MODEL_PATH=tiny_model_dir, DATA_PATH=data / "split" / "train.parquet",
        TRAIN_SETS="m", EXTRA_ARGS=f"{small} --num_train_epochs 1 --per_device_train_batch_size 8"))
    # 2. LoRA-DPO from the SFT model
    run(["bash", "dpo/7b-train_multiple_base_models.sh"], script_env(
        **tiny, OUTPUT_ROOT=f"{outputs}/", MODEL_PATHS=outputs / "sft_m", MODEL_NAMES="m",
        DATA_PATH=data / "split" / "train.parquet",
        EXTRA_ARGS=f"{small} --max_steps 2 --save_steps 1 --warmup_steps 0 --gradient_accumulation_steps 1 "
                   "--eval_size 0 --lora_r 4 --lora_alpha 8 --per_device_train_batch_size 4"))
    # 3. the complete analysis on the held-out split (DPO adapters on their recorded base)
    result = run(["bash", "analysis/run_complete_analysis.sh"], script_env(
        **tiny, MAX_LENGTH=256, BASE_MODEL=tiny_model_dir, SFT_DIR=outputs / "sft_m", DPO_DIR=outputs / "dpo_m",
        DATASET_PATH=data / "split" / "test.parquet", TRAIN_SET="m", OUTPUT_ROOT=outputs / "analysis",
        MAX_TOKENS=8))
    assert "were in the training data" not in result.stderr and "cannot check" not in result.stdout

    test_problems = {f"problem_id:{i}" for i in pd.read_parquet(data / "split" / "test.parquet")["problem_id"]}
    for run_dir in ("sft_m", "dpo_m"):
        record = json.loads((outputs / run_dir / "run_config.json").read_text())["training_data"]
        assert record["file_resolved"] == str(data / "split" / "train.parquet")
        trained_ids = {k for k in record["train_problem_keys"] if k.startswith("problem_id:")}
        assert len(trained_ids) == 8 and not trained_ids & test_problems
    adapter_config = json.loads((outputs / "dpo_m" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(outputs / "sft_m")
    scores = pd.read_parquet(outputs / "analysis" / "dpo_model" / "scores.parquet")
    assert len(scores) == 8 and "trained_on" not in scores.columns
    sft = pd.read_parquet(outputs / "analysis" / "training_dynamics" / "m" / "sft" / "all.parquet")
    assert sft.groupby("checkpoint").size().to_dict() == {"base": 8, "1": 8}
    dpo = pd.read_parquet(outputs / "analysis" / "training_dynamics" / "m" / "dpo" / "all.parquet")
    assert sorted(dpo["checkpoint"].unique()) == ["checkpoint-1", "checkpoint-2"]
