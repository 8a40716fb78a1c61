"""Grading generations: the study's ``Answer:`` extraction, then math-verify or a choice letter.

Math benchmarks (MATH500, AIME, the held-out split): the final answer is the text after the
study's answer header ``<|im_start|>answer\\nAnswer:`` (also budget forcing's ``Final Answer:``),
else after the last ``Answer:`` label (the simple-evals prompt asks for that line), else the
last ``\\boxed{}``. It is compared with the gold answer by math-verify (HF's symbolic checker:
fractions vs. decimals, LaTeX, sets, intervals, ``\\boxed{}``). Answers math-verify cannot read
as math on either side (words such as ``GOATHERDS``) are compared as normalized text; the
``grader`` field of each record says which comparison decided.

GPQA: the letter of the last ``Answer: X`` line (simple-evals' pattern), else of the last
``\\boxed{X}``.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import pandas as pd

ANSWER_MARKER = "<|im_start|>answer\nAnswer:"
END_MARKERS = ("<|im_end|>", "<|endoftext|>")
ANSWER_LABEL = re.compile(r"(?:\*\*)?answer(?:\*\*)?\s*:(?:\*\*)?", re.IGNORECASE)
CHOICE_ANSWER = re.compile(r"(?i)answer\s*:\s*\**\s*\$?\(?([A-D])\b")
CHOICE_LETTERS = "ABCD"


class Grade(NamedTuple):
    extracted: str | None
    correct: bool
    grader: str  # "math_verify", "string" (math-verify read no math), "choice", "none" (no answer)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (nested braces allowed), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin - 1, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
    return None


def extract_answer(text: str | None) -> str | None:
    """The final answer of a generated (or gold) text; None when there is none."""
    if not isinstance(text, str):
        return None
    if ANSWER_MARKER in text:
        tail = text[text.rfind(ANSWER_MARKER) + len(ANSWER_MARKER):]
    elif labels := list(ANSWER_LABEL.finditer(text)):
        tail = text[labels[-1].end():]
    else:
        boxed = last_boxed(text)
        return boxed.strip() if boxed is not None else None
    tail = re.split("|".join(map(re.escape, END_MARKERS)), tail)[0]
    boxed = last_boxed(tail)
    if boxed is not None:
        return boxed.strip()
    lines = [line.strip() for line in tail.strip().splitlines() if line.strip()]
    return lines[0] if lines else None


def normalize_answer(answer: str | None) -> str:
    """Lower case, without markdown/LaTeX wrappers, spaces, thousands commas or a final period."""
    if answer is None:
        return ""
    text = str(answer).strip()
    boxed = last_boxed(text)
    text = boxed if boxed is not None else text
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", text)
    text = text.replace("**", "").replace("$", "").strip().rstrip(".").strip()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    return re.sub(r"\s+", " ", text).lower()


def gold_answer(solution) -> str | None:
    """A solution column value: its extracted final answer, else the whole (short) text."""
    if not isinstance(solution, str):
        return None if solution is None or pd.isna(solution) else str(solution)
    return extract_answer(solution) or solution.strip()


def _as_latex(answer: str) -> str:
    # math-verify reads sets, intervals and \text only inside math delimiters
    text = answer.strip().rstrip(".").strip()
    return text if "$" in text or "\\(" in text or "\\[" in text else f"${text}$"


def parse_math(answer: str) -> list:
    from math_verify import parse

    return parse(_as_latex(answer))


def math_answers_equal(predicted: str | None, gold: str | None) -> tuple[bool, str]:
    """(equal, grader): math-verify when both sides parse as math, else normalized text."""
    if predicted is None or gold is None or not str(predicted).strip():
        return False, "none"
    from math_verify import verify

    parsed_gold, parsed_predicted = parse_math(str(gold)), parse_math(str(predicted))
    if parsed_gold and parsed_predicted:
        if verify(parsed_gold, parsed_predicted):
            return True, "math_verify"
        # math-verify reads "GOATHERDS" as a product of symbols; equal words still match
        return normalize_answer(predicted) == normalize_answer(gold), "math_verify"
    return normalize_answer(predicted) == normalize_answer(gold), "string"


def grade_math(generation: str, gold: str) -> Grade:
    extracted = extract_answer(generation)
    correct, grader = math_answers_equal(extracted, gold)
    return Grade(extracted, correct, grader)


def extract_choice(generation: str | None) -> str | None:
    """The answer letter (A-D) of a multiple-choice generation, or None."""
    if not isinstance(generation, str):
        return None
    matches = CHOICE_ANSWER.findall(generation)
    if matches:
        return matches[-1].upper()
    boxed = last_boxed(generation)
    if boxed is not None and boxed.strip().strip("()").upper() in CHOICE_LETTERS:
        return boxed.strip().strip("()").upper()
    return None


def grade_choice(generation: str, gold_letter: str) -> Grade:
    extracted = extract_choice(generation)
    return Grade(extracted, extracted is not None and extracted == gold_letter,
                 "choice" if extracted is not None else "none")
