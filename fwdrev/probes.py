"""In-training log-prob probes: log p(y+) and log p(y-) of a fixed probe set every N steps.

``LogprobProbeCallback`` scores the probe pairs at step 0 and every ``every_n_steps`` optimizer
steps and appends one row per example to ``OUTPUT_DIR/dynamics.csv`` (``DYNAMICS_COLUMNS``).
Under DeepSpeed ZeRO-3 every rank runs the same forward passes (the parameters are gathered
collectively, layer by layer); only the main process writes.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from transformers import TrainerCallback

from fwdrev.data import DataValidationError, RowSelection, load_preference_data, read_table
from fwdrev.io import write_table
from fwdrev.layout import DYNAMICS
from fwdrev.logprobs import DEFAULT_CHUNK_SIZE
from fwdrev.scoring import sample_types_by_id, score_pairs
from fwdrev.tokenization import TokenizedPair, encode_examples

DYNAMICS_COLUMNS = ["step", "split", "example_id", "sample_type", "chosen_logp_mean",
                    "rejected_logp_mean", "delta_logp_mean", "chosen_logp_sum", "rejected_logp_sum"]
DYNAMICS_FILE = DYNAMICS  # OUTPUT_DIR/dynamics.csv


class LogprobProbeCallback(TrainerCallback):
    """Probe ``probe_pairs`` (split name -> pairs) at step 0 and every ``every_n_steps`` steps."""

    def __init__(self, probe_pairs: Mapping[str, list[TokenizedPair]], output_dir: str | Path,
                 every_n_steps: int, pad_token_id: int,
                 sample_types: Mapping[int, str | None] | None = None, batch_size: int = 1,
                 chunk_size: int = DEFAULT_CHUNK_SIZE):
        if every_n_steps <= 0:
            raise ValueError(f"every_n_steps must be positive, got {every_n_steps}")
        self.probe_pairs = {split: list(pairs) for split, pairs in probe_pairs.items() if pairs}
        self.path = Path(output_dir) / DYNAMICS_FILE
        self.every_n_steps = every_n_steps
        self.pad_token_id = pad_token_id
        self.sample_types = dict(sample_types or {})
        self.batch_size, self.chunk_size = batch_size, chunk_size

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # A resumed run starts at its checkpoint's step: rows written after it are redone.
        if state.is_world_process_zero:
            self._drop_rows_after(state.global_step)
        if state.global_step == 0:
            self._probe(model, args, state)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_n_steps == 0:
            self._probe(model, args, state)

    def _probe(self, model, args, state) -> None:
        frames = []
        for split, pairs in self.probe_pairs.items():  # every rank: same forwards, same order
            scores = score_pairs(model, pairs, self.pad_token_id, batch_size=self.batch_size,
                                 chunk_size=self.chunk_size, device=args.device)
            frames.append(scores.assign(step=state.global_step, split=split))
        if not state.is_world_process_zero or not frames:
            return
        rows = pd.concat(frames, ignore_index=True)
        rows["sample_type"] = rows["example_id"].map(lambda i: self.sample_types.get(i) or "unknown")
        self._append(rows[DYNAMICS_COLUMNS])

    def _append(self, rows: pd.DataFrame) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new_file = not self.path.is_file() or self.path.stat().st_size == 0
        with open(self.path, "a", newline="") as f:
            rows.to_csv(f, header=new_file, index=False, quoting=csv.QUOTE_MINIMAL)

    def _drop_rows_after(self, step: int) -> None:
        """Keep rows up to ``step``; a fresh start (step 0) keeps nothing."""
        if not self.path.is_file():
            return
        if step == 0:
            self.path.unlink()
            return
        rows = pd.read_csv(self.path)
        write_table(rows[rows["step"] <= step], self.path)


def select_probe_pairs(train_pairs: list[TokenizedPair], eval_pairs: list[TokenizedPair],
                       probe_size: int, seed: int = 0) -> dict[str, list[TokenizedPair]]:
    """A fixed, seeded sample of ``probe_size`` train pairs and of ``probe_size`` eval pairs."""
    rng = random.Random(seed)
    probes = {}
    for split, pairs in (("train", train_pairs), ("eval", eval_pairs)):
        chosen = rng.sample(range(len(pairs)), min(probe_size, len(pairs)))
        if chosen:
            probes[split] = sorted((pairs[i] for i in chosen), key=lambda p: p.example_id)
    return probes


def build_probe_callback(data_args, tokenizer, train_pairs: list[TokenizedPair],
                         eval_pairs: list[TokenizedPair], output_dir: str | Path,
                         sample_types: Mapping[int, str | None] | None = None, seed: int = 0,
                         batch_size: int = 1,
                         chunk_size: int = DEFAULT_CHUNK_SIZE) -> LogprobProbeCallback:
    """The probe callback from the trainers' data flags (``probe_file/probe_every/probe_size``).

    With ``data_args.probe_file``: all its rows (whatever ``--sample_types`` trains on, so a
    forward-only run is also probed on reverse questions), loaded and truncated like the
    training data, as split "probe". Otherwise a seeded sample of ``probe_size`` train and
    eval pairs.
    ``sample_types`` (example_id -> sample_type) defaults to the training file's column.
    """
    if data_args.probe_file:
        data = load_preference_data(data_args.probe_file, RowSelection.from_args(data_args, sample_types=None),
                                    tokenizer)
        probe_pairs = {"probe": encode_examples(tokenizer, data.examples, data_args.max_length,
                                                data_args.max_prompt_length)}
        sample_types = sample_types_by_id(data)
    else:
        probe_pairs = select_probe_pairs(train_pairs, eval_pairs, data_args.probe_size, seed)
        if sample_types is None:
            sample_types = sample_types_of_file(data_args.train_file_path)
    return LogprobProbeCallback(probe_pairs, output_dir, data_args.probe_every,
                                tokenizer.pad_token_id, sample_types, batch_size, chunk_size)


def preference_pairs_of_rows(data_args, tokenizer, *row_sets: list[TokenizedPair]) -> list[list[TokenizedPair]]:
    """The (y+, y-) pairs of the training file's rows in each of ``row_sets`` (SFT rows carry y+ only).

    For SFT probes without ``--probe_file``: the same rows, now with ``rejected_field``.
    """
    try:
        data = load_preference_data(data_args.train_file_path, RowSelection.from_args(data_args), tokenizer)
    except DataValidationError as error:
        raise DataValidationError(f"{error}\n--probe_every scores y+ and y-: give a preference "
                                  "file with --probe_file") from None
    by_id = {p.example_id: p for p in encode_examples(tokenizer, data.examples, data_args.max_length,
                                                       data_args.max_prompt_length)}
    return [[by_id[row.example_id] for row in rows if row.example_id in by_id] for rows in row_sets]


def sample_types_of_file(path) -> dict[int, str]:
    """example_id (row index) -> sample_type of a data file; empty without that column."""
    frame = read_table(path)
    if "sample_type" not in frame:
        return {}
    return {int(i): str(v) for i, v in frame["sample_type"].items() if isinstance(v, str)}
