"""Evaluating models on benchmarks: problems -> token prompts -> generations -> graded records.

Each model's missing (benchmark, id) pairs are generated in chunks; every chunk is graded and
appended to the predictions file before the next one starts, so a killed run resumes where it
stopped. A model with nothing left to do is not even loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from fwdrev.evaluation.forcing import Backend, ForcingConfig, generate_all
from fwdrev.evaluation.grading import Grade, grade_choice, grade_math
from fwdrev.evaluation.records import RECORD_FIELDS, PredictionStore
from fwdrev.evaluation.tasks import BENCHMARKS, Problem


@dataclass
class ModelSpec:
    label: str  # the table's row name
    path: str | None  # model or adapter folder; None: the base model of a series
    checkpoint: str = ""
    stage: str = ""
    epoch: int | None = None
    step: int | None = None
    extra: dict = field(default_factory=dict)  # how to load it (series, base model)

    def columns(self) -> dict:
        return {"model": self.label, "checkpoint": self.checkpoint, "stage": self.stage,
                "epoch": self.epoch, "step": self.step}


def grade(benchmark: str, generation: str, gold: str) -> Grade:
    if BENCHMARKS[benchmark].kind == "choice":
        return grade_choice(generation, gold)
    return grade_math(generation, gold)


def regrade_records(records: list[dict]) -> list[dict]:
    """The same generations graded again (after a grader change), nothing generated."""
    regraded = []
    for record in records:
        result = grade(record["benchmark"], record["generation"], record["gold"])
        regraded.append({**record, "extracted": result.extracted, "correct": bool(result.correct),
                         "grader": result.grader})
    return regraded


def pending(problems: list[Problem], model: ModelSpec, store: PredictionStore) -> list[Problem]:
    return [p for p in problems if (model.label, p.benchmark, p.id) not in store.done]


def evaluate_model(model: ModelSpec, problems: list[Problem], backend: Backend, tokenizer,
                   config: ForcingConfig, store: PredictionStore, chunk_size: int = 64,
                   log: Callable[[str], None] = print) -> int:
    """Generate, grade and append the model's missing problems; returns how many were generated."""
    todo = pending(problems, model, store)
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start:start + chunk_size]
        prompts = [tokenizer.encode(p.prompt, add_special_tokens=False) for p in chunk]
        generations = generate_all(backend, tokenizer, prompts, config)
        records = []
        for problem, generation in zip(chunk, generations):
            text = tokenizer.decode(generation.token_ids, skip_special_tokens=False)
            result = grade(problem.benchmark, text, problem.gold)
            record = {**model.columns(), "benchmark": problem.benchmark, "id": problem.id,
                      "group": problem.group, "sample_type": None, "prompt": problem.prompt,
                      "generation": text, "thinking_tokens": generation.thinking_tokens,
                      "answer_tokens": generation.answer_tokens, "stop_reason": generation.stop_reason,
                      "extracted": result.extracted, "gold": problem.gold, "correct": bool(result.correct),
                      "grader": result.grader, **problem.extra}
            records.append({k: record[k] for k in RECORD_FIELDS} | {k: v for k, v in record.items()
                                                                      if k not in RECORD_FIELDS})
        store.append(records)
        log(f"{model.label}: {min(start + chunk_size, len(todo))}/{len(todo)} generated")
    return len(todo)


def records_frame(records: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(records)
    duplicated = frame.duplicated(["model", "benchmark", "id"], keep=False)
    if duplicated.any():
        from fwdrev.data_checks import DataValidationError

        rows = frame[duplicated][["model", "benchmark", "id"]].drop_duplicates().head(5).values.tolist()
        raise DataValidationError(f"predictions hold the same (model, benchmark, id) more than once, e.g. {rows}: "
                                  "give each model its own label")
    return frame
