"""Run under torchrun (2 CPU processes): LoRA on the tiny model under ZeRO-3, one training step
per (response length, chunk size); count the all-gathers of the frozen output head's weight in
forward (apart: inside a GatheredParameters context, or by ZeRO-3's module hooks) and in backward.
Rank 0 writes {"<tokens>x<chunk>": {"forward_context": n, "forward_module": n, "backward": n}}.

    torchrun --nproc_per_node=2 tests/zero3_head_gathers_worker.py MODEL_DIR RESULT.json
"""

import json
import sys

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

from fwdrev.logprobs import sequence_logprobs, unwrap_causal_lm
from fwdrev.modeling import add_lora, load_causal_lm, make_lora_config
from fwdrev.tokenization import IGNORE_INDEX

PROMPT_TOKENS = 6
CASES = [(8, 64), (8, 2), (60, 64), (60, 4)]  # (response tokens, chunk size): 1 to 15 chunks
CONFIG = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
          "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
          "zero_allow_untested_optimizer": True}


class HeadGatherCounter:
    """Counts the all-gathers that fetch ``head`` (it was partitioned away when asked for),
    whoever asks: a module hook of ZeRO-3's coordinator or a GatheredParameters context."""

    def __init__(self, model, head):
        self.head, self.phase, self.counts, self.in_context = head, None, {}, False
        counter, context_class = self, deepspeed.zero.GatheredParameters

        class CountedContext(context_class):  # what fwdrev.logprobs enters (looked up at call time)
            def __enter__(self):
                counter.in_context = True
                try:
                    return super().__enter__()
                finally:
                    counter.in_context = False

        deepspeed.zero.GatheredParameters = CountedContext
        for param in model.parameters():
            param.all_gather = self._counting(param.all_gather, param)
            param.all_gather_coalesced = self._counting(param.all_gather_coalesced, param)

    def _counting(self, gather, owner):
        def counted(*args, **kwargs):
            params = kwargs.get("param_list", kwargs.get("params", args[0] if args else None)) or [owner]
            if any(p is self.head for p in params) and self.head.ds_status == ZeroParamStatus.NOT_AVAILABLE:
                phase = self.phase + ("_context" if self.in_context else "_module") * (self.phase == "forward")
                self.counts[phase] = self.counts.get(phase, 0) + 1
            return gather(*args, **kwargs)
        return counted


def batch(response_tokens: int, vocab: int):
    generator = torch.Generator().manual_seed(response_tokens)
    ids = torch.randint(0, vocab, (1, PROMPT_TOKENS + response_tokens), generator=generator)
    labels = ids.clone()
    labels[:, :PROMPT_TOKENS] = IGNORE_INDEX
    return ids, torch.ones_like(ids), labels


def main(model_dir: str, result_path: str) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    model = add_lora(load_causal_lm(model_dir), make_lora_config(r=4, alpha=8, dropout=0.0,
                                                                 target_modules="q_proj,v_proj"), seed=0)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=CONFIG)
    head = unwrap_causal_lm(engine).get_output_embeddings().weight
    assert hasattr(head, "ds_id") and not head.requires_grad  # partitioned and frozen
    counter = HeadGatherCounter(engine.module, head)
    results = {}
    for response_tokens, chunk_size in CASES:
        counter.counts = {"forward_context": 0, "forward_module": 0, "backward": 0}
        counter.phase = "forward"
        out = sequence_logprobs(engine, *batch(response_tokens, head.ds_shape[0]), chunk_size)
        counter.phase = "backward"
        engine.backward(out.sum.sum())
        engine.step()
        results[f"{response_tokens}x{chunk_size}"] = dict(counter.counts)
    if dist.get_rank() == 0:
        with open(result_path, "w") as handle:
            json.dump(results, handle)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
