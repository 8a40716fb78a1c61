"""The frozen-head chunk loop allocates its (chunk, V) tensors once per call, not once per chunk
(on the CPU each fresh tensor of that size is fresh pages from the OS: slower than the matmul)."""

import torch
from torch.profiler import ProfilerActivity, profile

from fwdrev.logprobs import label_logprobs


def large_allocations(function, min_bytes: int) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        function()
    return sum(1 for event in profiler.events() if event.self_cpu_memory_usage >= min_bytes)


def test_chunk_tensors_are_allocated_once_per_call():
    torch.manual_seed(0)
    vocab, chunk_size, tokens = 3000, 16, 16 * 10  # ten chunks
    hidden = torch.randn(1, tokens, 8, requires_grad=True)
    head = torch.nn.Linear(8, vocab, bias=False).requires_grad_(False)
    targets = torch.randint(0, vocab, (1, tokens))
    chunk_bytes = chunk_size * vocab * 4
    with torch.no_grad():
        scoring = large_allocations(lambda: label_logprobs(hidden, head, targets, chunk_size), chunk_bytes)
    training = large_allocations(lambda: label_logprobs(hidden, head, targets, chunk_size), chunk_bytes)
    assert scoring == 2 and training == 2  # the logits buffer and the log-softmax buffer
