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

Every excluded or adjusted row is counted in a ``DataReport`` with its row indices. Loading runs in
three steps: the rows with unusable values, per reason (``fwdrev.data_checks``); one row -> one
example or the reason it is excluded (``_split_row``); the report.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd

from fwdrev.data_checks import (
    Columns,
    DataValidationError,
    invalid_values,
    plain_prompt_columns,
    preview,
    raise_unless_dropped,
    rows_by_reason,
    select_sample_types,
)
from fwdrev.io import write_json

ASSISTANT_HEADER = "<|im_start|>assistant\n"
IM_END = "<|im_end|>"
CHAT_MARKERS = re.compile(r"(<\|im_start\|>|<\|im_end\|>)")
FALLBACK_PROMPT_TEMPLATE = "### Question:\n{question}\n\n### Answer:\n"


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
                    lines.append(f"  {title} ({reason}): {len(rows)} rows {preview(rows)}")
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


WHITESPACE_PROMPTS = "prompts differ only in white space; chosen prompt used"


@dataclass(frozen=True)
class RowSelection:
    """Which rows and columns of a preference file are read: the data flags (``fwdrev.data_arguments``
    gives them to the training scripts and the analysis scripts with these names and defaults)."""

    prompt_field: str = "question"
    flipped_prompt_field: str | None = "relevant-question"
    chosen_field: str = "text"
    rejected_field: str | None = "worse-text"
    sample_types: str | Sequence[str] | None = None
    drop_invalid_rows: bool = False

    @classmethod
    def from_args(cls, args, **changes) -> RowSelection:
        """The selection of parsed flags (``DataArguments`` or an argparse namespace); ``changes``
        replace flags (they are not read from ``args``)."""
        return cls(**{f.name: changes[f.name] if f.name in changes else getattr(args, f.name)
                      for f in fields(cls)})


@dataclass
class RowResult:
    """One source row made into an example, or the reason it is excluded; plus how it was adjusted."""

    example: PreferenceExample | None
    excluded: str | None = None
    adjusted: list[str] = field(default_factory=list)


def load_preference_data(path: str | Path, selection: RowSelection = RowSelection(),
                         tokenizer=None) -> PreferenceData:
    """Load, filter and validate a preference file.

    Raises ``DataValidationError`` naming the file, column and rows of every problem, unless
    ``selection.drop_invalid_rows`` is set, in which case those rows are excluded and reported.
    With ``tokenizer``, plain prompts are rendered with its chat template right away.
    ``rejected_field=None`` loads prompt + chosen only (SFT data); ``rejected`` is then "".
    Plain ``flipped`` rows are prompted with ``flipped_prompt_field`` when the file has it.
    """
    columns = Columns(selection.prompt_field, selection.chosen_field, selection.rejected_field,
                      selection.flipped_prompt_field)
    frame = read_table(path)
    total_rows = len(frame)
    frame = select_sample_types(frame, path, columns, parse_sample_types(selection.sample_types))
    shape = _detect_shape(frame[selection.chosen_field])
    prompt_columns = plain_prompt_columns(frame, path, columns) if shape == "plain" else None
    problems = invalid_values(frame, columns, prompt_columns)
    bad_rows = {i for rows in problems.values() for i in rows}
    results = {int(i): _split_row(int(i), row, columns, prompt_columns)
               for i, row in frame.iterrows() if int(i) not in bad_rows}
    problems.update(rows_by_reason(((i, r.excluded) for i, r in results.items() if r.excluded),
                                   _exclusion_order(columns)))
    raise_unless_dropped(path, problems, selection.drop_invalid_rows)
    examples = [r.example for r in results.values() if r.example is not None]
    adjusted = rows_by_reason(((i, reason) for i, r in results.items() for reason in r.adjusted),
                              _adjustment_order(columns))
    report = DataReport(path=str(path), shape=shape, total_rows=total_rows, selected_rows=len(frame),
                        used_rows=len(examples), sample_type_counts=_count_sample_types(examples),
                        excluded={reason: sorted(rows) for reason, rows in problems.items()},
                        adjusted=adjusted)
    if not examples:
        raise DataValidationError(f"{path}: no usable rows left\n{report.summary()}")
    if tokenizer is not None:
        examples = render_plain_prompts(examples, tokenizer)
    return PreferenceData(examples=examples, report=report, frame=frame.loc[[e.example_id for e in examples]])


def _split_row(i: int, row: pd.Series, columns: Columns,
               prompt_columns: dict[int, str] | None) -> RowResult:
    """One row -> its example: embedded rows are split at the assistant header, plain rows are not."""
    if prompt_columns is None:
        return _embedded_row(i, row, columns)
    return _plain_row(i, row, columns, prompt_columns[i])


def _plain_row(i: int, row: pd.Series, columns: Columns, prompt_column: str) -> RowResult:
    rejected = "" if columns.rejected is None else row[columns.rejected]
    example = PreferenceExample(i, row[prompt_column], row[columns.chosen], rejected,
                                _optional_str(row.get("sample_type")), "plain", False)
    adjusted = [] if prompt_column == columns.prompt else [_flipped_prompt_reason(prompt_column)]
    return RowResult(example, adjusted=adjusted)


def _embedded_row(i: int, row: pd.Series, columns: Columns) -> RowResult:
    """Split both conversations at the last assistant header; both sides must share the prompt."""
    chosen_split = split_embedded(row[columns.chosen])
    if columns.rejected is None:  # SFT data: no rejected response, same prompt
        rejected_split = None if chosen_split is None else (chosen_split[0], "")
    else:
        rejected_split = split_embedded(row[columns.rejected])
    if chosen_split is None or rejected_split is None:
        return RowResult(None, excluded=_no_header_reason(columns))
    (prompt, chosen), (rejected_prompt, rejected) = chosen_split, rejected_split
    adjusted = []
    if prompt != rejected_prompt:
        if _squash_whitespace(prompt) != _squash_whitespace(rejected_prompt):
            return RowResult(None, excluded=_prompt_mismatch_reason(columns))
        adjusted.append(WHITESPACE_PROMPTS)  # keep the chosen response's prompt
    responses = [strip_after_final_im_end(response) for response in (chosen, rejected)]
    adjusted += [_trailing_reason(column) for column, before, after
                 in zip(columns.responses, (chosen, rejected), responses) if after != before]
    example = PreferenceExample(i, prompt, *responses, _optional_str(row.get("sample_type")))
    return RowResult(example, adjusted=adjusted)


def _no_header_reason(columns: Columns) -> str:
    named = "/".join(f"'{column}'" for column in columns.responses)
    return f"column(s) {named}: embedded conversation without an assistant header {ASSISTANT_HEADER!r}"


def _prompt_mismatch_reason(columns: Columns) -> str:
    return f"columns '{columns.chosen}'/'{columns.rejected}': the two conversations have different prompts"


def _trailing_reason(column: str) -> str:
    return f"column '{column}': white space after the final {IM_END} dropped from the response"


def _flipped_prompt_reason(column: str) -> str:
    return f"flipped rows prompted with column '{column}' (the reverse question)"


def _exclusion_order(columns: Columns) -> list[str]:
    return [_no_header_reason(columns), _prompt_mismatch_reason(columns)]


def _adjustment_order(columns: Columns) -> list[str]:
    """Report order: plain rows' prompt column; embedded rows' prompt, then each response column."""
    flipped = [_flipped_prompt_reason(columns.flipped_prompt)] if columns.flipped_prompt else []
    return flipped + [WHITESPACE_PROMPTS] + [_trailing_reason(column) for column in columns.responses]


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
