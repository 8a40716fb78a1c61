"""Final-answer extraction, normalization, grading and batched greedy generation."""

import pandas as pd
import pytest

from fwdrev.answers import (
    accuracy_by_sample_type,
    answers_match,
    extract_answer,
    generate_greedy,
    generate_greedy_outputs,
    gold_answer,
    grade_generations,
    normalize_answer,
    reference_budget,
)
from fwdrev.data import load_preference_data
from fwdrev.devtools.synthetic import generate_preference_rows
from fwdrev.modeling import load_for_scoring


@pytest.mark.parametrize("text, expected", [
    ("<|im_start|>think\n3 + 4 = 7\n<|im_start|>answer\nAnswer: 7<|im_end|>\n", "7"),
    ("<|im_start|>answer\nAnswer: 12\nsome trailing text", "12"),
    ("Answer: 1\n<|im_start|>answer\nAnswer: -5<|im_end|>", "-5"),  # the marker wins
    ("so it is **GOATHERDS**.\n\n**Answer**: GOATHERDS<|im_end|>", "GOATHERDS"),
    ("### Answer: GOATHERDS \n ### Explanation: an anagram", "GOATHERDS"),
    ("thus x = \\boxed{\\frac{1}{2}} and done", "\\frac{1}{2}"),
    ("Answer: the value is \\boxed{42}.", "42"),
    ("no answer in here", None),
    ("<|im_start|>answer\nAnswer:<|im_end|>", None),  # generation stopped before the answer
    (None, None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("predicted, gold, correct", [
    ("7", "7", True),
    ("7.0", "7", True),
    (" 1,000. ", "1000", True),
    ("$\\boxed{3/4}$", "0.75", True),
    ("-5", "5", False),
    ("GOATHERDS", "goatherds", True),
    ("**Goatherds**", "GOATHERDS", True),
    ("goat herds", "goatherds", False),
    ("", "0", False),
    (None, "0", False),
])
def test_answers_match(predicted, gold, correct):
    assert answers_match(predicted, gold) is correct


def test_normalize_answer():
    assert normalize_answer("  \\text{Paris}. ") == "paris"
    assert normalize_answer("12,345") == "12345"


def test_gold_answer_of_short_and_explained_solutions():
    assert gold_answer("52") == "52"
    assert gold_answer("### Answer: GOATHERDS \n ### Explanation: ...") == "GOATHERDS"
    assert gold_answer(7) == "7"


def test_grading_and_accuracy_on_a_hand_made_set():
    records = pd.DataFrame({
        "example_id": [0, 1, 2, 3, 4],
        "sample_type": ["original", "original", "original", "flipped", "flipped"],
        "generated": ["<|im_start|>answer\nAnswer: 52<|im_end|>",  # right
                      "<|im_start|>answer\nAnswer: 51<|im_end|>",  # wrong
                      "The result is 9",  # no answer
                      "<|im_start|>answer\nAnswer: 14.0",  # right (numerically)
                      "Answer: \\boxed{3}"],  # right
        "gold": ["52", "50", "9", "14", "3"],
    })
    graded = grade_generations(records)
    assert graded["extracted"].fillna("<none>").tolist() == ["52", "51", "<none>", "14.0", "3"]
    assert graded["correct"].tolist() == [True, False, False, True, True]
    accuracy = accuracy_by_sample_type(graded)
    assert accuracy == {
        "all": {"n": 5, "n_correct": 3, "accuracy": 0.6},
        "flipped": {"n": 2, "n_correct": 2, "accuracy": 1.0},
        "original": {"n": 3, "n_correct": 1, "accuracy": pytest.approx(1 / 3)},
    }


def test_generations_cut_off_by_the_budget_are_counted_apart_from_wrong_answers():
    records = pd.DataFrame({
        "example_id": [0, 1, 2, 3, 4],
        "sample_type": ["original", "original", "original", "flipped", "flipped"],
        "generated": ["<|im_start|>answer\nAnswer: 52<|im_end|>",  # right
                      "<|im_start|>think\n3 + 4 = 7\n7 * 2",  # cut off before the answer
                      "The result is 9",  # finished without an answer: wrong
                      "Answer: 13\nAnswer: 13\nAnswer: 1",  # cut off, but it answered: graded (wrong)
                      "<|im_start|>think\n5 - 2"],  # cut off
        "gold": ["52", "14", "9", "14", "3"],
        "hit_budget": [False, True, False, True, True],
    })
    graded = grade_generations(records)
    assert graded["outcome"].tolist() == ["correct", "no_answer_at_budget", "wrong", "wrong", "no_answer_at_budget"]
    accuracy = accuracy_by_sample_type(graded)
    assert accuracy["all"] == {"n": 5, "n_correct": 1, "accuracy": 0.2, "n_wrong": 2, "n_no_answer_at_budget": 2,
                               "no_answer_at_budget_rate": 0.4}
    assert accuracy["original"]["n_no_answer_at_budget"] == 1 and accuracy["flipped"]["no_answer_at_budget_rate"] == 0.5


def test_reference_budget_is_the_longest_chosen_response(tiny_model_dir, tmp_path):
    _, tokenizer = load_for_scoring(str(tiny_model_dir))
    path = tmp_path / "plain.parquet"  # plain rows: the response gets an EOS token, as in the analysis
    pd.DataFrame({"question": ["q1", "q2"], "text": ["short", "a much longer answer than the other one"],
                  "worse-text": ["x", "y"]}).to_parquet(path)
    data = load_preference_data(path, tokenizer=tokenizer)
    longest = len(tokenizer("a much longer answer than the other one", add_special_tokens=False)["input_ids"]) + 1
    assert reference_budget(tokenizer, data.examples) == (longest, 1)


def test_batched_greedy_generation_equals_one_by_one(tiny_model_dir, tmp_path):
    model, tokenizer = load_for_scoring(str(tiny_model_dir))
    path = tmp_path / "rows.parquet"
    generate_preference_rows(6, seed=1).to_parquet(path)
    data = load_preference_data(path, tokenizer=tokenizer)
    prompts = [tokenizer(e.prompt, add_special_tokens=False)["input_ids"] for e in data.examples]
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    batched = generate_greedy(model, tokenizer, prompts, max_new_tokens=10, batch_size=6)
    single = generate_greedy(model, tokenizer, prompts, max_new_tokens=10, batch_size=1)
    assert batched == single
    assert all(isinstance(text, str) and tokenizer.eos_token not in text for text in batched)
    assert all(len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= 10 for text in batched)
    outputs = generate_greedy_outputs(model, tokenizer, prompts, max_new_tokens=10, batch_size=6)
    assert [o.text for o in outputs] == batched
    one_token = generate_greedy_outputs(model, tokenizer, prompts, max_new_tokens=1, batch_size=6)
    # one new token: cut off unless that token ends the sequence (then the text is empty)
    assert all(o.hit_budget == (o.text != "") for o in one_token)
