"""Token-level truncation, label masking and batching."""

import pytest
import torch

from fwdrev.data import DataReport, PreferenceExample
from fwdrev.tokenization import (
    IGNORE_INDEX,
    LengthSettingsError,
    collate_pairs,
    encode_example,
    encode_examples,
    split_halves,
)


class CharTokenizer:
    """One token per character (id = code point); EOS = 0. Enough to count tokens exactly."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def decode(ids):
    return "".join(chr(i) for i in ids if i)


def example(i, prompt, chosen, rejected, shape="embedded"):
    return PreferenceExample(i, prompt, chosen, rejected, "original", shape)


def test_no_truncation_keeps_everything():
    pair = encode_example(CharTokenizer(), example(0, "PROMPT:", "good", "bad"), 100, 50)
    assert decode(pair.prompt_ids) == "PROMPT:" and decode(pair.chosen_ids) == "good"
    assert not (pair.prompt_truncated or pair.chosen_truncated or pair.rejected_truncated)


def test_long_prompt_keeps_its_end_and_long_response_keeps_its_start():
    pair = encode_example(CharTokenizer(), example(0, "0123456789", "abcdefghij", "xy"),
                          max_length=12, max_prompt_length=4)
    assert decode(pair.prompt_ids) == "6789"
    assert decode(pair.chosen_ids) == "abcdefgh"  # 12 - 4 prompt tokens
    assert decode(pair.rejected_ids) == "xy"
    assert pair.prompt_truncated and pair.chosen_truncated and not pair.rejected_truncated


def test_plain_responses_get_eos_embedded_do_not():
    tok = CharTokenizer()
    plain = encode_example(tok, example(0, "p", "ab", "cd", shape="plain"), 20, 10)
    embedded = encode_example(tok, example(0, "p", "ab", "cd"), 20, 10)
    assert plain.chosen_ids[-1] == 0 and plain.rejected_ids[-1] == 0
    assert embedded.chosen_ids == [ord("a"), ord("b")]


def test_truncation_counts_are_reported_with_row_indices():
    examples = [example(0, "short", "ok", "ok2"), example(7, "a very long prompt", "r", "s"),
                example(9, "p", "a very long response indeed", "t")]
    report = DataReport(path="x", shape="embedded", total_rows=10, selected_rows=3)
    encode_examples(CharTokenizer(), examples, max_length=16, max_prompt_length=8, report=report)
    assert report.truncated["prompt (kept its last tokens)"] == [7]
    assert report.truncated["chosen response (kept its first tokens)"] == [9]
    assert report.truncated["rejected response (kept its first tokens)"] == []


def test_bad_lengths_rejected():
    with pytest.raises(ValueError, match="max_prompt_length"):
        encode_example(CharTokenizer(), example(0, "p", "a", "b"), 10, 10)


def test_collate_puts_chosen_then_rejected_and_masks_prompt_and_padding():
    tok = CharTokenizer()
    pairs = [encode_example(tok, example(3, "PP", "abc", "d"), 20, 10),
             encode_example(tok, example(5, "Q", "e", "fghi"), 20, 10)]
    batch = collate_pairs(pairs, pad_token_id=1)
    assert batch["input_ids"].shape == (4, 5)
    assert batch["example_ids"].tolist() == [3, 5]
    assert decode(batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()) == "PPabc"
    assert decode(batch["input_ids"][3][batch["attention_mask"][3].bool()].tolist()) == "Qfghi"
    labels = batch["labels"]
    assert labels[0].tolist() == [IGNORE_INDEX, IGNORE_INDEX] + [ord(c) for c in "abc"]
    assert labels[2].tolist() == [IGNORE_INDEX, IGNORE_INDEX, ord("d"), IGNORE_INDEX, IGNORE_INDEX]
    assert torch.equal(batch["attention_mask"][2], torch.tensor([1, 1, 1, 0, 0]))


def test_split_halves_names_the_chosen_and_rejected_rows_of_a_batch():
    tok = CharTokenizer()
    pairs = [encode_example(tok, example(3, "PP", "abc", "d"), 20, 10),
             encode_example(tok, example(5, "Q", "e", "fghi"), 20, 10)]
    lengths = collate_pairs(pairs, pad_token_id=1)["attention_mask"].sum(-1)
    halves = split_halves(lengths, len(pairs))
    assert halves.chosen.tolist() == [5, 2] and halves.rejected.tolist() == [3, 5]
    assert split_halves(["c0", "c1", "r0", "r1"], 2) == (["c0", "c1"], ["r0", "r1"])
    with pytest.raises(ValueError, match="a batch of 2 pairs has 4 rows, got 3"):
        split_halves([1, 2, 3], 2)


@pytest.mark.parametrize("max_length, expected", [(512, 256), (20000, 2048), (4097, 2048), (3, 1)])
def test_training_prompt_budget_defaults_to_half_of_max_length_up_to_2048(max_length, expected):
    """`--max_length 512` alone used to exit 2: the prompt budget defaulted to 2048."""
    from fwdrev.data_arguments import DataArguments
    from fwdrev.training import parse_arguments

    data_args = parse_arguments((DataArguments,), {}, ["--train_file_path", "x", "--max_length", str(max_length)])[0]
    assert data_args.max_prompt_length == expected
    explicit = DataArguments(train_file_path="x", max_length=512, max_prompt_length=500)
    assert explicit.max_prompt_length == 500
    with pytest.raises(LengthSettingsError, match="--max_prompt_length 512 and --max_length 512"):
        DataArguments(train_file_path="x", max_length=512, max_prompt_length=512)
