"""Model, tokenizer and LoRA adapter loading shared by every script."""

from __future__ import annotations

import json
import logging
import warnings
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch

from fwdrev.output_head import check_output_head, output_head

logger = logging.getLogger(__name__)

DEFAULT_LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


@cache
def pick_attn_implementation(use_flash_attention: bool) -> str:
    """flash_attention_2 when asked for and usable, else PyTorch SDPA (warned once)."""
    if not use_flash_attention:
        return "sdpa"
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        reason = "the flash_attn package is not installed"
    else:
        if torch.cuda.is_available():
            return "flash_attention_2"
        reason = "no CUDA device is available"
    warnings.warn(f"--use_flash_attention: {reason}; falling back to PyTorch SDPA attention",
                  stacklevel=2)
    return "sdpa"


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # only used as padding, never scored
    tokenizer.padding_side = "right"
    return tokenizer


def default_dtype(bf16: bool = False, fp16: bool = False) -> torch.dtype:
    if bf16:
        return torch.bfloat16
    if fp16:
        return torch.float16
    return torch.float32


def load_causal_lm(path: str, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa",
                   trust_remote_code: bool = False, device: torch.device | str | None = None):
    """``device``: load the weights straight onto it (no CPU copy of a GPU model first).

    ``attn_implementation`` falls back to what the model class supports (Gemma-2 has no SDPA).
    The model's output head is checked against its own forward (``check_output_head``): a model
    whose logits our chunked log-prob head cannot reproduce is refused (UsageError).
    """
    from transformers import AutoModelForCausalLM
    from transformers.integrations import is_deepspeed_zero3_enabled


    attn_implementation = supported_attn_implementation(path, attn_implementation, trust_remote_code)
    placement = {"device_map": {"": str(device)}} if device is not None and str(device) != "cpu" else {}
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code, **placement)
    if is_deepspeed_zero3_enabled():  # partitioned: no forward before the engine exists
        output_head(model)  # refuses the architectures known to be unsupported
    else:
        check_output_head(model)
    return model


# the class attribute that says whether a transformers model class supports each kernel
_ATTENTION_SUPPORT = {"sdpa": "_supports_sdpa", "flash_attention_2": "_supports_flash_attn"}


def supported_attn_implementation(path: str, wanted: str, trust_remote_code: bool = False) -> str:
    """``wanted`` if the model class at ``path`` supports it, else SDPA or eager (warned once)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.auto_factory import _get_model_class

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    try:
        model_class = _get_model_class(config, AutoModelForCausalLM._model_mapping)
    except (KeyError, ValueError):  # remote code: transformers decides
        return wanted
    if getattr(model_class, _ATTENTION_SUPPORT.get(wanted, ""), True):
        return wanted
    fallback = "sdpa" if wanted != "sdpa" and getattr(model_class, "_supports_sdpa", False) else "eager"
    _warn_attention_fallback(model_class.__name__, wanted, fallback)
    return fallback


@cache
def _warn_attention_fallback(model_class: str, wanted: str, fallback: str) -> None:
    warnings.warn(f"{model_class} does not support {wanted} attention; using {fallback}", stacklevel=3)


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base_model(adapter_dir: str | Path) -> str:
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return config["base_model_name_or_path"]


def make_lora_config(r: int = 256, alpha: int = 512, dropout: float = 0.05,
                     target_modules: str | list[str] = DEFAULT_LORA_TARGETS):
    from peft import LoraConfig

    if isinstance(target_modules, str) and target_modules != "all-linear":
        target_modules = [m.strip() for m in target_modules.split(",") if m.strip()]
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                      bias="none", task_type="CAUSAL_LM")


def add_lora(model, lora_config, seed: int, fp32_adapter: bool = False):
    """Wrap ``model`` with a fresh LoRA adapter; seeded so every rank starts from the same init.

    ``fp32_adapter=False`` keeps the adapter in the base model's dtype (bf16 under DeepSpeed),
    which ZeRO-3 needs: it flattens all trainable parameters into one dtype, and keeps fp32
    master copies itself. Without DeepSpeed the optimizer updates the adapter's own weights, so
    they must be fp32 (``fp32_adapter=True``): a bf16 weight drops any update smaller than
    ~1/256 of itself, e.g. most AdamW steps at lr 5e-7.
    """
    from peft import get_peft_model

    torch.manual_seed(seed)
    return get_peft_model(model, lora_config, autocast_adapter_dtype=fp32_adapter)


def load_adapter(model, adapter_dir: str | Path, adapter_name: str = "default", is_trainable=False,
                 fp32_adapter: bool = False):
    """Attach a saved adapter to a base model (or to a PeftModel under another name).

    The adapter takes the base model's dtype, or float32 with ``fp32_adapter`` (see ``add_lora``).
    """
    from peft import PeftModel

    if hasattr(model, "load_adapter") and hasattr(model, "peft_config"):
        model.load_adapter(str(adapter_dir), adapter_name=adapter_name, is_trainable=is_trainable,
                           autocast_adapter_dtype=fp32_adapter)
        return model
    return PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=adapter_name,
                                     is_trainable=is_trainable, autocast_adapter_dtype=fp32_adapter)


@contextmanager
def zero3_init_disabled():
    """Load models normally even while a DeepSpeed ZeRO-3 config is registered.

    The HF integration partitions every ``from_pretrained`` across ranks once a ZeRO-3 config
    exists; a load on one rank only (merging, probes) would then wait forever for the others.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def disable_dropout(model) -> None:
    """Set every dropout rate in ``model`` to 0, as TRL's DPO does by default: dropout modules
    (LoRA's included) and the attention-dropout rate that transformers' attention modules read at
    each call. A policy in train mode then computes what its reference computes in eval mode."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


@contextmanager
def eval_mode(model):
    """No dropout and no autograd inside; the model's train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
