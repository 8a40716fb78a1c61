"""The ``vllm`` backend: the same step requests as the ``hf`` backend, run by vLLM on GPUs.

vLLM pins its own torch and transformers, which differ from the training set's, so it lives in
its own environment, ``.venv-eval`` (``bash scripts/setup_env.sh eval``). Greedy decoding
(``temperature=0``), stop token ids per request, prefix caching on (budget forcing resends each
prompt with its thinking so far), tensor parallel over ``--tensor_parallel_size`` GPUs. LoRA
adapters are served on their base model with a ``LoRARequest`` (one engine per base).
"""

from __future__ import annotations

from collections.abc import Sequence

from fwdrev.errors import UsageError
from fwdrev.evaluation.forcing import StepOutput, StepRequest

SETUP_COMMAND = "bash scripts/setup_env.sh eval"


def import_vllm():
    """The vllm module, or a UsageError with the command that creates its environment."""
    try:
        import vllm
    except ImportError as error:
        raise UsageError(
            f"--backend vllm needs vLLM, which is not installed in this environment ({error}). It has its "
            f"own environment (it pins other torch/transformers versions than training): create it with "
            f"`{SETUP_COMMAND}`, then run this command with .venv-eval/bin/python "
            "(or use --backend hf)") from error
    return vllm


def sampling_params(vllm, request: StepRequest):
    return vllm.SamplingParams(temperature=0.0, max_tokens=request.max_new_tokens,
                               stop_token_ids=list(request.stop_ids), skip_special_tokens=False,
                               detokenize=False)


def step_output(completion, request: StepRequest) -> StepOutput:
    """vLLM's completion as the hf backend reports it: the stop token split off."""
    ids = list(completion.token_ids)[: request.max_new_tokens]
    if ids and ids[-1] in request.stop_ids and completion.finish_reason == "stop":
        return StepOutput(ids[:-1], ids[-1])
    if completion.finish_reason == "stop":  # stop token not in the ids (vLLM versions differ)
        reason = completion.stop_reason
        return StepOutput(ids, reason if isinstance(reason, int) else request.stop_ids[0])
    return StepOutput(ids, None)


class VLLMBackend:
    def __init__(self, model_path: str, tokenizer_path: str | None = None, adapter_path: str | None = None,
                 tensor_parallel_size: int = 1, max_model_len: int | None = None, dtype: str = "bfloat16",
                 gpu_memory_utilization: float = 0.9, max_lora_rank: int = 256, engine=None,
                 enable_lora: bool = False):
        self.vllm = import_vllm()
        self.llm = engine or self.vllm.LLM(
            model=model_path, tokenizer=tokenizer_path or model_path, dtype=dtype,
            tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
            enable_prefix_caching=True, gpu_memory_utilization=gpu_memory_utilization,
            enable_lora=enable_lora or adapter_path is not None, max_lora_rank=max_lora_rank)
        self.lora = None
        if adapter_path is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest(str(adapter_path), abs(hash(str(adapter_path))) % 2**31 + 1, str(adapter_path))

    def generate(self, requests: Sequence[StepRequest]) -> list[StepOutput]:
        if not requests:
            return []
        prompts = [{"prompt_token_ids": list(r.prompt_ids)} for r in requests]
        params = [sampling_params(self.vllm, r) for r in requests]
        results = self.llm.generate(prompts, params, use_tqdm=True, lora_request=self.lora)
        return [step_output(result.outputs[0], request) for result, request in zip(results, requests)]
