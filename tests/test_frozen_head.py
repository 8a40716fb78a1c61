"""The frozen-head path of label_logprobs: exact gradients without keeping or recomputing logits."""

import pytest
import torch

from fwdrev.logprobs import FrozenHeadLabelLogprobs, label_logprobs
from fwdrev.tokenization import IGNORE_INDEX


def _inputs(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    hidden = torch.randn(2, 9, 6, dtype=dtype, requires_grad=True)
    head = torch.nn.Linear(6, 23, bias=False).to(dtype).requires_grad_(False)
    targets = torch.randint(0, 23, (2, 9))
    targets[0, :3] = IGNORE_INDEX
    targets[1, 7:] = IGNORE_INDEX
    return hidden, head, targets


def test_gradcheck_in_float64():
    hidden, head, targets = _inputs(torch.float64)
    flat_targets = targets[targets != IGNORE_INDEX]
    flat_hidden = hidden[targets != IGNORE_INDEX].detach().requires_grad_(True)

    def logps(h):
        return FrozenHeadLabelLogprobs.apply(h, head.weight, flat_targets, 4, True)

    assert logps(flat_hidden).dtype == torch.float64
    assert torch.autograd.gradcheck(logps, (flat_hidden,))


@pytest.mark.parametrize("chunk_size", [1, 4, 100])
def test_gradients_equal_full_logits_and_the_checkpointed_path(chunk_size):
    hidden, head, targets = _inputs()
    weights = torch.tensor([0.7, -1.3])

    out = label_logprobs(hidden, head, targets, chunk_size)
    (out.sum * weights).sum().backward()
    frozen_grad = hidden.grad.clone()

    hidden.grad = None  # full logits, by autograd
    logps = torch.log_softmax(head(hidden).float(), -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    full_sum = (logps * (targets != IGNORE_INDEX)).sum(-1)
    (full_sum * weights).sum().backward()
    assert (out.sum - full_sum).abs().max() <= 1e-5
    assert (frozen_grad - hidden.grad).abs().max() <= 1e-6

    hidden.grad = None  # today's checkpointed path: the same head, trainable
    head.weight.requires_grad_(True)
    checkpointed = label_logprobs(hidden, head, targets, chunk_size)
    (checkpointed.sum * weights).sum().backward()
    assert (frozen_grad - hidden.grad).abs().max() <= 1e-6
    assert (checkpointed.per_token - out.per_token).abs().max() <= 1e-6


def test_frozen_path_keeps_no_logits_for_backward():
    hidden, head, targets = _inputs()
    out = label_logprobs(hidden, head, targets, chunk_size=2)
    saved = [t for node in [out.sum.grad_fn] for t in _saved_tensors(node)]
    vocab = head.weight.shape[0]
    assert saved and all(vocab not in t.shape for t in saved)  # only (N, H) gradients, no (., V)


def _saved_tensors(node, seen=None):
    seen = set() if seen is None else seen
    if node is None or node in seen:
        return []
    seen.add(node)
    found = [t for name in dir(node) if name.startswith("_saved_")
             for t in [getattr(node, name, None)] if isinstance(t, torch.Tensor)]
    found += list(getattr(node, "saved_tensors", ()) or ())
    for child, _ in node.next_functions:
        found += _saved_tensors(child, seen)
    return found


def test_unpadded_scoring_equals_the_padded_batch():
    from test_logprobs import small_causal_lm

    from fwdrev.logprobs import scoring_logprobs, sequence_logprobs
    from fwdrev.tokenization import pad_sequences, prompt_response_sequence

    model = small_causal_lm()
    torch.manual_seed(1)
    sequences = [prompt_response_sequence(torch.randint(0, 101, (p,)).tolist(),
                                          torch.randint(0, 101, (r,)).tolist())
                 for p, r in ((5, 17), (9, 3), (2, 30))]
    batch = pad_sequences(sequences, pad_token_id=0)
    with torch.no_grad():
        padded = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["labels"], 8)
    unpadded = scoring_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["labels"], 8)
    assert unpadded.count.tolist() == padded.count.tolist() == [17, 3, 30]
    assert torch.equal(unpadded.mask, padded.mask)
    assert (unpadded.per_token - padded.per_token).abs().max() <= 1e-5
    assert (unpadded.sum - padded.sum).abs().max() <= 1e-4


@pytest.mark.parametrize("scale, softcap", [(0.25, None), (1.0, 1.5), (3.0, 2.0)], ids=["scale", "softcap", "both"])
def test_gradcheck_of_scaled_and_soft_capped_logits_in_float64(scale, softcap):
    """The gradient includes the post-processing: scale s multiplies it, a soft-cap c multiplies
    each logit's term by 1 - tanh^2(z / c)."""
    from fwdrev.output_head import OutputHead

    hidden, head, targets = _inputs(torch.float64)
    head.weight.mul_(4.0)  # logits of a few units, where the soft-cap bends them
    flat_targets = targets[targets != IGNORE_INDEX]
    flat_hidden = hidden[targets != IGNORE_INDEX].detach().requires_grad_(True)

    def logps(h):
        return FrozenHeadLabelLogprobs.apply(h, head.weight, flat_targets, 4, True, scale, softcap)

    assert torch.autograd.gradcheck(logps, (flat_hidden,))
    transformed = OutputHead(head, scale, softcap).logits(flat_hidden)  # by autograd, full logits
    expected = torch.log_softmax(transformed, -1).gather(-1, flat_targets[:, None])[:, 0]
    assert (logps(flat_hidden) - expected).abs().max() <= 1e-12
    assert (expected - torch.log_softmax(head(flat_hidden), -1).gather(-1, flat_targets[:, None])[:, 0]
            ).abs().max() > 0.1  # the transform matters here


def test_frozen_head_computes_in_the_autocast_dtype_like_the_module_call():
    """Under --bf16 without DeepSpeed an fp32 head runs in bf16 when called as a module (autocast);
    the frozen path must give the same values, or a policy and its frozen reference differ."""
    hidden, head, targets = _inputs()
    hidden = hidden.detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        frozen = label_logprobs(hidden, head, targets, chunk_size=4).per_token
        head.weight.requires_grad_(True)
        module_call = label_logprobs(hidden, head, targets, chunk_size=4).per_token
    in_float32 = label_logprobs(hidden, head.requires_grad_(False), targets, chunk_size=4).per_token
    assert torch.equal(frozen, module_call)
    assert (frozen - in_float32).abs().max() > 1e-4  # bf16 rounding is visible at this size
