"""Guards on a training run's OUTPUT_DIR: whose run it holds, and whether that run is finished."""

from __future__ import annotations

import logging
from pathlib import Path

from fwdrev.errors import UsageError
from fwdrev.layout import EPOCH_CHECKPOINTS, MERGED, step_checkpoints

logger = logging.getLogger(__name__)

# Written once training has run (a run_config.json or data_report.json alone is not: those are
# rewritten by a rerun before any step, and a run that failed before training loses nothing).
TRAINED_OUTPUTS = ("adapter_config.json", "config.json", "trainer_state.json", EPOCH_CHECKPOINTS, MERGED)


def trained_outputs(output_dir: str | Path) -> list[str]:
    """Names in ``output_dir`` that a run leaves once it has trained: checkpoint-<step>/, models."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    checkpoints = [p.name for p in step_checkpoints(folder)]
    return checkpoints + [name for name in TRAINED_OUTPUTS if (folder / name).exists()]


def check_output_dir(output_dir: str, resume_from_checkpoint: str | None, overwrite: bool) -> None:
    """Refuse (exit 2) to train from scratch over another run's checkpoints or final model.

    Without this a new run silently overwrites checkpoint-<step>/ and the final model of an
    earlier one (and may reuse its reference log-probs). Resuming, or --overwrite_output_dir, is
    the user saying the folder's run is this one.
    """
    if overwrite or resume_from_checkpoint:
        return
    found = trained_outputs(output_dir)
    if found:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise UsageError(f"--output_dir {output_dir} already holds a trained run ({shown}). Continue it "
                         "with --resume_from_checkpoint latest, choose a new --output_dir, or pass "
                         "--overwrite_output_dir to train over it from scratch")


def target_steps(trainer) -> int:
    """The optimizer steps this run trains in total (--max_steps, else epochs x steps per epoch)."""
    if trainer.args.max_steps > 0:
        return trainer.args.max_steps
    return trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1]


def run_is_complete(trainer, checkpoint: str | None) -> bool:
    """True (and says so) when ``checkpoint`` already reached the steps this run asks for.

    The Trainer would otherwise run one more step past --max_steps and overwrite the final model.
    """
    if not checkpoint:
        return False
    state_file = Path(checkpoint) / "trainer_state.json"
    if not state_file.is_file():
        return False  # the Trainer reports an unusable checkpoint itself
    from transformers import TrainerState

    done, wanted = TrainerState.load_from_json(str(state_file)).global_step, target_steps(trainer)
    if done < wanted:
        return False
    logger.info("run already complete: %s is at step %d of the %d asked for; nothing to train "
                   "(raise --max_steps or --num_train_epochs to train further)", checkpoint, done, wanted)
    return True
