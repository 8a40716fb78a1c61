"""LoRA-DPO on top of ``transformers.Trainer``: our loss, reference log-probs and metrics.

Chosen and rejected sequences of a batch go through the model in one forward pass (the batch
holds the B chosen then the B rejected). The reference is the initial policy. For a fresh LoRA
adapter that is the same network with the adapter disabled. Otherwise (full fine-tuning, or a
run that continues an SFT adapter) it is the policy itself before its first update: by default
every reference log-prob is computed once, before training, and cached in OUTPUT_DIR, so no
second model is needed; without precomputing, a separate frozen ``ref_model`` is used.
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.distributed as dist
from tqdm.auto import tqdm
from transformers import Trainer

from fwdrev.autocast import AutocastLossMixin
from fwdrev.dpo_loss import LOSS_TYPES, dpo_loss
from fwdrev.errors import UsageError
from fwdrev.logprobs import DEFAULT_CHUNK_SIZE, sequence_logprobs, unwrap_causal_lm
from fwdrev.modeling import disable_dropout, eval_mode
from fwdrev.rank_zero import decide_on_main_process
from fwdrev.recipes import RecipeScheduleMixin, RecipeTrainingArguments
from fwdrev.reference import (
    CacheDecision,
    ReferenceMode,
    check_reference_cache,
    length_sorted_shard,
    scoring_precision,
    write_reference_cache,
)
from fwdrev.tokenization import TokenizedPair, collate_pairs, split_halves

logger = logging.getLogger(__name__)


@dataclass
class DPOArguments(RecipeTrainingArguments):
    beta: float = field(default=0.1, metadata={"help": "DPO temperature beta."})
    loss_type: str = field(default="sigmoid", metadata={"help": f"One of {LOSS_TYPES}."})
    sft_weight: float = field(
        default=0.0, metadata={"help": "Weight of the chosen-response NLL added to the loss (RPO); 0 = off."})
    precompute_ref_log_probs: bool = field(
        default=True, metadata={"help": "Compute reference log-probs once before training and cache them."})
    ref_batch_size: int | None = field(
        default=None, metadata={"help": "Pairs per forward pass when precomputing the reference log-probs "
                                        "(default: --per_device_eval_batch_size)."})
    logprob_chunk_size: int = field(
        default=DEFAULT_CHUNK_SIZE, metadata={"help": "Tokens per chunk of the output head (memory bound)."})
    disable_dropout: bool = field(
        default=True, metadata={"help": "Set every dropout (LoRA's included) of the policy and reference to 0, "
                                        "as TRL does, so that the policy equals its reference at step 1 "
                                        "(--no_disable_dropout keeps them)."})

    def __post_init__(self):
        super().__post_init__()
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"--loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.ref_batch_size is not None and self.ref_batch_size < 1:
            raise ValueError(f"--ref_batch_size must be at least 1, got {self.ref_batch_size}")


class PairCollator:
    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, pairs: list[TokenizedPair]) -> dict[str, torch.Tensor]:
        return collate_pairs(pairs, self.pad_token_id)


def prepare_deepspeed_reference(model, accelerator):
    """Wrap a frozen reference model in a DeepSpeed engine without optimizer (as TRL does).

    Under ZeRO-3 the reference stays sharded like the policy; otherwise it is replicated.
    """
    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    zero = config.setdefault("zero_optimization", {})
    zero.pop("offload_optimizer", None)
    if zero.get("stage") != 3:
        zero["stage"] = 0
    hidden = model.config.hidden_size
    sizes = {"reduce_bucket_size": hidden * hidden, "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
             "stage3_param_persistence_threshold": 10 * hidden}
    zero.update({key: value for key, value in sizes.items() if zero.get(key) == "auto"})
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()  # DeepSpeedEngine.eval() returns None
    return engine


class DPOTrainer(RecipeScheduleMixin, AutocastLossMixin, Trainer):
    """``Trainer`` with the DPO loss.

    ``reference_mode`` (``ReferenceMode.choose``) says what the reference is; ``ref_model`` is
    the frozen copy for ``FROZEN_COPY``. ``reference_key`` (``reference_cache_key``) identifies
    the cached reference log-probs.
    """

    def __init__(self, *args, reference_mode: ReferenceMode, reference_key: dict | None = None,
                 ref_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.disable_dropout:  # else the policy's dropout makes it differ from its reference
            for network in (self.model, ref_model):
                if network is not None:
                    disable_dropout(network)
        self.loss_is_scaled_for_ga = False  # our loss is a batch mean: let Trainer divide by GA steps
        if reference_mode.needs_ref_model != (ref_model is not None):
            raise ValueError(f"reference mode {reference_mode.value}: ref_model must be given "
                             "exactly when the reference is a frozen copy")
        if reference_mode is ReferenceMode.INITIAL_POLICY and not self.args.precompute_ref_log_probs:
            raise ValueError("the initial policy as reference needs --precompute_ref_log_probs")
        if self.args.precompute_ref_log_probs and not reference_key:
            raise ValueError("cached reference log-probs need their reference_key (reference_cache_key)")
        self.reference_mode = reference_mode
        self.reference_key = reference_key
        self.ref_model = ref_model
        self._ref_model_prepared = False
        self.reference_logps: pd.DataFrame | None = None  # indexed by example_id
        self._stored_metrics: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    # ---- reference log-probs -------------------------------------------------------------
    def _all_pairs(self) -> list[TokenizedPair]:
        pairs = list(self.train_dataset.pairs)
        if self.eval_dataset is not None:
            pairs += list(self.eval_dataset.pairs)
        return pairs

    def _reference_model(self, model):
        """The model to score the reference with, and the context to score it in."""
        if self.ref_model is None:
            adapter_off = self.reference_mode is ReferenceMode.ADAPTER_OFF
            return model, unwrap_causal_lm(model).disable_adapter() if adapter_off else nullcontext()
        if not self._ref_model_prepared:  # after deepspeed_init, which fills the config's "auto"s
            if self.is_deepspeed_enabled:
                self.ref_model = prepare_deepspeed_reference(self.ref_model, self.accelerator)
            else:
                self.ref_model = self.ref_model.to(self.args.device)
            self._ref_model_prepared = True
        return self.ref_model, nullcontext()

    def ensure_reference_logps(self, model) -> None:
        """Load the cached reference log-probs or compute them (every rank takes part).

        Rank 0 decides (and sends the cached values); every rank then uses them, or every rank
        joins the computation.
        """
        if self.reference_logps is not None or not self.args.precompute_ref_log_probs:
            return
        wanted_ids = {p.example_id for p in self._all_pairs()}
        # the precompute scores the policy itself, in the precision of this moment (the
        # engine's weights, the loss's autocast)
        key = {**self.reference_key, **scoring_precision(model, self.args.device.type)}
        decision: CacheDecision = decide_on_main_process(
            lambda: check_reference_cache(self.args.output_dir, key, wanted_ids),
            self.args.process_index, self.args.world_size)
        logger.info("%s", decision.reason)
        if decision.frame is not None:
            self.reference_logps = decision.frame
            return
        if self.state.global_step > 0 and not self.reference_mode.scorable_after_updates:
            raise UsageError(f"{decision.reason}, and the policy it is computed from has been trained "
                             "since. Resume with --no_precompute_ref_log_probs (keeps a frozen copy of "
                             "the initial model as the reference) or start in a new --output_dir")
        frame = self._compute_reference_logps(model)
        if self.args.process_index == 0:
            write_reference_cache(self.args.output_dir, frame, key)
        self.accelerator.wait_for_everyone()
        self.reference_logps = frame

    @torch.no_grad()
    def _compute_reference_logps(self, model) -> pd.DataFrame:
        rank, world = self.args.process_index, self.args.world_size
        shard = length_sorted_shard(self._all_pairs(), rank, world)
        batch_size = self.args.ref_batch_size or self.args.per_device_eval_batch_size
        collator = PairCollator(self.processing_class.pad_token_id)
        rows = []
        reference, context = self._reference_model(model)
        with eval_mode(model), context:  # no LoRA dropout in the initial policy's scores
            for start in tqdm(range(0, len(shard), batch_size), desc="reference log-probs",
                              disable=rank != 0):
                batch = collator(shard[start : start + batch_size])
                out = self._sequence_logprobs(reference, batch)
                example_ids = batch["example_ids"].tolist()
                sums, means = (split_halves(values.tolist(), len(example_ids))
                               for values in (out.sum, out.mean))
                rows += zip(example_ids, sums.chosen, sums.rejected, means.chosen, means.rejected)
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        columns = ["example_id", "chosen_logp_sum", "rejected_logp_sum",
                   "chosen_logp_mean", "rejected_logp_mean"]
        frame = pd.DataFrame(rows, columns=columns).drop_duplicates("example_id")
        return frame.set_index("example_id").sort_index()

    def _reference_for_batch(self, model, batch, averaged: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference_logps is not None:
            stat = "mean" if averaged else "sum"
            ref = self.reference_logps.loc[batch["example_ids"].tolist()]
            device = batch["input_ids"].device
            return (torch.tensor(ref[f"chosen_logp_{stat}"].to_numpy(), device=device),
                    torch.tensor(ref[f"rejected_logp_{stat}"].to_numpy(), device=device))
        reference, context = self._reference_model(model)
        with torch.no_grad(), context:
            out = self._sequence_logprobs(reference, batch)
        return split_halves(out.mean if averaged else out.sum, len(batch["example_ids"]))

    # ---- loss and metrics ------------------------------------------------------------------
    def _sequence_logprobs(self, model, batch):
        batch = self._prepare_inputs(batch)
        return sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                 self.args.logprob_chunk_size)

    def dpo_batch_loss(self, model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        averaged = self.args.loss_type == "ipo"  # IPO is defined on length-averaged log-probs
        ref_chosen, ref_rejected = self._reference_for_batch(model, batch, averaged)
        out = self._sequence_logprobs(model, batch)
        n = len(batch["example_ids"])
        policy = split_halves(out.mean if averaged else out.sum, n)
        sums, means = split_halves(out.sum, n), split_halves(out.mean, n)
        result = dpo_loss(policy.chosen, policy.rejected, ref_chosen, ref_rejected, self.args.beta,
                          self.args.loss_type)
        loss = result.losses.mean()
        metrics = {
            "rewards/chosen": result.chosen_rewards,
            "rewards/rejected": result.rejected_rewards,
            "rewards/accuracies": (result.chosen_rewards > result.rejected_rewards).float(),
            "rewards/margins": result.chosen_rewards - result.rejected_rewards,
            "logps/chosen": sums.chosen.detach(),
            "logps/rejected": sums.rejected.detach(),
            "logps/chosen_mean_per_token": means.chosen.detach(),
            "logps/rejected_mean_per_token": means.rejected.detach(),
        }
        if self.args.sft_weight > 0:
            nll = -means.chosen.mean()  # mean per-token NLL of the chosen responses (RPO)
            loss = loss + self.args.sft_weight * nll
            metrics["nll/chosen"] = nll.detach().reshape(1)
        return loss, metrics

    def _store_metrics(self, metrics: dict[str, torch.Tensor], split: str) -> None:
        for name, values in metrics.items():
            gathered = self.accelerator.gather_for_metrics(values.float().reshape(-1))
            self._stored_metrics[split][name].append(gathered.mean().item())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.ensure_reference_logps(model)
        loss, metrics = self.dpo_batch_loss(model, inputs)
        self._store_metrics(metrics, "train")
        return (loss, metrics) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with torch.no_grad(), self.compute_loss_context_manager():
            self.ensure_reference_logps(model)
            loss, metrics = self.dpo_batch_loss(model, inputs)
        self._store_metrics(metrics, "eval")
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        split = "train" if "loss" in logs else "eval"
        prefix = "eval_" if split == "eval" else ""
        for name, values in self._stored_metrics[split].items():
            logs[prefix + name] = sum(values) / len(values)
        self._stored_metrics[split].clear()
        super().log(logs, start_time)
