"""Recipes: YAML presets, the global batch size, and the original run's learning-rate schedule."""

import math

import pytest
import torch

from fwdrev.cli import UsageError
from fwdrev.recipes import (RECIPES_DIR, accumulation_steps, load_recipe, pop_config_flag,
                            recipe_path, warmup_decay_factor)


def test_schedule_equals_deepspeeds_warmup_decay_lr_update_by_update():
    from deepspeed.runtime.lr_schedules import WarmupDecayLR

    lr, warmup, total = 5e-7, 20, 50
    ds_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    ds_sched = WarmupDecayLR(ds_opt, total_num_steps=total, warmup_min_lr=0.0, warmup_max_lr=lr,
                             warmup_num_steps=warmup)
    ours_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    ours = torch.optim.lr_scheduler.LambdaLR(ours_opt, lambda n: warmup_decay_factor(n, warmup, total))
    for update in range(1, total + 1):  # the lr each update runs at, as DeepSpeed's engine steps it
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
    assert recipe_path("original", "dpo") == RECIPES_DIR / "dpo" / "original.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 1.0e-5\nlerning_rate: 2\n")
    with pytest.raises(UsageError, match=r"bad.yaml: unknown setting\(s\) \['lerning_rate'\]"):
        load_recipe(bad, {"learning_rate"})
    with pytest.raises(UsageError, match="not found"):
        load_recipe(tmp_path / "missing.yaml", set())
