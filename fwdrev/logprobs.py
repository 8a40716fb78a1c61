"""Per-token label log-probs without materializing full-vocabulary logits.

A 20,000-token sequence against a 152k-token vocabulary is 12 GB of float32 logits. Here the
output head is applied only at labelled (response) positions, in chunks of ``chunk_size``
tokens, and each chunk's log-softmax is reduced to the label's log-prob at once. Under autograd
each chunk is checkpointed (reentrant only for a ZeRO-3 partitioned head), so backward
recomputes one chunk's logits at a time instead of keeping all of them. The head is called as a module, so DeepSpeed ZeRO-3 gathers its weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from fwdrev.tokenization import IGNORE_INDEX

DEFAULT_CHUNK_SIZE = 1024


@dataclass
class SequenceLogprobs:
    per_token: torch.Tensor  # (B, T) float32, 0 where mask is False
    mask: torch.Tensor  # (B, T) bool: response tokens
    sum: torch.Tensor  # (B,) float32
    mean: torch.Tensor  # (B,) float32 (sum / count; 0 for an empty response)
    count: torch.Tensor  # (B,) long


def _label_logps_of_chunk(lm_head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = lm_head(hidden).float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def label_logprobs(hidden: torch.Tensor, lm_head, targets: torch.Tensor,
                   chunk_size: int = DEFAULT_CHUNK_SIZE) -> SequenceLogprobs:
    """Log-probs of ``targets`` (B, T) under ``lm_head(hidden)`` for hidden (B, T, H).

    ``hidden`` and ``targets`` are already aligned (hidden at t predicts targets at t);
    positions whose target is ``IGNORE_INDEX`` are skipped entirely.
    """
    mask = targets != IGNORE_INDEX
    flat_hidden = hidden[mask]  # (N, H): only labelled positions reach the head
    flat_targets = targets[mask]
    use_checkpoint = torch.is_grad_enabled() and flat_hidden.requires_grad
    # Reentrant only for a ZeRO-3 partitioned head: backward re-runs the head as a module, so
    # ZeRO-3 gathers its weight again (non-reentrant would find the saved weight partitioned
    # away). Anywhere else non-reentrant: under DDP each reentrant chunk's backward would mark a
    # trainable head's weight ready once more ("Expected to mark a variable ready only once").
    reentrant = _is_zero3_partitioned(lm_head)

    def chunk_logps(h, t):
        if use_checkpoint:
            return checkpoint(_label_logps_of_chunk, lm_head, h, t, use_reentrant=reentrant)
        return _label_logps_of_chunk(lm_head, h, t)

    own_chunks = -(-flat_targets.numel() // chunk_size)
    # Under ZeRO-3 every head call gathers its weight collectively, so all ranks agree on the
    # number of calls first; ranks with fewer chunks make extra calls on one position (times
    # zero, kept in the graph so that backward's recomputations match too).
    all_chunks = _chunk_count_on_all_ranks(lm_head, own_chunks, hidden.device)
    pieces = []
    padding = hidden.new_zeros((), dtype=torch.float32)
    for index in range(all_chunks):
        if index < own_chunks:
            chunk = slice(index * chunk_size, (index + 1) * chunk_size)
            pieces.append(chunk_logps(flat_hidden[chunk], flat_targets[chunk]))
        else:
            one_position = hidden.reshape(-1, hidden.shape[-1])[:1]
            zero_target = torch.zeros(1, dtype=torch.long, device=hidden.device)
            padding = padding + chunk_logps(one_position, zero_target).sum() * 0
    flat = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    per_token = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
    per_token = per_token.masked_scatter(mask, flat) + padding
    count = mask.sum(-1)
    total = per_token.sum(-1)
    mean = total / count.clamp(min=1)
    return SequenceLogprobs(per_token=per_token, mask=mask, sum=total, mean=mean, count=count)


def _is_zero3_partitioned(lm_head) -> bool:
    return hasattr(getattr(lm_head, "weight", None), "ds_id")


def _chunk_count_on_all_ranks(lm_head, count: int, device) -> int:
    """The largest chunk count of all ranks when the head's weight is ZeRO-3 partitioned."""
    if not (_is_zero3_partitioned(lm_head) and dist.is_available() and dist.is_initialized()):
        return count
    largest = torch.tensor([count], device=device)
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    return int(largest.item())


def unwrap_causal_lm(model):
    """The model under DeepSpeed/DDP wrappers (a PeftModel stays a PeftModel)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      labels: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> SequenceLogprobs:
    """Response log-probs of a causal LM, computed from its final hidden states.

    ``labels`` are the input ids with ``IGNORE_INDEX`` at prompt and padding positions; the
    hidden state at position t scores the label at t + 1.
    """
    causal_lm = unwrap_causal_lm(model)
    if torch.is_grad_enabled():
        # Training: through the model's own forward, where a DeepSpeed engine hooks its backward
        # bookkeeping; logits_to_keep=1 makes the model's own head output one position only.
        # The per-layer hidden states returned are kept for backward anyway.
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1,
                        output_hidden_states=True, use_cache=False)
        hidden = outputs.hidden_states[-1]  # the final-norm output
    else:
        # Scoring: the decoder alone, so no layer's hidden states outlive their use.
        hidden = causal_lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                         use_cache=False).last_hidden_state
    return label_logprobs(hidden[:, :-1], causal_lm.get_output_embeddings(), labels[:, 1:], chunk_size)
