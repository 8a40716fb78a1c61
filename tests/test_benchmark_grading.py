"""Benchmark grading, prompts and statistics (no model): math-verify, choice letters, GPQA order, CIs."""

import numpy as np
import pandas as pd
import pytest

from fwdrev.evaluation.grading import extract_answer, extract_choice, grade_math, math_answers_equal
from fwdrev.evaluation.records import PredictionStore, read_records
from fwdrev.evaluation.summary import accuracy_table, paired_difference, paper_table
from fwdrev.evaluation.tasks import BENCHMARKS, choice_orders, gpqa_problems, parse_benchmarks


@pytest.mark.parametrize("text, expected", [
    ("<|im_start|>think\n3 + 4 = 7\n<|im_start|>answer\nAnswer: 7<|im_end|>\n", "7"),
    ("Answer: 1\n<|im_start|>answer\nAnswer: -5<|im_end|>", "-5"),  # the study's header wins
    ("<|im_start|>think\n...\n<|im_start|>answer\nFinal Answer: 12", "12"),  # after a budget cut-off
    ("so it is **GOATHERDS**.\n\n**Answer**: GOATHERDS<|im_end|>", "GOATHERDS"),
    ("thus x = \\boxed{\\frac{1}{2}} and done", "\\frac{1}{2}"),
    ("Answer: the value is \\boxed{42}.", "42"),
    ("no answer in here", None),
    ("<|im_start|>answer\nAnswer:<|im_end|>", None),
    (None, None),
])
def test_the_study_extraction_comes_first(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("predicted, gold, correct", [
    ("\\frac{3}{4}", "0.75", True),
    ("0.75", "\\frac{3}{4}", True),
    ("\\boxed{10}", "10", True),
    ("\\dfrac{14}{3}", "\\frac{14}{3}", True),
    ("\\{2, 1\\}", "\\{1,2\\}", True),  # sets
    ("(0, 1]", "(0,1]", True),  # intervals
    ("(0, 1)", "(0,1]", False),
    ("1,000", "1000", True),
    ("14.0", "14", True),
    ("-5", "5", False),
    ("\\text{Paris}", "Paris", True),
    ("24", "204", False),
    ("", "0", False),
    (None, "0", False),
])
def test_math_verify_equivalences(predicted, gold, correct):
    assert math_answers_equal(predicted, gold)[0] is correct


def test_grade_records_which_comparison_decided():
    assert grade_math("Answer: $\\frac{3}{4}$", "0.75") == ("$\\frac{3}{4}$", True, "math_verify")
    assert grade_math("nothing", "7") == (None, False, "none")


@pytest.mark.parametrize("generation, letter", [
    ("A is tempting.\nAnswer: C", "C"),
    ("Answer: B ... on reflection\nAnswer: (D)", "D"),  # the last answer line
    ("so \\boxed{A}", "A"),
    ("Answer: Because it is", None),
    (None, None),
])
def test_choice_letter(generation, letter):
    assert extract_choice(generation) == letter


def gpqa_frame(count=6):
    return pd.DataFrame({"Record ID": [f"r{i}" for i in range(count)], "Question": [f"Q{i}?" for i in range(count)],
                         "Correct Answer": [f"right{i}" for i in range(count)],
                         **{f"Incorrect Answer {k}": [f"wrong{k}_{i}" for i in range(count)] for k in (1, 2, 3)}})


def test_gpqa_choice_order_is_fixed_by_its_seed():
    frame, spec = gpqa_frame(), BENCHMARKS["gpqa_diamond"]
    first, again = gpqa_problems(frame, spec, "f", None, seed=0), gpqa_problems(frame, spec, "f", None, seed=0)
    assert [p.prompt for p in first] == [p.prompt for p in again]
    assert choice_orders(6, 0) == [p.extra["choice_order"] for p in first]
    other = gpqa_problems(frame, spec, "f", None, seed=1)
    assert [p.extra["choice_order"] for p in other] != [p.extra["choice_order"] for p in first]
    golds = [p.gold for p in first]
    assert len(set(golds)) > 1  # the correct answer is not always A
    for i, problem in enumerate(first):  # the gold letter labels the correct answer in the prompt
        assert f"{problem.gold}) right{i}\n" in problem.prompt + "\n"


def test_unknown_benchmark_is_a_usage_error():
    from fwdrev.cli import UsageError

    with pytest.raises(UsageError, match="math5000"):
        parse_benchmarks("math500,math5000")


def records(model, correct, benchmark="math500", groups=None):
    return [{"model": model, "checkpoint": "", "stage": "", "epoch": None, "step": None, "benchmark": benchmark,
             "id": str(i), "group": str(i if groups is None else groups[i]), "correct": bool(c),
             "stop_reason": "end"} for i, c in enumerate(correct)]


def test_accuracy_ci_on_known_cases():
    frame = pd.DataFrame(records("all_right", [1] * 50) + records("half", [1, 0] * 50))
    table = accuracy_table(frame).set_index("model")
    assert table.loc["all_right", ["accuracy", "ci_low", "ci_high"]].tolist() == [1.0, 1.0, 1.0]
    half = table.loc["half"]
    assert (half["n"], half["n_correct"], half["accuracy"]) == (100, 50, 0.5)
    # binomial: 0.5 +- 1.96 * sqrt(0.25 / 100) = [0.402, 0.598]
    assert half["ci_low"] == pytest.approx(0.402, abs=0.03) and half["ci_high"] == pytest.approx(0.598, abs=0.03)
    assert paper_table(accuracy_table(frame)).loc[1, "math500"].startswith("50.0 [")


def test_paired_difference_on_the_same_problems():
    a = records("A", [1, 0] * 50)
    b = records("B", [1, 1] * 50)
    result = paired_difference(pd.DataFrame(a + b), "A", "B").iloc[0]
    assert (result["n_pairs"], result["difference"]) == (100, 0.5)
    assert result["ci_low"] == pytest.approx(0.402, abs=0.03)
    same = paired_difference(pd.DataFrame(a + records("C", [1, 0] * 50)), "A", "C").iloc[0]
    assert [same["difference"], same["ci_low"], same["ci_high"]] == [0.0, 0.0, 0.0]  # paired: no noise


def test_clustered_ci_resamples_problems():
    # two rows per problem that agree: resampling rows would understate the spread
    correct = np.repeat([1, 0] * 10, 2)
    clustered = accuracy_table(pd.DataFrame(records("m", correct, groups=np.repeat(range(20), 2))))
    independent = accuracy_table(pd.DataFrame(records("m", correct)))
    assert clustered["ci_high"][0] - clustered["ci_low"][0] > independent["ci_high"][0] - independent["ci_low"][0]


def test_prediction_store_survives_a_partial_last_line(tmp_path, capsys):
    path = tmp_path / "predictions.jsonl"
    store = PredictionStore(path)
    store.append([{"model": "m", "benchmark": "b", "id": "1"}])
    with open(path, "a") as file:  # killed in the middle of the next write
        file.write('{"model": "m", "benchmark": "b", "id": "2", "gen')
    resumed = PredictionStore(path)
    assert resumed.done == {("m", "b", "1")} and "partial last line" in capsys.readouterr().out
    resumed.append([{"model": "m", "benchmark": "b", "id": "2"}])
    assert [r["id"] for r in read_records(path)[0]] == ["1", "2"]
    assert path.read_text().count("\n") == 2


def test_empty_benchmark_values_are_named_not_skipped():
    from fwdrev.data_checks import DataValidationError
    from fwdrev.evaluation.tasks import math_problems

    frame = pd.DataFrame({"problem": ["1+1?", "2+2?", ""], "answer": ["2", None, "x"]})
    with pytest.raises(DataValidationError, match=r"problem: rows \[2\]; answer: rows \[1\]"):
        math_problems(frame, BENCHMARKS["math500"], "made_up.jsonl", None)
