"""Data loading and validation: both input shapes, every bad-input case, the report."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fwdrev.data import (ASSISTANT_HEADER, DataValidationError, load_preference_data,
                         parse_sample_types, render_prompt)

SHARED_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "data-100samples.parquet"
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


@pytest.fixture
def shared_sample():
    if not SHARED_SAMPLE.is_file():
        pytest.skip(f"shared real sample not found at {SHARED_SAMPLE}")
    return SHARED_SAMPLE


def test_real_sample_splits_every_row_exactly(shared_sample):
    data = load_preference_data(shared_sample)
    frame = pd.read_parquet(shared_sample)
    adjusted = {i for rows in data.report.adjusted.values() for i in rows}
    assert len(adjusted) == 1  # the one row whose two prompts differ in white space only
    assert data.report.shape == "embedded"
    assert len(data.examples) == 100
    for example in data.examples:
        row = frame.loc[example.example_id]
        assert example.prompt + example.chosen == row["text"]
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
    assert (first.chosen, first.rejected) == ("good 0<|im_end|>\n", "bad 0<|im_end|>\n")
    assert (second.chosen, second.rejected) == ("good 1<|im_end|>\n", "bad 1<|im_end|>\n")
    assert [e.sample_type for e in data.examples] == ["original", "flipped"]


def test_real_sample_whitespace_prompt_row_is_accepted_and_reported(shared_sample):
    data = load_preference_data(shared_sample)
    adjusted = [rows for rows in data.report.adjusted.values()]
    assert len(adjusted) == 1 and len(adjusted[0]) == 1
    row = adjusted[0][0]
    frame = pd.read_parquet(shared_sample)
    chosen_prompt = frame.loc[row, "text"].rsplit(ASSISTANT_HEADER, 1)[0]
    rejected_prompt = frame.loc[row, "worse-text"].rsplit(ASSISTANT_HEADER, 1)[0]
    assert chosen_prompt != rejected_prompt
    assert "".join(chosen_prompt.split()) == "".join(rejected_prompt.split())
    example = next(e for e in data.examples if e.example_id == row)
    assert example.prompt == chosen_prompt + ASSISTANT_HEADER


def test_flipped_rows_use_the_reverse_question_from_the_user_turn(shared_sample):
    data = load_preference_data(shared_sample, sample_types="flipped")
    frame = pd.read_parquet(shared_sample)
    assert len(data.examples) == 50
    squash = lambda text: "".join(text.split())  # the real data re-wraps some questions
    matches = 0
    for example in data.examples:
        user_turn = squash(example.prompt.split("<|im_start|>user\n", 1)[1])
        assert squash(frame.loc[example.example_id, "question"]) not in user_turn
        matches += squash(frame.loc[example.example_id, "relevant-question"]) in user_turn
    assert matches >= 45  # a few real rows carry a slightly edited copy of the reverse question


@pytest.mark.parametrize("types,expected", [("original", 50), ("flipped", 50),
                                            ("original,flipped", 100), (None, 100)])
def test_sample_type_filter_counts(shared_sample, types, expected):
    data = load_preference_data(shared_sample, sample_types=types)
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
    data = load_preference_data(write(frame, tmp_path), prompt_field="prompt",
                                chosen_field="good", rejected_field="bad")
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

    data = load_preference_data(path, drop_invalid_rows=True)
    assert [e.example_id for e in data.examples] == [0, 1, 4]
    excluded = sorted(i for rows in data.report.excluded.values() for i in rows)
    assert excluded == [2, 3, 5]
    assert "excluded" in data.report.summary()
    assert list(data.frame.index) == [0, 1, 4]


def test_unknown_sample_type_is_an_error(tmp_path):
    path = write(embedded_rows(), tmp_path)
    with pytest.raises(DataValidationError, match="sample_type.*reversed"):
        load_preference_data(path, sample_types="reversed")


def test_report_json_round_trip(tmp_path):
    import json

    data = load_preference_data(write(embedded_rows(), tmp_path))
    data.report.save_json(tmp_path / "report.json")
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["used_rows"] == 4 and saved["shape"] == "embedded"
