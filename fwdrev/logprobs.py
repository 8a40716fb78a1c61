"""Per-token label log-probs without materializing full-vocabulary logits.

A 20,000-token sequence against a 152k-token vocabulary is 12 GB of float32 logits. Here the
output head is applied only at labelled (response) positions, in chunks of ``chunk_size``
tokens, and each chunk's log-softmax is reduced to the label's log-prob at once. The head is
applied as the model's forward applies it, scale and soft-cap included (``fwdrev.output_head``),
in the dtype autocast gives it.

Under autograd two paths keep memory at one chunk of logits:

* frozen head (LoRA): ``FrozenHeadLabelLogprobs`` computes, chunk by chunk in the forward pass,
  the gradient of each label log-prob with respect to its hidden state, W^T (onehot - softmax),
  and keeps only that (N x H, the size of the hidden states). Backward scales it by the incoming
  gradient: no logits are kept and none are recomputed, so a step costs the two head matmuls
  that full logits cost too. Under ZeRO-3 the head's weight is gathered once per call.
* trainable head (full fine-tuning): each chunk is checkpointed (reentrant only for a ZeRO-3
  partitioned head), so backward recomputes one chunk's logits at a time. The head is called as
  a module, so ZeRO-3 gathers its weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from fwdrev.output_head import OutputHead, output_head
from fwdrev.tokenization import IGNORE_INDEX

DEFAULT_CHUNK_SIZE = 1024


def chunk_size_for_budget(budget_mb: float, vocab_size: int) -> int:
    """Tokens per head chunk whose float32 logits and their log-softmax (two (chunk, V) tensors)
    fit in ``budget_mb`` MiB; at least 1."""
    return max(1, int(budget_mb * 2 ** 20) // (vocab_size * 4 * 2))


@dataclass
class SequenceLogprobs:
    per_token: torch.Tensor  # (B, T) float32, 0 where mask is False
    mask: torch.Tensor  # (B, T) bool: response tokens
    sum: torch.Tensor  # (B,) float32
    mean: torch.Tensor  # (B,) float32 (sum / count; 0 for an empty response)
    count: torch.Tensor  # (B,) long
    # Optional (``with_argmax``): the max over the vocabulary of the log-prob at each position,
    # from the same chunk's log-softmax (the "argmax token" probe); 0 where mask is False.
    argmax_per_token: torch.Tensor | None = None


def _label_logps_of_chunk(head: OutputHead, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # log_softmax + gather: on CPU about a third of the time of gather - logsumexp
    return head.logits(hidden).log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _label_and_max_logps_of_chunk(head: OutputHead, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(2, N): the label's log-prob and the max log-prob of each position, one log-softmax."""
    chunk_logps = head.logits(hidden).log_softmax(-1)
    return torch.stack([chunk_logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1), chunk_logps.amax(-1)])


class FrozenHeadLabelLogprobs(torch.autograd.Function):
    """log softmax(softcap(scale * hidden @ W^T))[target] for a frozen head W, with the
    hidden-state gradient computed in the forward chunk loop (see the module docstring).

    ``compute_dtype``: the dtype of the head's matmuls (default the head's own).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size: int, keep_gradient: bool, scale: float = 1.0,
                softcap: float | None = None, compute_dtype: torch.dtype | None = None,
                max_logps: torch.Tensor | None = None):
        head = OutputHead(None, scale, softcap)
        out_dtype = torch.promote_types(hidden.dtype, torch.float32)  # float64 stays float64 (gradcheck)
        compute_dtype = compute_dtype or weight.dtype
        weight = weight.to(compute_dtype)
        logps = torch.empty(targets.shape[0], dtype=out_dtype, device=hidden.device)
        gradient = torch.empty_like(hidden) if keep_gradient else None
        # Two (chunk, V) buffers reused by every chunk: on the CPU a fresh tensor of that size per
        # chunk is fresh pages from the OS each time, which costs more than the matmul itself.
        rows_in_buffer = min(chunk_size, targets.shape[0])
        # An out= matmul is not autocast itself: the caller passes the dtype autocast would use
        logits_buffer = hidden.new_empty((rows_in_buffer, weight.shape[0]), dtype=compute_dtype)
        logps_buffer = hidden.new_empty((rows_in_buffer, weight.shape[0]), dtype=out_dtype)
        for start in range(0, targets.shape[0], chunk_size):
            chunk = slice(start, start + chunk_size)
            size = hidden[chunk].shape[0]
            logits = torch.matmul(hidden[chunk].to(compute_dtype), weight.T, out=logits_buffer[:size]).to(out_dtype)
            head.transform(logits)
            chunk_logps = torch.log_softmax(logits, -1, out=logps_buffer[:size])
            rows = torch.arange(chunk_logps.shape[0], device=hidden.device)
            logps[chunk] = chunk_logps[rows, targets[chunk]]
            if max_logps is not None:  # the argmax probe: filled in place, never differentiated
                max_logps[chunk] = chunk_logps.amax(-1)
            if keep_gradient:  # d logp[t] / d h = scale * W^T ((onehot(t) - softmax) * dcap/dz)
                softmax = chunk_logps.exp_()
                softmax[rows, targets[chunk]] -= 1.0
                if softcap is not None:  # d/dz softcap * tanh(z / softcap) = 1 - (capped / softcap)^2
                    softmax.mul_(logits.div_(softcap).square_().neg_().add_(1.0))
                gradient[chunk] = (softmax.to(compute_dtype) @ weight).mul_(-scale)
            del logits, chunk_logps
        ctx.save_for_backward(gradient)
        return logps

    @staticmethod
    def backward(ctx, grad_logps):
        (gradient,) = ctx.saved_tensors
        return (gradient * grad_logps.unsqueeze(-1).to(gradient.dtype),) + (None,) * 8


def _head_needs_no_gradient(head: OutputHead) -> bool:
    """A bias-free linear head whose weight gets no gradient: frozen (LoRA) or under no_grad."""
    linear = head.linear
    weight = getattr(linear, "weight", None)
    return isinstance(linear, torch.nn.Linear) and linear.bias is None and weight is not None \
        and not (torch.is_grad_enabled() and weight.requires_grad)


def head_compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype ``lm_head(hidden)`` computes in: autocast's when it is on for the weight's device
    (the trainable path's module call is autocast; the frozen path must match it, or the policy
    and its frozen reference differ before any update), else the weight's own."""
    device_type = weight.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def _frozen_head_logps(head: OutputHead, flat_hidden: torch.Tensor, flat_targets: torch.Tensor,
                       chunk_size: int, max_logps: torch.Tensor | None = None) -> torch.Tensor:
    weight = head.linear.weight
    keep_gradient = torch.is_grad_enabled() and flat_hidden.requires_grad

    def apply():
        return FrozenHeadLabelLogprobs.apply(flat_hidden, weight, flat_targets, chunk_size, keep_gradient,
                                             head.scale, head.softcap, head_compute_dtype(weight), max_logps)

    if hasattr(weight, "ds_id"):  # ZeRO-3: gather the head once for every chunk of this call
        import deepspeed

        with deepspeed.zero.GatheredParameters([weight], modifier_rank=None):
            return apply()
    return apply()


def label_logprobs(hidden: torch.Tensor, lm_head, targets: torch.Tensor,
                   chunk_size: int = DEFAULT_CHUNK_SIZE, with_argmax: bool = False) -> SequenceLogprobs:
    """Log-probs of ``targets`` (B, T) under ``lm_head(hidden)`` for hidden (B, T, H).

    ``lm_head``: an ``OutputHead`` (``fwdrev.output_head.output_head`` of the model), or a plain
    linear head.

    ``hidden`` and ``targets`` are already aligned (hidden at t predicts targets at t);
    positions whose target is ``IGNORE_INDEX`` are skipped entirely. ``with_argmax`` (scoring,
    no gradient): also ``argmax_per_token``, from the same chunks' log-softmax.
    """
    head = lm_head if isinstance(lm_head, OutputHead) else OutputHead(lm_head)
    mask = targets != IGNORE_INDEX
    flat_hidden = hidden[mask]  # (N, H): only labelled positions reach the head
    flat_targets = targets[mask]
    if with_argmax:
        return _label_and_max_logprobs(hidden, head, mask, flat_hidden, flat_targets, chunk_size)
    if _head_needs_no_gradient(head):
        flat = _frozen_head_logps(head, flat_hidden, flat_targets, chunk_size)
        return _sequence_stats(flat, mask, targets, hidden.device)
    use_checkpoint = torch.is_grad_enabled() and flat_hidden.requires_grad
    # Reentrant only for a ZeRO-3 partitioned head: backward re-runs the head as a module, so
    # ZeRO-3 gathers its weight again (non-reentrant would find the saved weight partitioned
    # away). Anywhere else non-reentrant: under DDP each reentrant chunk's backward would mark a
    # trainable head's weight ready once more ("Expected to mark a variable ready only once").
    reentrant = _is_zero3_partitioned(head.linear)

    def chunk_logps(h, t):
        if use_checkpoint:
            return checkpoint(_label_logps_of_chunk, head, h, t, use_reentrant=reentrant)
        return _label_logps_of_chunk(head, h, t)

    own_chunks = -(-flat_targets.numel() // chunk_size)
    # Under ZeRO-3 every head call gathers its weight collectively, so all ranks agree on the
    # number of calls first; ranks with fewer chunks make extra calls on one position (times
    # zero, kept in the graph so that backward's recomputations match too).
    all_chunks = _chunk_count_on_all_ranks(head.linear, own_chunks, hidden.device)
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
    return _sequence_stats(flat, mask, targets, hidden.device, padding)


@torch.no_grad()
def _label_and_max_logprobs(hidden, head, mask, flat_hidden, flat_targets, chunk_size) -> SequenceLogprobs:
    """``label_logprobs`` plus the per-position max log-prob (the argmax probe), without autograd."""
    if _head_needs_no_gradient(head):
        flat_max = torch.empty(flat_targets.shape[0], dtype=torch.float32, device=hidden.device)
        flat = _frozen_head_logps(head, flat_hidden, flat_targets, chunk_size, flat_max)
    else:
        pieces = [_label_and_max_logps_of_chunk(head, flat_hidden[start : start + chunk_size],
                                                flat_targets[start : start + chunk_size])
                  for start in range(0, flat_targets.numel(), chunk_size)]
        flat, flat_max = torch.cat(pieces, 1) if pieces else hidden.new_zeros((2, 0), dtype=torch.float32)
    out = _sequence_stats(flat.float(), mask, mask, hidden.device)
    out.argmax_per_token = torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device).masked_scatter(
        mask, flat_max.float())
    return out


def _sequence_stats(flat: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor, device,
                    padding: torch.Tensor | float = 0.0) -> SequenceLogprobs:
    per_token = torch.zeros(targets.shape, dtype=torch.float32, device=device)
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
                      labels: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE,
                      with_argmax: bool = False) -> SequenceLogprobs:
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
    return label_logprobs(hidden[:, :-1], output_head(causal_lm), labels[:, 1:], chunk_size, with_argmax)


def uses_padding_free_attention(model) -> bool:
    """flash_attention_2 unpads a padded batch itself; other kernels are handed a 4-D mask."""
    config = getattr(unwrap_causal_lm(model), "config", None)
    return getattr(config, "_attn_implementation", None) == "flash_attention_2"


@torch.no_grad()
def scoring_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     labels: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE,
                     with_argmax: bool = False) -> SequenceLogprobs:
    """``sequence_logprobs`` for scoring, without padding unless the kernel unpads itself.

    A padded batch gives SDPA a 4-D mask, which sends it to its quadratic-memory math kernel;
    one unpadded sequence at a time runs the causal kernel. Values equal the batched call.
    Always one forward per row (not only for padded batches), so that ranks that must call the
    model equally often under ZeRO-3 stay in step. ``with_argmax``: see ``label_logprobs``.
    """
    if uses_padding_free_attention(model):
        return sequence_logprobs(model, input_ids, attention_mask, labels, chunk_size, with_argmax)
    rows = []
    for row in range(input_ids.shape[0]):
        length = int(attention_mask[row].sum())
        rows.append(sequence_logprobs(model, input_ids[row : row + 1, :length], None,
                                      labels[row : row + 1, :length], chunk_size, with_argmax))
    width = labels.shape[1] - 1
    per_token = torch.zeros((len(rows), width), dtype=torch.float32, device=labels.device)
    mask = torch.zeros((len(rows), width), dtype=torch.bool, device=labels.device)
    argmax = torch.zeros_like(per_token) if with_argmax else None
    for row, out in enumerate(rows):
        per_token[row, : out.per_token.shape[1]] = out.per_token[0]
        mask[row, : out.mask.shape[1]] = out.mask[0]
        if with_argmax:
            argmax[row, : out.argmax_per_token.shape[1]] = out.argmax_per_token[0]
    return SequenceLogprobs(per_token=per_token, mask=mask, sum=torch.cat([r.sum for r in rows]),
                            mean=torch.cat([r.mean for r in rows]), count=torch.cat([r.count for r in rows]),
                            argmax_per_token=argmax)
