"""Synthetic forward/reverse arithmetic preference data in the real data schema.

Each problem is a start number pushed through 2-4 integer operations. Its
*forward* question asks for the result ("Start with 7. Add 3, ..."); its
*reverse* question gives the result and asks for the start number. The two
reasoning styles stay clearly distinct: forward traces apply the steps in
order, reverse traces undo them from the last one (inverse operators, "/").

Rows mirror the real file: one ``original`` row (forward question, y+ =
forward trace, y- = reverse trace) and one ``flipped`` row (reverse question,
y+ = reverse trace, y- = forward trace) per problem; originals first. As in the
real data, every ``text`` ends with ``<|im_end|>\n`` and no ``worse-text`` does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd

SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Everything up to and including this header is prompt; the rest is the response.
ASSISTANT_HEADER = f"{IM_START}assistant\n"

COLUMNS = ["problem_id", "sample_type", "question", "relevant-question", "solution", "text", "worse-text"]

MIN_STEPS, MAX_STEPS = 2, 4
MAX_VALUE = 120  # keeps every intermediate value small (few digit tokens)

# op name -> (forward symbol, inverse symbol)
SYMBOLS = {"add": ("+", "-"), "sub": ("-", "+"), "mul": ("*", "/")}

# Phrasings per op: imperative (forward questions), past participle and gerund (reverse questions).
IMPERATIVE = {"add": ["add {k}", "increase it by {k}"], "sub": ["subtract {k}", "decrease it by {k}"],
              "mul": ["multiply by {k}", "multiply it by {k}"]}
PARTICIPLE = {"add": "increased by {k}", "sub": "decreased by {k}", "mul": "multiplied by {k}"}
GERUND = {"add": "adding {k}", "sub": "subtracting {k}", "mul": "multiplying by {k}"}

FORWARD_QUESTIONS = [
    "Start with {start}. {steps}. What is the result?",
    "Begin with the number {start}. {steps}. What number do you end up with?",
    "Take {start}. {steps}. What is the final value?",
]
REVERSE_QUESTIONS = [
    "A number was {steps}, giving {result}. What was the number?",
    "After {steps}, a number becomes {result}. What was the starting number?",
    "Some number is {steps}. The result is {result}. Find the original number.",
]
FORWARD_HEADERS = ["Compute forward from {start}, applying the steps in order.",
                   "Start at {start} and apply each step in order."]
REVERSE_HEADERS = ["Work backward from {result}, undoing the last step first.",
                   "Undo the steps in reverse order, starting from {result}."]


@dataclass(frozen=True)
class Problem:
    start: int
    ops: tuple[tuple[str, int], ...]  # (op name, operand), applied in order

    def values(self) -> list[int]:
        """Start value followed by the value after each op."""
        values = [self.start]
        for op, k in self.ops:
            values.append(apply_op(values[-1], op, k))
        return values

    @property
    def result(self) -> int:
        return self.values()[-1]


def apply_op(value: int, op: str, k: int) -> int:
    return {"add": value + k, "sub": value - k, "mul": value * k}[op]


def make_problem(rng: random.Random) -> Problem:
    """Random start and 2-4 ops, every value an integer in [1, MAX_VALUE].

    Only +, -, * go forward, so the reverse (-, +, exact /) stays integral.
    """
    while True:
        value = start = rng.randint(2, 20)
        ops = []
        for _ in range(rng.randint(MIN_STEPS, MAX_STEPS)):
            op = rng.choice(["add", "sub", "mul"])
            k = rng.randint(2, 4) if op == "mul" else rng.randint(1, 12)
            value = apply_op(value, op, k)
            ops.append((op, k))
        problem = Problem(start, tuple(ops))
        if all(1 <= v <= MAX_VALUE for v in problem.values()):
            return problem


def join_steps(phrases: list[str]) -> str:
    """'a, then b, then c' (callers capitalise when it opens a sentence)."""
    return ", then ".join(phrases)


def forward_question(problem: Problem, rng: random.Random) -> str:
    steps = join_steps([rng.choice(IMPERATIVE[op]).format(k=k) for op, k in problem.ops])
    return rng.choice(FORWARD_QUESTIONS).format(start=problem.start, steps=steps[0].upper() + steps[1:])


def reverse_question(problem: Problem, rng: random.Random) -> str:
    template = rng.choice(REVERSE_QUESTIONS)
    phrases = GERUND if template.startswith("After") else PARTICIPLE
    steps = join_steps([phrases[op].format(k=k) for op, k in problem.ops])
    return template.format(steps=steps, result=problem.result)


def forward_thinking(problem: Problem, rng: random.Random) -> str:
    values = problem.values()
    lines = [rng.choice(FORWARD_HEADERS).format(start=problem.start)]
    for (op, k), before, after in zip(problem.ops, values, values[1:]):
        lines.append(f"{before} {SYMBOLS[op][0]} {k} = {after}")
    lines.append(f"The result is {problem.result}.")
    return "\n".join(lines)


def reverse_thinking(problem: Problem, rng: random.Random) -> str:
    values = problem.values()
    lines = [rng.choice(REVERSE_HEADERS).format(result=problem.result)]
    for i in reversed(range(len(problem.ops))):
        op, k = problem.ops[i]
        lines.append(f"{values[i + 1]} {SYMBOLS[op][1]} {k} = {values[i]}")
    lines.append(f"The number was {problem.start}.")
    return "\n".join(lines)


def render_conversation(question: str, thinking: str, answer: str | int, final_newline: bool = True) -> str:
    """One whole Qwen chat conversation, exactly as in the real data's `text` column.

    ``final_newline=False`` gives the real `worse-text` shape: nothing after the last ``<|im_end|>``.
    """
    return (
        f"{IM_START}system\n{SYSTEM_PROMPT}{IM_END}\n"
        f"{IM_START}user\n{question}{IM_END}\n"
        f"{ASSISTANT_HEADER}{IM_START}think\n{thinking}\n"
        f"{IM_START}answer\nAnswer: {answer}{IM_END}" + ("\n" if final_newline else "")
    )


def generate_preference_rows(num_rows: int = 100, seed: int = 0) -> pd.DataFrame:
    """`num_rows` rows (num_rows/2 problems): all original rows, then all flipped rows."""
    if num_rows <= 0 or num_rows % 2:
        raise ValueError(f"num_rows must be a positive even number, got {num_rows}")
    rng = random.Random(seed)
    originals, flipped = [], []
    for problem_id in range(num_rows // 2):
        problem = make_problem(rng)
        fwd_q, rev_q = forward_question(problem, rng), reverse_question(problem, rng)
        fwd_think, rev_think = forward_thinking(problem, rng), reverse_thinking(problem, rng)
        fwd_answer, rev_answer = problem.result, problem.start
        shared = {"problem_id": problem_id, "question": fwd_q, "relevant-question": rev_q}
        originals.append({
            **shared, "sample_type": "original", "solution": str(fwd_answer),
            "text": render_conversation(fwd_q, fwd_think, fwd_answer),
            "worse-text": render_conversation(fwd_q, rev_think, rev_answer, final_newline=False),
        })
        flipped.append({
            **shared, "sample_type": "flipped", "solution": str(rev_answer),
            "text": render_conversation(rev_q, rev_think, rev_answer),
            "worse-text": render_conversation(rev_q, fwd_think, fwd_answer, final_newline=False),
        })
    frame = pd.DataFrame(originals + flipped, columns=COLUMNS)
    return frame.astype({"problem_id": "int64"})
