"""Recipes: YAML presets, the global batch size, and the original run's learning-rate schedule."""

import math
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT

from fwdrev.errors import UsageError
from fwdrev.recipes import (
    CPU_DEEPSPEED_CONFIG,
    accumulation_steps,
    cpu_recipe,
    load_recipe,
    pop_config_flag,
    recipe_path,
    warmup_decay_factor,
)

RECIPES_DIR = REPO_ROOT / "recipes"


def test_schedule_equals_deepspeeds_warmup_decay_lr_update_by_update():
    from deepspeed.runtime.lr_schedules import WarmupDecayLR

    lr, warmup, total = 5e-7, 20, 50
    ds_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    ds_sched = WarmupDecayLR(ds_opt, total_num_steps=total, warmup_min_lr=0.0, warmup_max_lr=lr,
                             warmup_num_steps=warmup)
    ours_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    ours = torch.optim.lr_scheduler.LambdaLR(ours_opt, lambda n: warmup_decay_factor(n, warmup, total))
    for _ in range(1, total + 1):  # the lr each update runs at, as DeepSpeed's engine steps it
        assert ours_opt.param_groups[0]["lr"] == pytest.approx(ds_opt.param_groups[0]["lr"], abs=1e-15)
        ds_opt.step(), ours_opt.step()
        ds_sched.step(), ours.step()


def test_schedule_at_steps_1_20_50_equals_the_formula():
    # update k runs at iteration k - 2 of DeepSpeed's WarmupDecayLR: log(i + 1) / log(20), then (50 - i) / 30
    assert warmup_decay_factor(0, 20, 50) == 0.0  # update 1
    assert warmup_decay_factor(19, 20, 50) == pytest.approx(math.log(19) / math.log(20))  # update 20
    assert warmup_decay_factor(20, 20, 50) == pytest.approx(1.0)  # update 21: warm-up done
    assert warmup_decay_factor(49, 20, 50) == pytest.approx(2 / 30)  # update 50


@pytest.mark.parametrize("world, per_device, expected", [(1, 1, 16), (2, 1, 8), (4, 1, 4), (4, 2, 2)])
def test_accumulation_steps_keep_the_global_batch(world, per_device, expected):
    assert accumulation_steps(16, world, per_device) == expected
    assert expected * world * per_device == 16


def test_global_batch_that_does_not_divide_is_an_error():
    with pytest.raises(UsageError, match="not a multiple"):
        accumulation_steps(16, 3, 1)


def test_config_flag_is_taken_out_of_argv():
    assert pop_config_flag(["--a", "1", "--config", "original", "--b"]) == ("original", ["--a", "1", "--b"])
    assert pop_config_flag(["--config=x.yaml"]) == ("x.yaml", [])
    assert pop_config_flag(["--a"]) == (None, ["--a"])
    with pytest.raises(UsageError):
        pop_config_flag(["--config"])


def test_recipes_name_only_known_flags_and_bad_ones_are_named(tmp_path):
    assert recipe_path("original", "dpo", RECIPES_DIR) == RECIPES_DIR / "dpo" / "original.yaml"
    with pytest.raises(UsageError, match="recipes folder"):
        recipe_path("original", "dpo", None)
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 1.0e-5\nlerning_rate: 2\n")
    with pytest.raises(UsageError, match=r"bad\.yaml.*\['lerning_rate'\]"):
        load_recipe(bad, {"learning_rate"})
    with pytest.raises(UsageError, match="not found"):
        load_recipe(tmp_path / "missing.yaml", set())


def _parse_dpo(argv, monkeypatch, world_size=1):
    from fwdrev.data_arguments import DataArguments
    from fwdrev.dpo_trainer import DPOArguments
    from fwdrev.model_arguments import ModelArguments
    from fwdrev.training import parse_arguments

    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    base = ["--model_name", "m", "--train_file_path", "d.parquet", "--output_dir", "o"]
    return parse_arguments((ModelArguments, DataArguments, DPOArguments), {}, base + argv,
                           stage="dpo", default_recipe="lora", recipes_dir=RECIPES_DIR)


def test_global_batch_sets_the_accumulation_steps(monkeypatch):
    # (2+ processes: accumulation_steps above; TrainingArguments needs a real process group)
    _, _, args = _parse_dpo(["--config", "original"], monkeypatch)
    assert args.gradient_accumulation_steps == 16
    _, _, args = _parse_dpo(["--config", "original", "--per_device_train_batch_size", "4"], monkeypatch)
    assert args.gradient_accumulation_steps == 4


def test_presets_resolve_to_the_documented_values_and_flags_override_them(monkeypatch):
    model, data, args = _parse_dpo(["--config", "original"], monkeypatch)
    assert (model.use_lora, args.precompute_ref_log_probs, args.learning_rate, args.lr_schedule,
            args.warmup_steps, args.max_steps, args.save_steps, args.weight_decay, data.eval_size,
            args.seed) == (False, False, 5e-7, "deepspeed_warmup_decay", 20, 50, 7, 0.05, 50, 42)
    model, _, args = _parse_dpo(["--learning_rate", "1e-6"], monkeypatch)  # default recipe: lora
    assert Path(args.config) == RECIPES_DIR / "dpo" / "lora.yaml"
    assert (model.use_lora, model.lora_r, model.lora_alpha, args.learning_rate) == (True, 256, 512, 1e-6)


def test_every_shipped_recipe_loads_with_its_script(monkeypatch):
    from fwdrev.model_arguments import ModelArguments
    from fwdrev.sft import SFTArguments, SFTDataArguments
    from fwdrev.training import parse_arguments

    for path in sorted((RECIPES_DIR / "dpo").glob("*.yaml")):
        _parse_dpo(["--config", str(path)], monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "1")
    for path in sorted((RECIPES_DIR / "sft").glob("*.yaml")):
        parse_arguments((ModelArguments, SFTDataArguments, SFTArguments), {},
                        ["--model_name", "m", "--train_file_path", "d", "--output_dir", "o",
                         "--config", str(path)], stage="sft", recipes_dir=RECIPES_DIR)


@pytest.mark.slow
def test_original_preset_run_keeps_seven_checkpoints_and_follows_its_schedule(tiny_model_dir, tmp_path):
    import json
    import subprocess
    import sys

    import pandas as pd
    from helpers import REPO_ROOT, script_env

    output_dir = tmp_path / "dpo_original"
    command = [sys.executable, str(REPO_ROOT / "dpo" / "combined_dpo.py"), "--config", "original",
               "--model_name", str(tiny_model_dir), "--train_file_path",
               str(REPO_ROOT / "data-100samples.parquet"), "--output_dir", str(output_dir),
               "--global_batch_size", "1", "--max_length", "96", "--max_prompt_length", "48",
               "--eval_size", "0", "--report_to", "none"]
    result = subprocess.run(command, capture_output=True, text=True, env=script_env(), timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    config = json.loads((output_dir / "run_config.json").read_text())
    model_args, args = config["ModelArguments"], config["DPOArguments"]
    assert model_args["use_lora"] is False and args["precompute_ref_log_probs"] is False
    assert (args["learning_rate"], args["lr_schedule"], args["max_steps"], args["save_steps"]) == \
        (5e-7, "deepspeed_warmup_decay", 50, 7)
    steps = sorted(int(p.name.split("-")[1]) for p in output_dir.glob("checkpoint-*"))
    assert steps == [14, 21, 28, 35, 42, 49, 50]  # every 7 steps and the last, newest 7 kept
    # metrics.csv logs, at step k, the rate update k ran at
    logged = pd.read_csv(output_dir / "metrics.csv").dropna(subset=["learning_rate"])
    rate_of_update = dict(zip(logged["step"], logged["learning_rate"]))
    assert rate_of_update[1] == rate_of_update[2] == 0.0
    assert rate_of_update[20] == pytest.approx(5e-7 * math.log(19) / math.log(20), rel=1e-6)
    assert rate_of_update[50] == pytest.approx(5e-7 * 2 / 30, rel=1e-6)


def test_accumulation_on_the_command_line_overrides_the_recipes_global_batch(monkeypatch):
    _, _, args = _parse_dpo(["--config", "original", "--gradient_accumulation_steps", "2"], monkeypatch)
    assert args.gradient_accumulation_steps == 2 and args.global_batch_size is None
    _, _, args = _parse_dpo(["--config", "original", "--gradient-accumulation-steps=3"], monkeypatch)
    assert args.gradient_accumulation_steps == 3


def test_global_batch_and_accumulation_both_given_is_an_error(monkeypatch, tmp_path):
    """Never silently drop one of them (the global batch used to win without a word)."""
    with pytest.raises(UsageError, match="--global_batch_size and --gradient_accumulation_steps"):
        _parse_dpo(["--global_batch_size", "16", "--gradient_accumulation_steps", "2"], monkeypatch)
    both = tmp_path / "both.yaml"
    both.write_text("global_batch_size: 16\ngradient_accumulation_steps: 2\n")
    with pytest.raises(UsageError, match=r"both\.yaml.*global_batch_size and gradient_accumulation_steps"):
        _parse_dpo(["--config", str(both)], monkeypatch)
    accumulation = tmp_path / "accumulation.yaml"
    accumulation.write_text("gradient_accumulation_steps: 2\nper_device_train_batch_size: 1\n")
    _, _, args = _parse_dpo(["--config", str(accumulation), "--global_batch_size", "8"], monkeypatch)  # CLI wins
    assert (args.global_batch_size, args.gradient_accumulation_steps) == (8, 8)


GPU_SETTINGS = ("deepspeed", "bf16", "use_flash_attention", "gradient_checkpointing")


@pytest.mark.parametrize("stage, name, config", [
    ("dpo", "lora", "ds_config_zero3.json"), ("dpo", "original", "ds_config_zero3_10k.json"),
    ("sft", "s1", "ds_config_zero3.json"), ("sft", "lora", "ds_config_zero3.json")])
def test_a_recipe_names_its_deepspeed_config_and_precision(stage, name, config):
    """What the launchers used to add by recipe name is in the recipe (issue 20 item 10)."""
    import yaml

    recipe = yaml.safe_load((RECIPES_DIR / stage / f"{name}.yaml").read_text())
    assert recipe["deepspeed"] == f"configs/{config}" and (REPO_ROOT / recipe["deepspeed"]).is_file()
    assert recipe["bf16"] is recipe["use_flash_attention"] is recipe["gradient_checkpointing"] is True
    assert recipe["logging_steps"] == 1 and recipe["report_to"] == ["tensorboard"]


def test_without_cuda_the_recipes_gpu_settings_are_swapped_in_one_logged_line(monkeypatch, caplog):
    if torch.cuda.is_available():
        pytest.skip("the CPU equivalents apply on machines without CUDA")
    with caplog.at_level("WARNING", logger="fwdrev.training"):
        model, _, args = _parse_dpo(["--config", "original"], monkeypatch)
    assert (args.deepspeed, args.bf16, model.use_flash_attention, args.gradient_checkpointing) == \
        (None, False, False, False)  # one process: no DeepSpeed
    assert args.logging_steps == 1 and args.report_to == ["tensorboard"] and not args.remove_unused_columns
    (line,) = [record.getMessage() for record in caplog.records if "no CUDA" in record.getMessage()]
    assert "bf16, use_flash_attention, gradient_checkpointing off" in line and "no DeepSpeed" in line
    caplog.clear()
    with caplog.at_level("WARNING", logger="fwdrev.training"):  # a flag on the command line wins
        model, _, args = _parse_dpo(["--config", "original", "--gradient_checkpointing", "--bf16"], monkeypatch)
    assert (args.bf16, model.use_flash_attention, args.gradient_checkpointing) == (True, False, True)
    (line,) = [record.getMessage() for record in caplog.records if "no CUDA" in record.getMessage()]
    assert "bf16" not in line and "gradient_checkpointing" not in line and "use_flash_attention" in line


def test_cpu_equivalents_of_the_deepspeed_config():
    recipe = {"deepspeed": "/x/configs/ds_config_zero3_10k.json", "bf16": True, "learning_rate": 1e-5}
    settled, line = cpu_recipe(recipe, [], world_size=2, checkout=REPO_ROOT)
    assert settled == {"deepspeed": str(REPO_ROOT / CPU_DEEPSPEED_CONFIG), "learning_rate": 1e-5}
    assert line.count("no CUDA") == 1 and "ds_config_zero3_cpu.json" in line
    assert cpu_recipe(recipe, ["--deepspeed", ""], world_size=2, checkout=REPO_ROOT)[0]["deepspeed"] == \
        recipe["deepspeed"]  # the command line's value (here: none) is what parses, not the recipe's
    assert cpu_recipe(recipe, [], world_size=1, checkout=REPO_ROOT)[0]["deepspeed"] is None
    assert cpu_recipe({"learning_rate": 1e-5}, [], world_size=2, checkout=REPO_ROOT) == ({"learning_rate": 1e-5}, None)


def test_a_recipes_deepspeed_path_is_found_from_any_working_directory(monkeypatch, tmp_path):
    from fwdrev.recipes import resolve_recipe_paths

    monkeypatch.chdir(tmp_path)
    resolved = resolve_recipe_paths({"deepspeed": "configs/ds_config_zero3.json"}, REPO_ROOT)
    assert resolved["deepspeed"] == str(REPO_ROOT / "configs" / "ds_config_zero3.json")
    assert resolve_recipe_paths({"deepspeed": "mine.json"}, REPO_ROOT) == {"deepspeed": "mine.json"}


def test_max_length_has_one_default():
    """20,000 tokens is written once (fwdrev.data_arguments); recipes and launchers read it."""
    import yaml

    from fwdrev.data_arguments import DEFAULT_MAX_LENGTH, DataArguments

    assert DataArguments(train_file_path="d").max_length == DEFAULT_MAX_LENGTH == 20000
    assert [p.name for p in RECIPES_DIR.rglob("*.yaml") if "max_length" in yaml.safe_load(p.read_text())] == []
    for launcher in ("analysis/run_dpo_analysis.sh", "analysis/run_training_dynamics.sh", "scripts/gpu_check.sh"):
        assert "20000" not in (REPO_ROOT / launcher).read_text(), launcher

