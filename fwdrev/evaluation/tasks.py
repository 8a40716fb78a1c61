"""The benchmarks: where their rows come from, which columns they need, how a row becomes a prompt.

Prompts are s1's (its lm-evaluation-harness fork uses openai/simple-evals' templates):
AIME24 (``aime24_nofigures``) and MATH500 (``openai_math``) ask for a last line ``Answer: ...``,
GPQA Diamond (``gpqa_diamond_openai``) lists the four choices as ``A) ... D)`` in an order
shuffled per question by a seeded generator (simple-evals: ``random.Random(0)``). The user
message is rendered with the model's chat template. ``heldout`` is the study's own test split
(a preference file): its prompt is the conversation up to the assistant header, as scored by
the log-probability analysis, and its gold answer the ``solution`` column.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pandas as pd

from fwdrev.data import RowSelection, load_preference_data, render_prompt
from fwdrev.data_checks import DataValidationError
from fwdrev.errors import UsageError
from fwdrev.evaluation.grading import CHOICE_LETTERS, gold_answer

MATH_TEMPLATE = (
    "Solve the following math problem step by step. The last line of your response should be of "
    "the form Answer: $ANSWER (without quotes) where $ANSWER is the answer to the problem.\n\n"
    "{question}\n\nRemember to put your answer on its own line after \"Answer:\", and you do not "
    "need to use a \\boxed command."
)
CHOICE_TEMPLATE = (
    "Answer the following multiple choice question. The last line of your response should be of "
    "the following format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think "
    "step by step before answering.\n\n{question}\n\nA) {A}\nB) {B}\nC) {C}\nD) {D}"
)
GPQA_CHOICE_COLUMNS = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


@dataclass(frozen=True)
class Benchmark:
    name: str
    kind: str  # "math" (math-verify) or "choice" (letter)
    columns: tuple[str, ...]  # required in a local file (the hub dataset's schema)
    id_column: str | None  # None: the row index
    hub: tuple[str, str | None, str] | None  # (dataset, config, split) on the HF hub
    revision: str = "main"  # see docs/benchmarks.md: the resolved commit is recorded per run
    s1_task: str = ""


BENCHMARKS = {
    "aime24": Benchmark("aime24", "math", ("problem", "answer"), "id",
                        ("simplescaling/aime24_nofigures", None, "train"), s1_task="aime24_nofigures"),
    "math500": Benchmark("math500", "math", ("problem", "answer"), "unique_id",
                         ("simplescaling/openaimath", None, "test"), s1_task="openai_math"),
    "gpqa_diamond": Benchmark("gpqa_diamond", "choice", ("Question", *GPQA_CHOICE_COLUMNS), "Record ID",
                              ("Idavidrein/gpqa", "gpqa_diamond", "train"), s1_task="gpqa_diamond_openai"),
    "heldout": Benchmark("heldout", "math", ("solution",), None, None),
}


@dataclass(frozen=True)
class Problem:
    benchmark: str
    id: str
    group: str  # rows of one problem (held-out original + flipped) share it: cluster bootstrap
    prompt: str  # rendered with the chat template, ready to tokenize
    gold: str
    extra: dict = field(default_factory=dict, compare=False)  # sample_type, choice order


def parse_benchmarks(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise UsageError(f"unknown benchmark(s) {unknown or value!r} in --benchmarks; "
                         f"choose from {', '.join(BENCHMARKS)}")
    if len(set(names)) != len(names):
        raise UsageError(f"--benchmarks names a benchmark twice: {value}")
    return names


def check_columns(frame: pd.DataFrame, benchmark: Benchmark, source: str) -> None:
    missing = [c for c in benchmark.columns if c not in frame.columns]
    if missing:
        raise DataValidationError(f"{source}: benchmark {benchmark.name} needs column(s) {missing}; "
                                  f"the file has {list(frame.columns)}")
    empty = {c: [i for i, v in enumerate(frame[c]) if v is None or pd.isna(v) or not str(v).strip()]
             for c in benchmark.columns}
    empty = {c: rows for c, rows in empty.items() if rows}
    if empty:  # no row is skipped without a word: fix or remove them
        raise DataValidationError(f"{source}: empty values in benchmark {benchmark.name}'s columns "
                                  + "; ".join(f"{c}: rows {rows[:10]}" for c, rows in empty.items()))


def row_ids(frame: pd.DataFrame, benchmark: Benchmark, source: str) -> list[str]:
    if benchmark.id_column is None or benchmark.id_column not in frame.columns:
        return [str(i) for i in range(len(frame))]
    ids = [str(v) for v in frame[benchmark.id_column]]
    if len(set(ids)) != len(ids):
        raise DataValidationError(f"{source}: column {benchmark.id_column!r} has repeated ids")
    return ids


def math_problems(frame: pd.DataFrame, benchmark: Benchmark, source: str, tokenizer) -> list[Problem]:
    check_columns(frame, benchmark, source)
    return [Problem(benchmark.name, id_, id_, render_prompt(MATH_TEMPLATE.format(question=row["problem"]), tokenizer),
                    str(row["answer"]).strip())
            for id_, (_, row) in zip(row_ids(frame, benchmark, source), frame.iterrows())]


def choice_orders(count: int, seed: int) -> list[list[int]]:
    """Per question, the order of (correct, incorrect 1..3) as shown: one seeded generator over
    the questions in file order, as simple-evals (``random.Random(0).sample(range(4), 4)``)."""
    rng = random.Random(seed)
    return [rng.sample(range(4), 4) for _ in range(count)]


def gpqa_problems(frame: pd.DataFrame, benchmark: Benchmark, source: str, tokenizer, seed: int) -> list[Problem]:
    check_columns(frame, benchmark, source)
    problems = []
    for id_, order, (_, row) in zip(row_ids(frame, benchmark, source), choice_orders(len(frame), seed),
                                    frame.iterrows()):
        choices = [str(row[GPQA_CHOICE_COLUMNS[i]]).strip() for i in order]
        text = CHOICE_TEMPLATE.format(question=str(row["Question"]).strip(), **dict(zip(CHOICE_LETTERS, choices)))
        gold = CHOICE_LETTERS[order.index(0)]  # where the correct answer (column 0) landed
        problems.append(Problem(benchmark.name, id_, id_, render_prompt(text, tokenizer), gold,
                                {"choice_order": order}))
    return problems


def heldout_problems(path: str, tokenizer, rows: RowSelection, gold_field: str = "solution") -> list[Problem]:
    """The study's test split: its rows as the analysis reads them (same flags as training)."""
    data = load_preference_data(path, rows, tokenizer)
    if gold_field not in data.frame:
        raise DataValidationError(f"{path}: benchmark heldout needs column(s) ['{gold_field}']; "
                                  f"the file has {list(data.frame.columns)}")
    groups = data.frame["problem_id"] if "problem_id" in data.frame else None
    problems = []
    for example in data.examples:
        gold = gold_answer(data.frame.loc[example.example_id, gold_field])
        if gold is None:
            raise DataValidationError(f"{path}: row {example.example_id} has no {gold_field}")
        group = str(groups.loc[example.example_id]) if groups is not None else str(example.example_id)
        problems.append(Problem("heldout", str(example.example_id), group, example.prompt, gold,
                                {"sample_type": example.sample_type or "unknown"}))
    return problems
