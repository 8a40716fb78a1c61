"""The data flags, defined once: ``DataArguments`` for the training scripts (HfArgumentParser)
and ``add_data_flags`` for the analysis scripts' argparse, with the same names, defaults and help.
The row flags are the fields of ``fwdrev.data.RowSelection`` (their defaults are its defaults);
``RowSelection.from_args`` makes the one object that travels from either kind of parsed flags."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field

from fwdrev.data import RowSelection
from fwdrev.tokenization import check_lengths, default_max_prompt_length

# Tokens of prompt + response: the study's sequences (the original's --max_length). The one default;
# recipes, launchers, scripts/gpu_check.sh and the benchmarks read it.
DEFAULT_MAX_LENGTH = 20000
ROWS = RowSelection()  # the row flags' defaults


@dataclass
class DataArguments:
    train_file_path: str = field(metadata={"help": "Parquet or JSONL training file."})
    prompt_field: str = field(default=ROWS.prompt_field, metadata={"help": "Prompt column (plain data only)."})
    flipped_prompt_field: str = field(
        default=ROWS.flipped_prompt_field,
        metadata={"help": "Prompt column of plain 'flipped' rows (the reverse question), used when the "
                          "file has it; '' = prompt_field for every row."})
    chosen_field: str = field(default=ROWS.chosen_field, metadata={"help": "Preferred response column (y+)."})
    rejected_field: str = field(default=ROWS.rejected_field, metadata={"help": "Rejected response column (y-)."})
    sample_types: str | None = field(
        default=ROWS.sample_types,
        metadata={"help": "Keep these sample_type values, e.g. 'original', 'flipped' or "
                          "'original,flipped' (default: all rows)."})
    drop_invalid_rows: bool = field(
        default=ROWS.drop_invalid_rows, metadata={"help": "Exclude invalid rows (reported) instead of failing."})
    max_length: int = field(default=DEFAULT_MAX_LENGTH, metadata={"help": "Max tokens of prompt + response."})
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Max prompt tokens (the end is kept); default min(2048, max_length // 2)."})
    eval_size: float = field(
        default=0.05, metadata={"help": "Held-out eval rows, whole problems (both rows of a problem on "
                                        "one side): a fraction (< 1) or a count (>= 1); 0 = none."})
    probe_file: str | None = field(
        default=None, metadata={"help": "Probe set for in-training log-prob probes (default: train/eval rows)."})
    probe_every: int = field(default=0, metadata={"help": "Probe every N optimizer steps (0 = off)."})
    probe_size: int = field(default=8, metadata={"help": "Probe rows taken from each of train and eval."})

    def __post_init__(self):
        if self.max_prompt_length is None:
            self.max_prompt_length = default_max_prompt_length(self.max_length)
        check_lengths(self.max_length, self.max_prompt_length)  # fail before any model is loaded


# Which rows and columns of a preference file (every script that reads one): RowSelection's fields.
ROW_FLAGS = tuple(f.name for f in dataclasses.fields(RowSelection))
LENGTH_FLAGS = ("max_length", "max_prompt_length")


def add_data_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] = ROW_FLAGS + LENGTH_FLAGS) -> None:
    """Add ``DataArguments`` fields as argparse flags: same default and help; a bool is a switch."""
    hints = typing.get_type_hints(DataArguments)
    fields = {f.name: f for f in dataclasses.fields(DataArguments)}
    for name in names:
        spec, help_text = fields[name], fields[name].metadata["help"]
        if hints[name] is bool:
            parser.add_argument(f"--{name}", action="store_true", help=help_text)
            continue
        value_type = next(t for t in typing.get_args(hints[name]) or (hints[name],) if t is not type(None))
        parser.add_argument(f"--{name}", type=value_type, default=spec.default, help=help_text)
