"""Supervised fine-tuning on the preferred responses: arguments, batches, loss, epoch checkpoints.

Only the assistant part (think + answer) carries a loss: prompt tokens are labelled
``IGNORE_INDEX``, as in s1's completion-only training. The loss goes through the chunked
``sequence_logprobs``, which never materializes the full-vocabulary logits of long sequences.
After every epoch the model is saved to ``OUTPUT_DIR/checkpoints/<epoch>``, the layout that the
training-dynamics analysis reads (``fwdrev.checkpoints``).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainerCallback

from fwdrev.autocast import AutocastLossMixin
from fwdrev.data_arguments import DataArguments
from fwdrev.layout import EPOCH_CHECKPOINTS, epoch_checkpoint_dir
from fwdrev.logprobs import DEFAULT_CHUNK_SIZE, sequence_logprobs
from fwdrev.recipes import RecipeScheduleMixin, RecipeTrainingArguments
from fwdrev.run_identity import write_record
from fwdrev.tokenization import TokenizedPair, pad_sequences, prompt_response_sequence

logger = logging.getLogger(__name__)


@dataclass
class SFTDataArguments(DataArguments):
    # Same flag as DPO's --chosen_field, also spelled --response_field: SFT has one response.
    chosen_field: str = field(
        default="text", metadata={"aliases": ["--response_field"],
                                  "help": "Response column to train on (y+ by default)."})


@dataclass
class SFTArguments(RecipeTrainingArguments):
    save_every_epoch: bool = field(
        default=True, metadata={"help": f"Save the model after every epoch in OUTPUT_DIR/"
                                        f"{EPOCH_CHECKPOINTS}/<epoch> (1, 2, ...)."})
    logprob_chunk_size: int = field(
        default=DEFAULT_CHUNK_SIZE, metadata={"help": "Tokens per chunk of the output head (memory bound)."})


class SFTCollator:
    """Batch of prompt + response sequences; only the response tokens are labelled."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, pairs: list[TokenizedPair]) -> dict[str, torch.Tensor]:
        return pad_sequences([prompt_response_sequence(p.prompt_ids, p.chosen_ids) for p in pairs],
                             self.pad_token_id)


class SFTTrainer(RecipeScheduleMixin, AutocastLossMixin, Trainer):
    """``Trainer`` whose loss is the mean NLL of the batch's response tokens."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_is_scaled_for_ga = False  # a batch mean: let Trainer divide by the GA steps

    def response_nll(self, model, inputs) -> torch.Tensor:
        # called with the model the Trainer passes in, so DeepSpeed's forward hooks run
        out = sequence_logprobs(model, inputs["input_ids"], inputs["attention_mask"],
                                inputs["labels"], self.args.logprob_chunk_size)
        return -out.per_token.sum() / out.count.sum().clamp(min=1)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.response_nll(model, inputs)
        return (loss, {}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.response_nll(model, inputs)
        return loss.detach(), None, None


class EpochCheckpointCallback(TrainerCallback):
    """Save the model + tokenizer after each full epoch to OUTPUT_DIR/checkpoints/<epoch>.

    Runs on every rank: under ZeRO-3 ``save_model`` gathers the partitioned parameters
    collectively. The folder is written under a temporary name and renamed when complete, so a
    killed run never leaves a half-written epoch checkpoint.
    """

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        epoch = round(state.epoch)
        if abs(state.epoch - epoch) > 1e-6:  # stopped mid-epoch by --max_steps
            logger.warning("epoch %.3f is partial: no %s/ folder for it", state.epoch, EPOCH_CHECKPOINTS)
            return
        target = epoch_checkpoint_dir(args.output_dir, epoch)
        partial = target.with_name(f".{target.name}.partial")
        if args.should_save and partial.exists():  # left by a killed run; only this rank writes
            shutil.rmtree(partial)
        self.trainer.save_model(str(partial))
        if args.should_save:
            write_record(args.output_dir, partial)  # which run this epoch is of, wherever it is copied
            if target.exists():  # an epoch retrained after a resume
                shutil.rmtree(target)
            os.replace(partial, target)
            logger.info("epoch %d saved to %s", epoch, target)
        self.trainer.accelerator.wait_for_everyone()
