"""Data loading and validation: both input shapes, every bad-input case, the report."""

import numpy as np
import pandas as pd
import pytest

from fwdrev.data import (
    ASSISTANT_HEADER,
    DataValidationError,
    RowSelection,
    load_preference_data,
    parse_sample_types,
    render_prompt,
)

CONVERSATION = ("<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n"
                + ASSISTANT_HEADER + "{r}<|im_end|>\n")


def embedded_rows(n=4):
    return pd.DataFrame({
        "question": [f"q{i}" for i in range(n)],
        "text": [CONVERSATION.format(q=f"q{i}", r=f"good {i}") for i in range(n)],
        "worse-text": [CONVERSATION.format(q=f"q{i}", r=f"bad {i}") for i in range(n)],
        "sample_type": ["original", "flipped"] * (n // 2),
    })


def write(frame, tmp_path, name="d.parquet"):
    path = tmp_path / name
    if name.endswith(".parquet"):
        frame.to_parquet(path)
    else:
        frame.to_json(path, orient="records", lines=True)
    return path


def test_real_sample_splits_every_row_exactly(shared_sample_path):
    data = load_preference_data(shared_sample_path)
    frame = pd.read_parquet(shared_sample_path)
    adjusted = set(data.report.adjusted["prompts differ only in white space; chosen prompt used"])
    assert len(adjusted) == 1  # the one row whose two prompts differ in white space only
    assert data.report.shape == "embedded"
    assert len(data.examples) == 100
    for example in data.examples:
        row = frame.loc[example.example_id]
        assert example.prompt + example.chosen + "\n" == row["text"]  # the trailing newline is dropped
        assert example.prompt.endswith(ASSISTANT_HEADER)
        assert not example.chosen.startswith("<|im_start|>system")  # prompt never duplicated
        # the rejected response is everything after the last assistant header of its own text
        assert example.rejected == row["worse-text"].split(ASSISTANT_HEADER)[-1]
        if example.example_id not in adjusted:  # same prompt: prompt + response is the whole text
            assert example.prompt + example.rejected == row["worse-text"]
    assert data.report.sample_type_counts == {"original": 50, "flipped": 50}


def test_embedded_rows_split_into_the_exact_prompt_and_responses(tmp_path):
    data = load_preference_data(write(embedded_rows(2), tmp_path))
    first, second = data.examples
    assert first.prompt == ("<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nq0<|im_end|>\n"
                            "<|im_start|>assistant\n")
    # the white space after the final <|im_end|> is not part of either response
    assert (first.chosen, first.rejected) == ("good 0<|im_end|>", "bad 0<|im_end|>")
    assert (second.chosen, second.rejected) == ("good 1<|im_end|>", "bad 1<|im_end|>")
    assert [e.sample_type for e in data.examples] == ["original", "flipped"]


def test_real_sample_whitespace_prompt_row_is_accepted_and_reported(shared_sample_path):
    data = load_preference_data(shared_sample_path)
    assert data.report.adjusted["prompts differ only in white space; chosen prompt used"] == [14]
    row = 14
    frame = pd.read_parquet(shared_sample_path)
    chosen_prompt = frame.loc[row, "text"].rsplit(ASSISTANT_HEADER, 1)[0]
    rejected_prompt = frame.loc[row, "worse-text"].rsplit(ASSISTANT_HEADER, 1)[0]
    assert chosen_prompt != rejected_prompt
    assert "".join(chosen_prompt.split()) == "".join(rejected_prompt.split())
    example = next(e for e in data.examples if e.example_id == row)
    assert example.prompt == chosen_prompt + ASSISTANT_HEADER


def test_flipped_rows_use_the_reverse_question_from_the_user_turn(shared_sample_path):
    data = load_preference_data(shared_sample_path, RowSelection(sample_types="flipped"))
    frame = pd.read_parquet(shared_sample_path)
    assert len(data.examples) == 50
    def squash(text):  # the real data re-wraps some questions
        return "".join(text.split())

    matches = 0
    for example in data.examples:
        user_turn = squash(example.prompt.split("<|im_start|>user\n", 1)[1])
        assert squash(frame.loc[example.example_id, "question"]) not in user_turn
        matches += squash(frame.loc[example.example_id, "relevant-question"]) in user_turn
    assert matches >= 45  # a few real rows carry a slightly edited copy of the reverse question


@pytest.mark.parametrize("types,expected", [("original", 50), ("flipped", 50),
                                            ("original,flipped", 100), (None, 100)])
def test_sample_type_filter_counts(shared_sample_path, types, expected):
    data = load_preference_data(shared_sample_path, RowSelection(sample_types=types))
    assert len(data.examples) == expected == data.report.used_rows
    assert data.report.selected_rows == expected and data.report.total_rows == 100


def test_parse_sample_types():
    assert parse_sample_types("original, flipped") == ["original", "flipped"]
    assert parse_sample_types("all") is None and parse_sample_types("") is None


def test_plain_shape_renders_with_chat_template_or_fallback(tmp_path):
    frame = pd.DataFrame({"question": ["What is 2+2?"], "text": ["4"], "worse-text": ["5"]})
    path = write(frame, tmp_path, "plain.jsonl")
    raw = load_preference_data(path)
    assert raw.report.shape == "plain" and not raw.examples[0].prompt_is_rendered

    class TemplateTokenizer:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return f"<user>{messages[0]['content']}</user><assistant>"

    rendered = load_preference_data(path, tokenizer=TemplateTokenizer())
    assert rendered.examples[0].prompt == "<user>What is 2+2?</user><assistant>"
    assert rendered.examples[0].chosen == "4"
    assert render_prompt("Q", None) == "### Question:\nQ\n\n### Answer:\n"


def test_custom_field_names(tmp_path):
    frame = pd.DataFrame({"prompt": ["p"], "good": ["a"], "bad": ["b"]})
    data = load_preference_data(write(frame, tmp_path), RowSelection(prompt_field="prompt",
                                                                             chosen_field="good", rejected_field="bad"))
    assert (data.examples[0].chosen, data.examples[0].rejected) == ("a", "b")


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(DataValidationError, match="file not found"):
        load_preference_data(tmp_path / "nope.parquet")
    (tmp_path / "d.csv").write_text("a\n1\n")
    with pytest.raises(DataValidationError, match=r"d\.csv.*unknown extension"):
        load_preference_data(tmp_path / "d.csv")


def test_missing_column_names_file_and_column(tmp_path):
    path = write(embedded_rows().drop(columns=["worse-text"]), tmp_path)
    with pytest.raises(DataValidationError, match=r"d\.parquet.*missing column.*worse-text"):
        load_preference_data(path)
    plain = pd.DataFrame({"text": ["a"], "worse-text": ["b"]})
    with pytest.raises(DataValidationError, match="missing column.*question"):
        load_preference_data(write(plain, tmp_path, "p.parquet"))


@pytest.mark.parametrize("bad_value", [None, np.nan, "", "   ", 7])
def test_bad_values_name_column_and_rows(tmp_path, bad_value):
    frame = embedded_rows(6).astype(object)
    frame.loc[[1, 4], "worse-text"] = bad_value
    path = write(frame, tmp_path, "bad.jsonl")
    with pytest.raises(DataValidationError) as error:
        load_preference_data(path)
    message = str(error.value)
    assert "bad.jsonl" in message and "'worse-text'" in message and "[1, 4]" in message


def test_identical_and_mismatched_prompts_are_errors_or_dropped(tmp_path):
    frame = embedded_rows(6)
    frame.loc[2, "worse-text"] = frame.loc[2, "text"]
    frame.loc[3, "worse-text"] = CONVERSATION.format(q="another question", r="bad")
    frame.loc[5, "text"] = "no header here"
    path = write(frame, tmp_path)
    with pytest.raises(DataValidationError) as error:
        load_preference_data(path)
    message = str(error.value)
    assert "identical" in message and "[2]" in message
    assert "different prompts" in message and "[3]" in message
    assert "assistant header" in message and "[5]" in message

    data = load_preference_data(path, RowSelection(drop_invalid_rows=True))
    assert [e.example_id for e in data.examples] == [0, 1, 4]
    excluded = sorted(i for rows in data.report.excluded.values() for i in rows)
    assert excluded == [2, 3, 5]
    assert "excluded" in data.report.summary()
    assert list(data.frame.index) == [0, 1, 4]


def test_unknown_sample_type_is_an_error(tmp_path):
    path = write(embedded_rows(), tmp_path)
    with pytest.raises(DataValidationError, match="sample_type.*reversed"):
        load_preference_data(path, RowSelection(sample_types="reversed"))


def test_report_json_round_trip(tmp_path):
    import json

    data = load_preference_data(write(embedded_rows(), tmp_path))
    data.report.save_json(tmp_path / "report.json")
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["used_rows"] == 4 and saved["shape"] == "embedded"


TRAILING_TEXT = "column 'text': white space after the final <|im_end|> dropped from the response"
TRAILING_WORSE = "column 'worse-text': white space after the final <|im_end|> dropped from the response"


def test_real_sample_responses_end_at_im_end_on_both_sides(shared_sample_path):
    """Every real `text` ends with <|im_end|>\\n and no `worse-text` does: y+ must not score one token more."""
    data = load_preference_data(shared_sample_path)
    frame = pd.read_parquet(shared_sample_path)
    assert frame["text"].str.endswith("<|im_end|>\n").all()
    assert not frame["worse-text"].str.endswith("\n").any()
    for example in data.examples:
        assert example.chosen.endswith("<|im_end|>") and example.rejected.endswith("<|im_end|>")
        assert frame.loc[example.example_id, "worse-text"].endswith(example.rejected)
    assert data.report.adjusted[TRAILING_TEXT] == list(range(100))
    assert TRAILING_WORSE not in data.report.adjusted


def test_trailing_white_space_after_im_end_is_dropped_and_reported(tmp_path):
    frame = embedded_rows(4)
    frame.loc[1, "worse-text"] = frame.loc[1, "worse-text"] + " \n\n"
    frame.loc[2, "text"] = frame.loc[2, "text"].rstrip("\n")
    frame.loc[3, "text"] = frame.loc[3, "text"] + "tail"  # text after the marker: left alone
    data = load_preference_data(write(frame, tmp_path))
    chosen = {e.example_id: e.chosen for e in data.examples}
    rejected = {e.example_id: e.rejected for e in data.examples}
    assert chosen[0] == "good 0<|im_end|>" and rejected[0] == "bad 0<|im_end|>"
    assert rejected[1] == "bad 1<|im_end|>" and chosen[2] == "good 2<|im_end|>"
    assert chosen[3] == "good 3<|im_end|>\ntail"
    assert data.report.adjusted[TRAILING_TEXT] == [0, 1]
    assert data.report.adjusted[TRAILING_WORSE] == [0, 1, 2, 3]
    assert "white space after the final" in data.report.summary()
    sft = load_preference_data(write(frame, tmp_path), RowSelection(rejected_field=None))
    assert sft.examples[0].chosen == "good 0<|im_end|>" and sft.examples[0].rejected == ""


@pytest.mark.parametrize("chosen_q,rejected_q", [("What is 12 3?", "What is 1 23?"),
                                                 ("What is 123?", "What is 1 23?")])
def test_prompts_whose_characters_move_across_white_space_are_a_mismatch(tmp_path, chosen_q, rejected_q):
    frame = embedded_rows(2)
    frame.loc[0, "text"] = CONVERSATION.format(q=chosen_q, r="good")
    frame.loc[0, "worse-text"] = CONVERSATION.format(q=rejected_q, r="bad")
    with pytest.raises(DataValidationError, match=r"different prompts: rows \[0\]"):
        load_preference_data(write(frame, tmp_path))


def test_prompts_that_differ_in_white_space_runs_and_turn_ends_are_accepted(tmp_path):
    frame = embedded_rows(2)
    frame.loc[0, "text"] = CONVERSATION.format(q="What is  12\n3? ", r="good")
    frame.loc[0, "worse-text"] = CONVERSATION.format(q="What is 12 3?", r="bad")
    data = load_preference_data(write(frame, tmp_path))
    assert data.report.adjusted["prompts differ only in white space; chosen prompt used"] == [0]
    assert "What is  12\n3? <|im_end|>" in data.examples[0].prompt


def plain_rows():
    return pd.DataFrame({"question": ["fwd 0", "fwd 0", "fwd 1", "fwd 1"],
                         "relevant-question": ["rev 0", "rev 0", "rev 1", "rev 1"],
                         "text": ["a", "b", "c", "d"], "worse-text": ["w", "x", "y", "z"],
                         "sample_type": ["original", "flipped", "original", "flipped"]})


def test_plain_flipped_rows_are_prompted_with_the_reverse_question(tmp_path):
    path = write(plain_rows(), tmp_path)
    data = load_preference_data(path)
    assert [e.prompt for e in data.examples] == ["fwd 0", "rev 0", "fwd 1", "rev 1"]
    reason = "flipped rows prompted with column 'relevant-question' (the reverse question)"
    assert data.report.adjusted[reason] == [1, 3]
    custom = plain_rows().rename(columns={"relevant-question": "reverse"})
    data = load_preference_data(write(custom, tmp_path, "c.parquet"), RowSelection(flipped_prompt_field="reverse"))
    assert [e.prompt for e in data.examples] == ["fwd 0", "rev 0", "fwd 1", "rev 1"]
    off = load_preference_data(path, RowSelection(flipped_prompt_field=None))
    assert [e.prompt for e in off.examples] == ["fwd 0", "fwd 0", "fwd 1", "fwd 1"] and not off.report.adjusted
    without_column = load_preference_data(write(plain_rows().drop(columns=["relevant-question"]),
                                                tmp_path, "n.parquet"))
    assert [e.prompt for e in without_column.examples] == ["fwd 0", "fwd 0", "fwd 1", "fwd 1"]


def test_plain_flipped_row_without_its_reverse_question_names_column_and_row(tmp_path):
    frame = plain_rows()
    frame.loc[3, "relevant-question"] = ""
    frame.loc[2, "relevant-question"] = ""  # an original row: its reverse question is not used
    with pytest.raises(DataValidationError, match=r"'relevant-question'.*rows \[3\]"):
        load_preference_data(write(frame, tmp_path))
