"""Optimizer state of the newest checkpoint only (fwdrev.checkpoint_pruning): older checkpoints keep
their weights, lose optimizer and scheduler state, and cannot be resumed from."""

from pathlib import Path

import pytest
from test_dpo import run_dpo


def fake_checkpoint(output_dir: Path, step: int) -> Path:
    folder = output_dir / f"checkpoint-{step}"
    (folder / f"global_step{step}").mkdir(parents=True)
    for name in ["optimizer.pt", "scheduler.pt", "adapter_model.safetensors", "trainer_state.json",
                 "rng_state_0.pth", f"global_step{step}/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
                 f"global_step{step}/zero_pp_rank_0_mp_rank_00_model_states.pt"]:
        (folder / name).write_bytes(b"x")
    return folder


def test_pruning_keeps_weights_everywhere_and_optimizer_state_in_the_newest(tmp_path):
    from types import SimpleNamespace

    from fwdrev.checkpoint_pruning import PRUNED_MARKER, OptimizerStatePruning

    for step in (10, 20, 30):
        fake_checkpoint(tmp_path, step)
    (tmp_path / "checkpoint-best").mkdir()  # not a checkpoint-<step> folder: left alone
    args = SimpleNamespace(output_dir=str(tmp_path))
    OptimizerStatePruning().on_save(args, SimpleNamespace(global_step=30, is_local_process_zero=False), None)
    assert (tmp_path / "checkpoint-10" / "optimizer.pt").is_file()  # only a node's first process prunes
    OptimizerStatePruning().on_save(args, SimpleNamespace(global_step=30, is_local_process_zero=True), None)
    for step in (10, 20):
        kept = sorted(str(p.relative_to(tmp_path / f"checkpoint-{step}"))
                      for p in (tmp_path / f"checkpoint-{step}").rglob("*") if p.is_file())
        assert kept == [PRUNED_MARKER, "adapter_model.safetensors",
                        f"global_step{step}/zero_pp_rank_0_mp_rank_00_model_states.pt",
                        "rng_state_0.pth", "trainer_state.json"]
    newest = tmp_path / "checkpoint-30"
    assert (newest / "optimizer.pt").is_file() and (newest / "scheduler.pt").is_file()
    assert not (newest / PRUNED_MARKER).exists()
    assert len(list(newest.glob("global_step30/*optim_states.pt"))) == 1


def test_resuming_from_a_pruned_checkpoint_stops(tmp_path):
    from fwdrev.checkpoint_pruning import prune_optimizer_state
    from fwdrev.errors import UsageError
    from fwdrev.training import resolve_resume_checkpoint

    prune_optimizer_state(fake_checkpoint(tmp_path, 2))
    fake_checkpoint(tmp_path, 4)
    assert resolve_resume_checkpoint("latest", str(tmp_path)) == str(tmp_path / "checkpoint-4")
    assert resolve_resume_checkpoint(str(tmp_path / "checkpoint-4"), str(tmp_path)) == str(tmp_path / "checkpoint-4")
    with pytest.raises(UsageError, match="checkpoint-2 has no optimizer state.*checkpoint-4"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-2"), str(tmp_path))


def test_dpo_run_prunes_older_checkpoints_which_stay_loadable(tiny_model_dir, tmp_path):
    import torch

    from fwdrev.checkpoints import load_for_scoring

    run_dpo(tiny_model_dir, tmp_path, "--max_steps", "4", "--save_steps", "2", "--eval_strategy", "no")
    older, newest = tmp_path / "checkpoint-2", tmp_path / "checkpoint-4"
    assert not (older / "optimizer.pt").exists() and not (older / "scheduler.pt").exists()
    assert (newest / "optimizer.pt").is_file() and (newest / "scheduler.pt").is_file()
    model, _ = load_for_scoring(str(older), str(tiny_model_dir), torch.float32, torch.device("cpu"))
    lora = {name: p for name, p in model.named_parameters() if "lora_B" in name}
    assert lora and any(p.abs().sum() > 0 for p in lora.values())  # the trained adapter, not a fresh one
