"""Generation for benchmarks on the tiny model: budget forcing, batching, hf vs. vllm requests."""

import sys
import types

import pytest
import torch

from fwdrev.checkpoints import load_for_scoring
from fwdrev.data import render_prompt
from fwdrev.evaluation.forcing import ForcingConfig, StepRequest, generate_all
from fwdrev.evaluation.hf_backend import HFBackend
from fwdrev.evaluation.vllm_backend import VLLMBackend

QUESTIONS = ["Take 14. Increase it by 5.", "What is 3 + 4?", "Start with 2. Multiply it by 9, then add 1."]


class AlwaysNext(torch.nn.Module):
    """An lm_head whose greedy choice is always ``token_id``: steers the tiny model."""

    def __init__(self, vocab_size: int, token_id: int):
        super().__init__()
        self.vocab_size, self.token_id = vocab_size, token_id

    def forward(self, hidden):
        logits = torch.zeros(*hidden.shape[:-1], self.vocab_size, dtype=hidden.dtype)
        logits[..., self.token_id] = 1.0
        return logits


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tokenizer = load_for_scoring(str(tiny_model_dir))
    prompts = [tokenizer.encode(render_prompt(q, tokenizer), add_special_tokens=False) for q in QUESTIONS]
    return model, tokenizer, prompts


def steered(tiny_model_dir, tokenizer, text):
    model, _ = load_for_scoring(str(tiny_model_dir))
    (token_id,) = tokenizer.encode(text, add_special_tokens=False)
    model.lm_head = AlwaysNext(model.config.vocab_size, token_id)
    return model


def ids(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def test_thinking_is_capped_at_exactly_n_tokens_then_the_answer_header(tiny_model_dir, tiny):
    _, tokenizer, prompts = tiny
    model = steered(tiny_model_dir, tokenizer, "*")  # never ends its thinking
    config = ForcingConfig(max_tokens=30, max_thinking_tokens=7)
    generations = generate_all(HFBackend(model, tokenizer, batch_size=3), tokenizer, prompts, config)
    star = ids(tokenizer, "*")
    head = ids(tokenizer, "<|im_start|>think") + star * 7 + ids(tokenizer, "\n<|im_start|>answer\nFinal Answer:")
    for generation in generations:
        assert generation.thinking_tokens == 7
        assert generation.token_ids[:len(head)] == head
        assert generation.token_ids[len(head):] == star * (30 - len(head))  # the answer: what is left
        assert (generation.answer_tokens, generation.stop_reason) == (30 - len(head), "max_tokens")


def test_the_end_of_thinking_is_suppressed_n_times_with_wait(tiny_model_dir, tiny):
    _, tokenizer, prompts = tiny
    model = steered(tiny_model_dir, tokenizer, "<|im_start|>")  # tries to end its thinking at once
    config = ForcingConfig(max_tokens=40, max_thinking_tokens=20, num_wait=3)
    generations = generate_all(HFBackend(model, tokenizer, batch_size=2), tokenizer, prompts, config)
    head = "<|im_start|>think" + "Wait" * 3 + "<|im_start|>answer"
    for generation in generations:
        text = tokenizer.decode(generation.token_ids)
        assert text.startswith(head) and text.count("Wait") == 3, text
        assert generation.thinking_tokens == 3 * len(ids(tokenizer, "Wait"))


def test_the_thinking_budget_also_counts_the_wait_tokens(tiny_model_dir, tiny):
    _, tokenizer, prompts = tiny
    model = steered(tiny_model_dir, tokenizer, "<|im_start|>")
    wait = len(ids(tokenizer, "Wait"))
    config = ForcingConfig(max_tokens=60, max_thinking_tokens=2 * wait, num_wait=5)
    generation = generate_all(HFBackend(model, tokenizer), tokenizer, prompts[:1], config)[0]
    assert generation.thinking_tokens == 2 * wait
    assert tokenizer.decode(generation.token_ids).startswith(
        "<|im_start|>think" + "Wait" * 2 + "\n<|im_start|>answer\nFinal Answer:")


def test_batched_generation_equals_one_by_one(tiny):
    model, tokenizer, prompts = tiny
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    requests = [StepRequest(tuple(p), n, (tokenizer.eos_token_id,)) for p, n in zip(prompts, (12, 5, 9))]
    batched = HFBackend(model, tokenizer, batch_size=3).generate(requests)
    single = HFBackend(model, tokenizer, batch_size=1).generate(requests)
    assert batched == single
    assert all(len(o.token_ids) <= r.max_new_tokens for o, r in zip(batched, requests))
    assert all(o.stop_id is not None or len(o.token_ids) == r.max_new_tokens for o, r in zip(batched, requests))


class Recorder:
    """Wraps a backend; keeps every request it was given and what came back."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []

    def generate(self, requests):
        outputs = self.backend.generate(requests)
        self.calls.append((list(requests), outputs))
        return outputs


def fake_vllm(replies: dict):
    """A vllm module whose LLM answers each request as the hf backend did (stop token included)."""
    module = types.ModuleType("vllm")
    received = []

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def generate(self, prompts, params, use_tqdm=True, lora_request=None):
            results = []
            for prompt, param in zip(prompts, params):
                request = StepRequest(tuple(prompt["prompt_token_ids"]), param.kwargs["max_tokens"],
                                      tuple(param.kwargs["stop_token_ids"]))
                received.append((request, param.kwargs))
                output = replies[request]
                token_ids = output.token_ids + ([output.stop_id] if output.stop_id is not None else [])
                completion = types.SimpleNamespace(token_ids=token_ids, stop_reason=None,
                                                   finish_reason="length" if output.stop_id is None else "stop")
                results.append(types.SimpleNamespace(outputs=[completion]))
            return results

    module.SamplingParams, module.LLM, module.received = SamplingParams, LLM, received
    return module


@pytest.mark.parametrize("config", [ForcingConfig(max_tokens=24),
                                    ForcingConfig(max_tokens=40, max_thinking_tokens=12, num_wait=2)])
def test_hf_and_vllm_backends_get_the_same_requests_and_give_the_same_outputs(tiny, monkeypatch, config):
    model, tokenizer, prompts = tiny
    hf = Recorder(HFBackend(model, tokenizer, batch_size=3))
    hf_generations = generate_all(hf, tokenizer, prompts, config)
    replies = {r: o for requests, outputs in hf.calls for r, o in zip(requests, outputs)}
    module = fake_vllm(replies)
    monkeypatch.setitem(sys.modules, "vllm", module)
    vllm = Recorder(VLLMBackend("unused", engine=module.LLM()))
    assert generate_all(vllm, tokenizer, prompts, config) == hf_generations
    assert [r for r, _ in vllm.calls] == [r for r, _ in hf.calls]
    assert [r for r, _ in module.received] == [r for requests, _ in hf.calls for r in requests]
    assert all(kwargs["temperature"] == 0.0 and not kwargs["skip_special_tokens"] for _, kwargs in module.received)


def test_vllm_without_its_environment_names_the_setup_command(monkeypatch):
    from fwdrev.cli import UsageError

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(UsageError, match="bash scripts/setup_env.sh eval"):
        VLLMBackend("model")
