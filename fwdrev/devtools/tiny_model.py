"""A tiny, randomly initialised Qwen2 causal LM with a locally trained tokenizer.

Everything is built offline: a byte-level BPE (Qwen2.5-style pre-tokenizer and
special tokens) is trained on the project's own sample texts, then a small
`Qwen2ForCausalLM` is initialised from a fixed seed. Used by tests and CPU
quickstarts in place of a real checkpoint. ``build_and_save_qwen25`` instead puts
the exact Qwen2.5 tokenizer (fwdrev/devtools/qwen_tokenizer.py) around a tiny model with
Qwen2.5's 152,064-row vocabulary.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

from fwdrev.devtools.synthetic import IM_END, IM_START, SYSTEM_PROMPT

ENDOFTEXT, FIM_PAD = "<|endoftext|>", "<|fim_pad|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, FIM_PAD]
SPECIAL_TOKENS_PATTERN = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))

# Qwen2's split regex: digits are split one by one, which keeps arithmetic learnable.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"""
    r"""\s+(?!\S)|\s+"""
)

# Qwen2.5's template, with the default system prompt when none is given.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{%- for message in loop_messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

DEFAULT_SIZES = dict(
    hidden_size=128,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=384,
    max_position_embeddings=32768,  # long real rows (~35k chars) still fit
)
# Around the real 152,064-row vocabulary: a narrow model keeps the two embeddings small (~20 MB).
QWEN25_SIZES = dict(DEFAULT_SIZES, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=1,
                    intermediate_size=32)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> Qwen2Tokenizer:
    """Byte-level BPE trained on `texts`, wrapped as the Qwen2.5 tokenizer class.

    `vocab_size` is an upper bound: BPE stops once the corpus has no pair left to merge.
    Returned as `Qwen2Tokenizer` because that is what `AutoTokenizer` rebuilds for a
    qwen2 checkpoint in transformers 5 (it re-derives the pipeline from vocab + merges,
    NFC normalizer included), so the in-memory and reloaded tokenizers are identical.
    """
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,  # ids 0..3, in Qwen's order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text encodes
        show_progress=False,
    )
    bpe.train_from_iterator(_without_special_tokens(texts), trainer=trainer)
    trained = json.loads(bpe.to_str())["model"]
    return Qwen2Tokenizer(
        vocab=trained["vocab"],
        merges=[tuple(pair) for pair in trained["merges"]],
        eos_token=IM_END,
        pad_token=FIM_PAD,
        unk_token=None,
        extra_special_tokens=[ENDOFTEXT, IM_START],  # all four chat markers stay atomic
        chat_template=CHAT_TEMPLATE,
        model_max_length=DEFAULT_SIZES["max_position_embeddings"],
    )


def _without_special_tokens(texts: Iterable[str]) -> Iterable[str]:
    """Chat markers are atomic added tokens, so BPE should not spend merges on their characters."""
    for text in texts:
        yield from SPECIAL_TOKENS_PATTERN.split(text)


def build_tiny_model(
    tokenizer: Qwen2Tokenizer,
    hidden_size: int = DEFAULT_SIZES["hidden_size"],
    num_layers: int = DEFAULT_SIZES["num_layers"],
    num_heads: int = DEFAULT_SIZES["num_heads"],
    num_kv_heads: int = DEFAULT_SIZES["num_kv_heads"],
    intermediate_size: int = DEFAULT_SIZES["intermediate_size"],
    max_position_embeddings: int = DEFAULT_SIZES["max_position_embeddings"],
    seed: int = 0,
    vocab_size: int | None = None,
) -> Qwen2ForCausalLM:
    """Random-init Qwen2 sized to `tokenizer` (or `vocab_size` rows); untied lm_head like Qwen2.5-7B."""
    if vocab_size is not None and vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {vocab_size} is below the tokenizer's {len(tokenizer)} ids")
    config = Qwen2Config(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def build_and_save(output_dir: str, texts: Iterable[str], vocab_size: int = 2048, seed: int = 0, **sizes) -> None:
    """Train the tokenizer, build the model, save both with save_pretrained."""
    tokenizer = train_tokenizer(texts, vocab_size)
    model = build_tiny_model(tokenizer, seed=seed, **sizes)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)


def build_and_save_qwen25(output_dir: str, seed: int = 0, **sizes) -> None:
    """The exact Qwen2.5 tokenizer around a tiny model with Qwen2.5's 152,064 vocabulary rows."""
    from fwdrev.devtools.qwen_tokenizer import QWEN25_VOCAB_ROWS, build_qwen25_tokenizer

    tokenizer = build_qwen25_tokenizer()
    model = build_tiny_model(tokenizer, seed=seed, vocab_size=QWEN25_VOCAB_ROWS, **{**QWEN25_SIZES, **sizes})
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
