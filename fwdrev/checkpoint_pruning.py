"""Keep the optimizer state of the newest checkpoint only.

Every ``checkpoint-<step>`` folder is scored by the analysis, which needs its weights (adapter or
model) only. The optimizer and scheduler state, needed to resume, is twice the trainable
parameters in fp32 (plus DeepSpeed's fp32 master copy): for full fine-tuning of a 7B model about
85 GB per checkpoint. After each save, older checkpoints lose those files and get a marker, so a
resume from one of them stops with a clear error instead of silently restarting Adam from zero.
"""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from fwdrev.errors import UsageError
from fwdrev.layout import step_checkpoints

PRUNED_MARKER = "OPTIMIZER_STATE_PRUNED"
# The Trainer's optimizer/scheduler/scaler files, and DeepSpeed's per-rank optimizer partitions.
STATE_PATTERNS = ("optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt", "global_step*/*optim_states.pt")


def prune_optimizer_state(checkpoint: Path) -> list[Path]:
    """Delete the optimizer/scheduler state files of one checkpoint folder; mark it. Returns them."""
    removed = [path for pattern in STATE_PATTERNS for path in sorted(checkpoint.glob(pattern))]
    if not removed:
        return []
    (checkpoint / PRUNED_MARKER).write_text(
        "The optimizer and scheduler state of this checkpoint was deleted after a newer checkpoint "
        "was saved (fwdrev/checkpoint_pruning.py). Its weights are complete (analysis, inference); "
        "training can only resume from the newest checkpoint.\n")
    for path in removed:
        path.unlink(missing_ok=True)  # another node's process may share this folder
    return removed


def older_checkpoints(output_dir: str | Path, newest_step: int) -> list[Path]:
    return [path for path in step_checkpoints(output_dir) if int(path.name.split("-")[1]) < newest_step]


class OptimizerStatePruning(TrainerCallback):
    """After each save, delete the optimizer/scheduler state of every older checkpoint.

    Runs on the first process of each node (DeepSpeed writes per-rank optimizer files into the
    node's own output folder when it is not shared), after the new checkpoint is complete.
    """

    def on_save(self, args, state, control, **kwargs):
        if state.is_local_process_zero:
            for checkpoint in older_checkpoints(args.output_dir, state.global_step):
                prune_optimizer_state(checkpoint)


def check_resumable(checkpoint: str | None) -> str | None:
    """The checkpoint to resume from, unless its optimizer state was pruned (then stop)."""
    if checkpoint and (Path(checkpoint) / PRUNED_MARKER).is_file():
        newest = older_checkpoints(Path(checkpoint).parent, 10**18)
        raise UsageError(f"{checkpoint} has no optimizer state any more (only the newest checkpoint "
                         f"keeps it): resume from {newest[-1] if newest else 'the newest checkpoint'} "
                         "(--resume_from_checkpoint latest) or start a new run")
    return checkpoint
