"""Synthetic forward/reverse preference data: schema, pairing, correctness, determinism, shipped files."""

import operator
import re
import subprocess
import sys

import pandas as pd
import pytest

from fwdrev import data as data_module
from fwdrev.devtools.synthetic import ASSISTANT_HEADER, generate_preference_rows
from fwdrev.io import write_table

STRING_COLUMNS = ["sample_type", "question", "relevant-question", "solution", "text", "worse-text"]
USER_TURN = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.S)
# Op phrases of both question styles, parsed independently of the generator's templates.
OP_PHRASE = re.compile(r"\b(add|increas|subtract|decreas|multipl)\w*(?: it)?(?: by)? (\d+)", re.I)
FORWARD = {"add": operator.add, "increas": operator.add, "subtract": operator.sub,
           "decreas": operator.sub, "multipl": operator.mul}
INVERSE = {"add": operator.sub, "increas": operator.sub, "subtract": operator.add,
           "decreas": operator.add, "multipl": operator.floordiv}
TRACE_LINE = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+)$", re.M)
TRACE_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


@pytest.fixture(scope="module")
def frame():
    return generate_preference_rows(100, seed=0)


def parsed_ops(question):
    return [(verb.lower(), int(k)) for verb, k in OP_PHRASE.findall(question)]


def user_turn(text):
    return USER_TURN.search(text).group(1)


def response(text):
    return text.split(ASSISTANT_HEADER, 1)[1]


def test_schema_and_dtypes(frame):
    assert list(frame.columns) == ["problem_id"] + STRING_COLUMNS
    assert frame["problem_id"].dtype == "int64"
    for column in STRING_COLUMNS:
        assert pd.api.types.is_string_dtype(frame[column]), column
        assert frame[column].map(type).eq(str).all(), column
    assert frame.notna().all().all()


def test_split_and_row_order(frame):
    assert frame["sample_type"].value_counts().to_dict() == {"original": 50, "flipped": 50}
    assert frame["sample_type"].tolist() == ["original"] * 50 + ["flipped"] * 50
    assert frame["problem_id"].tolist() == list(range(50)) * 2


def test_odd_or_empty_row_counts_are_rejected():
    for bad in (0, 7):
        with pytest.raises(ValueError, match="even"):
            generate_preference_rows(bad)


def test_same_seed_is_identical_and_other_seed_differs(tmp_path):
    first, second = generate_preference_rows(40, seed=3), generate_preference_rows(40, seed=3)
    pd.testing.assert_frame_equal(first, second)
    write_table(first, tmp_path / "a.parquet")
    write_table(second, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "b.parquet"]  # no temp files left
    other = generate_preference_rows(40, seed=4)
    assert not first["text"].equals(other["text"])


def test_chosen_and_rejected_share_the_prompt_prefix(frame):
    for chosen, rejected in zip(frame["text"], frame["worse-text"]):
        cut = chosen.index(ASSISTANT_HEADER) + len(ASSISTANT_HEADER)
        assert rejected[:cut] == chosen[:cut]
        assert chosen.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
        assert response(chosen).startswith("<|im_start|>think\n")
        assert "\n<|im_start|>answer\nAnswer: " in response(chosen)
        # as in the real data: every y+ ends with <|im_end|>\\n, no y- does
        assert chosen.endswith("<|im_end|>\n") and rejected.endswith("<|im_end|>")


def test_user_turns_and_pairing_of_original_and_flipped_rows(frame):
    original = frame[frame["sample_type"] == "original"].reset_index(drop=True)
    flipped = frame[frame["sample_type"] == "flipped"].reset_index(drop=True)
    pd.testing.assert_series_equal(original["question"], flipped["question"])
    pd.testing.assert_series_equal(original["relevant-question"], flipped["relevant-question"])
    for orig, flip in zip(original.to_dict("records"), flipped.to_dict("records")):
        assert user_turn(orig["text"]) == orig["question"]
        assert user_turn(flip["text"]) == orig["relevant-question"]
        # y+ of one row is y- of the other: the same two traces, swapped (y- has no final newline).
        assert response(flip["worse-text"]) + "\n" == response(orig["text"])
        assert response(flip["text"]) == response(orig["worse-text"]) + "\n"


def test_solutions_match_the_numbers_in_the_questions(frame):
    for row in frame.to_dict("records"):
        forward_q, reverse_q = row["question"], row["relevant-question"]
        start, ops = int(re.search(r"\d+", forward_q).group()), parsed_ops(forward_q)
        assert 2 <= len(ops) <= 4 and len(re.findall(r"\d+", forward_q)) == len(ops) + 1
        result = start
        for verb, k in ops:
            result = FORWARD[verb](result, k)
        # The reverse question lists the same ops and ends with the result.
        assert [k for _, k in parsed_ops(reverse_q)] == [k for _, k in ops]
        assert int(re.findall(r"\d+", reverse_q)[-1]) == result
        undone = result
        for verb, k in reversed(parsed_ops(reverse_q)):
            undone = INVERSE[verb](undone, k)
        assert undone == start
        expected = result if row["sample_type"] == "original" else start
        assert row["solution"] == str(expected)
        assert response(row["text"]).endswith(f"Answer: {expected}<|im_end|>\n")


def test_traces_are_exact_and_stylistically_distinct(frame):
    for text in pd.concat([frame["text"], frame["worse-text"]]):
        lines = TRACE_LINE.findall(response(text))
        assert 2 <= len(lines) <= 4
        for a, op, b, c in lines:
            assert TRACE_OPS[op](int(a), int(b)) == int(c)
        # Each step starts from the previous step's value.
        assert all(prev[3] == nxt[0] for prev, nxt in zip(lines, lines[1:]))
    forward_traces = frame.loc[frame["sample_type"] == "original", "text"].map(response)
    reverse_traces = frame.loc[frame["sample_type"] == "flipped", "text"].map(response)
    assert forward_traces.str.contains("in order").all() and not forward_traces.str.contains("/").any()
    assert reverse_traces.str.contains("backward|reverse order").all()


def test_loader_reads_the_shipped_file_as_embedded_conversations(repo_root):
    assert data_module.ASSISTANT_HEADER == ASSISTANT_HEADER
    loaded = data_module.load_preference_data(repo_root / "data-100samples.parquet")
    assert loaded.report.shape == "embedded"
    assert loaded.report.used_rows == 100 and not loaded.report.excluded
    assert loaded.examples[0].chosen.startswith("<|im_start|>think\n")
    trailing = "column 'text': white space after the final <|im_end|> dropped from the response"
    assert loaded.report.adjusted == {trailing: list(range(100))}  # the real data's asymmetry, reported
    assert all(e.chosen.endswith("<|im_end|>") and e.rejected.endswith("<|im_end|>") for e in loaded.examples)


@pytest.mark.parametrize("name, num_rows", [("data-100samples.parquet", 100), ("r1k.parquet", 1000)])
def test_shipped_files_equal_fresh_generation(repo_root, name, num_rows):
    shipped = pd.read_parquet(repo_root / name)
    pd.testing.assert_frame_equal(shipped, generate_preference_rows(num_rows, seed=0))


def test_cli_writes_the_default_file(repo_root, tmp_path):
    output = tmp_path / "out" / "sample.parquet"
    subprocess.run([sys.executable, "scripts/make_sample_data.py", "--num_rows", "100", "--output", str(output)],
                   cwd=repo_root, check=True, capture_output=True)
    pd.testing.assert_frame_equal(pd.read_parquet(output), pd.read_parquet(repo_root / "data-100samples.parquet"))


def test_format_matches_the_real_example(frame, shared_sample_path):
    real = pd.read_parquet(shared_sample_path)
    ours, theirs = frame["text"].iloc[0], real["text"].iloc[0]
    system_turn = theirs[: theirs.index("<|im_start|>user\n")]
    assert ours.startswith(system_turn)
    assert theirs.split(ASSISTANT_HEADER, 1)[1].startswith("<|im_start|>think\n")
    assert real["sample_type"].tolist() == frame["sample_type"].tolist()
    for column in ("text", "worse-text"):  # the same trailing white space as the real data
        assert frame[column].str.endswith("<|im_end|>\n").tolist() == real[column].str.endswith("<|im_end|>\n").tolist()
        assert frame[column].str.endswith("<|im_end|>").tolist() == real[column].str.endswith("<|im_end|>").tolist()
