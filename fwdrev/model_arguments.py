"""The model flags of the training scripts (``ModelArguments``), and where a run's tokenizer comes from.

Kept below the trainers and the script glue: the DPO reference cache keys on the tokenizer
folder without importing argument parsing, output guards or merging.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fwdrev.modeling import DEFAULT_LORA_TARGETS


@dataclass
class ModelArguments:
    model_name: str = field(metadata={"help": "Base model: a local folder or hub name."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the model folder."})
    use_flash_attention: bool = field(
        default=False, metadata={"help": "flash_attention_2 if flash-attn and CUDA are present, else SDPA."})
    use_lora: bool = field(default=True, metadata={"help": "Train a LoRA adapter (--no_use_lora: full fine-tuning)."})
    lora_r: int = field(default=256, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=512, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default=DEFAULT_LORA_TARGETS, metadata={"help": "Comma-separated module names, or 'all-linear'."})
    init_adapter: str | None = field(
        default=None, metadata={"help": "Continue training this saved LoRA adapter (e.g. an SFT checkpoint)."})
    merge_weights: bool = field(
        default=False, metadata={"help": "After training, also save base + adapter merged (float32) in "
                                         "OUTPUT_DIR/merged."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Train from scratch even if OUTPUT_DIR holds another run: its "
                                         "checkpoints, models and logs are removed first."})
    force_base_model: bool = field(
        default=False, metadata={"help": "Continue --init_adapter on --model_name even when that is not "
                                         "the model (content) the adapter was trained on."})


def training_tokenizer_source(model_args: ModelArguments) -> str:
    """The folder of the training tokenizer: the one saved with ``init_adapter`` if any, else the base model's."""
    if model_args.init_adapter and Path(model_args.init_adapter, "tokenizer_config.json").is_file():
        return model_args.init_adapter
    return model_args.model_name
