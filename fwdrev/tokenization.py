"""Token-level encoding, truncation and padding shared by SFT, DPO and the analysis.

Prompt and response are encoded separately so the response boundary is exact. Truncation is
in tokens: a long prompt keeps its end (the question and the assistant header), a long
response keeps its start (the beginning of the reasoning).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from fwdrev.data import DataReport, PreferenceExample
from fwdrev.errors import LengthSettingsError

IGNORE_INDEX = -100
# Version of the rules that turn a row into the tokens that get scored: response splitting and
# clean-up (fwdrev/data.py, e.g. white space after the final <|im_end|>), prompt/response
# encoding and truncation (here), --scoring original (fwdrev/original_scoring.py), and which
# tokens count (fwdrev/logprobs.py). Cached reference log-probs and analysis parts/shards carry
# it in their keys: bump it in any change that alters a token id or a scored position, so
# values made under the old rules are recomputed rather than reused.
SCORING_RULES_VERSION = 1


@dataclass
class TokenizedPair:
    example_id: int
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    prompt_truncated: bool = False
    chosen_truncated: bool = False
    rejected_truncated: bool = False


class PairDataset(torch.utils.data.Dataset):
    """Tokenized pairs as a ``torch`` dataset (DPO batches both responses, SFT the chosen one)."""

    def __init__(self, pairs: list[TokenizedPair]):
        self.pairs = pairs

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        return self.pairs[index]


def default_max_prompt_length(max_length: int) -> int:
    """The prompt budget when none is given: at most 2048 tokens and half of ``max_length``."""
    return min(2048, max_length // 2)


def check_lengths(max_length: int, max_prompt_length: int) -> None:
    if not 0 < max_prompt_length < max_length:
        raise LengthSettingsError(
            f"need 0 < --max_prompt_length < --max_length, got --max_prompt_length {max_prompt_length} "
            f"and --max_length {max_length} (lower --max_prompt_length, e.g. MAX_PROMPT_LENGTH in the launchers)"
        )


def encode_response(tokenizer, response: str, append_eos: bool) -> list[int]:
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if append_eos and tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids = ids + [tokenizer.eos_token_id]
    return ids


def truncate_prompt(prompt_ids: list[int], max_prompt_length: int) -> tuple[list[int], bool]:
    """Keep the end of a long prompt."""
    if len(prompt_ids) <= max_prompt_length:
        return prompt_ids, False
    return prompt_ids[-max_prompt_length:], True


def truncate_response(response_ids: list[int], budget: int) -> tuple[list[int], bool]:
    """Keep the start of a long response."""
    if len(response_ids) <= budget:
        return response_ids, False
    return response_ids[:budget], True


def encode_example(tokenizer, example: PreferenceExample, max_length: int,
                   max_prompt_length: int) -> TokenizedPair:
    """Encode one preference example; prompt + each response fits in ``max_length`` tokens."""
    check_lengths(max_length, max_prompt_length)
    if not example.prompt_is_rendered:
        raise ValueError(f"example {example.example_id}: plain prompt not rendered yet "
                         "(load the data with a tokenizer)")
    prompt_ids = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    prompt_ids, prompt_truncated = truncate_prompt(prompt_ids, max_prompt_length)
    budget = max_length - len(prompt_ids)
    append_eos = example.shape == "plain"
    chosen_ids, chosen_truncated = truncate_response(
        encode_response(tokenizer, example.chosen, append_eos), budget)
    rejected_ids, rejected_truncated = truncate_response(
        encode_response(tokenizer, example.rejected, append_eos), budget)
    return TokenizedPair(example.example_id, prompt_ids, chosen_ids, rejected_ids,
                         prompt_truncated, chosen_truncated, rejected_truncated)


def encode_examples(tokenizer, examples: list[PreferenceExample], max_length: int,
                    max_prompt_length: int, report: DataReport | None = None,
                    include_rejected: bool = True) -> list[TokenizedPair]:
    """Encode all examples and record truncated row indices in ``report``."""
    pairs = [encode_example(tokenizer, e, max_length, max_prompt_length) for e in examples]
    if report is not None:
        report.truncated = {
            "prompt (kept its last tokens)": [p.example_id for p in pairs if p.prompt_truncated],
            "chosen response (kept its first tokens)": [p.example_id for p in pairs if p.chosen_truncated],
        }
        if include_rejected:
            report.truncated["rejected response (kept its first tokens)"] = [
                p.example_id for p in pairs if p.rejected_truncated]
    return pairs


def pad_sequences(sequences: list[tuple[list[int], list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad (input_ids, labels) pairs into a batch; padding carries no label."""
    width = max(len(ids) for ids, _ in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(row_labels)] = torch.tensor(row_labels)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def prompt_response_sequence(prompt_ids: list[int], response_ids: list[int]) -> tuple[list[int], list[int]]:
    """Input ids and labels for one sequence: the prompt carries no label."""
    return prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids


def collate_pairs(pairs: list[TokenizedPair], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Batch of 2B sequences: the B chosen first, then the B rejected (one forward pass)."""
    sequences = [prompt_response_sequence(p.prompt_ids, p.chosen_ids) for p in pairs]
    sequences += [prompt_response_sequence(p.prompt_ids, p.rejected_ids) for p in pairs]
    batch = pad_sequences(sequences, pad_token_id)
    batch["example_ids"] = torch.tensor([p.example_id for p in pairs], dtype=torch.long)
    return batch


class ChosenRejected(NamedTuple):
    chosen: Any  # a tensor or list: whatever was split
    rejected: Any


def split_halves(values, num_pairs: int) -> ChosenRejected:
    """The chosen and rejected halves of per-row values of a ``collate_pairs`` batch of ``num_pairs``."""
    if len(values) != 2 * num_pairs:
        raise ValueError(f"a batch of {num_pairs} pairs has {2 * num_pairs} rows, got {len(values)} values")
    return ChosenRejected(values[:num_pairs], values[num_pairs:])
