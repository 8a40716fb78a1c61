"""Probe responses and per-position log-probs in the analysis scripts (flags, scoring, files).

``ProbeRun.score_pairs`` stands in for ``fwdrev.scoring.score_pairs``: it returns the same y+ / y-
table and, from the same forward pass, the argmax probes and the per-position arrays
(``fwdrev.token_dynamics.TokenCollector``); then it scores the text probes
(``fwdrev.response_probes``) with the same scorer. Per checkpoint it keeps two tables:

* probes: one row per (example, probe) with ``PROBE_COLUMNS`` (y+ and y- included as probes
  ``y+`` / ``y-``, so every probe sits next to them);
* tokens: one row per (example, response) with ``fwdrev.token_dynamics.TOKEN_COLUMNS``.

They are written as parts (``parts/probes/<checkpoint>.part``, ``parts/tokens/<checkpoint>.part``,
keyed by the checkpoint's content key plus the probe settings) and merged into
``probes.parquet`` / ``token_logps.parquet``; with no flag set nothing changes.
"""

from __future__ import annotations

import argparse
import os
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from fwdrev.checkpoints import free_memory, load_for_scoring
from fwdrev.data import RowSelection, load_preference_data
from fwdrev.errors import UsageError
from fwdrev.fingerprint import file_sha256, key_digest
from fwdrev.greedy_probe import GREEDY_FILE, cached_greedy, greedy_budget, greedy_key
from fwdrev.problems import problem_keys
from fwdrev.provenance import training_records
from fwdrev.response_probes import SCORED_RESPONSES, TrainRows, parse_probe_kinds, probe_pairs, probe_responses
from fwdrev.scoring import score_pairs
from fwdrev.sharding import by_example_id, gather_table, read_key, write_parquet
from fwdrev.token_dynamics import PROBE_STATS, TokenCollector, with_checkpoint_columns

PROBES_FILE, TOKENS_FILE = "probes.parquet", "token_logps.parquet"
PROBE_COLUMNS = ["checkpoint", "stage", "epoch", "step", "example_id", "sample_type", "probe",
                 "source_example_id", *PROBE_STATS]


def add_probe_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("probes (where the probability mass goes; docs/probes.md)")
    group.add_argument("--probes", default=None,
                       help="Comma-separated probe responses to score besides y+ and y-: irr_train, "
                            "irr_test, permuted, permuted_irr, self_greedy, argmax, or 'all'. Writes "
                            "probes.parquet (one row per example, checkpoint and probe).")
    group.add_argument("--probe_fields", default=None,
                       help="Comma-separated extra response columns of the data file to score as probes.")
    group.add_argument("--probe_seed", type=int, default=0, help="Seed of irr_* choices and word shuffles.")
    group.add_argument("--probe_train_file", default=None,
                       help="Training split for irr_train (default: the file and train rows recorded in "
                            "the model's run_config.json).")
    group.add_argument("--probe_max_new_tokens", type=int, default=None,
                       help="self_greedy token budget (default: the longest y+ in the data).")
    group.add_argument("--token_positions", type=int, default=0,
                       help="Keep per-position log-probs (and argmax log-probs) of the first K tokens of "
                            "y+ and y- in token_logps.parquet (0 = off; the study's K is 1000).")


class ProbeRun:
    """The probes of one analysis run (see the module docstring); ``enabled`` False = a no-op."""

    def __init__(self, args, tokenizer, data, pairs, output_dir, shard, model_paths, start_model: str | None,
                 dtype):
        self.kinds = parse_probe_kinds(args.probes)
        self.fields = [f.strip() for f in (args.probe_fields or "").split(",") if f.strip()]
        self.positions = args.token_positions
        if self.positions < 0:
            raise UsageError(f"--token_positions must be >= 0, got {self.positions}")
        self.enabled = bool(self.kinds or self.fields or self.positions)
        self.text_kinds = [k for k in self.kinds if k != "argmax"]
        if (self.text_kinds or self.fields) and args.scoring != "response":
            raise UsageError("text probes (--probes other than argmax, --probe_fields) need --scoring response: "
                             "--scoring original scores whole conversations under a fixed prompt")
        self.args, self.tokenizer, self.data, self.pairs = args, tokenizer, data, pairs
        self.output_dir, self.shard, self.start_model, self.dtype = Path(output_dir), shard, start_model, dtype
        self.sample_types = {e.example_id: e.sample_type for e in data.examples}
        self.train = train_rows(args, tokenizer, model_paths) if "irr_train" in self.kinds else None
        self.greedy, self.greedy_key = None, None
        if "self_greedy" in self.kinds:
            if start_model is None:
                raise UsageError("--probes self_greedy needs the starting model: pass --ref_model_path")
            self.budget = greedy_budget(args.probe_max_new_tokens, tokenizer, data)
            self.greedy_key = greedy_key(start_model, args, self.budget, dtype)
        self.responses, empty = probe_responses(data, [k for k in self.text_kinds if k != "self_greedy"],
                                                args.probe_seed, self.fields, self.train)
        for field, rows in empty.items():
            if rows and shard.is_main:
                print(f"probe {field}: {len(rows)} rows have no value and get no {field} row: {rows[:20]}")
        self.tables: dict[str, tuple[pd.DataFrame, pd.DataFrame | None]] = {}

    def settings(self) -> dict:
        """What the probe rows depend on besides the checkpoint's own content key."""
        settings = {"probes": self.kinds, "probe_fields": self.fields, "probe_seed": self.args.probe_seed,
                    "token_positions": self.positions}
        if self.train is not None:
            settings["train_rows"] = self.train.source
        if self.greedy_key is not None:
            settings["self_greedy"] = key_digest(self.greedy_key)
        return settings

    # ------------------------------------------------------------------ self_greedy
    def prepare_greedy(self, start_model, my_pairs) -> None:
        """Generate (or read from the cache) the starting model's greedy responses, once.

        ``start_model``: a context manager factory for the starting model. Under torchrun the main
        process generates every example's response and the others wait; separate --num_shards
        runs each cache their own examples' responses."""
        if self.greedy_key is None:
            return
        own_file = self.shard.count > 1 and not self.shard.launched
        path = self.shard.file(self.output_dir / GREEDY_FILE) if own_file else self.output_dir / GREEDY_FILE
        pairs = my_pairs if own_file else self.pairs
        if self.shard.is_main or own_file:
            cached_greedy(path, self.greedy_key, pairs, self.tokenizer, start_model, self.args.batch_size,
                          self.budget)
        self.shard.barrier()
        self.greedy = cached_greedy(path, self.greedy_key, pairs, self.tokenizer, start_model,
                                    self.args.batch_size, self.budget)
        greedy_rows, _ = probe_responses(self.data, ["self_greedy"], self.args.probe_seed, greedy=self.greedy)
        self.responses += [r for r in greedy_rows if r.example_id in self.greedy]

    # ------------------------------------------------------------------ scoring
    def score_pairs(self, model, pairs, pad_token_id, checkpoint, **score_kwargs) -> pd.DataFrame:
        """``fwdrev.scoring.score_pairs`` of ``pairs``; with probes on, also this checkpoint's tables."""
        if not self.enabled:
            return score_pairs(model, pairs, pad_token_id, **score_kwargs)
        collector = None
        if "argmax" in self.kinds or self.positions:
            collector = TokenCollector(score_kwargs.get("first_k", 1000), self.positions,
                                       score_kwargs.get("score_tokens"))
        scores = score_pairs(model, pairs, pad_token_id, on_batch=collector, **score_kwargs)
        frames = [scored_response_rows(scores)]
        if "argmax" in self.kinds:
            frames.append(collector.argmax_table())
        mine = {pair.example_id for pair in pairs}
        responses = [r for r in self.responses if r.example_id in mine]
        if responses:
            extra, slots = probe_pairs(self.tokenizer, self.data, pairs, responses, self.args.max_length)
            probe_scores = score_pairs(model, extra, pad_token_id, **{**score_kwargs, "progress": False})
            frames.append(text_probe_rows(probe_scores, slots))
        probes = pd.concat(frames, ignore_index=True)
        probes = probes.sort_values("example_id", kind="stable").reset_index(drop=True)
        probes = with_checkpoint_columns(probes, checkpoint, self.sample_types)
        probes["source_example_id"] = probes["source_example_id"].astype("Int64")
        probes = probes.astype({"num_tokens": "int64", "num_tokens_first_k": "int64"})[PROBE_COLUMNS]
        tokens = None
        if self.positions:
            tokens = with_checkpoint_columns(collector.token_table(), checkpoint, self.sample_types)
        self.tables[checkpoint.name] = (probes, tokens)
        return scores

    # ------------------------------------------------------------------ files
    def expected_ids(self, rows_per_example: int | None = None) -> list[int]:
        """example_id of every row a complete probes table (None) or tokens table has."""
        ids = [pair.example_id for pair in self.pairs]
        if rows_per_example is not None:
            return [i for i in ids for _ in range(rows_per_example)]
        count = 2 + (2 if "argmax" in self.kinds else 0)
        present = set(ids)
        return sorted([i for i in ids for _ in range(count)]
                      + [r.example_id for r in self.responses if r.example_id in present])

    def write_gathered(self, names: list[str], output_dir: Path, key: dict | None = None,
                       paths: tuple[Path, Path] | None = None) -> None:
        """Write the tables of checkpoints ``names`` (every process calls this), merged over the
        shards by ``gather_table``: files of a run split over processes appear once all are in."""
        if not self.enabled:
            return
        tables = [self.tables.pop(name) for name in names]
        paths = paths or (output_dir / PROBES_FILE, output_dir / TOKENS_FILE)
        gather_table(self.shard, pd.concat([t[0] for t in tables], ignore_index=True), paths[0],
                     self.expected_ids() * len(names), key)
        if self.positions:
            gather_table(self.shard, pd.concat([t[1] for t in tables], ignore_index=True), paths[1],
                         self.expected_ids(2) * len(names), key)

    def part_files(self, checkpoint) -> tuple[Path, Path]:
        parts = self.output_dir / "parts"
        return parts / "probes" / f"{checkpoint.name}.part", parts / "tokens" / f"{checkpoint.name}.part"

    def part_key(self, key: dict) -> dict:
        return {**key, "probe_settings": self.settings()}

    def missing(self, checkpoint, key: dict) -> bool:
        """Whether ``checkpoint``'s probe parts (of this run's settings) are still to be scored."""
        if not self.enabled:
            return False
        files = self.part_files(checkpoint)[: 2 if self.positions else 1]
        return any(read_key(f) != self.part_key(key) and (self.shard.launched or self.shard.count == 1
                                                          or read_key(self.shard.file(f)) != self.part_key(key))
                   for f in files)

    def with_missing_parts(self, checkpoints, todo, keys: dict[str, dict]) -> list:
        """``todo`` plus the checkpoints whose probe parts are missing (in series order); says which."""
        added = [c for c in checkpoints if c not in todo and self.missing(c, keys[c.name])]
        if added and self.shard.is_main:
            print(f"probes: scoring {[c.name for c in added]} again for their probe parts (scores unchanged)")
        return [c for c in checkpoints if c in todo or c in added]

    def write_parts(self, checkpoint, key: dict, whole_checkpoint: bool) -> None:
        """This checkpoint's part files: as they are (whole checkpoints) or gathered over shards."""
        if not self.enabled:
            return
        paths = self.part_files(checkpoint)
        if whole_checkpoint:
            probes, tokens = self.tables.pop(checkpoint.name)
            write_parquet(by_example_id(probes), paths[0], self.part_key(key))
            if tokens is not None:
                write_parquet(by_example_id(tokens), paths[1], self.part_key(key))
        else:
            self.write_gathered([checkpoint.name], self.output_dir, self.part_key(key), paths)

    def merge_parts(self, keys: dict[str, dict]) -> None:
        """probes.parquet and token_logps.parquet from the parts of the current keys (atomic)."""
        if not self.enabled:
            return
        for folder, output in (("probes", PROBES_FILE), ("tokens", TOKENS_FILE)):
            parts = [p for p in sorted((self.output_dir / "parts" / folder).glob("*.part"))
                     if read_key(p) == self.part_key(keys.get(p.name[: -len(".part")], {}))]
            if parts:
                merge_part_files(parts, self.output_dir / output)


@contextmanager
def loaded_model(path: str, base_model: str | None, dtype, device, use_flash_attention: bool, force: bool,
                 base_flag: str = "--base_model"):
    """A model loaded for scoring, freed after use (for ``ProbeRun.prepare_greedy``)."""
    model, _ = load_for_scoring(path, base_model, dtype, device, use_flash_attention, force_base_model=force,
                                base_flag=base_flag)
    try:
        yield model
    finally:
        del model
        free_memory()


def scored_response_rows(scores: pd.DataFrame) -> pd.DataFrame:
    """y+ and y- of ``score_pairs`` output as probe rows."""
    frames = []
    for side, probe in SCORED_RESPONSES.items():
        frame = pd.DataFrame({"example_id": scores["example_id"], "probe": probe})
        for stat in PROBE_STATS:
            frame[stat] = scores[f"{side}_{stat}"].to_numpy()
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def text_probe_rows(scores: pd.DataFrame, slots) -> pd.DataFrame:
    """One row per probe response from the ``score_pairs`` output of ``probe_pairs``."""
    rows = []
    for index, responses in enumerate(slots):
        for side, response in zip(("chosen", "rejected"), responses):
            rows.append({"example_id": response.example_id, "probe": response.probe,
                         "source_example_id": response.source_example_id,
                         **{stat: scores.at[index, f"{side}_{stat}"] for stat in PROBE_STATS}})
    return pd.DataFrame(rows)


def merge_part_files(parts: list[Path], output: Path) -> None:
    """Concatenate Parquet parts in Arrow (no Python floats) ordered by epoch and example."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fwdrev.io import atomic_path

    tables = [pq.read_table(p) for p in parts]
    metadata = {k: v for k, v in (tables[0].schema.metadata or {}).items() if k != b"fwdrev_key"}
    merged = pa.concat_tables([t.replace_schema_metadata(metadata) for t in tables], promote_options="default")
    merged = merged.sort_by([("epoch", "ascending"), ("example_id", "ascending")])
    with atomic_path(output) as tmp:
        pq.write_table(merged, tmp)


def train_rows(args, tokenizer, model_paths) -> TrainRows | None:
    """The training split for ``irr_train``: --probe_train_file (every row), else the file and
    train rows recorded by the first training run of ``model_paths`` (checked by hash)."""
    if args.probe_train_file:
        path, ids = args.probe_train_file, None
    else:
        recorded = [r.training_data for p in model_paths if p for r in training_records(p) if r.training_data]
        if not recorded:
            return None
        record = recorded[0]
        path = record.get("file_resolved") or record["file"]
        if not os.path.exists(path) or file_sha256(path) != record["sha256"]:
            raise UsageError(f"irr_train: the recorded training file {path} is missing or was changed "
                             "since training; pass --probe_train_file")
        ids = record["train_example_ids"]
    data = load_preference_data(path, RowSelection.from_args(args, sample_types=None), tokenizer)
    keep = None if ids is None else set(ids)
    responses = {e.example_id: e.chosen for e in data.examples if keep is None or e.example_id in keep}
    if not responses:
        raise UsageError(f"irr_train: no usable training rows in {path}")
    return TrainRows(responses, problem_keys(data, list(responses)),
                     f"{os.path.abspath(path)} sha256:{file_sha256(path)[:16]} rows:{len(responses)}")
