"""The ``hf`` backend: transformers' greedy ``generate``, batched (left padding) with a KV cache.

For CPUs, tests and small runs; GPUs with long generations: the ``vllm`` backend. Requests are
sorted by length (less padding) and batched by their stop tokens; each row stops at its own
``max_new_tokens`` (a per-row stopping criterion) or at its first stop token.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

import torch
from tqdm.auto import tqdm

from fwdrev.evaluation.forcing import StepOutput, StepRequest
from fwdrev.modeling import eval_mode


class RowBudget:
    """Stopping criterion: row r is done once it generated ``caps[r]`` tokens."""

    def __init__(self, prompt_width: int, caps: torch.Tensor):
        self.prompt_width, self.caps = prompt_width, caps

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.BoolTensor:
        return (input_ids.shape[1] - self.prompt_width) >= self.caps.to(input_ids.device)


class HFBackend:
    def __init__(self, model, tokenizer, batch_size: int = 8, progress: bool = False):
        self.model, self.batch_size, self.progress = model, batch_size, progress
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def generate(self, requests: Sequence[StepRequest]) -> list[StepOutput]:
        outputs: dict[int, StepOutput] = {}
        by_stops = sorted(range(len(requests)), key=lambda i: (requests[i].stop_ids, -len(requests[i].prompt_ids)))
        batches = [chunk for _, group in groupby(by_stops, key=lambda i: requests[i].stop_ids)
                   for chunk in _chunks(list(group), self.batch_size)]
        for batch in tqdm(batches, desc="generating", disable=not self.progress):
            outputs.update(zip(batch, self._generate_batch([requests[i] for i in batch])))
        return [outputs[i] for i in range(len(requests))]

    def _generate_batch(self, requests: list[StepRequest]) -> list[StepOutput]:
        from transformers import StoppingCriteriaList

        device = next(self.model.parameters()).device
        width = max(len(r.prompt_ids) for r in requests)
        input_ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, request in enumerate(requests):
            input_ids[row, width - len(request.prompt_ids):] = torch.tensor(request.prompt_ids)
            attention_mask[row, width - len(request.prompt_ids):] = 1
        caps = torch.tensor([r.max_new_tokens for r in requests])
        stop_ids = list(requests[0].stop_ids)
        with eval_mode(self.model):
            generated = self.model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                max_new_tokens=int(caps.max()), do_sample=False, num_beams=1, temperature=None,
                top_p=None, top_k=None, eos_token_id=stop_ids, pad_token_id=self.pad_id,
                stopping_criteria=StoppingCriteriaList([RowBudget(width, caps)]))
        outputs = []
        for row, request in enumerate(requests):
            new_ids = generated[row, width:width + request.max_new_tokens].tolist()
            cut = next((k for k, t in enumerate(new_ids) if t in request.stop_ids), None)
            outputs.append(StepOutput(new_ids, None) if cut is None else StepOutput(new_ids[:cut], new_ids[cut]))
        return outputs


def _chunks(items: list, size: int) -> list[list]:
    return [items[k:k + size] for k in range(0, len(items), size)]
