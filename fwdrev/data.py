"""Loading and validating preference data (prompt, chosen y+, rejected y-).

Two input shapes are accepted:

* plain: a question column plus two response columns; the prompt is rendered later with the
  tokenizer's chat template (see ``render_prompt``);
* embedded: the response columns already hold the whole chat-formatted conversation
  (system + user + assistant, as in the study's data). The prompt is the text up to and
  including the last assistant header, the response is the rest. The question column is not
  used then: for ``flipped`` rows the user turn holds the reverse question.
  White space after the final ``<|im_end|>`` is not part of a response (the study's ``text``
  column ends with ``<|im_end|>\n``, its ``worse-text`` column does not: y+ would score one
  more token than y-); it is dropped from both sides and the rows are reported.

Plain ``flipped`` rows are prompted with ``flipped_prompt_field`` (``relevant-question``, the
reverse question in the study's schema) when the file has that column, like the embedded shape.

Every excluded or adjusted row is counted in a ``DataReport`` with its row indices.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from fwdrev.io import write_json

ASSISTANT_HEADER = "<|im_start|>assistant\n"
IM_END = "<|im_end|>"
CHAT_MARKERS = re.compile(r"(<\|im_start\|>|<\|im_end\|>)")
FALLBACK_PROMPT_TEMPLATE = "### Question:\n{question}\n\n### Answer:\n"
MAX_INDICES_IN_MESSAGE = 20


class DataValidationError(ValueError):
    """Bad input data; the message names the file, the column and the offending rows."""


@dataclass
class PreferenceExample:
    example_id: int  # row index in the source file
    prompt: str  # rendered prompt for embedded rows; the raw question for plain rows
    chosen: str
    rejected: str
    sample_type: str | None = None
    shape: str = "embedded"  # plain responses get an EOS token appended at tokenization
    prompt_is_rendered: bool = True


@dataclass
class DataReport:
    path: str
    shape: str  # "embedded" or "plain"
    total_rows: int
    selected_rows: int  # after the sample_type filter
    used_rows: int = 0
    sample_type_counts: dict[str, int] = field(default_factory=dict)
    excluded: dict[str, list[int]] = field(default_factory=dict)  # reason -> row indices
    adjusted: dict[str, list[int]] = field(default_factory=dict)  # reason -> row indices
    truncated: dict[str, list[int]] = field(default_factory=dict)  # filled by tokenization

    def to_dict(self) -> dict:
        return asdict(self)

    def save_json(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    def summary(self) -> str:
        lines = [
            f"data: {self.path} ({self.shape}): {self.total_rows} rows, "
            f"{self.selected_rows} selected, {self.used_rows} used",
        ]
        for title, groups in (("excluded", self.excluded), ("adjusted", self.adjusted),
                              ("truncated", self.truncated)):
            for reason, rows in groups.items():
                if rows:
                    lines.append(f"  {title} ({reason}): {len(rows)} rows {_preview(rows)}")
        return "\n".join(lines)


@dataclass
class PreferenceData:
    examples: list[PreferenceExample]
    report: DataReport
    frame: pd.DataFrame  # the used source rows, indexed by their row index in the file


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a Parquet or JSONL file into a DataFrame with a clear error for bad paths."""
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif suffix in (".jsonl", ".json"):
        frame = pd.read_json(path, lines=suffix == ".jsonl", dtype=False)  # keep "4" a string
    else:
        raise DataValidationError(
            f"{path}: unknown extension {suffix!r}; expected .parquet, .jsonl or .json"
        )
    return frame.reset_index(drop=True)


def split_embedded(text: str) -> tuple[str, str] | None:
    """Split a chat-formatted conversation into (prompt, response) at the last assistant header."""
    cut = text.rfind(ASSISTANT_HEADER)
    if cut < 0:
        return None
    cut += len(ASSISTANT_HEADER)
    return text[:cut], text[cut:]


def strip_after_final_im_end(response: str) -> str:
    """Drop white space after the final ``<|im_end|>`` (it is not part of the response)."""
    end = response.rfind(IM_END)
    if end < 0 or response[end + len(IM_END):].strip():
        return response  # no end marker, or real text after it: leave the response alone
    return response[: end + len(IM_END)]


def render_prompt(question: str, tokenizer=None) -> str:
    """Render a plain question as a prompt: the tokenizer's chat template, else a simple one."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    return FALLBACK_PROMPT_TEMPLATE.format(question=question)


def parse_sample_types(value: str | Sequence[str] | None) -> list[str] | None:
    """'original,flipped' -> ['original', 'flipped']; None/''/'all' -> None (no filter)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    values = [v for v in value if v]
    return None if not values or values == ["all"] else values


def load_preference_data(
    path: str | Path,
    prompt_field: str = "question",
    chosen_field: str = "text",
    rejected_field: str | None = "worse-text",
    sample_types: str | Sequence[str] | None = None,
    drop_invalid_rows: bool = False,
    tokenizer=None,
    flipped_prompt_field: str | None = "relevant-question",
) -> PreferenceData:
    """Load, filter and validate a preference file.

    Raises ``DataValidationError`` naming the file, column and rows of every problem, unless
    ``drop_invalid_rows`` is set, in which case those rows are excluded and reported.
    With ``tokenizer``, plain prompts are rendered with its chat template right away.
    ``rejected_field=None`` loads prompt + chosen only (SFT data); ``rejected`` is then "".
    Plain ``flipped`` rows are prompted with ``flipped_prompt_field`` when the file has it.
    """
    frame = read_table(path)
    total_rows = len(frame)
    wanted_types = parse_sample_types(sample_types)
    response_fields = [chosen_field] if rejected_field is None else [chosen_field, rejected_field]
    _require_columns(frame, path, response_fields)
    if wanted_types is not None:
        _require_columns(frame, path, ["sample_type"])
        present = set(frame["sample_type"].dropna().astype(str))
        missing = [t for t in wanted_types if t not in present]
        if missing:
            raise DataValidationError(
                f"{path}: column 'sample_type' has no rows with value(s) {missing}; "
                f"present values: {sorted(present)}"
            )
        frame = frame[frame["sample_type"].isin(wanted_types)]

    shape = _detect_shape(frame[chosen_field])
    report = DataReport(path=str(path), shape=shape, total_rows=total_rows, selected_rows=len(frame))
    prompt_fields = None
    if shape == "plain":
        _require_columns(frame, path, [prompt_field])
        prompt_fields = _plain_prompt_fields(frame, prompt_field, flipped_prompt_field)
    problems = _value_problems(frame, response_fields, prompt_fields)
    bad_rows = {i for rows in problems.values() for i in rows}
    identical = [int(i) for i, row in frame.iterrows() if rejected_field is not None
                 and i not in bad_rows and row[chosen_field] == row[rejected_field]]
    if identical:
        problems[f"columns '{chosen_field}' and '{rejected_field}': chosen identical to rejected"] = identical
    bad_rows |= set(identical)
    rows = [(int(i), row) for i, row in frame.iterrows() if int(i) not in bad_rows]
    if shape == "plain":
        examples = _plain_examples(rows, prompt_field, prompt_fields, chosen_field, rejected_field, report)
    else:
        examples = _embedded_examples(rows, chosen_field, rejected_field, problems, report)

    if problems and not drop_invalid_rows:
        details = "\n".join(f"  {reason}: rows {_preview(rows)}" for reason, rows in problems.items())
        raise DataValidationError(
            f"{path}: {sum(map(len, problems.values()))} invalid rows "
            f"(pass --drop_invalid_rows to exclude them instead):\n{details}"
        )
    report.excluded = {reason: sorted(rows) for reason, rows in problems.items()}
    if not examples:
        raise DataValidationError(f"{path}: no usable rows left\n{report.summary()}")
    if tokenizer is not None:
        examples = render_plain_prompts(examples, tokenizer)
    report.used_rows = len(examples)
    report.sample_type_counts = _count_sample_types(examples)
    used = frame.loc[[e.example_id for e in examples]]
    return PreferenceData(examples=examples, report=report, frame=used)


def _plain_prompt_fields(frame: pd.DataFrame, prompt_field: str,
                         flipped_prompt_field: str | None) -> dict[int, str]:
    """Row index -> the column that holds its plain prompt (flipped rows: the reverse question)."""
    use_flipped = bool(flipped_prompt_field) and flipped_prompt_field in frame.columns \
        and "sample_type" in frame.columns
    return {int(i): flipped_prompt_field if use_flipped and row.get("sample_type") == "flipped"
            else prompt_field for i, row in frame.iterrows()}


def _value_problems(frame: pd.DataFrame, response_fields: list[str],
                    prompt_fields: dict[int, str] | None) -> dict[str, list[int]]:
    """Missing, empty or non-string values: reason naming the column -> row indices."""
    cells = {column: list(frame.index) for column in response_fields}
    for i, column in (prompt_fields or {}).items():  # plain rows: only the prompt column they use
        cells.setdefault(column, []).append(i)
    problems: dict[str, list[int]] = {}
    for column in sorted(cells, key=lambda c: c in response_fields):  # prompt columns first
        bad = [int(i) for i in cells[column] if not _is_nonempty_string(frame.at[i, column])]
        if bad:
            problems[f"column '{column}': missing, empty or non-string value"] = bad
    return problems


def _plain_examples(rows, prompt_field: str, prompt_fields: dict[int, str], chosen_field: str,
                    rejected_field: str | None, report: DataReport) -> list[PreferenceExample]:
    examples, other_prompt = [], []
    for i, row in rows:
        rejected = "" if rejected_field is None else row[rejected_field]
        if prompt_fields[i] != prompt_field:
            other_prompt.append(i)
        examples.append(PreferenceExample(i, row[prompt_fields[i]], row[chosen_field], rejected,
                                          _optional_str(row.get("sample_type")), "plain", False))
    if other_prompt:
        column = prompt_fields[other_prompt[0]]
        report.adjusted[f"flipped rows prompted with column '{column}' (the reverse question)"] = other_prompt
    return examples


def _embedded_examples(rows, chosen_field: str, rejected_field: str | None,
                       problems: dict[str, list[int]], report: DataReport) -> list[PreferenceExample]:
    """Split each conversation at the last assistant header; both sides must share the prompt."""
    examples: list[PreferenceExample] = []
    no_header, prompt_mismatch, whitespace_adjusted = [], [], []
    trailing = {"chosen": [], "rejected": []}
    for i, row in rows:
        chosen_split = split_embedded(row[chosen_field])
        if rejected_field is None:  # SFT data: no rejected response, same prompt
            rejected_split = None if chosen_split is None else (chosen_split[0], "")
        else:
            rejected_split = split_embedded(row[rejected_field])
        if chosen_split is None or rejected_split is None:
            no_header.append(i)
            continue
        (chosen_prompt, chosen), (rejected_prompt, rejected) = chosen_split, rejected_split
        if chosen_prompt != rejected_prompt:
            if _squash_whitespace(chosen_prompt) != _squash_whitespace(rejected_prompt):
                prompt_mismatch.append(i)
                continue
            whitespace_adjusted.append(i)  # keep the chosen response's prompt
        responses = {"chosen": chosen, "rejected": rejected}
        for side, response in responses.items():
            responses[side] = strip_after_final_im_end(response)
            if responses[side] != response:
                trailing[side].append(i)
        examples.append(PreferenceExample(i, chosen_prompt, responses["chosen"], responses["rejected"],
                                          _optional_str(row.get("sample_type"))))
    response_fields = [chosen_field] if rejected_field is None else [chosen_field, rejected_field]
    if no_header:
        named = "/".join(f"'{column}'" for column in response_fields)
        problems[f"column(s) {named}: embedded conversation without "
                 f"an assistant header {ASSISTANT_HEADER!r}"] = no_header
    if prompt_mismatch:
        problems[f"columns '{chosen_field}'/'{rejected_field}': the two conversations have "
                 "different prompts"] = prompt_mismatch
    if whitespace_adjusted:
        report.adjusted["prompts differ only in white space; chosen prompt used"] = whitespace_adjusted
    for side, column in zip(("chosen", "rejected"), response_fields):
        if trailing[side]:
            report.adjusted[f"column '{column}': white space after the final {IM_END} "
                            "dropped from the response"] = trailing[side]
    return examples


def render_plain_prompts(examples: list[PreferenceExample], tokenizer) -> list[PreferenceExample]:
    """Render the raw questions of plain rows with the tokenizer's chat template."""
    for example in examples:
        if not example.prompt_is_rendered:
            example.prompt = render_prompt(example.prompt, tokenizer)
            example.prompt_is_rendered = True
    return examples


def _detect_shape(chosen: pd.Series) -> str:
    has_header = chosen.map(lambda v: isinstance(v, str) and ASSISTANT_HEADER in v)
    return "embedded" if bool(has_header.any()) else "plain"


def _require_columns(frame: pd.DataFrame, path, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataValidationError(
            f"{path}: missing column(s) {missing}; available columns: {list(frame.columns)}"
        )


def _is_nonempty_string(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _optional_str(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def _squash_whitespace(text: str) -> str:
    """Runs of white space -> one space, turn ends stripped; text that moves (12 3 / 1 23) still differs."""
    return "".join(" ".join(piece.split()) for piece in CHAT_MARKERS.split(text))


def _count_sample_types(examples: list[PreferenceExample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for example in examples:
        key = example.sample_type or "unknown"
        counts[key] = counts.get(key, 0) + 1
    return counts


def _preview(rows: list[int]) -> str:
    shown = ", ".join(map(str, rows[:MAX_INDICES_IN_MESSAGE]))
    more = f", ... ({len(rows)} in all)" if len(rows) > MAX_INDICES_IN_MESSAGE else ""
    return f"[{shown}{more}]"
