"""Chunked label log-probs equal the naive full-logits computation, values and gradients."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from fwdrev.logprobs import label_logprobs, sequence_logprobs
from fwdrev.tokenization import IGNORE_INDEX


def naive_token_logps(logits, targets):
    logps = torch.log_softmax(logits.float(), dim=-1)
    gathered = logps.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return gathered * (targets != IGNORE_INDEX)


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_values_and_gradients_match_naive(chunk_size):
    torch.manual_seed(0)
    hidden = torch.randn(3, 11, 16, requires_grad=True)
    head = torch.nn.Linear(16, 97, bias=False)
    targets = torch.randint(0, 97, (3, 11))
    targets[0, :4] = IGNORE_INDEX  # prompt
    targets[1, 9:] = IGNORE_INDEX  # padding
    targets[2, :] = IGNORE_INDEX  # an empty response

    out = label_logprobs(hidden, head, targets, chunk_size=chunk_size)
    naive = naive_token_logps(head(hidden), targets)
    assert out.per_token.dtype == torch.float32
    assert (out.per_token - naive).abs().max() <= 1e-5
    assert out.count.tolist() == [7, 9, 0]
    assert torch.allclose(out.sum, naive.sum(-1), atol=1e-5)
    assert torch.allclose(out.mean[:2], naive.sum(-1)[:2] / out.count[:2], atol=1e-6)
    assert out.mean[2] == 0

    weights = torch.tensor([0.3, -1.0, 2.0])  # any downstream use of the sums
    (out.sum * weights).sum().backward()
    grad_hidden, grad_head = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    (naive.sum(-1) * weights).sum().backward()
    assert (grad_hidden - hidden.grad).abs().max() <= 1e-5
    assert (grad_head - head.weight.grad).abs().max() <= 1e-5


def test_no_grad_mode_for_analysis():
    hidden = torch.randn(2, 5, 8)
    head = torch.nn.Linear(8, 13, bias=False)
    targets = torch.randint(0, 13, (2, 5))
    with torch.no_grad():
        out = label_logprobs(hidden, head, targets, chunk_size=2)
    assert not out.sum.requires_grad
    assert (out.per_token - naive_token_logps(head(hidden), targets)).abs().max() <= 1e-5


def small_causal_lm():
    """A seeded 2-layer Qwen2 with an untied head (vocabulary 101), in eval mode."""
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return Qwen2ForCausalLM(config).eval()


def test_sequence_logprobs_on_a_causal_lm_matches_its_logits():
    model = small_causal_lm()
    input_ids = torch.randint(0, 101, (2, 9))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    labels = input_ids.clone()
    labels[:, :3] = IGNORE_INDEX  # prompt of three tokens
    labels[attention_mask == 0] = IGNORE_INDEX
    with torch.no_grad():
        out = sequence_logprobs(model, input_ids, attention_mask, labels, chunk_size=4)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    expected = naive_token_logps(logits[:, :-1], labels[:, 1:])
    assert out.count.tolist() == [6, 4]  # the first response token (position 3) is scored
    assert (out.per_token - expected).abs().max() <= 1e-5


def test_training_path_equals_scoring_path_and_has_gradients():
    model = small_causal_lm()
    input_ids = torch.randint(0, 101, (2, 9))
    labels = input_ids.clone()
    labels[:, :4] = IGNORE_INDEX
    attention_mask = torch.ones_like(input_ids)
    with torch.no_grad():
        scored = sequence_logprobs(model, input_ids, attention_mask, labels, chunk_size=3)
    trained = sequence_logprobs(model, input_ids, attention_mask, labels, chunk_size=3)
    assert torch.allclose(scored.sum, trained.sum, atol=1e-5)
    trained.sum.sum().backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
