"""Final-answer extraction, normalization and accuracy of greedy generations.

The study's traces end with ``<|im_start|>answer\\nAnswer: <final answer><|im_end|>``; free-form
outputs fall back to the last ``Answer:`` (also ``**Answer**:``) or the last ``\\boxed{...}``.
Two answers match when both read as numbers that are equal, else when their normalized texts
are equal. A generation that used the whole token budget without giving an answer is counted
as ``no_answer_at_budget``, apart from wrong answers: a longer budget might have finished it.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from fwdrev.modeling import eval_mode
from fwdrev.tokenization import encode_response

ANSWER_MARKER = "<|im_start|>answer\nAnswer:"
END_MARKERS = ("<|im_end|>", "<|endoftext|>")
ANSWER_LABEL = re.compile(r"(?:\*\*)?answer(?:\*\*)?\s*:(?:\*\*)?", re.IGNORECASE)
NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)(e[-+]?\d+)?$|^[-+]?\d+\s*/\s*\d+$", re.IGNORECASE)


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


def extract_answer(text: str) -> str | None:
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


def as_number(text: str) -> float | None:
    if not NUMBER.match(text):
        return None
    return float(Fraction(text.replace(" ", ""))) if "/" in text else float(text)


def answers_match(predicted: str | None, gold: str | None) -> bool:
    predicted, gold = normalize_answer(predicted), normalize_answer(gold)
    if not predicted or not gold:
        return False
    p_number, g_number = as_number(predicted), as_number(gold)
    if p_number is not None and g_number is not None:
        return math.isclose(p_number, g_number, rel_tol=1e-6, abs_tol=1e-9)
    return predicted == gold


def gold_answer(solution) -> str | None:
    """A solution column value: its extracted final answer, else the whole (short) text."""
    if not isinstance(solution, str):
        return None if solution is None or pd.isna(solution) else str(solution)
    return extract_answer(solution) or solution.strip()


def grade_generations(records: pd.DataFrame) -> pd.DataFrame:
    """Add ``extracted`` and ``correct`` to rows with ``generated`` and ``gold`` columns.

    With a ``hit_budget`` column (the generation used every allowed token) also ``outcome``:
    correct, wrong or no_answer_at_budget (no answer extracted and the budget used up).
    """
    graded = records.copy()
    graded["extracted"] = graded["generated"].map(extract_answer)
    graded["correct"] = [answers_match(p, g) for p, g in zip(graded["extracted"], graded["gold"])]
    if "hit_budget" in graded:
        cut_off = graded["hit_budget"].astype(bool) & graded["extracted"].isna()
        graded["outcome"] = np.where(graded["correct"], "correct",
                                     np.where(cut_off, "no_answer_at_budget", "wrong"))
    return graded


def accuracy_by_sample_type(graded: pd.DataFrame) -> dict[str, dict]:
    """{'all': {...}, <sample_type>: {...}} with n, n_correct and accuracy (n_correct / n).

    With ``outcome`` also n_wrong, n_no_answer_at_budget and no_answer_at_budget_rate.
    """
    groups = {"all": graded, **{str(t): rows for t, rows in graded.groupby("sample_type", sort=True)}}
    result = {}
    for name, rows in groups.items():
        n = len(rows)
        result[name] = {"n": int(n), "n_correct": int(rows["correct"].sum()),
                        "accuracy": float(rows["correct"].mean()) if n else float("nan")}
        if "outcome" in rows:
            cut_off = int((rows["outcome"] == "no_answer_at_budget").sum())
            result[name].update({"n_wrong": int((rows["outcome"] == "wrong").sum()),
                                 "n_no_answer_at_budget": cut_off,
                                 "no_answer_at_budget_rate": cut_off / n if n else float("nan")})
    return result


def reference_budget(tokenizer, examples) -> tuple[int, int]:
    """(tokens, example_id) of the longest chosen response, as the analysis tokenizes it."""
    lengths = {e.example_id: len(encode_response(tokenizer, e.chosen, e.shape == "plain")) for e in examples}
    longest = max(lengths, key=lengths.get)
    return lengths[longest], longest


class Generation(NamedTuple):
    text: str
    hit_budget: bool  # stopped by the token budget: no end-of-sequence token


def generate_greedy(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int,
                    batch_size: int = 8, progress: bool = False) -> list[str]:
    """Texts of :func:`generate_greedy_outputs`."""
    return [g.text for g in generate_greedy_outputs(model, tokenizer, prompt_ids, max_new_tokens,
                                                    batch_size, progress)]


def generate_greedy_outputs(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int,
                            batch_size: int = 8, progress: bool = False) -> list[Generation]:
    """Greedy continuations of token-id prompts, batched with left padding.

    Each continuation is decoded with its special tokens (the answer marker is one) and cut at
    the end-of-sequence token; ``hit_budget`` when it has none (it was stopped by the budget).
    """
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    stop_ids = {tokenizer.eos_token_id, pad_id} - {None}
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))  # less padding
    outputs: dict[int, Generation] = {}
    with eval_mode(model):  # no autograd, no dropout; the model's mode is restored after
        for start in tqdm(range(0, len(order), batch_size), desc="generating", disable=not progress):
            indices = order[start : start + batch_size]
            width = max(len(prompt_ids[i]) for i in indices)
            input_ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            for row, i in enumerate(indices):
                ids = prompt_ids[i]
                input_ids[row, width - len(ids):] = torch.tensor(ids)
                attention_mask[row, width - len(ids):] = 1
            generated = model.generate(input_ids=input_ids.to(device),
                                       attention_mask=attention_mask.to(device),
                                       max_new_tokens=max_new_tokens, do_sample=False,
                                       pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
            for row, i in enumerate(indices):
                new_ids = generated[row, width:].tolist()
                cut = next((k for k, t in enumerate(new_ids) if t in stop_ids), None)
                text = tokenizer.decode(new_ids[:cut], skip_special_tokens=False)
                outputs[i] = Generation(text, cut is None)  # no end token: stopped by the budget
    return [outputs[i] for i in range(len(prompt_ids))]
